//! `flux serve`: the HTTP API over local models (the bundled one by default; one per variant with
//! `--model` repeated) or a remote backend.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::BoolishValueParser;
use flux_facade::{Backend, Generator, LocalOptions, StartingGenerator};
use flux_remote::{FileDurability, RateLimit, ServedModels, Server, ServerConfig, ShutdownSignals};

use crate::BadInput;
use crate::generate::BackendArgs;
use crate::serve_defaults;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  flux serve --allow-unauthenticated
  flux serve --api-key-file keys.txt --listen 0.0.0.0:8080 --public-url https://flux.example.com
  FLUX_API_KEYS=$(openssl rand -hex 24) flux serve --model /models/FLUX.1-dev-onnx --queue-depth 4
  flux serve --model /models/FLUX.1-dev --model /models/FLUX.1-schnell --allow-unauthenticated
  flux serve --backend https://upstream.example.com --allow-unauthenticated

  curl -s http://127.0.0.1:8080/api/v1/flux/dev -H 'Content-Type: application/json' \\
       -H \"Authorization: Bearer $FLUX_API_KEY\" -d '{\"prompt\": \"a red fox in the snow\", \"seed\": 42}'

Each --model serves on the route of its variant (/api/v1/flux/dev, /api/v1/flux/schnell and their
queue twins); two models of one variant are refused. Every flag also reads the environment
variable shown. Without API keys the server refuses to start
unless --allow-unauthenticated is given; keys must be at least 16 characters. SIGTERM or Ctrl-C
drains: running and queued generations finish and are answered, open connections get
--drain-timeout to finish, then the server exits.")]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(
        long,
        env = "FLUX_LISTEN",
        value_name = "ADDR",
        default_value_t = serve_defaults::listen()
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub backend: BackendArgs,

    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,

    /// File with one API key per line (`#` comments allowed). FLUX_API_KEYS (separated by commas
    /// or newlines) adds more.
    #[arg(long, env = "FLUX_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Accept requests without an API key (a wrong key is still refused). Logged loudly.
    #[arg(long, env = "FLUX_ALLOW_UNAUTHENTICATED", value_parser = BoolishValueParser::new())]
    pub allow_unauthenticated: bool,

    /// Per-key request rate: `<n>/<s|min|h>[,burst=<n>]`, or `off`.
    #[arg(
        long,
        env = "FLUX_RATE_LIMIT",
        value_name = "RATE",
        default_value_t = serve_defaults::rate_limit()
    )]
    pub rate_limit: String,

    /// Generations admitted at once (running and queued); beyond it requests get 429 overloaded.
    #[arg(long, env = "FLUX_QUEUE_DEPTH", value_name = "N", default_value_t = serve_defaults::queue_depth())]
    pub queue_depth: usize,

    /// Folder for the job database (`flux-rs.redb`: job records, idempotency records, pending
    /// webhooks): a server killed and restarted on the same folder finishes every job it accepted.
    /// One server per folder. [default: <user data dir>/flux-rs, e.g. ~/.local/share/flux-rs]
    #[arg(long, env = "FLUX_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Folder for generated images (recreated if deleted). [default: <data dir>/files, e.g.
    /// ~/.local/share/flux-rs/files]
    #[arg(long, env = "FLUX_FILES_DIR", value_name = "DIR")]
    pub files_dir: Option<PathBuf>,

    /// Most space the stored images may take (e.g. 500MiB, 10GiB, 2G), or `off`; past it the
    /// oldest images are deleted first.
    #[arg(
        long,
        env = "FLUX_FILES_QUOTA",
        value_name = "SIZE",
        default_value_t = serve_defaults::files_quota()
    )]
    pub files_quota: String,

    /// Flush each image to disk before answering, so every URL handed out survives a power cut
    /// (one fsync per image on the response path). Default: flush right after answering.
    #[arg(long, env = "FLUX_DURABLE_IMAGES", value_parser = BoolishValueParser::new())]
    pub durable_images: bool,

    /// Base of image URLs in responses (e.g. https://flux.example.com). [default: http://<listen>]
    #[arg(long, env = "FLUX_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// How long images and idempotency records are kept: e.g. 90s, 30m, 24h, 7d.
    #[arg(
        long,
        env = "FLUX_RETENTION",
        value_name = "DURATION",
        default_value_t = serve_defaults::retention()
    )]
    pub retention: String,

    /// Longest wait for one generation, queueing included (then 500): e.g. 10m.
    #[arg(
        long,
        env = "FLUX_REQUEST_TIMEOUT",
        value_name = "DURATION",
        default_value_t = serve_defaults::request_timeout()
    )]
    pub request_timeout: String,

    /// Longest time to receive a request's headers, and again its body (also how long an idle
    /// keep-alive connection stays open): e.g. 60s.
    #[arg(
        long,
        env = "FLUX_READ_TIMEOUT",
        value_name = "DURATION",
        default_value_t = serve_defaults::read_timeout()
    )]
    pub read_timeout: String,

    /// On shutdown, once admitted generations have finished, how long open connections get to
    /// finish their answers before they are closed: e.g. 10s.
    #[arg(
        long,
        env = "FLUX_DRAIN_TIMEOUT",
        value_name = "DURATION",
        default_value_t = serve_defaults::drain_timeout()
    )]
    pub drain_timeout: String,

    /// Take the client address from the last X-Forwarded-For entry (behind a proxy that sets it).
    /// The address keys the failed-authentication limit and, without API keys, the rate limit.
    #[arg(long, env = "FLUX_TRUST_FORWARDED_FOR", value_parser = BoolishValueParser::new())]
    pub trust_forwarded_for: bool,

    /// File holding the webhook signing key (`whsec_<base64>`, Standard Webhooks). Without it,
    /// submits with `?fal_webhook=` are refused.
    #[arg(long, env = "FLUX_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<std::path::PathBuf>,

    /// Let webhooks reach loopback, private, link-local and metadata addresses (tests, private
    /// deployments). Default: refused with 400.
    #[arg(long, env = "FLUX_WEBHOOK_ALLOW_PRIVATE", value_parser = BoolishValueParser::new())]
    pub webhook_allow_private: bool,

    /// The delay before a webhook's first retry; each next one doubles it (jittered), up to 15
    /// minutes, for two hours in all: e.g. 5s.
    #[arg(
        long,
        env = "FLUX_WEBHOOK_FIRST_RETRY",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub webhook_first_retry: String,

    /// Log JSON lines instead of text (on stderr, like the text logs; RUST_LOG sets the filter).
    #[arg(long, env = "FLUX_JSON_LOGS", value_parser = BoolishValueParser::new())]
    pub json_logs: bool,

    /// Do not serve the web playground at `/` (it is public, but its API calls need a key as any
    /// client's do); `/` then answers 404.
    #[arg(long, env = "FLUX_NO_PLAYGROUND", value_parser = BoolishValueParser::new())]
    pub no_playground: bool,
}

