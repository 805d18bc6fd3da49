//! ONNX Runtime's thread pools: sessions on the process-wide shared pool (the default) compute the
//! same images as sessions with pools of their own, and a configuration whose settings differ from
//! the shared pool's still loads and runs (on pools of its own).
//!
//! In a process of its own (`common::in_own_process`), so that process's first configuration (which
//! makes the shared pool) is the one written here.

use crate::common;

use flux_core::config::SessionConfig;
use flux_core::denoise::StepControl;
use flux_core::pipeline::{FluxPipeline, GenerationParams, RawGeneration};
use flux_core::threads::ThreadPool;
use flux_types::OutputFormat;

/// Same graphs, same thread count: only the pool the threads belong to differs, so the results
/// may differ only by float reassociation noise, if at all.
const SAME_THREADS_TOLERANCE: f32 = 1e-6;
/// One thread instead of two changes how reductions are split: the parity tolerance.
const OTHER_THREADS_TOLERANCE: f32 = 1e-4;

fn generate(config: &SessionConfig) -> anyhow::Result<RawGeneration> {
    let mut pipeline = FluxPipeline::load(&common::dev_model(), config)?;
    let params = GenerationParams {
        prompt: "a lighthouse on a cliff at dusk".to_owned(),
        width: 128,
        height: 96,
        num_images: 1,
        num_inference_steps: 3,
        guidance_scale: 3.5,
        seed: 21,
        output_format: OutputFormat::Png,
        run_safety_checker: false,
    };
    Ok(pipeline.generate_raw(&params, &mut |_, _| StepControl::Continue)?)
}

fn config(threads: usize, thread_pool: ThreadPool) -> SessionConfig {
    SessionConfig {
        intra_op_threads: Some(threads),
        thread_pool,
        ..SessionConfig::default()
    }
}

#[test]
fn shared_and_per_session_pools_compute_the_same_images() -> anyhow::Result<()> {
    if !common::in_own_process(
        module_path!(),
        "shared_and_per_session_pools_compute_the_same_images",
    )? {
        return Ok(());
    }
    let shared = generate(&config(2, ThreadPool::Shared))?;
    #[cfg(target_os = "linux")]
    {
        // The shared pool's threads are flux-rs's own (named, at the configured priority): two
        // threads are the caller plus one pool thread.
        let pool_threads = std::fs::read_dir("/proc/self/task")?
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "flux-ort")
            .count();
        assert_eq!(pool_threads, 1, "threads named flux-ort in the shared pool");
    }

    let per_session = generate(&config(2, ThreadPool::PerSession))?;
    let diff = common::max_abs_diff(&shared.final_latents, &per_session.final_latents)?;
    assert!(diff <= SAME_THREADS_TOLERANCE, "latents differ by {diff}");
    let diff = common::max_abs_diff(&shared.images, &per_session.images)?;
    assert!(diff <= SAME_THREADS_TOLERANCE, "images differ by {diff}");

    // The shared pool has two threads; this asks for one, so it gets pools of its own.
    let one_thread = generate(&config(1, ThreadPool::Shared))?;
    let diff = common::max_abs_diff(&shared.final_latents, &one_thread.final_latents)?;
    assert!(diff <= OTHER_THREADS_TOLERANCE, "latents differ by {diff}");
    Ok(())
}
