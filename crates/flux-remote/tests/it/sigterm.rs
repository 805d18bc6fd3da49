//! A real SIGTERM to this process while a generation runs: the generation completes and is
//! answered, new connections are refused, and `serve` returns. In a process of its own
//! (`support::in_own_process`), because the signal goes to the whole process.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use flux_remote::FluxClient;
use flux_types::{GenerateRequest, ImageSize};

#[tokio::test]
async fn sigterm_drains_then_exits() {
    if !in_own_process(module_path!(), "sigterm_drains_then_exits").unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = config(dir.path());
    config.listen = addr;
    let generator = fake_with_delay(Duration::from_millis(1500));
    let server = tokio::spawn(flux_remote::serve(
        config,
        generator.clone(),
        flux_remote::shutdown_signal(),
    ));
    let url = format!("http://{addr}");
    let client = FluxClient::builder(&url)
        .api_key(KEY)
        .max_attempts(1)
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if client.ready().await.unwrap_or(false) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the server came up");
    // Let the server task poll the signal future once more, so the handler is installed.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let request = GenerateRequest {
                image_size: ImageSize::Custom {
                    width: 64,
                    height: 64,
                },
                ..GenerateRequest::new("a fox")
            };
            client.generate(&request).await
        }
    });
    for _ in 0..200 {
        if generator.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(generator.calls(), 1);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections are refused after SIGTERM");
    assert_eq!(
        generator.running.load(Ordering::SeqCst),
        1,
        "still generating"
    );

    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap()
        .expect("the running generation is answered");
    assert_eq!(answer.images.len(), 1);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after draining")
        .unwrap()
        .unwrap();
}
