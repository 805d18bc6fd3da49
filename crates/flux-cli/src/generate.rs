//! `flux generate`: one request through a backend, images written to a folder.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use flux_facade::{
    Backend, BuildOptions, ComputePriority, ExecutionProvider, LocalOptions, LoraSpec, Precision,
    SessionConfig,
};
use flux_types::{Generation, Generator, Progress, ProgressFn, ValidRequest};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::BadInput;

/// Which model or server does the work.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Where to generate: `local` (the bundled tiny model), `local:/path/to/model`,
    /// `http(s)://host:port` (a flux server; API key from FLUX_API_KEY) or `failover:URL,URL,...`.
    #[arg(long, env = "FLUX_BACKEND", value_name = "SPEC")]
    pub backend: Option<String>,

    /// A model: a diffusers FLUX folder (model_index.json + components, as on the Hugging Face
    /// hub), BFL single files (flux1-dev.safetensors + ae.safetensors with the diffusers text
    /// encoders, tokenizers and scheduler beside them), or ONNX graphs in the FLUX.1-dev ONNX
    /// layout. Checkpoints are built into ONNX graphs once and cached. Same as
    /// `--backend local:DIR`. `flux serve` takes it more than once, one model per variant (each
    /// on its own route); FLUX_MODEL names one. Default: the tiny model bundled in the binary.
    #[arg(long, env = "FLUX_MODEL", value_name = "DIR", action = clap::ArgAction::Append)]
    pub model: Vec<PathBuf>,

    /// Where a local model runs: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature
    /// (refused, never silently run on the CPU, when CUDA cannot be used). [default: cpu]
    #[arg(long, env = "FLUX_DEVICE", value_name = "cpu|cuda[:N]")]
    pub device: Option<String>,

    /// ONNX Runtime threads per operator for a local model. [default: one per physical core]
    #[arg(long, env = "FLUX_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Scheduling priority of a local model's inference threads: `normal`, or `idle` (Linux
    /// SCHED_IDLE: inference yields the CPU to every other thread, so a server's HTTP layer
    /// answers at once while the model saturates the cores; for machines dedicated to flux).
    /// [default: normal]
    #[arg(long, env = "FLUX_COMPUTE_PRIORITY", value_name = "normal|idle")]
    pub compute_priority: Option<String>,

    /// A LoRA merged into a checkpoint's transformer when it is built, `FILE[:SCALE]` (scale 1 by
    /// default); repeatable. diffusers/PEFT and kohya files.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<String>,

    /// The precision a checkpoint is built in: `auto` (fp32 on the CPU; on CUDA fp16 where
    /// known to be correct), `fp32`, `fp16`, `bf16`, or `int8`/`int4` (CPU: the transformer's
    /// and T5's linear weights in 8/4 bits; int8 multiplies in integers); one the device
    /// cannot run is refused.
    #[arg(long, value_name = "auto|fp32|fp16|bf16|int8|int4")]
    pub precision: Option<String>,

    /// The memory a local model may use: bytes, or with a suffix K, M, G (powers of 1024), e.g.
    /// `8G`. A request whose estimated peak memory is over it is refused at once
    /// (`exceeds_memory_limit`) instead of risking an out-of-memory kill. [default: the cgroup's
    /// memory limit, else the machine's memory]
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<String>,

    /// Which of the above came from an environment variable rather than the command line (see
    /// [`BackendArgs::note_sources`]).
    #[arg(skip)]
    pub from_environment: EnvironmentSources,
}

/// The backend settings whose value was taken from an environment variable. A flag typed on the
/// command line overrides the environment, and a local-only setting from the environment is a
/// default for local runs, not an error for a remote one.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvironmentSources {
    pub backend: bool,
    pub model: bool,
    pub device: bool,
    pub threads: bool,
    pub compute_priority: bool,
}

