//! A nats-server process with JetStream, for tests and benchmarks.

use std::fs;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    LOG_TAIL_LINES, file_tail, http_status, io_error, kill_child, log_stdio, loopback,
    nats_server_binary, read_first_line, server_error, signal, wait_for_exit,
};
use crate::ClusterError;

const SERVER: &str = "nats-server";
/// How long a start or restart may take until the server is ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`NatsServer::stop`] waits after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nats-server` with JetStream, listening on `127.0.0.1` only.
///
/// Its folder holds `nats.conf` (JetStream stored in the folder, `sync_interval: always`: every
/// write is fsynced, the durability a single replica needs), `nats.log` (stdout and stderr, kept
/// across restarts), the JetStream store under `jetstream/`, and `ports/` (where the server
/// reports the ports it bound). The first start takes a random free port (`-p -1`, read back
/// from the ports file); [`restart`](Self::restart) reuses it, so clients configured with
/// [`url`](Self::url) reconnect. Dropping it kills the process.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    store_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    ports_dir: PathBuf,
    port: u16,
    monitor_port: u16,
    pid: u32,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts nats-server with JetStream stored in `store_dir` (created if missing) on a random
    /// free loopback port, and waits (up to 20 s) until it accepts clients and its health check,
    /// JetStream included, passes.
    pub fn start(store_dir: &Path) -> Result<NatsServer, ClusterError> {
        let binary = nats_server_binary()?;
        fs::create_dir_all(store_dir)
            .map_err(|error| io_error(SERVER, "create", store_dir, error))?;
        let store_dir = store_dir
            .canonicalize()
            .map_err(|error| io_error(SERVER, "resolve", store_dir, error))?;
        let config = store_dir.join("nats.conf");
        fs::write(&config, config_text(&store_dir)?)
            .map_err(|error| io_error(SERVER, "write", &config, error))?;
        let mut server = NatsServer {
            binary,
            log: store_dir.join("nats.log"),
            ports_dir: store_dir.join("ports"),
            store_dir,
            config,
            port: 0,
            monitor_port: 0,
            pid: 0,
            child: None,
        };
        server.spawn(None)?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port of the current process (`/healthz`, `/varz`, `/jsz`); a restart
    /// picks a new one.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The process id of the running server, or of the last one after a kill or stop.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The folder of the config, the log and the JetStream store.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Whether the process is still running (it may have been killed from outside).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Kills the server with SIGKILL (no chance to flush or say goodbye) and waits for it to
    /// exit. A server that is not running is left as it is.
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child).map_err(|error| {
                server_error(SERVER, format!("cannot kill {}: {error}", self.pid))
            })?;
        }
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit; one still running after
    /// 10 s is killed and reported as an error.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let sent = signal(self.pid, "TERM");
        let exited = wait_for_exit(&mut child, STOP_TIMEOUT);
        if let Ok(Some(_)) = exited {
            return Ok(());
        }
        let _ = kill_child(&mut child);
        sent?;
        Err(server_error(
            SERVER,
            format!(
                "pid {} did not exit within {STOP_TIMEOUT:?} of SIGTERM ({exited:?}); killed it. \
                 Log tail:\n{}",
                self.pid,
                self.log_tail()
            ),
        ))
    }

    /// Starts the server again on the same port with the same store (JetStream recovers what was
    /// written), killing it first (SIGKILL) if it is still running, and waits until it is ready.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill()?;
        self.spawn(Some(self.port))
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_TAIL_LINES)
    }

    /// Starts the process (on `port`, else a random one) and waits until it is ready; on failure
    /// nothing is left running.
    fn spawn(&mut self, port: Option<u16>) -> Result<(), ClusterError> {
        // Reports of earlier processes (a killed server leaves its own behind).
        let _ = fs::remove_dir_all(&self.ports_dir);
        fs::create_dir_all(&self.ports_dir)
            .map_err(|error| io_error(SERVER, "create", &self.ports_dir, error))?;
        let (stdout, stderr) = log_stdio(SERVER, &self.log)?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-m", "-1"])
            .arg("--ports_file_dir")
            .arg(&self.ports_dir)
            .current_dir(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| {
                server_error(
                    SERVER,
                    format!("cannot run {}: {error}", self.binary.display()),
                )
            })?;
        self.pid = child.id();
        self.child = Some(child);
        match self.wait_ready(port) {
            Ok(()) => Ok(()),
            Err(reason) => {
                let _ = self.kill();
                Err(server_error(
                    SERVER,
                    format!(
                        "pid {} (store {}) not ready: {reason}. Log tail:\n{}",
                        self.pid,
                        self.store_dir.display(),
                        self.log_tail()
                    ),
                ))
            }
        }
    }

    /// Waits for the ports file, then a passing `/healthz` (which covers JetStream and the
    /// recovery of its streams), then the `INFO` greeting on the client port.
    fn wait_ready(&mut self, expected_port: Option<u16>) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no ports file yet");
        let mut have_ports = false;
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(format!("it exited ({status})")),
                    Ok(None) => {}
                    Err(error) => return Err(format!("cannot wait for it: {error}")),
                }
            }
            if !have_ports {
                match read_ports(&self.ports_dir, self.pid) {
                    Ok(Some((client, monitor))) => {
                        if expected_port.is_some_and(|expected| expected != client) {
                            return Err(format!(
                                "it listens on {client}, not the requested {}",
                                self.port
                            ));
                        }
                        self.port = client;
                        self.monitor_port = monitor;
                        have_ports = true;
                        last = "no health check answered yet".to_owned();
                    }
                    Ok(None) => {}
                    Err(error) => last = error,
                }
            }
            if have_ports {
                match self.check_ready() {
                    Ok(()) => return Ok(()),
                    Err(error) => last = error,
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("still not ready after {START_TIMEOUT:?} ({last})"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn check_ready(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(2);
        match http_status(self.monitor_port, "GET", "/healthz", &[], timeout) {
            Ok(200) => {}
            Ok(status) => return Err(format!("/healthz answered {status}")),
            Err(error) => return Err(format!("/healthz: {error}")),
        }
        let greeting = TcpStream::connect_timeout(&loopback(self.port), timeout)
            .and_then(|mut stream| {
                stream.set_read_timeout(Some(timeout))?;
                read_first_line(&mut stream)
            })
            .map_err(|error| format!("client port {}: {error}", self.port))?;
        if greeting.starts_with("INFO ") {
            Ok(())
        } else {
            Err(format!("client port {} greeted {greeting:?}", self.port))
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The config file: JetStream in `store_dir`, fsync on every write. The listen address and port
/// are command-line flags, so a restart can pin the port the first start chose.
fn config_text(store_dir: &Path) -> Result<String, ClusterError> {
    let dir = store_dir.to_str().ok_or_else(|| {
        server_error(
            SERVER,
            format!("the store path {} is not UTF-8", store_dir.display()),
        )
    })?;
    let quoted = dir.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(format!(
        "# Written by flux-cluster's NatsServer: one replica, so every write is synced to disk.\n\
         jetstream {{\n  store_dir: \"{quoted}\"\n  sync_interval: always\n}}\n"
    ))
}

/// The client and monitoring ports from the `<executable>_<pid>.ports` file nats-server writes
/// (`{"nats":["nats://127.0.0.1:P"],"monitoring":["http://127.0.0.1:M"]}`) once it listens.
fn read_ports(dir: &Path, pid: u32) -> Result<Option<(u16, u16)>, String> {
    let suffix = format!("_{pid}.ports");
    let entries = fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let Some(path) = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(&suffix))
        })
    else {
        return Ok(None);
    };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    // A file caught half-written does not parse: try again on the next poll.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    let port_of = |key: &str| {
        value[key][0]
            .as_str()
            .and_then(|url| url.rsplit(':').next())
            .and_then(|port| port.parse::<u16>().ok())
    };
    match (port_of("nats"), port_of("monitoring")) {
        (Some(client), Some(monitor)) => Ok(Some((client, monitor))),
        _ => Err(format!("{} lacks the ports: {text}", path.display())),
    }
}
