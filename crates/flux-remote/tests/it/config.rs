//! Configuration: API key loading, rate-limit parsing, validation and defaults.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use flux_remote::{RateLimit, RemoteError, ServerConfig, load_api_keys};

#[test]
fn api_keys_from_file_and_env_skip_blanks_comments_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(
        &file,
        "# team keys\n\nalpha-123\n  beta-456  \n#gamma\nalpha-123\n",
    )
    .unwrap();
    let keys = load_api_keys(Some(&file), Some("delta-1, epsilon-2\nbeta-456,,")).unwrap();
    assert_eq!(keys, ["alpha-123", "beta-456", "delta-1", "epsilon-2"]);
    assert!(load_api_keys(None, None).unwrap().is_empty());
}

#[test]
fn bad_key_files_are_clear_errors_that_never_show_the_key() {
    let missing = load_api_keys(Some(std::path::Path::new("/nonexistent/keys")), None);
    assert!(matches!(missing, Err(RemoteError::ApiKeyFile { .. })));
    let error = load_api_keys(None, Some("good-key\nsecret\u{7f}key")).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("entry 2"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn rate_limits_parse_with_and_without_burst() {
    let limit: RateLimit = "60/min".parse().unwrap();
    assert_eq!(limit.requests.get(), 60);
    assert_eq!(limit.period, Duration::from_secs(60));
    assert_eq!(limit.burst.get(), 60);
    assert_eq!(limit.replenish_interval(), Duration::from_secs(1));
    let limit: RateLimit = "2/s,burst=10".parse().unwrap();
    assert_eq!((limit.requests.get(), limit.burst.get()), (2, 10));
    assert_eq!(limit.replenish_interval(), Duration::from_millis(500));
    assert_eq!(
        "600/h".parse::<RateLimit>().unwrap().period,
        Duration::from_secs(3600)
    );
    assert_eq!(limit.to_string().parse::<RateLimit>().unwrap(), limit);
    for bad in [
        "",
        "60",
        "0/min",
        "-1/s",
        "60/fortnight",
        "60/min,10",
        "60/min,burst=0",
        "x/s",
    ] {
        let error = bad.parse::<RateLimit>().unwrap_err();
        assert!(
            error.to_string().contains("expected e.g."),
            "{bad}: {error}"
        );
    }
    let default = RateLimit::default();
    assert_eq!((default.requests.get(), default.burst.get()), (60, 10));
}

#[test]
fn validation_and_defaults() {
    let config = ServerConfig::default();
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(config.max_body_bytes, 64 * 1024);
    assert_eq!(config.retention, Duration::from_secs(86_400));
    assert_eq!(config.queue_depth, 16);
    assert!(
        config.validate().is_err(),
        "no keys, not allowed unauthenticated"
    );

    let with_key = ServerConfig {
        api_keys: vec!["k".repeat(flux_remote::MIN_API_KEY_CHARS)],
        ..ServerConfig::default()
    };
    with_key.validate().unwrap();
    ServerConfig {
        queue_depth: flux_remote::MAX_QUEUE_DEPTH,
        ..with_key.clone()
    }
    .validate()
    .unwrap();
    let bound = SocketAddr::from(([127, 0, 0, 1], 4321));
    assert_eq!(
        with_key.public_base_url(bound).unwrap(),
        "http://127.0.0.1:4321"
    );
    let public = ServerConfig {
        public_url: Some("https://flux.example.com/".to_owned()),
        ..with_key.clone()
    };
    assert_eq!(
        public.public_base_url(bound).unwrap(),
        "https://flux.example.com"
    );
    for bad in [
        ServerConfig {
            queue_depth: 0,
            ..with_key.clone()
        },
        ServerConfig {
            rate_limit: Some(RateLimit {
                period: Duration::ZERO,
                ..RateLimit::default()
            }),
            ..with_key.clone()
        },
        ServerConfig {
            // Would overflow the rate-limit headers' arithmetic.
            rate_limit: Some(RateLimit {
                period: Duration::MAX,
                ..RateLimit::default()
            }),
            ..with_key.clone()
        },
        ServerConfig {
            // tokio's semaphore panics above 2^61 permits; the config must refuse it first.
            queue_depth: usize::MAX,
            ..with_key.clone()
        },
        ServerConfig {
            queue_depth: flux_remote::MAX_QUEUE_DEPTH + 1,
            ..with_key.clone()
        },
        ServerConfig {
            retention: Duration::ZERO,
            ..with_key.clone()
        },
        ServerConfig {
            request_timeout: Duration::ZERO,
            ..with_key.clone()
        },
        ServerConfig {
            read_timeout: Duration::ZERO,
            ..with_key.clone()
        },
        ServerConfig {
            max_body_bytes: 0,
            ..with_key.clone()
        },
        ServerConfig {
            public_url: Some("ftp://x".to_owned()),
            ..with_key.clone()
        },
        ServerConfig {
            public_url: Some("not a url".to_owned()),
            ..with_key.clone()
        },
        ServerConfig {
            api_keys: vec!["has space".to_owned()],
            ..with_key.clone()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(RemoteError::Config(_))),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn the_server_refuses_to_start_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        files_dir: dir.path().to_owned(),
        ..ServerConfig::default()
    };
    let never = || {
        std::sync::Arc::new(
            flux_types::test_util::FakeGenerator::new()
                .failing_with(flux_types::GeneratorError::NotReady)
                .named("never"),
        )
    };
    let error = flux_remote::Server::bind(config.clone(), never())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("--allow-unauthenticated"),
        "{error}"
    );
    let open = ServerConfig {
        allow_unauthenticated: true,
        ..config
    };
    let server = flux_remote::Server::bind(open, never()).await.unwrap();
    assert_ne!(server.local_addr().unwrap().port(), 0);
}
