//! `cargo xtask bench`: measured speed, overhead and memory of flux-rs, side by side with a plain
//! Python ONNX Runtime pipeline and diffusers' `FluxPipeline` on the same graphs and weights.
//!
//! Writes a JSON result (host, CPU, git revision, date, runtime versions, every measurement) and
//! renders `docs/benchmarks.md` with its tables and a time-versus-tokens plot from it.
//! `cargo xtask bench --help` lists the flags.
//!
//! Its own crate, so that xtask (schema, setup, small checks) links neither ONNX Runtime's bindings
//! nor the plotting library: `cargo xtask bench ARGS` runs `cargo run --release -p flux-bench --
//! ARGS`, and this binary is the benchmark.

mod candle;
mod fleet;
mod host;
mod memory;
mod model_bench;
mod options;
mod peak_memory;
mod pipeline;
mod python;
mod quantized;
mod queue;
mod report;
mod results;
mod server;
mod soak;
mod stats;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flux_types::ImageSizePreset;

use self::options::{ModelChoice, Options, USAGE};
use self::python::PythonEnv;
use self::results::{BenchResults, GpuSection, SCHEMA_VERSION, Settings};
use self::worker::WorkerSpec;

/// What one model is measured at.
struct ModelPlan {
    choice: ModelChoice,
    dir: PathBuf,
    sizes: Vec<[u32; 2]>,
    steps: Vec<u32>,
}

const PROMPT: &str = "A photo of a cat sitting on a wooden table";
const SEED: u64 = 42;
const GUIDANCE: f64 = 3.5;
const OUTPUT_FORMAT: &str = "jpeg";

fn preset(preset: ImageSizePreset) -> [u32; 2] {
    let (width, height) = preset.dimensions();
    [width, height]
}

fn plan(choice: ModelChoice, quick: bool, root: &Path) -> ModelPlan {
    let (dir, sizes, steps) = match (choice, quick) {
        (ModelChoice::Tiny, true) => (
            tiny_dir(root),
            vec![
                preset(ImageSizePreset::Square),
                preset(ImageSizePreset::Landscape169),
            ],
            vec![1, 4],
        ),
        (ModelChoice::Tiny, false) => (
            tiny_dir(root),
            ImageSizePreset::ALL.into_iter().map(preset).collect(),
            vec![1, 4, 8],
        ),
        // The medium model costs about 1.3 s per step at 512² on two cores and 4 s at 1024×576
        // (per implementation, 31 steps per size with warm-up and repeats); 1024² (~8 s per step)
        // would add a quarter of an hour, so the full run stops at the 2,304-token preset.
        (ModelChoice::Medium, true) => (
            medium_dir(root),
            vec![[256, 256], preset(ImageSizePreset::Square)],
            vec![2],
        ),
        (ModelChoice::Medium, false) => (
            medium_dir(root),
            vec![
                [256, 256],
                preset(ImageSizePreset::Square),
                preset(ImageSizePreset::Landscape169),
            ],
            vec![2, 8],
        ),
    };
    ModelPlan {
        choice,
        dir,
        sizes,
        steps,
    }
}

/// Peak RSS per request size, on the model's diffusers folder loaded as `flux serve --model DIR`
/// loads it (through the model builder's graphs).
fn bench_peak_memory(
    choice: ModelChoice,
    options: &Options,
    root: &Path,
    results: &mut BenchResults,
) -> Result<()> {
    let Some(dir) = diffusers_folder(choice, root, "peak memory", &mut results.notes) else {
        return Ok(());
    };
    let requests: &[(u32, u32, u32)] = if options.quick {
        &peak_memory::QUICK_REQUESTS
    } else {
        &peak_memory::REQUESTS
    };
    let entry = peak_memory::run_all(choice.name(), &dir, requests, options.threads)?;
    results.peak_memory.push(entry);
    Ok(())
}

