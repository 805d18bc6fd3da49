//! The build cache: keyed entries, reuse, atomic publication, no entry from a failed or killed
//! build, one build at a time per key.

use std::path::Path;

use anyhow::Result;
use flux_builder::{BuildOptions, build_cached, cache_key};

use crate::common::fixture;

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

fn opts() -> BuildOptions {
    BuildOptions {
        text_length: Some(32),
        ..BuildOptions::default()
    }
}

fn entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("models"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| !n.ends_with(".lock"));
    names.sort();
    names
}

#[test]
fn entries_are_keyed_reused_and_never_half_written() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = work.path().join("src");
    copy_tree(&fixture("tiny-flux-schnell-diffusers"), &source)?;
    let cache = work.path().join("cache");

    let key = cache_key(&source, &opts())?;
    // A killed earlier build of the same key left a temp folder: never used, removed.
    std::fs::create_dir_all(cache.join("models").join(format!(".{key}.tmp-1-0")))?;
    let entry = build_cached(&source, &opts(), &cache)?;
    assert_eq!(entry, cache.join("models").join(&key));
    assert!(entry.join("transformer.opt/fp32/model.onnx").is_file());
    assert_eq!(entries(&cache), vec![key.clone()]);

    // Reused: same path, nothing rebuilt (the model file is not rewritten).
    let stamp = std::fs::metadata(entry.join("vae.opt/model.onnx"))?.modified()?;
    assert_eq!(build_cached(&source, &opts(), &cache)?, entry);
    assert_eq!(
        std::fs::metadata(entry.join("vae.opt/model.onnx"))?.modified()?,
        stamp
    );

    // What determines the graphs changes the key: text length, a config, a weight header.
    let other = BuildOptions {
        text_length: Some(16),
        ..opts()
    };
    assert_ne!(cache_key(&source, &other)?, key);
    let config = source.join("vae/config.json");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("0.3611", "0.3612"))?;
    assert_ne!(cache_key(&source, &opts())?, key);
    std::fs::write(&config, text)?;
    assert_eq!(cache_key(&source, &opts())?, key);

    // A build that fails half-way (a truncated transformer) leaves no entry and no temp folder.
    let weights = source.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights)?;
    std::fs::write(&weights, &bytes[..bytes.len() / 2])?;
    let err = build_cached(&source, &opts(), &cache)
        .expect_err("truncated")
        .to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert_eq!(entries(&cache), vec![key.clone()]);
    Ok(())
}

#[test]
fn concurrent_builds_of_one_key_make_one_entry() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = fixture("tiny-flux-dev-diffusers");
    let cache = work.path().join("cache");
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| build_cached(&source, &opts(), &cache)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let paths: Vec<_> = results.into_iter().collect::<Result<_, _>>()?;
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    assert_eq!(entries(&cache).len(), 1, "{:?}", entries(&cache));
    // An ONNX-layout folder is its own "entry".
    let onnx = fixture("tiny-flux-dev");
    assert_eq!(build_cached(&onnx, &opts(), &cache)?, onnx);
    Ok(())
}