pub fn run(mut args: ServeArgs, verbose: bool) -> anyhow::Result<()> {
    let config = server_config(&args)?;
    let level = if verbose { "debug" } else { "info" };
    if args.json_logs {
        crate::logging::init_logging(true, level)?;
    } else {
        crate::init_logging(level);
    }
    config
        .validate()
        .map_err(|error| BadInput(error.to_string()))?;
    if let Some(queue) = args.fleet.queue.clone() {
        let has_model = !args.backend.model.is_empty() || args.backend.backend.is_some();
        return crate::api_node::run(config, &args.fleet, &queue, has_model);
    }
    let backends = resolve_backends(&mut args.backend)?;
    // Each engine's own queue must hold everything the server admits, so that an admitted
    // request is never refused by the layer below.
    let options = args.backend.local_options(config.queue_depth)?;
    let runtime = crate::runtime()?;
    // Listen first, then load: a taken port is reported at once, not after a model load of
    // minutes, and while the model loads `/health` answers and requests get 503 `not_ready` (an
    // orchestrator's liveness probe does not kill a server that is still loading).
    let starting: Vec<_> = backends
        .into_iter()
        .map(|backend| (StartingGenerator::new(backend.to_string()), backend))
        .collect();
    let stand_ins = starting
        .iter()
        .map(|(stand_in, _)| stand_in.clone())
        .collect();
    let result = runtime.block_on(serve_while_starting(config, starting, options));
    // The backends are released here, on this thread, outside the runtime: a local engine is
    // joined (its sessions closed) before the process exits.
    drop::<Vec<Arc<StartingGenerator>>>(stand_ins);
    // A signal during the model load ends the server; the load itself is not waited for.
    runtime.shutdown_background();
    result
}