/// int8 and int4 against fp32 on a model's diffusers folder (built by flux-builder, as
/// `--precision` builds it): 10 prompt × seed cases at 512², 8 steps (`--quick`: 3 at 256², 4).
fn bench_quantized(
    choice: ModelChoice,
    options: &Options,
    root: &Path,
    results: &mut BenchResults,
) -> Result<()> {
    let Some(source) = diffusers_folder(choice, root, "8- and 4-bit weights", &mut results.notes)
    else {
        return Ok(());
    };
    let (size, steps, cases) = if options.quick {
        ([256, 256], 4, 3)
    } else {
        ([512, 512], 8, 10)
    };
    let entry = quantized::run_all(choice.name(), &source, size, steps, cases, options.threads)?;
    results.quantized.push(entry);
    Ok(())
}

/// The model's diffusers folder when it has one; otherwise a note that `what` was not measured.
pub(crate) fn diffusers_folder(
    choice: ModelChoice,
    root: &Path,
    what: &str,
    notes: &mut Vec<String>,
) -> Option<PathBuf> {
    let dir = diffusers_source(choice, root);
    if dir.join("model_index.json").is_file() {
        return Some(dir);
    }
    notes.push(format!(
        "{what} of the {} model not measured: no diffusers folder at {} \
         (`python tools/tiny-flux/generate.py --medium` writes it)",
        choice.name(),
        dir.display()
    ));
    None
}

/// The diffusers folder of a model: the bundled one for tiny, `generate.py --medium`'s for medium.
pub(crate) fn diffusers_source(choice: ModelChoice, root: &Path) -> PathBuf {
    match choice {
        ModelChoice::Tiny => root.join("fixtures").join("tiny-flux-dev-diffusers"),
        ModelChoice::Medium => root
            .join(".cache")
            .join("models")
            .join("medium-flux-dev-diffusers"),
    }
}

fn tiny_dir(root: &Path) -> PathBuf {
    root.join("fixtures").join("tiny-flux-dev")
}

fn medium_dir(root: &Path) -> PathBuf {
    root.join(".cache").join("models").join("medium-flux-dev")
}

