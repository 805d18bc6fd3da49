//! Server configuration: every knob of `flux serve`, with its documented default.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::RemoteError;
use crate::files::FileDurability;
use crate::webhook_sig::WebhookSecret;
pub use crate::webhooks::WebhookConfig;

/// The contract's body limit: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The shortest API key the server starts with: a key is a password that cannot be rate limited
/// everywhere, so it must be long enough not to be guessed.
pub const MIN_API_KEY_CHARS: usize = 16;

/// The default size quota of the files folder: 10 GiB.
pub const DEFAULT_FILES_QUOTA_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// The largest accepted `queue_depth`: far beyond what one model can work through, and well below
/// what the queue's semaphore can count.
pub const MAX_QUEUE_DEPTH: usize = 65_536;

/// How the HTTP server runs. Build it with [`ServerConfig::default`] and set the fields the
/// command line gives; every field's default is written on it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Accepted API keys (`Authorization: Bearer <key>`). Default: none, which refuses to start
    /// unless `allow_unauthenticated` is set. See [`load_api_keys`].
    pub api_keys: Vec<String>,
    /// Serve requests without an `Authorization` header (a wrong key is still refused). Default
    /// `false`. Logged loudly at start-up.
    pub allow_unauthenticated: bool,
    /// Per-API-key token bucket. Default `Some(60/min, burst 10)`; `None` switches rate limiting
    /// off (and the `X-RateLimit-*` headers with it).
    pub rate_limit: Option<RateLimit>,
    /// Generation requests admitted at once, queued and running together. A request beyond it is
    /// answered 429 `overloaded` at once. Default 16, at most [`MAX_QUEUE_DEPTH`].
    pub queue_depth: usize,
    /// Where generated images are stored. Default `<user data dir>/flux-rs/files` (see
    /// [`default_files_dir`]); a folder deleted while the server runs is recreated.
    pub files_dir: PathBuf,
    /// Where job records, idempotency records and the webhook outbox are kept durably (one redb
    /// file, `flux-rs.redb`): a server killed and restarted on the same folder finishes every job
    /// it accepted. Default `None`: in memory, lost with the process (library use, tests);
    /// `flux serve` always gives one (default [`default_data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// Most bytes the stored images may take; past it the oldest images are deleted first to make
    /// room. Default `Some(10 GiB)`; `None` means no quota (only the retention bounds the folder).
    pub files_quota: Option<u64>,
    /// When a stored image is flushed to disk: right after the response (default) or before it.
    pub file_durability: FileDurability,
    /// Base of the image URLs in responses, e.g. `https://flux.example.com`. Default `None`:
    /// `http://<listen address>` (set it when listening on `0.0.0.0` or behind a proxy).
    pub public_url: Option<String>,
    /// How long images and idempotency records are kept. Default 24 h.
    pub retention: Duration,
    /// Longest wait for one generation, queueing included; past it the request is answered 500
    /// `inference_failed`. Default 10 min.
    pub request_timeout: Duration,
    /// Longest time to receive a request's headers, and again its body, so a client that stalls
    /// or trickles cannot hold a connection for ever. Headers: the connection is closed (an idle
    /// keep-alive connection too, once it has waited this long for its next request). Body of a
    /// generation request: answered 400 `invalid_json`, nothing queued. Default 60 s.
    pub read_timeout: Duration,
    /// Largest accepted request body. Default 64 KiB (the contract's limit).
    pub max_body_bytes: usize,
    /// On shutdown, once every admitted generation has finished, how long open connections get to
    /// finish their answers; the rest (half-sent headers, a client that reads nothing) are then
    /// closed. Default 10 s.
    pub drain_timeout: Duration,
    /// Take the client address from the last `X-Forwarded-For` entry instead of the TCP peer
    /// (set it behind a proxy that appends that header). The address keys the failed-
    /// authentication limit and, without authentication, the rate limit. Default `false`.
    pub trust_forwarded_for: bool,
    /// Log as JSON lines instead of human-readable text (the binary installs the logger).
    /// Default `false`.
    pub json_logs: bool,
    /// Webhook signing key, SSRF guard and retry bounds.
    pub webhooks: WebhookConfig,
    /// Serve the web playground at `/` (its page and assets are public; its API calls carry the
    /// key typed into it). Default `true`; `false` answers `/` with the JSON 404.
    pub playground: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            api_keys: Vec::new(),
            allow_unauthenticated: false,
            rate_limit: Some(RateLimit::default()),
            queue_depth: 16,
            files_dir: default_files_dir(),
            data_dir: None,
            files_quota: Some(DEFAULT_FILES_QUOTA_BYTES),
            file_durability: FileDurability::default(),
            public_url: None,
            retention: Duration::from_secs(24 * 60 * 60),
            request_timeout: Duration::from_secs(10 * 60),
            read_timeout: Duration::from_secs(60),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            drain_timeout: Duration::from_secs(10),
            trust_forwarded_for: false,
            json_logs: false,
            webhooks: WebhookConfig::default(),
            playground: true,
        }
    }
}