/// The backends the flags name: one per `--model` folder, or the one `--backend` names.
fn resolve_backends(args: &mut BackendArgs) -> anyhow::Result<Vec<Backend>> {
    if args.model.len() <= 1 {
        return Ok(vec![args.resolve()?]);
    }
    let folders = std::mem::take(&mut args.model);
    let mut backends = Vec::with_capacity(folders.len());
    for folder in &folders {
        args.model = vec![folder.clone()];
        backends.push(args.resolve()?);
    }
    args.model = folders;
    Ok(backends)
}

/// Starts every backend (at once, each on a blocking thread) and checks that no two serve the
/// same variant; then hands each to its stand-in, so that the server routes nothing before all
/// are loaded and checked.
async fn start_all(
    starting: Vec<(Arc<StartingGenerator>, Backend)>,
    options: LocalOptions,
) -> anyhow::Result<()> {
    let mut loads = Vec::with_capacity(starting.len());
    for (stand_in, backend) in starting {
        let options = options.clone();
        let description = backend.to_string();
        let load = tokio::task::spawn_blocking(move || backend.start_with(&options));
        loads.push((stand_in, description, load));
    }
    let mut started: Vec<(Arc<StartingGenerator>, String, Arc<dyn Generator>)> = Vec::new();
    for (stand_in, description, load) in loads {
        let generator = load
            .await
            .context("the backend start-up task failed")?
            .with_context(|| format!("cannot start backend {description}"))?;
        started.push((stand_in, description, generator));
    }
    for (index, (_, description, generator)) in started.iter().enumerate() {
        let variant = generator.model().map(|model| model.variant);
        let earlier = started[..index]
            .iter()
            .find(|(_, _, other)| other.model().map(|model| model.variant) == variant);
        if let (Some(variant), Some((_, first, _))) = (variant, earlier) {
            return Err(BadInput(format!(
                "{first} and {description} are both FLUX.1-{variant} models; a server serves one \
                 model per variant (on /api/v1/flux/{variant}): give one of each"
            ))
            .into());
        }
    }
    for (stand_in, _, generator) in started {
        stand_in.started(generator);
    }
    Ok(())
}

async fn serve_while_starting(
    config: ServerConfig,
    starting: Vec<(Arc<StartingGenerator>, Backend)>,
    options: LocalOptions,
) -> anyhow::Result<()> {
    // Both signals are listened for from the start, so that a second one during the drain is
    // never missed (one sent before a listener exists would be).
    let mut signals = ShutdownSignals::new().context("cannot listen for SIGINT and SIGTERM")?;
    let models = ServedModels::by_variant(
        starting
            .iter()
            .map(|(stand_in, _)| Arc::clone(stand_in) as Arc<dyn Generator>)
            .collect(),
    );
    let server = Server::bind_models(config, models).await?;
    let address = server.local_addr()?;
    // Scripts and tests read the bound address (port 0) from this line, then wait for the
    // "ready" line before they send work.
    print_line(&format!("flux server listening on http://{address}"))?;

    let start_failed = Arc::new(AtomicBool::new(false));
    let start_failure = Arc::new(tokio::sync::Notify::new());
    let loading = {
        let (start_failed, start_failure) = (start_failed.clone(), start_failure.clone());
        tokio::spawn(async move {
            match start_all(starting, options).await {
                Ok(()) => {
                    if let Err(error) = print_line("flux server ready") {
                        // The server serves all the same; only a reader of stdout misses it.
                        tracing::warn!(error = %format!("{error:#}"), "cannot print the ready line");
                    }
                    Ok(())
                }
                Err(error) => {
                    start_failed.store(true, Ordering::SeqCst);
                    start_failure.notify_one();
                    Err(error)
                }
            }
        })
    };
    let shutdown = async move {
        tokio::select! {
            () = signals.next() => {}
            () = start_failure.notified() => {}
        }
        // The drain waits for admitted generations (up to --request-timeout): a second signal is
        // the operator saying not to.
        tokio::spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: exiting without finishing the drain");
            std::process::exit(SECOND_SIGNAL_EXIT_CODE);
        });
    };
    server.run(shutdown).await?;
    if start_failed.load(Ordering::SeqCst) {
        // The failed start is why the server stopped: it is the error to report.
        loading
            .await
            .context("the backend start-up task failed")??;
    }
    Ok(())
}

/// Exit status when a second SIGINT/SIGTERM cuts a drain short (128 + SIGINT, as a shell reports
/// an interrupted program).
const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

