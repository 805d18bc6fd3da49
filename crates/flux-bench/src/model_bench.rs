//! One model's pipeline benchmark: flux-rs (on the export, and on flux-builder's fp32 and int8
//! graphs of the same weights) and its Python peers at each image size, each in a worker process, and the step
//! profiles of the denoising loop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flux_builder::Precision;

use crate::options::Options;
use crate::pipeline::{self, PipelineSpec};
use crate::python::PythonEnv;
use crate::results::{self, BenchResults, ModelInfo, PipelineEntry, implementation};
use crate::worker::{self, WorkerSpec};
use crate::{
    GUIDANCE, ModelPlan, OUTPUT_FORMAT, PROMPT, SEED, diffusers_dir, diffusers_folder,
    diffusers_source, path_arg,
};

pub(crate) fn bench_model(
    plan: &ModelPlan,
    options: &Options,
    python: Option<&PythonEnv>,
    root: &Path,
    results: &mut BenchResults,
) -> Result<()> {
    let model = plan.choice.name();
    results.models.push(ModelInfo {
        name: model.to_owned(),
        path: plan
            .dir
            .strip_prefix(root)
            .unwrap_or(&plan.dir)
            .to_string_lossy()
            .into_owned(),
        parameters: pipeline::parameter_count(&plan.dir),
        sizes: plan.sizes.clone(),
        steps: plan.steps.clone(),
    });
    let diffusers_weights = match python {
        Some(python) if options.peers => {
            let out = diffusers_dir(root, plan.choice);
            match python.run_script(
                "torch_weights.py",
                &[
                    "diffusers".to_owned(),
                    "--model".to_owned(),
                    path_arg(&plan.dir),
                    "--out".to_owned(),
                    path_arg(&out),
                ],
            ) {
                Ok(_) => Some(out),
                Err(error) => {
                    results.notes.push(format!(
                        "diffusers peer skipped for the {model} model: {error:#}"
                    ));
                    None
                }
            }
        }
        _ => None,
    };
    let built = built_graphs(plan, root, Precision::F32, results);
    let built_int8 = built_graphs(plan, root, Precision::Int8, results);
    for &size in &plan.sizes {
        let spec = PipelineSpec {
            model_dir: plan.dir.clone(),
            sizes: vec![size],
            steps: plan.steps.clone(),
            repeats: options.repeats,
            threads: options.threads,
            prompt: PROMPT.to_owned(),
            seed: SEED,
            guidance: GUIDANCE,
            output_format: OUTPUT_FORMAT.to_owned(),
        };
        eprintln!("bench: {model} {}x{}: flux-rs", size[0], size[1]);
        let document: results::WorkerDocument = worker::spawn(&WorkerSpec::Pipeline(spec.clone()))?;
        log_document(&document);
        results.pipeline.push(PipelineEntry {
            model: model.to_owned(),
            document,
        });
        for (dir, name, label) in [
            (
                &built,
                implementation::FLUX_RS_BUILT,
                "flux-builder's graphs",
            ),
            (
                &built_int8,
                implementation::FLUX_RS_BUILT_INT8,
                "flux-builder's int8 graphs",
            ),
        ] {
            let Some(dir) = dir else { continue };
            eprintln!("bench: {model} {}x{}: flux-rs on {label}", size[0], size[1]);
            let spec = PipelineSpec {
                model_dir: dir.clone(),
                ..spec.clone()
            };
            let mut document: results::WorkerDocument = worker::spawn(&WorkerSpec::Pipeline(spec))?;
            document.implementation = name.to_owned();
            log_document(&document);
            results.pipeline.push(PipelineEntry {
                model: model.to_owned(),
                document,
            });
        }
        let Some(python) = python.filter(|_| options.peers) else {
            continue;
        };
        let peer_args = |model_arg: &Path| -> Vec<String> {
            let steps: Vec<String> = spec.steps.iter().map(u32::to_string).collect();
            vec![
                "--model".to_owned(),
                path_arg(model_arg),
                "--size".to_owned(),
                format!("{}x{}", size[0], size[1]),
                "--steps".to_owned(),
                steps.join(","),
                "--repeats".to_owned(),
                spec.repeats.to_string(),
                "--threads".to_owned(),
                spec.threads.to_string(),
                "--prompt".to_owned(),
                spec.prompt.clone(),
                "--seed".to_owned(),
                spec.seed.to_string(),
                "--guidance".to_owned(),
                spec.guidance.to_string(),
                "--format".to_owned(),
                spec.output_format.clone(),
            ]
        };
        let mut peers = vec![(
            implementation::PYTHON_ORT,
            "ort_pipeline.py",
            plan.dir.as_path(),
        )];
        if let Some(weights) = &diffusers_weights {
            peers.push((
                implementation::DIFFUSERS,
                "diffusers_peer.py",
                weights.as_path(),
            ));
        }
        for (name, script, model_arg) in peers {
            eprintln!("bench: {model} {}x{}: {name}", size[0], size[1]);
            match python.run_peer(script, &peer_args(model_arg)) {
                Ok(document) => {
                    log_document(&document);
                    results.pipeline.push(PipelineEntry {
                        model: model.to_owned(),
                        document,
                    });
                }
                Err(error) => results.notes.push(format!(
                    "{name} failed on {model} {}x{}: {error:#}",
                    size[0], size[1]
                )),
            }
        }
    }
    if let (Some(python), Some(built), true) =
        (python.filter(|_| options.peers), &built, options.candle)
    {
        candle_peer(python, plan, built, options, root, results);
    }
    // The smallest and largest size: where the attention share is least and most.
    let by_tokens = |size: &&[u32; 2]| size[0] * size[1];
    let mut profiled: Vec<[u32; 2]> = Vec::new();
    profiled.extend(plan.sizes.iter().min_by_key(by_tokens).copied());
    profiled.extend(plan.sizes.iter().max_by_key(by_tokens).copied());
    profiled.dedup();
    if let (Some(python), Some(weights)) = (python.filter(|_| options.peers), &diffusers_weights) {
        for size in profiled {
            step_profile(
                python,
                plan,
                weights,
                built.as_deref(),
                size,
                options.threads,
                results,
            );
        }
    }
    Ok(())
}

