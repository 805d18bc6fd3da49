//! The web playground at `/`: one HTML page, its script, style sheet and icon, compiled into the
//! binary (`assets/playground/`), served with a strict Content-Security-Policy.
//!
//! The page and its assets are public, like `/health`: they hold nothing but code. Every API call
//! the page makes carries the key the person typed (`Authorization: Bearer`), so the playground
//! grants nothing that a curl call with the same key could not do.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app_state::AppState;

/// Where the page's own files live (besides the page itself at `/`).
const ASSETS_PATH: &str = "/playground";

/// Scripts, styles, connections and images from this origin only; no inline script or style, no
/// plugins, no `<base>` rewriting, no form posts (the page submits with `fetch`), no framing.
/// `data:` and `blob:` images are allowed because `sync_mode` results are `data:` URIs.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'none'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../assets/playground/index.html");
const APP_JS: &str = include_str!("../assets/playground/app.js");
const APP_CSS: &str = include_str!("../assets/playground/app.css");
const ICON_SVG: &str = include_str!("../assets/playground/icon.svg");

/// The page and each asset: path, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    (
        "/playground/app.js",
        "text/javascript; charset=utf-8",
        APP_JS,
    ),
    ("/playground/app.css", "text/css; charset=utf-8", APP_CSS),
    ("/playground/icon.svg", "image/svg+xml", ICON_SVG),
];

/// The playground's routes when `enabled`, else none (so `/` falls through to the JSON 404).
pub(crate) fn routes(enabled: bool) -> Router<AppState> {
    let mut router = Router::new();
    if enabled {
        for &(path, content_type, body) in FILES {
            router = router.route(path, get(move || async move { asset(content_type, body) }));
        }
    }
    router
}

/// Whether `path` is one of the playground's (for the `Allow` header of a 405).
pub(crate) fn serves(path: &str) -> bool {
    path == "/" || path.starts_with(ASSETS_PATH)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // Small files compiled into the binary: revalidating each load costs nothing and an
            // upgraded server is never shown with a stale script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}
