//! The playground's routes in process: the page and its assets, with their content types and the
//! Content-Security-Policy, public while the API beside them still wants a key; off → JSON 404.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flux_remote::router;
use tower::ServiceExt;

use crate::support::*;

fn app(playground: bool) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.playground = playground;
    (router(state(&config, fake())), dir)
}

async fn get(app: &axum::Router, path: &str) -> axum::http::Response<Body> {
    app.clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn text(response: axum::http::Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_public_with_a_strict_policy() {
    let (app, _dir) = app(true);
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/playground/app.js", "text/javascript; charset=utf-8"),
        ("/playground/app.css", "text/css; charset=utf-8"),
        ("/playground/icon.svg", "image/svg+xml"),
    ] {
        let response = get(&app, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        assert!(headers.contains_key("x-request-id"), "{path}");
    }
    // The page itself is public, but what it calls is not: the key stays required.
    let models = get(&app, "/api/v1/models").await;
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
    let (app, _dir) = app(true);
    let page = text(get(&app, "/").await).await;
    assert!(page.contains("<label for=\"prompt\">Prompt</label>"));
    assert!(page.contains(">Generate</button>"));
    assert!(page.contains("<script src=\"/playground/app.js\" defer></script>"));
    assert_eq!(
        page.matches("<script").count(),
        1,
        "one script, from a file"
    );
    assert!(!page.contains("<style"), "no inline style sheet");
    assert!(!page.contains(" style="), "no inline style attribute");
    let handler = page.split(" on").skip(1).find(|rest| {
        let name_end = rest.find(|c: char| !c.is_ascii_lowercase()).unwrap_or(0);
        name_end > 0 && rest[name_end..].starts_with('=')
    });
    assert_eq!(handler, None, "an inline event handler");
    for asset in ["/", "/playground/app.js", "/playground/app.css"] {
        let body = text(get(&app, asset).await).await;
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{asset} refers to another origin"
        );
    }
    // The key is read from the field and sent as a header, never put in a URL.
    let script = text(get(&app, "/playground/app.js").await).await;
    assert!(script.contains("\"Bearer \" + key"));
    assert!(!script.contains("new EventSource"));
}

#[tokio::test]
async fn other_methods_are_405_with_allow_and_head_works() {
    let (app, _dir) = app(true);
    let response = app
        .clone()
        .oneshot(Request::post("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let response = app
        .oneshot(Request::head("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("content-security-policy"));
}

#[tokio::test]
async fn switched_off_the_root_is_the_json_404() {
    let (app, _dir) = app(false);
    for path in ["/", "/playground/app.js"] {
        let response = get(&app, path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(text(response).await.contains("\"not_found\""), "{path}");
    }
}