/// Runs `tools/bench/step_profile.py` on one size of the plan's model.
fn step_profile(
    python: &PythonEnv,
    plan: &ModelPlan,
    diffusers_weights: &Path,
    built: Option<&Path>,
    size: [u32; 2],
    threads: usize,
    results: &mut BenchResults,
) {
    let model = plan.choice.name();
    eprintln!(
        "bench: {model} {}x{}: one transformer step, profiled in ONNX Runtime and torch",
        size[0], size[1]
    );
    let mut args = vec![
        "--onnx-model".to_owned(),
        path_arg(&plan.dir),
        "--diffusers-model".to_owned(),
        path_arg(diffusers_weights),
        "--size".to_owned(),
        format!("{}x{}", size[0], size[1]),
        "--threads".to_owned(),
        threads.to_string(),
    ];
    if let Some(built) = built {
        args.extend(["--built-model".to_owned(), path_arg(built)]);
    }
    let profile = python
        .run_script("step_profile.py", &args)
        .and_then(|output| {
            let line = output
                .lines()
                .rev()
                .find(|line| line.trim_start().starts_with('{'))
                .unwrap_or_default();
            serde_json::from_str::<results::StepProfile>(line)
                .context("step_profile.py printed no result document")
        });
    match profile {
        Ok(mut profile) => {
            profile.model = model.to_owned();
            results.step_profiles.push(profile);
        }
        Err(error) => results.notes.push(format!(
            "step profile failed on the {model} model: {error:#}"
        )),
    }
}