impl ServerConfig {
    /// Checks the values that have no valid meaning (zero depth, no keys without
    /// `allow_unauthenticated`, a public URL that is not http(s), ...).
    pub fn validate(&self) -> Result<(), RemoteError> {
        if self.api_keys.is_empty() && !self.allow_unauthenticated {
            return Err(RemoteError::Config(
                "no API keys configured: give --api-key-file or FLUX_API_KEYS, or pass \
                 --allow-unauthenticated to serve without authentication"
                    .to_owned(),
            ));
        }
        for (index, key) in self.api_keys.iter().enumerate() {
            check_key_syntax(key)
                .and_then(|()| check_key_length(key))
                .map_err(|why| RemoteError::Config(format!("API key #{} {why}", index + 1)))?;
        }
        if self.files_quota == Some(0) {
            return Err(RemoteError::Config(
                "files_quota must be at least 1 byte (None switches the quota off)".to_owned(),
            ));
        }
        if let Some(rate_limit) = &self.rate_limit
            && (rate_limit.period.is_zero() || rate_limit.period > MAX_RATE_LIMIT_PERIOD)
        {
            return Err(RemoteError::Config(format!(
                "rate_limit period must be longer than 0 s and at most a day, got {:?}",
                rate_limit.period
            )));
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return Err(RemoteError::Config(format!(
                "queue_depth must be between 1 and {MAX_QUEUE_DEPTH}, got {}",
                self.queue_depth
            )));
        }
        if self.max_body_bytes == 0 {
            return Err(RemoteError::Config(
                "max_body_bytes must be at least 1".to_owned(),
            ));
        }
        if self.retention.is_zero() {
            return Err(RemoteError::Config(
                "retention must be longer than 0 s".to_owned(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(RemoteError::Config(
                "request_timeout must be longer than 0 s".to_owned(),
            ));
        }
        if self.read_timeout.is_zero() {
            return Err(RemoteError::Config(
                "read_timeout must be longer than 0 s".to_owned(),
            ));
        }
        if self.drain_timeout.is_zero() {
            return Err(RemoteError::Config(
                "drain_timeout must be longer than 0 s".to_owned(),
            ));
        }
        if let Some(url) = &self.public_url {
            normalize_public_url(url)?;
        }
        Ok(())
    }

    /// The base URL of image links once the server listens on `bound` (the real port when
    /// `listen` asked for port 0). No trailing slash.
    pub fn public_base_url(&self, bound: SocketAddr) -> Result<String, RemoteError> {
        match &self.public_url {
            Some(url) => normalize_public_url(url),
            None => Ok(format!("http://{bound}")),
        }
    }
}

fn normalize_public_url(url: &str) -> Result<String, RemoteError> {
    let parsed = url::Url::parse(url)
        .map_err(|err| RemoteError::Config(format!("public URL {url:?} is not a URL: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(RemoteError::Config(format!(
            "public URL {url:?} must be an http:// or https:// URL with a host"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(RemoteError::Config(format!(
            "public URL {url:?} must not have a query or fragment"
        )));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// The longest rate-limit period a configuration may give (the text form allows up to an hour).
const MAX_RATE_LIMIT_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// A token bucket: `requests` tokens per `period`, holding at most `burst`.
///
/// Parses from `"<requests>/<unit>"` with unit `s`, `min` or `h` (also `sec`, `second`, `m`,
/// `minute`, `hour`), optionally followed by `",burst=<n>"`; without a burst the bucket holds
/// `requests` tokens. Examples: `"60/min"`, `"2/s,burst=10"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    /// 60 requests per minute per key, 10 at once.
    fn default() -> Self {
        RateLimit {
            requests: NonZeroU32::MIN.saturating_add(59),
            period: Duration::from_secs(60),
            burst: NonZeroU32::MIN.saturating_add(9),
        }
    }
}

impl RateLimit {
    /// Time for one token to come back.
    pub fn replenish_interval(&self) -> Duration {
        self.period / self.requests.get()
    }
}

impl FromStr for RateLimit {
    type Err = RemoteError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            RemoteError::Config(format!(
                "rate limit {text:?} {why}; expected e.g. \"60/min\" or \"2/s,burst=10\""
            ))
        };
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (text.trim(), None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(|| bad("has no '/'"))?;
        let requests: NonZeroU32 = count
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a positive whole number of requests"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad("has an unknown unit (use s, min or h)")),
        };
        let burst = match burst {
            None => requests,
            Some(burst) => burst
                .strip_prefix("burst=")
                .ok_or_else(|| bad("has something other than burst=<n> after the comma"))?
                .trim()
                .parse()
                .map_err(|_| bad("has a burst that is not a positive whole number"))?,
        };
        Ok(RateLimit {
            requests,
            period,
            burst,
        })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            _ => format!("{:?}", self.period),
        };
        write!(f, "{}/{unit},burst={}", self.requests, self.burst)
    }
}

/// Reads API keys from a file (one key per line) and/or the value of `FLUX_API_KEYS` (keys
/// separated by commas or newlines). Blank lines and lines starting with `#` are ignored;
/// surrounding whitespace is trimmed; duplicates are dropped. Errors name the line, never the key.
pub fn load_api_keys(
    file: Option<&Path>,
    env_value: Option<&str>,
) -> Result<Vec<String>, RemoteError> {
    let mut keys = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| RemoteError::ApiKeyFile {
            path: path.to_owned(),
            source,
        })?;
        collect_keys(text.lines(), &format!("{}", path.display()), &mut keys)?;
    }
    if let Some(value) = env_value {
        collect_keys(value.split([',', '\n']), "FLUX_API_KEYS", &mut keys)?;
    }
    Ok(keys)
}

fn collect_keys<'a>(
    entries: impl Iterator<Item = &'a str>,
    origin: &str,
    keys: &mut Vec<String>,
) -> Result<(), RemoteError> {
    for (index, entry) in entries.enumerate() {
        let key = entry.trim();
        if key.is_empty() || key.starts_with('#') {
            continue;
        }
        check_key_syntax(key)
            .map_err(|why| RemoteError::Config(format!("{origin}: entry {} {why}", index + 1)))?;
        if !keys.iter().any(|known| known == key) {
            keys.push(key.to_owned());
        }
    }
    Ok(())
}

