//! Builds one component graph, for measurements by hand:
//! `cargo run -p flux-builder --example build_component -- vae|vae-plain|transformer SRC_DIR OUT_DIR`
//! (`TEXT_LENGTH`, default 512, fixes the transformer's text length).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use flux_builder::graphs::config::{Config, read_config};
use flux_builder::{BuildOptions, Checkpoint};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, src, out] = args.as_slice() else {
        bail!("usage: build_component vae|vae-plain|transformer SRC_DIR OUT_DIR");
    };
    let (src, out) = (PathBuf::from(src), PathBuf::from(out));
    let (json, path) = read_config(&src)?;
    let config = Config::new(&json, &path);
    let ckpt = Checkpoint::open_component(&src).context("opening weights")?;
    let opts = BuildOptions::default();
    let start = std::time::Instant::now();
    let report = match kind.as_str() {
        "vae" => flux_builder::graphs::vae::build_vae(&ckpt, &config, &opts, &out)?,
        "vae-plain" => flux_builder::graphs::vae::build_vae_with(
            &ckpt,
            &config,
            &opts,
            flux_builder::graphs::vae::AttentionKind::Plain,
            &out,
        )?,
        "transformer" => {
            let text_length = std::env::var("TEXT_LENGTH").map_or(Ok(512), |v| v.parse())?;
            flux_builder::graphs::transformer::build_transformer(
                &ckpt,
                &config,
                text_length,
                &opts,
                &out,
            )?
        }
        other => bail!("unknown component {other}"),
    };
    println!(
        "built {kind} into {} in {:.2?}: {report:?}",
        out.display(),
        start.elapsed()
    );
    Ok(())
}