/// candle's transformer step at every size of the plan (a note where it could not run).
fn candle_peer(
    python: &PythonEnv,
    plan: &ModelPlan,
    built: &Path,
    options: &Options,
    root: &Path,
    results: &mut BenchResults,
) {
    let model = plan.choice.name();
    let text_tokens = std::fs::read_to_string(built.join("flux-rs.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|manifest| manifest["text_length"].as_u64());
    let Some(text_tokens) = text_tokens else {
        results.notes.push(format!(
            "candle peer skipped for the {model} model: no text length in {}",
            built.display()
        ));
        return;
    };
    match crate::candle::run_all(
        python,
        root,
        model,
        &diffusers_source(plan.choice, root),
        text_tokens as usize,
        &plan.sizes,
        options.threads,
        options.repeats,
    ) {
        Ok(steps) => results.candle.extend(steps),
        Err(error) => results.notes.push(format!(
            "candle peer failed on the {model} model: {error:#}"
        )),
    }
}

/// The T5 length fixed in an exported folder's graph (`input_ids`' second axis), if it is fixed.
fn export_text_length(export: &Path) -> Option<usize> {
    use flux_builder::proto::{ModelProto, tensor_shape_proto::dimension, type_proto};
    use prost::Message;
    let bytes = std::fs::read(export.join("t5.opt").join("model.onnx")).ok()?;
    let model = ModelProto::decode(bytes.as_slice()).ok()?;
    let input = model
        .graph?
        .input
        .into_iter()
        .find(|i| i.name == "input_ids")?;
    let Some(type_proto::Value::TensorType(tensor)) = input.r#type?.value else {
        return None;
    };
    match tensor.shape?.dim.get(1)?.value {
        Some(dimension::Value::DimValue(n)) => usize::try_from(n).ok(),
        _ => None,
    }
}

/// flux-builder's graphs of the model's diffusers folder (the same weights as its export) at
/// `precision`, built once into the cache as `flux serve --model DIR [--precision P]` builds
/// them; `None` (with a note) without one.
fn built_graphs(
    plan: &ModelPlan,
    root: &Path,
    precision: Precision,
    results: &mut BenchResults,
) -> Option<PathBuf> {
    let source = diffusers_folder(
        plan.choice,
        root,
        "flux-rs on flux-builder's graphs",
        &mut results.notes,
    )?;
    let model = plan.choice.name();
    let built = flux_core::runtime::cache_root()
        .map_err(anyhow::Error::from)
        .and_then(|cache| {
            // The export's T5 length, so that both run the same shapes (the tiny export has 32
            // tokens where a dev build defaults to 512).
            let opts = flux_builder::BuildOptions {
                text_length: export_text_length(&plan.dir),
                precision,
                ..flux_builder::BuildOptions::default()
            };
            flux_builder::build_cached(&source, &opts, &cache).map_err(anyhow::Error::from)
        });
    match built {
        Ok(dir) => Some(dir),
        Err(error) => {
            results.notes.push(format!(
                "building the {model} model's {precision} graphs failed: {error:#}"
            ));
            None
        }
    }
}

fn log_document(document: &results::WorkerDocument) {
    for run in &document.runs {
        let total = run.median_of(results::stage::TOTAL).unwrap_or(f64::NAN);
        let overhead = run
            .overhead_percent()
            .map_or_else(String::new, |o| format!(", overhead {o:.2} %"));
        eprintln!(
            "bench:   {} {}x{} {} steps: {total:.3} s end to end{overhead}",
            document.implementation, run.width, run.height, run.steps
        );
    }
}

#[cfg(test)]
mod tests {
    use super::export_text_length;

    #[test]
    fn the_tiny_exports_text_length_is_read_from_its_t5_graph() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert_eq!(
            export_text_length(&repo.join("fixtures/tiny-flux-dev")),
            Some(32)
        );
        assert_eq!(
            export_text_length(&repo.join("fixtures/no-such-model")),
            None
        );
    }
}
