//! `flux_builder::build` by hand (measurements): `cargo run --release -p flux-builder --example
//! build_model -- SRC_DIR OUT_DIR [TEXT_LENGTH]` (`PRECISION=fp16 DEVICE=cuda` for 16-bit graphs).

use std::path::PathBuf;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, out) = match args.as_slice() {
        [src, out, ..] => (PathBuf::from(src), PathBuf::from(out)),
        _ => bail!("usage: build_model SRC_DIR OUT_DIR [TEXT_LENGTH]"),
    };
    let opts = flux_builder::BuildOptions {
        text_length: args.get(2).map(|t| t.parse()).transpose()?,
        precision: std::env::var("PRECISION").map_or(Ok(Default::default()), |p| p.parse())?,
        device: match std::env::var("DEVICE").as_deref() {
            Ok("cuda") => flux_builder::Device::Cuda,
            _ => flux_builder::Device::Cpu,
        },
        ..Default::default()
    };
    let report = flux_builder::build(&src, &opts, &out)?;
    println!(
        "built {} ({}, text length {}) in {:.1} s",
        report.out.display(),
        report.variant,
        report.text_length,
        report.seconds
    );
    for (graph, weights) in &report.graphs {
        println!(
            "  {graph}: {} tensors linked, {} converted ({:.1} MB)",
            weights.linked_tensors,
            weights.converted_tensors,
            weights.converted_bytes as f64 / 1e6
        );
    }
    Ok(())
}
