//! Embeds the tiny dev model into the crate when the `local` feature is on, so a binary built
//! from this crate can generate with no model path at all.
//!
//! The bundled model is a diffusers folder ([`MODEL_DIR`], or `FLUX_RS_BUNDLED_MODEL` at build
//! time: any diffusers FLUX folder), which flux-core builds into ONNX graphs with flux-builder on
//! first use (fused VAE attention). The builder makes no safety checker, so the tiny ONNX one is
//! added as `safety_checker/model.onnx` ([`EXTRA_FILES`]), which flux-core uses from the
//! checkpoint folder.
//!
//! Writes `$OUT_DIR/bundled_model.rs` with the list of files (relative path, `include_bytes!`) and a
//! content hash that names the folder the files are extracted to at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// The bundled diffusers folder, relative to the workspace root.
const MODEL_DIR: &str = "fixtures/tiny-flux-dev-diffusers";
/// Files added to it: (path in the bundled folder, file relative to the workspace root).
const EXTRA_FILES: &[(&str, &str)] = &[(
    "safety_checker/model.onnx",
    "fixtures/tiny-flux-dev/safety_checker/model.onnx",
)];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest_dir.join("../..");
    println!("cargo:rerun-if-env-changed=FLUX_RS_BUNDLED_MODEL");
    let model_dir = env::var_os("FLUX_RS_BUNDLED_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(MODEL_DIR));
    let out_file =
        PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("bundled_model.rs");
    println!("cargo:rerun-if-changed={}", model_dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if env::var_os("CARGO_FEATURE_LOCAL").is_some() && model_dir.is_dir() {
        collect_files(&model_dir, &model_dir, &mut files);
        for (relative, source) in EXTRA_FILES {
            let source = workspace.join(source);
            println!("cargo:rerun-if-changed={}", source.display());
            let present = files.iter().any(|(existing, _)| existing == relative);
            if !present && source.is_file() {
                let absolute = fs::canonicalize(&source).unwrap_or(source);
                files.push(((*relative).to_owned(), absolute));
            }
        }
    }
    files.sort();

    // FNV-1a over every (path, length, bytes): a stable content address for the cache folder.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut entries = String::new();
    for (relative, absolute) in &files {
        let bytes = fs::read(absolute)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", absolute.display()));
        feed(relative.as_bytes());
        feed(&(bytes.len() as u64).to_le_bytes());
        feed(&bytes);
        let _ = writeln!(
            entries,
            "    ({relative:?}, include_bytes!({:?})),",
            absolute.display().to_string()
        );
    }
    let source = format!(
        "/// Files of the bundled tiny model: path relative to the model folder, contents.\n\
         pub(crate) const BUNDLED_FILES: &[(&str, &[u8])] = &[\n{entries}];\n\
         /// Content hash of `BUNDLED_FILES` (FNV-1a 64), naming the extraction folder.\n\
         pub(crate) const BUNDLED_HASH: &str = \"{hash:016x}\";\n"
    );
    if fs::read_to_string(&out_file).ok().as_deref() != Some(source.as_str()) {
        fs::write(&out_file, source)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", out_file.display()));
    }
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, files);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let relative = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let absolute = fs::canonicalize(&path).unwrap_or(path);
            files.push((relative, absolute));
        }
    }
}