impl BackendArgs {
    /// Records which settings `matches` (the subcommand's) took from the environment.
    pub fn note_sources(&mut self, matches: &clap::ArgMatches) {
        let from_environment =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable);
        self.from_environment = EnvironmentSources {
            backend: from_environment("backend"),
            model: from_environment("model"),
            device: from_environment("device"),
            threads: from_environment("threads"),
            compute_priority: from_environment("compute_priority"),
        };
    }

    /// The backend these flags name; conflicting or malformed flags are bad input. Settings from
    /// the environment that a flag overrides, or that do not apply to the backend chosen, are
    /// dropped here, before [`BackendArgs::local_options`] reads them.
    pub fn resolve(&mut self) -> anyhow::Result<Backend> {
        let sources = self.from_environment;
        // `--model` on the command line beats FLUX_BACKEND, and `--backend` beats FLUX_MODEL,
        // unless the two agree (plain `local` and a model folder name one backend). An
        // overridden FLUX_BACKEND is not even parsed.
        let names_plain_local = |spec: &str| {
            matches!(
                spec.parse::<Backend>(),
                Ok(Backend::Local { model_dir: None })
            )
        };
        if sources.backend
            && !sources.model
            && !self.model.is_empty()
            && !self.backend.as_deref().is_some_and(names_plain_local)
        {
            self.backend = None;
        }
        let backend = match &self.backend {
            Some(spec) => spec.parse::<Backend>()?,
            None => Backend::default(),
        };
        if sources.model
            && !sources.backend
            && self.backend.is_some()
            && !matches!(backend, Backend::Local { model_dir: None })
        {
            self.model.clear();
        }
        let backend = match (self.model.as_slice(), backend) {
            ([], backend) => backend,
            ([dir], Backend::Local { model_dir: None }) => Backend::Local {
                model_dir: Some(dir.clone()),
            },
            ([_, _, ..], _) => {
                return Err(BadInput(
                    "--model is given more than once: only `flux serve` serves several models"
                        .to_owned(),
                )
                .into());
            }
            ([dir], other) => {
                let (model, spec) = if sources.model {
                    ("FLUX_MODEL", "FLUX_BACKEND")
                } else {
                    ("--model", "--backend")
                };
                return Err(BadInput(format!(
                    "{model} {} and {spec} {other} name two different backends; give one",
                    dir.display()
                ))
                .into());
            }
        };
        if !backend.is_local() {
            if sources.device {
                self.device = None;
            }
            if sources.threads {
                self.threads = None;
            }
            if sources.compute_priority {
                self.compute_priority = None;
            }
        }
        if let Backend::Local {
            model_dir: Some(dir),
        } = &backend
            && !dir.is_dir()
        {
            return Err(BadInput(format!("model folder {} does not exist", dir.display())).into());
        }
        if !backend.is_local()
            && (self.device.is_some()
                || self.threads.is_some()
                || self.compute_priority.is_some()
                || self.precision.is_some()
                || self.memory_limit.is_some()
                || !self.loras.is_empty())
        {
            return Err(BadInput(format!(
                "--device, --threads, --compute-priority, --precision, --memory-limit and --lora configure a local model; backend {backend} is remote"
            ))
            .into());
        }
        Ok(backend.with_api_key(flux_facade::backend::api_key_from_env()))
    }

    /// The local engine's options from `--device`, `--threads` and `--compute-priority`, with `queue_capacity` jobs
    /// allowed to wait.
    pub fn local_options(&self, queue_capacity: usize) -> anyhow::Result<LocalOptions> {
        let mut session = SessionConfig::default();
        if let Some(device) = &self.device {
            session.execution_provider = device
                .parse::<ExecutionProvider>()
                .map_err(|error| BadInput(format!("--device: {error}")))?;
        }
        if let Some(threads) = self.threads {
            if threads == 0 {
                return Err(BadInput("--threads must be at least 1".to_owned()).into());
            }
            session.intra_op_threads = Some(threads);
        }
        if let Some(priority) = &self.compute_priority {
            session.compute_priority = priority
                .parse::<ComputePriority>()
                .map_err(|error| BadInput(format!("--compute-priority: {error}")))?;
        }
        let mut build = BuildOptions::default();
        if let Some(precision) = &self.precision {
            build.precision = precision
                .parse::<Precision>()
                .map_err(|error| BadInput(format!("--precision: {error}")))?;
        }
        for lora in &self.loras {
            build.loras.push(
                lora.parse::<LoraSpec>()
                    .map_err(|error| BadInput(format!("--lora: {error}")))?,
            );
        }
        let memory_limit = match &self.memory_limit {
            Some(text) => Some(crate::bytes::parse_bytes(text).ok_or_else(|| {
                BadInput(format!(
                    "--memory-limit: {text:?} is not a size in bytes (e.g. 8G, 512M, 1073741824)"
                ))
            })?),
            None => None,
        };
        Ok(LocalOptions {
            queue_capacity,
            session,
            build,
            memory_limit,
        })
    }
}

/// Encoded output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Jpeg,
    Png,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  flux generate \"a lighthouse on a cliff at dusk\"
  flux generate \"a red fox in the snow\" --size 768x512 -n 2 --steps 20 --seed 42 -o out
  flux generate \"a red fox\" --format png --model /models/FLUX.1-dev-onnx

Prints the path of each image written, then `seed: N`; the same request with that seed on the same
model gives the same images. Values are checked by the API's rules, with the API's messages.")]
pub struct GenerateArgs {
    /// What to draw (1 to 1000 characters).
    pub prompt: String,

