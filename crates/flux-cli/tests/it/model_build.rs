//! Checkpoints as people hold them, through the `flux` binary: `flux generate` and `flux serve`
//! on a diffusers folder (built once into the cache, then reused), `flux model build` of BFL
//! single files with a LoRA into a portable ONNX folder, `--precision int4|int8` builds, and the
//! one clear error for a folder that is no model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// `flux` with a cache of the test's own, so builds are observed from scratch, and ONNX Runtime
/// from the usual cache (not fetched again per test).
fn flux(cache: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flux"));
    for name in [
        "FLUX_BACKEND",
        "FLUX_MODEL",
        "FLUX_API_KEY",
        "FLUX_API_KEYS",
        "FLUX_LISTEN",
    ] {
        command.env_remove(name);
    }
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let runtime = flux_core::ensure_runtime(flux_core::RuntimeKind::Cpu)?;
        command.env("ORT_DYLIB_PATH", runtime);
    }
    command.env("FLUX_RS_CACHE_DIR", cache).stdin(Stdio::null());
    Ok(command)
}

fn run(cache: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(flux(cache)?.args(args).output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `flux generate "a red circle"` on `model` (seed 5, PNG) with `extra` flags into `out`; the
/// image's bytes, or the command's error output.
fn generate_png(cache: &Path, model: &str, extra: &[&str], out: &Path) -> anyhow::Result<Vec<u8>> {
    let out = out.to_str().context("path")?;
    let mut args = vec!["generate", "a red circle", "--model", model];
    args.extend_from_slice(extra);
    args.extend(["--seed", "5", "--format", "png", "-o", out]);
    let output = run(cache, &args)?;
    ensure!(
        output.status.success(),
        "{extra:?}: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let image = stdout.lines().next().context("no image path")?;
    let bytes = std::fs::read(image)?;
    ensure!(bytes.starts_with(b"\x89PNG"), "{image} is not a PNG");
    Ok(bytes)
}

/// The entries the builder published in a cache (temp folders and locks excluded).
fn cache_entries(cache: &Path) -> anyhow::Result<Vec<String>> {
    let models = cache.join("models");
    if !models.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(models)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    Ok(names)
}

#[test]
fn generate_on_a_diffusers_folder_builds_once_then_reuses_the_cache() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let model = fixture("tiny-flux-dev-diffusers");
    let model = model.to_str().context("path")?;
    let mut first_image = Vec::new();
    for attempt in 0..2 {
        let out = work.path().join(format!("out{attempt}"));
        let bytes = generate_png(&cache, model, &["--steps", "2", "--size", "128x128"], &out)?;
        if attempt == 0 {
            first_image = bytes;
        } else {
            ensure!(bytes == first_image, "the cached build draws another image");
        }
        ensure!(
            cache_entries(&cache)?.len() == 1,
            "attempt {attempt}: cache holds {:?}",
            cache_entries(&cache)?
        );
    }
    Ok(())
}

#[test]
fn generate_with_int4_builds_quantized_graphs_beside_the_fp32_ones() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let model = fixture("tiny-flux-dev-diffusers");
    let model = model.to_str().context("path")?;
    let mut images = Vec::new();
    for precision in ["fp32", "int4"] {
        let out = work.path().join(precision);
        let flags = ["--precision", precision, "--steps", "2", "--size", "64x64"];
        images.push(generate_png(&cache, model, &flags, &out)?);
    }
    ensure!(
        images[0] != images[1],
        "int4 weights drew the fp32 image exactly"
    );
    // Two builds, one per precision; the int4 one holds the int4 transformer.
    let entries = cache_entries(&cache)?;
    ensure!(entries.len() == 2, "cache holds {entries:?}");
    let int4 = entries
        .iter()
        .filter(|entry| {
            cache
                .join("models")
                .join(entry)
                .join("transformer.opt/int4/model.onnx")
                .is_file()
        })
        .count();
    ensure!(int4 == 1, "no int4 transformer in {entries:?}");
    Ok(())
}

#[test]
fn model_build_writes_a_portable_folder_from_bfl_files_and_a_lora() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    // The BFL files beside the diffusers repository's text encoders, tokenizers and scheduler.
    let bfl = work.path().join("bfl");
    std::fs::create_dir_all(&bfl)?;
    for file in ["flux1-dev.safetensors", "ae.safetensors"] {
        std::fs::copy(fixture("tiny-flux-dev-bfl").join(file), bfl.join(file))?;
    }
    let diffusers = fixture("tiny-flux-dev-diffusers");
    for folder in [
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ] {
        copy_dir(&diffusers.join(folder), &bfl.join(folder))?;
    }
    // The tiny model's widths are not FLUX.1's: its configs come along too.
    for folder in ["transformer", "vae"] {
        std::fs::create_dir_all(bfl.join(folder))?;
        std::fs::copy(
            diffusers.join(folder).join("config.json"),
            bfl.join(folder).join("config.json"),
        )?;
    }
    let built = work.path().join("built");
    let lora = fixture("tiny-flux-dev-lora").join("lora-peft.safetensors");
    let output = run(
        &cache,
        &[
            "model",
            "build",
            bfl.to_str().context("path")?,
            "-o",
            built.to_str().context("path")?,
            "--lora",
            &format!("{}:0.8", lora.display()),
            "--text-length",
            "32",
        ],
    )?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    ensure!(
        stdout.contains("(dev, 32 text tokens, 12 LoRA tensors merged)"),
        "{stdout}"
    );
    // Portable: the folder is complete without the checkpoint.
    std::fs::remove_dir_all(&bfl)?;
    let out = work.path().join("out");
    let output = run(
        &cache,
        &[
            "generate",
            "a red circle",
            "--model",
            built.to_str().context("path")?,
            "--steps",
            "1",
            "--size",
            "64x64",
            "-o",
            out.to_str().context("path")?,
        ],
    )?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    ensure!(
        cache_entries(&cache)?.is_empty(),
        "an ONNX folder is not rebuilt"
    );

    // The output folder is never overwritten.
    let again = run(
        &cache,
        &[
            "model",
            "build",
            "/nonexistent",
            "-o",
            built.to_str().context("path")?,
        ],
    )?;
    ensure!(again.status.code() == Some(2), "{:?}", again.status);
    Ok(())
}

