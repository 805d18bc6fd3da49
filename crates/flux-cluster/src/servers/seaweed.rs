//! A SeaweedFS `weed mini` process (master, volume server, filer and S3 gateway in one) serving
//! one bucket, for tests and benchmarks of the S3 image store.

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{
    LOG_TAIL_LINES, file_tail, free_ports, http_status, io_error, kill_child, log_stdio,
    server_error, weed_binary,
};
use crate::ClusterError;

const SERVER: &str = "seaweedfs";
/// How long one start attempt may take until the bucket answers.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts retried with fresh ports when one was taken between choosing and binding it.
const START_ATTEMPTS: usize = 3;
/// The region requests are signed for (SeaweedFS accepts any).
const REGION: &str = "us-east-1";

/// The loopback ports one `weed mini` binds, all chosen free before it starts.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    /// Its gRPC port is always `admin + 10000`: `weed mini` 4.48's maintenance worker dials that
    /// even when `-admin.port.grpc` says otherwise, so it is left to the default.
    admin: u16,
}

impl Ports {
    fn choose() -> std::io::Result<Ports> {
        // Held while the rest are chosen, so all ten are distinct.
        let (_admin, _admin_grpc, admin) = admin_port()?;
        let ports = free_ports(8)?;
        Ok(Ports {
            master: ports[0],
            master_grpc: ports[1],
            volume: ports[2],
            volume_grpc: ports[3],
            filer: ports[4],
            filer_grpc: ports[5],
            s3: ports[6],
            s3_grpc: ports[7],
            admin,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("-master.port={}", self.master),
            format!("-master.port.grpc={}", self.master_grpc),
            format!("-volume.port={}", self.volume),
            format!("-volume.port.grpc={}", self.volume_grpc),
            format!("-filer.port={}", self.filer),
            format!("-filer.port.grpc={}", self.filer_grpc),
            format!("-s3.port={}", self.s3),
            format!("-s3.port.grpc={}", self.s3_grpc),
            format!("-admin.port={}", self.admin),
        ]
    }

    /// The Unix sockets `weed mini` makes in `/tmp` (named by port, whatever `TMPDIR` says) and
    /// leaves behind when killed.
    fn sockets(&self) -> Vec<PathBuf> {
        [
            ("master-grpc", self.master_grpc),
            ("volume-grpc", self.volume_grpc),
            ("filer", self.filer),
            ("filer-grpc", self.filer_grpc),
            ("s3", self.s3),
            ("s3-grpc", self.s3_grpc),
            ("admin-grpc", self.admin.saturating_add(10000)),
        ]
        .into_iter()
        .map(|(name, port)| PathBuf::from(format!("/tmp/seaweedfs-{name}-{port}.sock")))
        .collect()
    }
}

/// A free port `p` whose `p + 10000` is free too (both held by the returned listeners).
fn admin_port() -> std::io::Result<(TcpListener, TcpListener, u16)> {
    let mut last_error = None;
    for _ in 0..200 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = first.local_addr()?.port();
        let Some(grpc) = port.checked_add(10000) else {
            continue;
        };
        match TcpListener::bind((Ipv4Addr::LOCALHOST, grpc)) {
            Ok(second) => return Ok((first, second, port)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "no free port p below 55536 with p + 10000 free",
        )
    }))
}

