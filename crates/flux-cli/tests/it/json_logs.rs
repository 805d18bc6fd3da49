//! `flux serve --json-logs`: JSON lines go to stderr as the help says (stdout keeps only the lines
//! scripts read), and `RUST_LOG` below INFO is honoured.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

#[test]
fn json_logs_go_to_stderr_and_honour_rust_log_debug() -> anyhow::Result<()> {
    let cwd = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_flux"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--files-dir",
            "files",
            "--data-dir",
            "data",
            "--allow-unauthenticated",
            "--json-logs",
            // A remote backend: nothing to load, the server is ready at once.
            "--backend",
            "http://127.0.0.1:9",
        ])
        .env("RUST_LOG", "debug")
        .env_remove("FLUX_API_KEYS")
        .env_remove("FLUX_BACKEND")
        .env_remove("FLUX_MODEL")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = err_tx.send(all);
    });
    let mut stdout_lines = Vec::new();
    while let Ok(line) = line_rx.recv_timeout(Duration::from_secs(60)) {
        let ready = line == "flux server ready";
        stdout_lines.push(line);
        if ready {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let exited = child.wait()?;
    while let Ok(line) = line_rx.recv_timeout(Duration::from_millis(200)) {
        stdout_lines.push(line);
    }
    let logs = err_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    assert!(exited.success(), "exit {exited:?}; stderr: {logs}");
    assert_eq!(
        stdout_lines,
        [
            stdout_lines.first().cloned().unwrap_or_default(),
            "flux server ready".to_owned()
        ],
        "stdout has only the address and ready lines"
    );
    assert!(stdout_lines[0].starts_with("flux server listening on http://"));
    let json_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        json_lines
            .iter()
            .any(|line| line["fields"]["message"] == "flux server listening"),
        "no JSON log lines on stderr: {logs}"
    );
    assert!(
        json_lines
            .iter()
            .any(|line| line["level"] == "DEBUG" && line["fields"]["message"] == "server limits"),
        "RUST_LOG=debug was not honoured: {logs}"
    );
    Ok(())
}
