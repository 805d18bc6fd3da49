//! The sampler's pure parts against every diffusers reference case in `fixtures/reference/cases/`:
//! the schedule (`sigmas.npy`) and the initial noise (`noise.npy`) bit for bit, and packing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use flux_core::rng::randn;
use flux_core::sampling::{
    SchedulerConfig, flux_sigmas, image_seq_len, latent_shape, pack_latents, unpack_latents,
};
use ndarray::{Array1, ArrayD, Ix4};
use ndarray_npy::read_npy;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct CasesIndex {
    model_folders: std::collections::BTreeMap<String, String>,
    cases: Vec<CaseEntry>,
}

#[derive(Debug, Deserialize)]
struct CaseEntry {
    name: String,
    model: String,
}

#[derive(Debug, Deserialize)]
struct Case {
    seed: u64,
    width: usize,
    height: usize,
    num_images: usize,
    num_inference_steps: usize,
    image_seq_len: usize,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (run tools/tiny-flux/generate.py)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every case with its parameters and its model's scheduler config.
fn cases() -> Result<Vec<(String, PathBuf, Case, SchedulerConfig)>> {
    let root = fixtures().join("reference/cases");
    let index: CasesIndex = read_json(&root.join("index.json"))?;
    ensure!(!index.cases.is_empty(), "no reference cases");
    index
        .cases
        .iter()
        .map(|entry| {
            let dir = root.join(&entry.name);
            let case: Case = read_json(&dir.join("case.json"))?;
            let folder = index
                .model_folders
                .get(&entry.model)
                .with_context(|| format!("{}: unknown model {}", entry.name, entry.model))?;
            let config = SchedulerConfig::from_file(
                fixtures()
                    .join(folder)
                    .join("scheduler/scheduler_config.json"),
            )?;
            Ok((entry.name.clone(), dir, case, config))
        })
        .collect()
}

#[test]
fn sigmas_match_every_reference_bit_for_bit() -> Result<()> {
    for (name, dir, case, config) in cases()? {
        let seq_len = image_seq_len(case.height, case.width);
        ensure!(
            seq_len == case.image_seq_len,
            "{name}: image_seq_len {seq_len} vs {}",
            case.image_seq_len
        );
        let ours = flux_sigmas(case.num_inference_steps, seq_len, &config)?;
        let reference: Array1<f32> = read_npy(dir.join("sigmas.npy"))?;
        ensure!(
            ours.len() == reference.len(),
            "{name}: {} sigmas vs {}",
            ours.len(),
            reference.len()
        );
        for (index, (a, b)) in ours.iter().zip(reference.iter()).enumerate() {
            ensure!(
                a.to_bits() == b.to_bits(),
                "{name}: sigma {index} is {a:e}, diffusers has {b:e}\nours {ours:?}\nref  {reference}"
            );
        }
    }
    Ok(())
}

#[test]
fn noise_matches_every_reference_bit_for_bit_and_packs_losslessly() -> Result<()> {
    for (name, dir, case, _) in cases()? {
        let shape = latent_shape(case.num_images, case.height, case.width)?;
        let ours = randn(case.seed, &shape)?;
        let reference: ArrayD<f32> = read_npy(dir.join("noise.npy"))?;
        ensure!(
            ours.shape() == reference.shape(),
            "{name}: shape {:?} vs {:?}",
            ours.shape(),
            reference.shape()
        );
        if let Some((index, (a, b))) = ours
            .iter()
            .zip(reference.iter())
            .enumerate()
            .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        {
            anyhow::bail!(
                "{name}: noise differs first at flat index {index}: ours {a:e}, torch {b:e}"
            );
        }

        let noise = ours.into_dimensionality::<Ix4>()?;
        let packed = pack_latents(noise.view())?;
        ensure!(
            packed.shape() == [case.num_images, case.image_seq_len, 64],
            "{name}: packed shape {:?}",
            packed.shape()
        );
        let unpacked = unpack_latents(packed.view(), case.height, case.width)?;
        ensure!(
            unpacked == noise,
            "{name}: unpack(pack(noise)) is not the noise"
        );
    }
    Ok(())
}
