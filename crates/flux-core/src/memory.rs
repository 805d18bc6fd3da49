//! The memory budget: how much memory this process may use (`--memory-limit`, else the cgroup's
//! limit, else the machine's), and each job's estimated peak, so that a job that can never fit is
//! refused before any work ([`FluxError::ExceedsMemoryLimit`]) instead of ending in an
//! out-of-memory kill.
//!
//! The estimate is fitted to peak RSS measured through `flux generate` (see docs/benchmarks.md,
//! "Peak memory"), per component:
//! - the loaded graphs: their files' size, twice (ONNX Runtime's copy while a session is made,
//!   plus its kernels' prepacked weights), plus a fixed runtime base;
//! - the VAE decoder, one image at a time: bytes per output pixel, growing with its width, which
//!   is read from the size of its graph (weights grow with the square of the width), so it holds
//!   for ONNX folders we did not build too;
//! - per image of the batch: latents, the f32 and u8 images, and the transformer's activations,
//!   which grow with its width, read from the size of its graph the same way (the batch runs
//!   through the transformer at once).
//!
//! It is an envelope (ONNX Runtime's arena grows in powers of two), never below what was
//! measured.

use std::path::Path;

use crate::error::{FluxError, Result};
use crate::params::GenerationParams;

/// Runtime, tokenizers, threads' stacks and the allocator's slack (measured ~150 MiB idle).
const BASE_BYTES: u64 = 192 << 20;
/// VAE bytes per output pixel per square root of the VAE graph's bytes (fitted: the tiny VAE,
/// 1.15 MB, peaked at up to ~450 B/px; FLUX.1's 198 MB fp32 decoder gives ~6.7 KiB/px).
const VAE_BYTES_PER_PIXEL_PER_SQRT_BYTE: f64 = 0.48;
/// Per image of the batch, per output pixel: the f32 image (12 B), its u8 copy and encoding and
/// the latents (fitted on the tiny model: +135 MiB per 2048² image measured).
const IMAGE_BYTES_PER_PIXEL: u64 = 48;
/// Per image of the batch, per output pixel, per square root of the transformer graph's bytes:
/// its activations (fitted on the medium model, 285 MB of weights: +774 MiB per extra 2048² image
/// measured, 193 B/px; this gives 202 B/px there and 7 B/px for the tiny one).
const TRANSFORMER_BYTES_PER_PIXEL_PER_SQRT_BYTE: f64 = 0.012;

/// What the estimate needs to know about a loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryModel {
    /// Bytes of every graph file (ONNX and external weights) of the loaded folder.
    pub graph_bytes: u64,
    /// Bytes of the VAE decoder's graph files.
    pub vae_bytes: u64,
    /// Bytes of the transformer's graph files (weights included).
    pub transformer_bytes: u64,
}

impl MemoryModel {
    /// Reads the sizes of `root`'s files (the loaded ONNX folder) and of the VAE's and the
    /// transformer's graph folders.
    pub fn of_folder(root: &Path, vae_graph: &Path, transformer_graph: &Path) -> Self {
        let graph_folder_bytes = |graph: &Path| {
            let dir = graph.parent().unwrap_or(root);
            folder_bytes(dir).max(file_bytes(graph))
        };
        Self {
            graph_bytes: folder_bytes(root),
            vae_bytes: graph_folder_bytes(vae_graph),
            transformer_bytes: graph_folder_bytes(transformer_graph),
        }
    }

    /// The estimated peak resident memory of the process while it runs `params`.
    pub fn estimated_peak(&self, params: &GenerationParams) -> u64 {
        let pixels = u64::from(params.width) * u64::from(params.height);
        let vae_per_pixel = VAE_BYTES_PER_PIXEL_PER_SQRT_BYTE * (self.vae_bytes as f64).sqrt();
        let vae = (vae_per_pixel * pixels as f64) as u64;
        let per_image = IMAGE_BYTES_PER_PIXEL as f64
            + TRANSFORMER_BYTES_PER_PIXEL_PER_SQRT_BYTE * (self.transformer_bytes as f64).sqrt();
        let images = (per_image * pixels as f64) as u64 * u64::from(params.num_images.max(1));
        BASE_BYTES + 2 * self.graph_bytes + vae + images
    }

    /// Refuses `params` when its estimated peak is over `limit` bytes.
    pub fn check(&self, params: &GenerationParams, limit: u64) -> Result<()> {
        let needed = self.estimated_peak(params);
        if needed > limit {
            return Err(FluxError::ExceedsMemoryLimit {
                needed_mib: needed >> 20,
                limit_mib: limit >> 20,
            });
        }
        Ok(())
    }
}