/// A running SeaweedFS with its S3 API on a random free loopback port and one bucket, made at
/// start, that the given credentials (an admin identity) may use.
///
/// It runs as `weed -logtostderr mini -dir=DIR -ip=127.0.0.1 -ip.bind=127.0.0.1
/// -master.telemetry=false -admin.ui=false -webdav=false -bucket=NAME -s3.port.iceberg=0
/// -s3.port.lance=0` plus a chosen free port for each of its listeners, with
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` in its environment. `DIR` holds the data,
/// `weed.log` (its output) and the `mini.options` it writes (the flags win over that file).
/// Dropping it kills the process.
pub struct SeaweedS3 {
    dir: PathBuf,
    bucket: String,
    access_key: String,
    secret_key: String,
    log: PathBuf,
    ports: Ports,
    pid: u32,
    child: Option<Child>,
}

impl fmt::Debug for SeaweedS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeaweedS3")
            .field("dir", &self.dir)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("ports", &self.ports)
            .field("pid", &self.pid)
            .field("child", &self.child)
            .finish()
    }
}

impl SeaweedS3 {
    /// Starts `weed mini` storing in `dir` (created if missing) with `bucket` created, and waits
    /// (up to 30 s) until a request signed with the credentials (SigV4 `HEAD /<bucket>`) answers
    /// 200. A start that fails because a chosen port was taken meanwhile is retried with new
    /// ports.
    pub fn start(
        dir: &Path,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Result<SeaweedS3, ClusterError> {
        let binary = weed_binary()?;
        fs::create_dir_all(dir).map_err(|error| io_error(SERVER, "create", dir, error))?;
        let dir = dir
            .canonicalize()
            .map_err(|error| io_error(SERVER, "resolve", dir, error))?;
        let mut attempt = 1;
        loop {
            let ports = Ports::choose()
                .map_err(|error| server_error(SERVER, format!("cannot choose ports: {error}")))?;
            let mut server = SeaweedS3 {
                log: dir.join("weed.log"),
                dir: dir.clone(),
                bucket: bucket.to_owned(),
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
                ports,
                pid: 0,
                child: None,
            };
            let log_start = fs::metadata(&server.log).map_or(0, |meta| meta.len());
            match server.spawn(&binary) {
                Ok(()) => return Ok(server),
                Err(error) => {
                    drop(server);
                    let log = fs::read(dir.join("weed.log")).unwrap_or_default();
                    let this_attempt = log.get(log_start as usize..).unwrap_or_default();
                    let port_taken =
                        String::from_utf8_lossy(this_attempt).contains("address already in use");
                    if !port_taken || attempt >= START_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::warn!(attempt, "weed mini found a port taken; retrying");
                    attempt += 1;
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the S3 API (path-style buckets).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// The S3 API's port.
    pub fn s3_port(&self) -> u16 {
        self.ports.s3
    }

    /// The bucket made at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region to sign requests for (any is accepted).
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// The folder of the data and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the running server, or of the last one after a kill.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still running (it may have been killed from outside).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Kills the server with SIGKILL, waits for it to exit, and removes the sockets it left in
    /// `/tmp`. A server that is not running is left as it is.
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        if let Some(mut child) = self.child.take() {
            let killed = kill_child(&mut child);
            self.remove_sockets();
            killed.map_err(|error| {
                server_error(SERVER, format!("cannot kill {}: {error}", self.pid))
            })?;
        }
        Ok(())
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_TAIL_LINES)
    }

    fn remove_sockets(&self) {
        for path in self.ports.sockets() {
            // Only a socket: never a file someone else put at that name.
            if fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket()) {
                let _ = fs::remove_file(&path);
            }
        }
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), ClusterError> {
        let (stdout, stderr) = log_stdio(SERVER, &self.log)?;
        let child = Command::new(binary)
            .args(["-logtostderr", "mini"])
            .arg(format!("-dir={}", self.dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={}", self.bucket))
            .args(self.ports.args())
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env_remove("S3_BUCKET")
            .env_remove("S3_TABLE_BUCKET")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|error| {
                server_error(SERVER, format!("cannot run {}: {error}", binary.display()))
            })?;
        self.pid = child.id();
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(reason) => {
                let _ = self.kill();
                Err(server_error(
                    SERVER,
                    format!(
                        "pid {} (dir {}, S3 port {}) not ready: {reason}. Log tail:\n{}",
                        self.pid,
                        self.dir.display(),
                        self.ports.s3,
                        self.log_tail()
                    ),
                ))
            }
        }
    }

    /// Polls a signed `HEAD /<bucket>` until it answers 200 (404 while the bucket is being made,
    /// a connection error while the gateway starts).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(format!("it exited ({status})")),
                    Ok(None) => {}
                    Err(error) => return Err(format!("cannot wait for it: {error}")),
                }
            }
            let path = format!("/{}", self.bucket);
            let headers = sign_v4(
                "HEAD",
                &path,
                self.ports.s3,
                &self.access_key,
                &self.secret_key,
                SystemTime::now(),
            );
            let last = match http_status(
                self.ports.s3,
                "HEAD",
                &path,
                &headers,
                Duration::from_secs(2),
            ) {
                Ok(200) => return Ok(()),
                Ok(status) => format!("signed HEAD {path} answered {status}"),
                Err(error) => format!("signed HEAD {path}: {error}"),
            };
            if Instant::now() >= deadline {
                return Err(format!("still not ready after {START_TIMEOUT:?} ({last})"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The headers of an AWS Signature Version 4 signed request without a body or query, to
/// `127.0.0.1:port`, path-style.
fn sign_v4(
    method: &str,
    path: &str,
    port: u16,
    access_key: &str,
    secret_key: &str,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let (date, amz_date) = amz_dates(now);
    let host = format!("127.0.0.1:{port}");
    let payload_hash = hex(&Sha256::digest(b""));
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload_hash}\n\
         x-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    vec![
        ("x-amz-content-sha256", payload_hash),
        ("x-amz-date", amz_date),
        (
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, \
                 SignedHeaders={signed_headers}, Signature={signature}"
            ),
        ),
    ]
}

/// HMAC-SHA256 (RFC 2104), written out to need no `hmac` dependency.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|byte| byte ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|byte| byte ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` (UTC) of `now`.
fn amz_dates(now: SystemTime) -> (String, String) {
    let seconds = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!(
        "{:02}{:02}{:02}",
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    );
    (date.clone(), format!("{date}T{time}Z"))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        // 2013-05-24T00:00:00Z, the date of AWS's SigV4 examples; and a leap day.
        assert_eq!(
            amz_dates(UNIX_EPOCH + Duration::from_secs(1_369_353_600)),
            ("20130524".to_owned(), "20130524T000000Z".to_owned())
        );
        assert_eq!(
            amz_dates(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)),
            ("20000229".to_owned(), "20000229T010203Z".to_owned())
        );
    }

    #[test]
    fn signing_key_matches_the_aws_documented_example() {
        // AWS's documented signing key for secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // 20120215, us-east-1, iam.
        let mut key = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    /// The readiness check means something: the same signed request is 404 for a bucket that
    /// does not exist and 403 with a wrong secret.
    #[test]
    fn signed_head_tells_missing_buckets_and_bad_secrets_apart() -> Result<(), ClusterError> {
        let dir = tempfile::tempdir().map_err(|error| server_error(SERVER, error.to_string()))?;
        let server = SeaweedS3::start(dir.path(), "present", "unit-access", "unit-secret")?;
        let port = server.s3_port();
        let status = |path: &str, secret: &str| {
            let headers = sign_v4("HEAD", path, port, "unit-access", secret, SystemTime::now());
            http_status(port, "HEAD", path, &headers, Duration::from_secs(5))
        };
        let results = (
            status("/present", "unit-secret"),
            status("/absent", "unit-secret"),
            status("/present", "wrong-secret"),
        );
        drop(server);
        match results {
            (Ok(200), Ok(404), Ok(403)) => Ok(()),
            other => Err(server_error(SERVER, format!("unexpected {other:?}"))),
        }
    }
}