fn main() -> ExitCode {
    // Printed here rather than returned from `main`, so a failure shows one readable line and not
    // a backtrace when RUST_BACKTRACE is set.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (two levels above this crate's directory).
fn project_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// Entry point of `cargo xtask bench ...` (the arguments after `bench`).
fn run(args: &[String]) -> Result<()> {
    let root = project_root();
    match args.first().map(String::as_str) {
        Some("worker") => return worker::run(&args[1..]),
        Some("report") => return rerender(&args[1..], &root),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            return Ok(());
        }
        _ => {}
    }
    let options = Options::parse(args, &root)?;
    if cfg!(debug_assertions) {
        // A debug build (`cargo run -p flux-bench`) is unoptimised, and flux-core's own code
        // (sampler, pixels, encoding) would then be measured ten times slower than users run it:
        // measure a release build.
        return rerun_optimised(args, &root);
    }
    if options.cuda {
        bail!(
            "--cuda: the GPU section (real-shape FLUX.1-dev transformer step under the CUDA provider with IoBinding) \
             is not implemented in this xtask yet, and it needs a CUDA device and the `cuda` build of flux-core; \
             run without --cuda (the results record that the GPU section was not measured)"
        );
    }
    let started = Instant::now();
    let mut results = BenchResults {
        schema_version: SCHEMA_VERSION,
        host: host::collect(&root),
        settings: Settings {
            quick: options.quick,
            threads: options.threads,
            repeats: options.repeats,
            peers: options.peers,
            prompt: PROMPT.to_owned(),
            seed: SEED,
            guidance: GUIDANCE,
            output_format: OUTPUT_FORMAT.to_owned(),
        },
        models: Vec::new(),
        pipeline: Vec::new(),
        server: None,
        queue: None,
        soak: None,
        fleet: None,
        peak_memory: Vec::new(),
        step_profiles: Vec::new(),
        quantized: Vec::new(),
        candle: Vec::new(),
        gpu: GpuSection {
            measured: false,
            note: gpu_note(),
        },
        notes: Vec::new(),
        duration_seconds: 0.0,
    };
    eprintln!(
        "bench: {} run, models {}, {} threads, {} repeats, peers {}",
        if options.quick { "quick" } else { "full" },
        options
            .models
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join("+"),
        options.threads,
        options.repeats,
        if options.peers { "on" } else { "off" }
    );

    let medium_missing = options.models.contains(&ModelChoice::Medium)
        && !medium_dir(&root).join("transformer.opt").is_dir();
    let python = if options.peers || medium_missing {
        match PythonEnv::resolve(&root, options.python.clone()) {
            Ok(env) => {
                if let Ok(versions) = env.versions() {
                    eprintln!("bench: peers' Python: {versions}");
                }
                Some(env)
            }
            Err(error) if !options.peers => {
                results.notes.push(format!(
                    "no Python environment, so the medium model could not be built: {error:#}"
                ));
                None
            }
            Err(error) => {
                return Err(
                    error.context("the Python peers need an interpreter (or pass --no-peers)")
                );
            }
        }
    } else {
        None
    };

    let result_path = options.result_path();
    for &choice in &options.models {
        let plan = plan(choice, options.quick, &root);
        if choice == ModelChoice::Medium && !plan.dir.join("transformer.opt").is_dir() {
            let Some(python) = &python else {
                results.notes.push(format!(
                    "medium model skipped: {} does not exist and no Python to build it",
                    plan.dir.display()
                ));
                continue;
            };
            build_medium(python, &root, &plan.dir)?;
        }
        if options.pipeline {
            model_bench::bench_model(&plan, &options, python.as_ref(), &root, &mut results)?;
        }
        if choice == ModelChoice::Tiny {
            if options.server {
                results.server = Some(run_server(&plan, &options)?);
            }
            if options.queue {
                results.queue = Some(run_queue(&plan, &options)?);
            }
            if options.soak {
                results.soak = Some(run_soak(&plan, &options)?);
            }
            if options.fleet {
                run_fleet(&plan, &options, &mut results);
            }
        }
        if options.peak_memory {
            bench_peak_memory(choice, &options, &root, &mut results)?;
        }
        if options.quantized {
            bench_quantized(choice, &options, &root, &mut results)?;
        }
        results.duration_seconds = started.elapsed().as_secs_f64();
        results.write(&result_path)?;
    }
    if !options.peers {
        results.notes.push(
            "Python peers not run (--no-peers or --quick): no ratios in this result.".to_owned(),
        );
    }
    results.duration_seconds = started.elapsed().as_secs_f64();
    results.write(&result_path)?;
    eprintln!("bench: wrote {}", result_path.display());
    report::render(&results, &result_path, &options.docs)?;
    eprintln!(
        "bench: wrote {} ({:.0} s in all)",
        options.docs.display(),
        results.duration_seconds
    );
    Ok(())
}

/// Why the GPU section has no numbers in this run (it never has invented ones).
fn gpu_note() -> String {
    let device = ["/proc/driver/nvidia/version", "/dev/nvidia0"]
        .iter()
        .any(|p| Path::new(p).exists());
    let why = if device {
        "this machine has an NVIDIA device, but the GPU measurement (`--cuda`) is not implemented in this xtask yet"
    } else {
        "this machine has no CUDA device (no /proc/driver/nvidia, no /dev/nvidia0)"
    };
    format!(
        "Not measured: {why}. The GPU part of the benchmark (the FLUX.1-dev transformer step at its real shape, \
         random weights, fp16/bf16, 1024², batch 1, under the CUDA provider with IoBinding, versus diffusers on the \
         same GPU; TFLOP/s against 800; end to end for 28 steps) has no numbers until it runs on a machine with one."
    )
}