#[test]
fn a_folder_that_is_no_model_gets_one_error_listing_what_was_looked_for() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let empty = empty.to_str().context("path")?;
    let out = work.path().join("out");
    let generate = run(
        &cache,
        &[
            "generate",
            "x",
            "--model",
            empty,
            "-o",
            out.to_str().context("path")?,
        ],
    )?;
    let build = run(
        &cache,
        &["model", "build", empty, "-o", out.to_str().context("path")?],
    )?;
    for output in [generate, build] {
        ensure!(output.status.code() == Some(2), "{:?}", output.status);
        let stderr = text(&output.stderr);
        for looked_for in [
            "model_index.json",
            "flux1-dev.safetensors",
            "transformer.opt",
        ] {
            ensure!(stderr.contains(looked_for), "{stderr}");
        }
    }
    ensure!(!out.exists(), "a failed build left {}", out.display());
    ensure!(cache_entries(&cache)?.is_empty());
    Ok(())
}

#[test]
fn serve_on_a_diffusers_folder_at_int8_answers_a_generation_and_lists_its_precision()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let model = fixture("tiny-flux-schnell-diffusers");
    let mut child = flux(&cache)?
        .args([
            "serve",
            "--allow-unauthenticated",
            "--listen",
            "127.0.0.1:0",
            "--files-dir",
        ])
        .arg(work.path().join("files"))
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--model")
        .arg(&model)
        .args(["--precision", "int8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines.next().context("no line")??;
        let address = first
            .strip_prefix("flux server listening on http://")
            .with_context(|| format!("unexpected {first:?}"))?
            .to_owned();
        let ready = lines.next().context("no ready line")??;
        ensure!(ready == "flux server ready", "{ready}");
        let body = r#"{"prompt":"a red circle","image_size":{"width":64,"height":64},"num_inference_steps":1,"sync_mode":true}"#;
        let mut stream = TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            stream,
            "POST /api/v1/flux/schnell HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 200") {
            bail!("{answer}");
        }
        ensure!(answer.contains("data:image/jpeg;base64,"), "{answer}");
        // The model list says how the transformer is stored.
        let mut stream = TcpStream::connect(&address)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET /api/v1/models HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        let mut models = String::new();
        stream.read_to_string(&mut models)?;
        ensure!(models.contains(r#""precision":"int8""#), "{models}");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
