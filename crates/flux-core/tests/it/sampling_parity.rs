//! The sampler's pure parts against every diffusers reference case in `fixtures/reference/cases/`:
//! the schedule (`sigmas.npy`) and the initial noise (`noise.npy`) bit for bit, and packing.

use crate::common;

use anyhow::{Result, ensure};
use flux_core::rng::randn;
use flux_core::sampling::{
    SchedulerConfig, flux_sigmas, image_seq_len, latent_shape, pack_latents, unpack_latents,
};
use ndarray::{Array1, ArrayD, Ix4};

/// Every reference case with its model's scheduler config.
fn cases_with_schedulers() -> Result<Vec<(common::Case, SchedulerConfig)>> {
    common::cases()?
        .into_iter()
        .map(|case| {
            let config = SchedulerConfig::from_file(
                case.model_dir().join("scheduler/scheduler_config.json"),
            )?;
            Ok((case, config))
        })
        .collect()
}

#[test]
fn sigmas_match_every_reference_bit_for_bit() -> Result<()> {
    for (case, config) in cases_with_schedulers()? {
        let name = &case.name;
        let (height, width) = (case.height as usize, case.width as usize);
        let seq_len = image_seq_len(height, width);
        ensure!(
            seq_len == case.image_seq_len,
            "{name}: image_seq_len {seq_len} vs {}",
            case.image_seq_len
        );
        let ours = flux_sigmas(case.num_inference_steps as usize, seq_len, &config)?;
        let reference: Array1<f32> = case.npy("sigmas")?;
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
    for (case, _) in cases_with_schedulers()? {
        let name = &case.name;
        let (height, width) = (case.height as usize, case.width as usize);
        let shape = latent_shape(case.num_images as usize, height, width)?;
        let ours = randn(case.seed, &shape)?;
        let reference: ArrayD<f32> = case.npy("noise")?;
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
            packed.shape() == [case.num_images as usize, case.image_seq_len, 64],
            "{name}: packed shape {:?}",
            packed.shape()
        );
        let unpacked = unpack_latents(packed.view(), height, width)?;
        ensure!(
            unpacked == noise,
            "{name}: unpack(pack(noise)) is not the noise"
        );
    }
    Ok(())
}