/// Builds this crate with the release profile and runs the same benchmark command with it.
fn rerun_optimised(args: &[String], root: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: building an optimised flux-bench (cargo build --release -p flux-bench) to measure release code"
    );
    let status = std::process::Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "flux-bench",
            "--bin",
            "flux-bench",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .status()
        .context("running cargo build --release -p flux-bench")?;
    if !status.success() {
        bail!("cargo build --release -p flux-bench failed ({status})");
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let release = target_dir
        .join("release")
        .join(format!("flux-bench{}", std::env::consts::EXE_SUFFIX));
    let status = std::process::Command::new(&release)
        .args(args)
        .status()
        .with_context(|| format!("running {}", release.display()))?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(())
}

fn rerender(args: &[String], root: &Path) -> Result<()> {
    let mut input = root.join("bench-results").join("latest.json");
    let mut docs = root.join("docs").join("benchmarks.md");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--input" => input = PathBuf::from(iter.next().context("--input needs a file")?),
            "--docs" => docs = PathBuf::from(iter.next().context("--docs needs a file")?),
            other => bail!("unknown option `{other}` for `cargo xtask bench report`"),
        }
    }
    let results = BenchResults::read(&input)?;
    report::render(&results, &input, &docs)?;
    eprintln!("bench: wrote {}", docs.display());
    Ok(())
}

fn build_medium(python: &PythonEnv, root: &Path, dir: &Path) -> Result<()> {
    eprintln!(
        "bench: building the medium model into {} (generate.py --medium, a few minutes)",
        dir.display()
    );
    python.run_script_at(
        &root.join("tools").join("tiny-flux").join("generate.py"),
        &[
            "--medium".to_owned(),
            "--medium-out".to_owned(),
            path_arg(dir),
        ],
    )?;
    Ok(())
}

fn diffusers_dir(root: &Path, choice: ModelChoice) -> PathBuf {
    root.join(".cache")
        .join("bench")
        .join("diffusers")
        .join(format!("{}-flux-dev", choice.name()))
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn run_server(plan: &ModelPlan, options: &Options) -> Result<results::ServerResults> {
    eprintln!("bench: HTTP server versus direct calls (tiny model)");
    let spec = server::ServerSpec::new(plan.dir.clone(), options.threads, options.quick);
    let mut results: results::ServerResults = worker::spawn(&WorkerSpec::Server(spec.clone()))?;
    // The floods again with the model's threads at idle priority (`--compute-priority idle`),
    // where the operating system lets the HTTP threads preempt inference at once.
    if cfg!(target_os = "linux") {
        let idle = server::ServerSpec {
            compute_priority: flux_facade::ComputePriority::Idle.to_string(),
            ..spec
        };
        let overloads: Vec<results::OverloadResults> = worker::spawn(&WorkerSpec::Overload(idle))?;
        results.overload.extend(overloads);
    }
    Ok(results)
}

fn run_queue(plan: &ModelPlan, options: &Options) -> Result<results::QueueResults> {
    eprintln!("bench: queue API, submit → 202 and step → SSE event (tiny model)");
    let spec = server::ServerSpec::new(plan.dir.clone(), options.threads, options.quick);
    worker::spawn(&WorkerSpec::Queue(spec))
}

fn run_soak(plan: &ModelPlan, options: &Options) -> Result<results::SoakResults> {
    eprintln!(
        "bench: memory over {} sequential requests (tiny model)",
        options.soak_requests
    );
    let spec = soak::SoakSpec::new(
        plan.dir.clone(),
        options.threads,
        options.soak_requests,
        options.quick,
    );
    worker::spawn(&WorkerSpec::Soak(spec))
}

/// The NATS fleet against one machine; a fleet that cannot run here (no nats-server) is a note.
fn run_fleet(plan: &ModelPlan, options: &Options, results: &mut BenchResults) {
    eprintln!(
        "bench: NATS fleet versus one machine: jobs/s with 1 and 2 workers, added latency (tiny model)"
    );
    let spec = fleet::FleetSpec::new(plan.dir.clone(), options.quick);
    match worker::spawn(&WorkerSpec::Fleet(spec)) {
        Ok(fleet) => results.fleet = Some(fleet),
        Err(error) => results
            .notes
            .push(format!("NATS fleet section not measured: {error:#}")),
    }
}