/// One line on stdout, flushed at once (scripts wait for it).
pub(crate) fn print_line(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

pub(crate) fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let keys_env = std::env::var("FLUX_API_KEYS").ok();
    let api_keys = flux_remote::load_api_keys(args.api_key_file.as_deref(), keys_env.as_deref())
        .map_err(|error| BadInput(error.to_string()))?;
    let rate_limit = match args.rate_limit.trim() {
        "off" | "none" => None,
        text => Some(
            text.parse::<RateLimit>()
                .map_err(|error| BadInput(error.to_string()))?,
        ),
    };
    let mut config = ServerConfig {
        listen: args.listen,
        api_keys,
        allow_unauthenticated: args.allow_unauthenticated,
        rate_limit,
        queue_depth: args.queue_depth,
        public_url: args.public_url.clone(),
        retention: parse_duration("--retention", &args.retention)?,
        request_timeout: parse_duration("--request-timeout", &args.request_timeout)?,
        read_timeout: parse_duration("--read-timeout", &args.read_timeout)?,
        drain_timeout: parse_duration("--drain-timeout", &args.drain_timeout)?,
        trust_forwarded_for: args.trust_forwarded_for,
        files_quota: parse_byte_size("--files-quota", &args.files_quota)?,
        json_logs: args.json_logs,
        playground: !args.no_playground,
        file_durability: if args.durable_images {
            FileDurability::BeforeResponse
        } else {
            FileDurability::AfterResponse
        },
        ..ServerConfig::default()
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(flux_remote::default_data_dir);
    config.files_dir = match &args.files_dir {
        Some(dir) => dir.clone(),
        None => data_dir.join("files"),
    };
    config.data_dir = Some(data_dir);
    config.webhooks.allow_private = args.webhook_allow_private;
    config.webhooks.first_retry =
        parse_duration("--webhook-first-retry", &args.webhook_first_retry)?;
    if let Some(path) = &args.webhook_secret_file {
        config.webhooks.secret = Some(
            flux_remote::load_webhook_secret(path).map_err(|error| BadInput(error.to_string()))?,
        );
    }
    Ok(config)
}

/// `off`, or a size: a whole number with an optional unit (`K`/`KB`/`KiB`, `M`..., `G`..., `T`...;
/// all powers of 1024), e.g. `500MiB`, `10GiB`, `2G`, or plain bytes.
fn parse_byte_size(flag: &str, text: &str) -> anyhow::Result<Option<u64>> {
    let text = text.trim();
    if matches!(text, "off" | "none") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        BadInput(format!(
            "{flag} {text:?} is not a size; use e.g. 500MiB, 10GiB or off"
        ))
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let power = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return Err(bad().into()),
    };
    let bytes = number.checked_mul(1024u64.pow(power)).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad().into());
    }
    Ok(Some(bytes))
}

/// `90s`, `30m`, `24h`, `7d`, or a plain number of seconds.
pub(crate) fn parse_duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        BadInput(format!(
            "{flag} {text:?} is not a duration; use e.g. 90s, 30m, 24h or 7d"
        ))
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad().into()),
    };
    let seconds = number.checked_mul(seconds_per_unit).ok_or_else(bad)?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_or_off() -> anyhow::Result<()> {
        assert_eq!(parse_byte_size("--files-quota", "off")?, None);
        assert_eq!(parse_byte_size("--files-quota", "4096")?, Some(4096));
        assert_eq!(parse_byte_size("--files-quota", "500MiB")?, Some(500 << 20));
        assert_eq!(parse_byte_size("--files-quota", "10GiB")?, Some(10 << 30));
        assert_eq!(parse_byte_size("--files-quota", "2G")?, Some(2 << 30));
        for bad in ["", "0", "5 parsecs", "-1G", "1.5G"] {
            assert!(parse_byte_size("--files-quota", bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn durations_parse_with_units() -> anyhow::Result<()> {
        assert_eq!(
            parse_duration("--retention", "90")?,
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("--retention", "30m")?,
            Duration::from_secs(1800)
        );
        assert_eq!(
            parse_duration("--retention", "24h")?,
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_duration("--retention", "7d")?,
            Duration::from_secs(604_800)
        );
        for bad in ["", "h", "5 weeks", "-5s", "1.5h"] {
            let error = parse_duration("--retention", bad)
                .err()
                .map(|e| e.to_string());
            assert!(
                error.is_some_and(|e| e.contains("not a duration")),
                "{bad:?}"
            );
        }
        Ok(())
    }
}