/// A key long enough not to be guessed; checked at start-up, so a key file that only lists short
/// keys is still readable (and reported) by [`load_api_keys`].
fn check_key_length(key: &str) -> Result<(), &'static str> {
    if key.chars().count() < MIN_API_KEY_CHARS {
        return Err(
            "is shorter than 16 characters: use a long random key (e.g. `openssl rand -hex 24`)",
        );
    }
    Ok(())
}

/// `<user data dir>/flux-rs/files`: `$XDG_DATA_HOME` or `~/.local/share` on Linux and other Unix
/// systems, `~/Library/Application Support` on macOS, `%LOCALAPPDATA%` on Windows. The system
/// temp dir only when none of those is known: images are answers a client may still fetch, and
/// temp dirs are cleaned behind a server's back.
pub fn default_files_dir() -> PathBuf {
    default_data_dir().join("files")
}

/// `<user data dir>/flux-rs` (as for [`default_files_dir`]): `flux serve`'s default
/// `--data-dir`, which holds the job database and, unless `--files-dir` says otherwise, `files/`.
pub fn default_data_dir() -> PathBuf {
    user_data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("flux-rs")
}

fn user_data_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(windows) {
        return non_empty("LOCALAPPDATA");
    }
    let home = non_empty("HOME");
    if cfg!(target_os = "macos") {
        return home.map(|home| home.join("Library").join("Application Support"));
    }
    non_empty("XDG_DATA_HOME")
        .filter(|dir| dir.is_absolute())
        .or_else(|| home.map(|home| home.join(".local").join("share")))
}

/// A key must fit in a Bearer header: visible ASCII, no spaces, at most 512 characters.
fn check_key_syntax(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    if key.len() > 512 {
        return Err("is longer than 512 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has characters other than visible ASCII");
    }
    Ok(())
}

/// Reads a webhook signing key file (`whsec_<base64>`, as the Standard Webhooks specification
/// writes it).
pub fn load_webhook_secret(path: &std::path::Path) -> Result<WebhookSecret, RemoteError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        RemoteError::Config(format!(
            "cannot read the webhook secret file {}: {source}",
            path.display()
        ))
    })?;
    WebhookSecret::parse(&text).map_err(|_| {
        RemoteError::Config(format!(
            "the webhook secret file {} does not hold `whsec_` followed by base64",
            path.display()
        ))
    })
}