/// The memory this process may use by default: the cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) when it is set and below the machine's, else the machine's
/// (`MemTotal`). `None` when neither can be read.
pub fn default_memory_limit() -> Option<u64> {
    let machine = mem_total();
    let cgroup = cgroup_limit();
    match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of this process's cgroup, when one is set.
fn cgroup_limit() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        let file = if controllers.is_empty() {
            Path::new("/sys/fs/cgroup").join(path).join("memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.limit_in_bytes")
        } else {
            continue;
        };
        // The tightest limit of the cgroup and its ancestors (each bounds its descendants).
        let name = file.file_name().map(ToOwned::to_owned).unwrap_or_default();
        let root = if controllers.is_empty() {
            Path::new("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup/memory")
        };
        let tightest = file
            .ancestors()
            .skip(1)
            .take_while(|dir| dir.starts_with(root))
            .filter_map(|dir| read_limit(&dir.join(&name)))
            .min();
        if tightest.is_some() {
            return tightest;
        }
    }
    None
}

/// A cgroup limit file's value; `None` for "no limit" (v2 writes "max", v1 a huge number).
fn read_limit(file: &Path) -> Option<u64> {
    let limit = std::fs::read_to_string(file)
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (limit < (1 << 60)).then_some(limit)
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => folder_bytes(&path),
                // Metadata follows links: the builder links weights from the checkpoint.
                _ => file_bytes(&path),
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(side: u32, num_images: u32) -> GenerationParams {
        GenerationParams {
            prompt: "x".into(),
            width: side,
            height: side,
            num_images,
            num_inference_steps: 1,
            guidance_scale: 3.5,
            seed: 0,
            output_format: flux_types::OutputFormat::Jpeg,
            run_safety_checker: true,
        }
    }

    /// The tiny model's measured peaks (docs/benchmarks.md) are under the estimate.
    #[test]
    fn the_estimate_covers_the_tiny_models_measured_peaks() {
        let tiny = MemoryModel {
            graph_bytes: 6_882_350,
            vae_bytes: 1_150_505,
            transformer_bytes: 340_000,
        };
        for (side, images, measured_mib) in [
            (512, 1, 213),
            (1024, 1, 458),
            (1280, 1, 895),
            (2048, 1, 1009),
            (2048, 4, 1415),
        ] {
            let estimate = tiny.estimated_peak(&params(side, images)) >> 20;
            assert!(
                estimate >= measured_mib,
                "{side}² × {images}: {estimate} MiB"
            );
            assert!(
                estimate <= 3 * measured_mib,
                "{side}² × {images}: {estimate} MiB"
            );
        }
    }

    /// The medium model's measured peaks (78 M parameters, through the builder's graphs:
    /// `flux-bench`'s peak memory per request size, docs/memory.md) are under the estimate; the
    /// estimate without the transformer term was under the 2048² × 4 peak (5910 MiB vs 7559).
    #[test]
    fn the_estimate_covers_the_medium_models_measured_peaks() {
        let medium = MemoryModel {
            graph_bytes: 311_631_766,
            vae_bytes: 5_146_983,
            transformer_bytes: 285_155_280,
        };
        for (side, images, measured_mib) in [
            (512, 1, 655),
            (1024, 1, 1576),
            (1280, 1, 2522),
            (2048, 1, 5238),
            (2048, 4, 7559),
        ] {
            let estimate = medium.estimated_peak(&params(side, images)) >> 20;
            assert!(
                estimate >= measured_mib,
                "{side}² × {images}: {estimate} MiB"
            );
            assert!(
                estimate <= 2 * measured_mib,
                "{side}² × {images}: {estimate} MiB"
            );
        }
    }

    #[test]
    fn a_job_over_the_limit_is_refused_with_both_numbers() {
        let model = MemoryModel {
            graph_bytes: 1 << 20,
            vae_bytes: 1 << 20,
            transformer_bytes: 1 << 20,
        };
        let job = params(2048, 4);
        let needed = model.estimated_peak(&job);
        assert!(model.check(&job, needed).is_ok());
        match model.check(&job, needed - 1) {
            Err(FluxError::ExceedsMemoryLimit { needed_mib, .. }) => {
                assert_eq!(needed_mib, needed >> 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn this_machine_has_a_default_limit() {
        let limit = default_memory_limit();
        assert!(limit.is_some_and(|bytes| bytes > 64 << 20), "{limit:?}");
    }
}
