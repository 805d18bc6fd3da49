//! `flux model build`: a checkpoint (a diffusers FLUX folder or BFL single files) built into a
//! portable folder of ONNX graphs in flux-rs's layout, to inspect, ship, or serve on a machine
//! without the safetensors.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use flux_builder::{BuildOptions, Device, LoraSpec, Precision};

use crate::BadInput;

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Build a checkpoint's ONNX graphs into a new folder (CLIP, T5, transformer, VAE decoder;
    /// tokenizers, scheduler and flux-rs.json beside them).
    Build(BuildArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  flux model build /models/FLUX.1-schnell -o /models/flux-schnell-onnx
  flux model build /models/FLUX.1-dev -o /models/flux-dev-pixel --lora pixel-art.safetensors:0.8
  flux generate \"a red fox\" --model /models/flux-dev-pixel
  flux model build /models/FLUX.1-dev -o /models/flux-dev-int4 --precision int4

The folder appears complete or not at all. Weights already in the graphs' precision are hard links
to the checkpoint's files (no copy); others are converted once into model.onnx.data.")]
struct BuildArgs {
    /// The checkpoint: a diffusers FLUX folder (model_index.json), or a folder with
    /// flux1-dev.safetensors / flux1-schnell.safetensors and ae.safetensors plus text_encoder/,
    /// text_encoder_2/, tokenizer/, tokenizer_2/ and scheduler/ from the diffusers repository.
    source: PathBuf,

    /// The folder to write; must not exist yet, or be empty.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,

    /// `auto` (fp32 for the CPU; fp16 for CUDA where known to be correct), `fp32`, `fp16`,
    /// `bf16`, or `int8`/`int4` (CPU: the transformer's and T5's linear weights in 8/4 bits;
    /// int8 multiplies in integers, 1.5-1.8x fp32's step on a VNNI/AMX CPU, int4 is the
    /// smallest); one the device cannot run is refused.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|fp32|fp16|bf16|int8|int4"
    )]
    precision: String,

    /// The device the graphs are built for: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda")]
    device: String,

    /// A LoRA merged into the transformer, `FILE[:SCALE]`; repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,

    /// T5 tokens per prompt fixed into the graphs. [default: 512 for dev, 256 for schnell]
    #[arg(long, value_name = "N")]
    text_length: Option<usize>,
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    crate::init_logging("info");
    let ModelCommand::Build(args) = args.command;
    let device = match args.device.trim().to_ascii_lowercase().as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        other => {
            return Err(BadInput(format!("--device: {other:?} is not `cpu` or `cuda`")).into());
        }
    };
    let precision = args
        .precision
        .parse::<Precision>()
        .map_err(|error| BadInput(format!("--precision: {error}")))?;
    let loras = args
        .loras
        .iter()
        .map(|lora| lora.parse::<LoraSpec>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| BadInput(format!("--lora: {error}")))?;
    if args.text_length == Some(0) {
        return Err(BadInput("--text-length must be at least 1".to_owned()).into());
    }
    let options = BuildOptions {
        precision,
        device,
        loras,
        text_length: args.text_length,
    };
    let report = flux_builder::build(&args.source, &options, &args.output)
        .map_err(|error| BadInput(error.to_string()))?;
    for (graph, weights) in &report.graphs {
        eprintln!(
            "{graph}: {} tensors linked, {} converted ({:.1} MB)",
            weights.linked_tensors,
            weights.converted_tensors,
            weights.converted_bytes as f64 / 1e6
        );
    }
    println!(
        "built {} ({}, {} text tokens, {} LoRA tensors merged) in {:.1} s",
        report.out.display(),
        report.variant,
        report.text_length,
        report.lora_layers,
        report.seconds
    );
    Ok(())
}