    /// Image size: a preset (square_hd 1024x1024, square 512x512, portrait_4_3 768x1024,
    /// portrait_16_9 576x1024, landscape_4_3 1024x768, landscape_16_9 1024x576) or WIDTHxHEIGHT
    /// with multiples of 16 in 64..=2048. [default: landscape_4_3]
    #[arg(long, short = 's', value_name = "PRESET|WxH")]
    pub size: Option<String>,

    /// Number of images, 1 to 4. [default: 1]
    #[arg(
        long = "num-images",
        short = 'n',
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub num_images: Option<i64>,

    /// Denoising steps, 1 to 50. [default: 28]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub steps: Option<i64>,

    /// Guidance scale, 1 to 20. [default: 3.5]
    #[arg(long, short = 'g', value_name = "G", allow_negative_numbers = true)]
    pub guidance: Option<f64>,

    /// Seed of the initial noise, 0 to 4294967295. [default: random, printed]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub seed: Option<i64>,

    /// Image format.
    #[arg(long, short = 'f', value_enum, default_value = "jpeg")]
    pub format: FormatArg,

    /// Folder to write the images to (created if missing). Existing files are never overwritten.
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub output: PathBuf,

    /// Skip the safety checker (no image is flagged).
    #[arg(long)]
    pub no_safety_checker: bool,

    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(mut args: GenerateArgs, verbose: bool) -> anyhow::Result<()> {
    crate::init_logging(if verbose { "info" } else { "warn" });
    let request = build_request(&args)?;
    let backend = args.backend.resolve()?;
    let options = args
        .backend
        .local_options(LocalOptions::default().queue_capacity)?;
    fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output folder {}", args.output.display()))?;

    let interactive = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let runtime = crate::runtime()?;
    let (generation, generator) =
        runtime.block_on(generate(backend, options, request.clone(), interactive))?;
    // Released here, outside the runtime, so a local engine is joined (its sessions closed)
    // before the process exits.
    drop(generator);

    let mut stdout = std::io::stdout().lock();
    // Each path is printed as soon as its image is complete, so a later failure (disk full) leaves
    // no unlisted result behind; the error then names the seed, which would otherwise be lost.
    write_images(
        &args.output,
        &generation,
        request.output_format().extension(),
        &mut |path| writeln!(stdout, "{}", path.display()),
    )
    .with_context(|| format!("seed {}: not every image was written", generation.seed))?;
    writeln!(stdout, "seed: {}", generation.seed)?;
    for (index, flagged) in generation.has_nsfw_concepts.iter().enumerate() {
        if *flagged {
            eprintln!("warning: the safety checker flagged image {}", index + 1);
        }
    }
    Ok(())
}

async fn generate(
    backend: Backend,
    options: LocalOptions,
    request: ValidRequest,
    interactive: bool,
) -> anyhow::Result<(Generation, Arc<dyn Generator>)> {
    let loading = interactive.then(|| {
        let spinner = ProgressBar::new_spinner().with_message(format!("starting {backend}"));
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let description = backend.to_string();
    let generator = tokio::task::spawn_blocking(move || backend.start_with(&options))
        .await
        .context("the backend start-up task failed")?
        .with_context(|| format!("cannot start backend {description}"))?;
    if let Some(spinner) = loading {
        spinner.finish_and_clear();
    }
    let bar = interactive.then(|| progress_bar(request.num_inference_steps()));
    let progress: Option<ProgressFn> = bar.clone().map(|bar| {
        Arc::new(move |event: Progress| {
            bar.set_length(u64::from(event.total_steps));
            bar.set_position(u64::from(event.step));
        }) as ProgressFn
    });
    let result = generator.generate(request, progress).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok((result?, generator))
}

fn progress_bar(steps: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(steps));
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} denoising [{bar:30}] step {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Builds the API request body from the flags and runs it through the API's own validation, so a
/// bad value gets the message the HTTP API would give.
fn build_request(args: &GenerateArgs) -> anyhow::Result<ValidRequest> {
    let mut body = Map::new();
    body.insert("prompt".into(), json!(args.prompt));
    if let Some(size) = &args.size {
        body.insert("image_size".into(), size_value(size));
    }
    if let Some(n) = args.num_images {
        body.insert("num_images".into(), json!(n));
    }
    if let Some(steps) = args.steps {
        body.insert("num_inference_steps".into(), json!(steps));
    }
    if let Some(guidance) = args.guidance {
        if !guidance.is_finite() {
            return Err(BadInput(format!(
                "guidance_scale must be a finite number between 1 and 20, got {guidance}"
            ))
            .into());
        }
        body.insert("guidance_scale".into(), json!(guidance));
    }
    if let Some(seed) = args.seed {
        body.insert("seed".into(), json!(seed));
    }
    let format = match args.format {
        FormatArg::Jpeg => "jpeg",
        FormatArg::Png => "png",
    };
    body.insert("output_format".into(), json!(format));
    body.insert(
        "enable_safety_checker".into(),
        json!(!args.no_safety_checker),
    );
    let bytes = serde_json::to_vec(&Value::Object(body))?;
    Ok(flux_types::parse_request(&bytes)?)
}

/// `WxH` becomes `{"width": W, "height": H}`; anything else is sent as a preset name, which the
/// validation accepts or refuses with the list of presets.
fn size_value(size: &str) -> Value {
    let dimensions = size.split_once(['x', 'X']).and_then(|(width, height)| {
        Some((
            width.trim().parse::<i64>().ok()?,
            height.trim().parse::<i64>().ok()?,
        ))
    });
    match dimensions {
        Some((width, height)) => json!({ "width": width, "height": height }),
        None => json!(size),
    }
}

/// Writes each image as `flux-<seed>-<n>.<ext>`, adding `-2`, `-3`, ... when a name is taken, and
/// hands each path to `written` once its file is complete.
fn write_images(
    dir: &Path,
    generation: &Generation,
    extension: &str,
    written: &mut dyn FnMut(&Path) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    for (index, image) in generation.images.iter().enumerate() {
        let stem = format!("flux-{}-{}", generation.seed, index + 1);
        let path = write_new_file(dir, &stem, extension, &image.bytes)?;
        written(&path)?;
    }
    Ok(())
}

/// Writes `bytes` under the first free name `<stem>[-N].<extension>` in `dir`. The bytes go to a
/// hidden temporary file first, flushed, then linked under the final name, so a name that exists
/// is always a whole image (an interrupted run leaves at most a `.flux-*.tmp` file), and an
/// existing file is never overwritten, even in a race with another process.
fn write_new_file(
    dir: &Path,
    stem: &str,
    extension: &str,
    bytes: &[u8],
) -> anyhow::Result<PathBuf> {
    let temp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    let written = fs::File::create(&temp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error).with_context(|| format!("cannot write {}", temp.display()));
    }
    let placed = place_under_free_name(dir, stem, extension, &temp, bytes);
    let _ = fs::remove_file(&temp);
    placed
}

fn place_under_free_name(
    dir: &Path,
    stem: &str,
    extension: &str,
    temp: &Path,
    bytes: &[u8],
) -> anyhow::Result<PathBuf> {
    for attempt in 1..10_000 {
        let name = if attempt == 1 {
            format!("{stem}.{extension}")
        } else {
            format!("{stem}-{attempt}.{extension}")
        };
        let path = dir.join(name);
        // A hard link fails when the name exists: the no-overwrite guarantee of `create_new`.
        let placed = match fs::hard_link(temp, &path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                // A file system without hard links (FAT, some network shares; the error varies
                // from one to the next): write in place, still never over an existing file.
                write_in_place(&path, bytes)
            }
            other => other,
        };
        match placed {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    anyhow::bail!(
        "no free file name for {stem}.{extension} in {}",
        dir.display()
    )
}

fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    if let Err(error) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        // A truncated image (disk full) must not look like a result.
        drop(file);
        let _ = fs::remove_file(path);
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_wire_forms() {
        assert_eq!(size_value("64x48"), json!({"width": 64, "height": 48}));
        assert_eq!(size_value("512X768"), json!({"width": 512, "height": 768}));
        assert_eq!(size_value("square"), json!("square"));
        assert_eq!(size_value("huge"), json!("huge"));
    }

    fn names_in(dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut names = fs::read_dir(dir)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    #[test]
    fn existing_files_are_not_overwritten_and_no_temporary_file_is_left() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = write_new_file(dir.path(), "flux-1-1", "png", b"one")?;
        let second = write_new_file(dir.path(), "flux-1-1", "png", b"two")?;
        assert_eq!(
            first.file_name().and_then(|n| n.to_str()),
            Some("flux-1-1.png")
        );
        assert_eq!(
            second.file_name().and_then(|n| n.to_str()),
            Some("flux-1-1-2.png")
        );
        assert_eq!(fs::read(first)?, b"one");
        assert_eq!(fs::read(second)?, b"two");
        assert_eq!(names_in(dir.path())?, ["flux-1-1-2.png", "flux-1-1.png"]);
        Ok(())
    }

    #[test]
    fn the_in_place_fallback_never_overwrites_either() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("flux-1-1.png");
        write_in_place(&path, b"one")?;
        let again = write_in_place(&path, b"two")
            .err()
            .map(|error| error.kind());
        assert_eq!(again, Some(std::io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&path)?, b"one");
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("no-such-folder");
        assert!(write_new_file(&missing, "flux-1-1", "png", b"one").is_err());
        assert_eq!(names_in(dir.path())?, Vec::<String>::new());
        Ok(())
    }
}
