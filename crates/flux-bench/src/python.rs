//! The Python side of the benchmark: an interpreter with the pinned peer requirements (a venv made
//! once under `.cache/bench/venv`, or one the user names), and the scripts in `tools/bench/` run
//! as child processes that print one JSON document each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::results::WorkerDocument;

/// Names an existing interpreter instead of the project venv.
pub const PYTHON_ENV: &str = "FLUX_BENCH_PYTHON";

/// The modules every peer imports: a venv without them is not usable.
const REQUIRED_MODULES: &str = "import numpy, onnxruntime, torch, diffusers, transformers, PIL";

/// An interpreter that can run the peers.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub python: PathBuf,
    repo_root: PathBuf,
}

impl PythonEnv {
    /// `explicit` (from `--python`), else `$FLUX_BENCH_PYTHON`, else the project venv, created from
    /// `tools/bench/requirements.txt` when it is missing or was made from other requirements.
    pub fn resolve(repo_root: &Path, explicit: Option<PathBuf>) -> Result<PythonEnv> {
        let named = explicit.or_else(|| {
            std::env::var_os(PYTHON_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let python = match named {
            Some(python) => python,
            None => ensure_venv(repo_root)?,
        };
        let env = PythonEnv {
            python,
            repo_root: repo_root.to_owned(),
        };
        env.check()?;
        Ok(env)
    }

    fn check(&self) -> Result<()> {
        let output = Command::new(&self.python)
            .args(["-c", REQUIRED_MODULES])
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        if !output.status.success() {
            bail!(
                "{} cannot import the peers' modules ({}):\n{}\ninstall tools/bench/requirements.txt into it, \
                 or unset {PYTHON_ENV} to let xtask make its own venv, or pass --no-peers",
                self.python.display(),
                REQUIRED_MODULES,
                tail(&String::from_utf8_lossy(&output.stderr), 1500)
            );
        }
        Ok(())
    }

    /// Runs `tools/bench/<script>` with `args`; its stdout must be one [`WorkerDocument`].
    pub fn run_peer(&self, script: &str, args: &[String]) -> Result<WorkerDocument> {
        let output = self.run_script(script, args)?;
        let line = output
            .lines()
            .rev()
            .find(|line| line.trim_start().starts_with('{'))
            .unwrap_or_default();
        serde_json::from_str(line).with_context(|| {
            format!(
                "{script} printed no result document; stdout: {}",
                tail(&output, 800)
            )
        })
    }

    /// Runs `tools/bench/<script>`, returning its stdout; its stderr is shown only on failure.
    pub fn run_script(&self, script: &str, args: &[String]) -> Result<String> {
        self.run_script_at(
            &self.repo_root.join("tools").join("bench").join(script),
            args,
        )
    }

    /// Runs the Python script at `path`, returning its stdout; its stderr is shown only on failure.
    pub fn run_script_at(&self, path: &Path, args: &[String]) -> Result<String> {
        let script = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let output = Command::new(&self.python)
            .arg(path)
            .args(args)
            .current_dir(&self.repo_root)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} {}", self.python.display(), path.display()))?;
        if !output.status.success() {
            bail!(
                "{script} {} failed ({}):\n{}",
                args.join(" "),
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 3000)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The versions of the peers' main packages, for the report.
    pub fn versions(&self) -> Result<String> {
        let output = Command::new(&self.python)
            .args([
                "-c",
                "import sys, numpy, onnxruntime, torch, diffusers, transformers; \
                 print(f'python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, \
                 diffusers {diffusers.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}')",
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// The project venv's interpreter, made (or remade) when its requirements stamp is stale.
fn ensure_venv(repo_root: &Path) -> Result<PathBuf> {
    let requirements_path = repo_root
        .join("tools")
        .join("bench")
        .join("requirements.txt");
    // The peers' file includes the generator's pins: the stamp covers both, so a change to
    // either remakes the venv.
    let mut requirements = String::new();
    for path in [
        &requirements_path,
        &repo_root
            .join("tools")
            .join("tiny-flux")
            .join("requirements.txt"),
    ] {
        requirements += &std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    let venv = repo_root.join(".cache").join("bench").join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("flux-rs-requirements.txt");
    if python.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|made_from| made_from == requirements)
    {
        return Ok(python);
    }
    eprintln!(
        "bench: creating the Python environment of the benchmark peers in {} from {}\n\
         bench: (torch, diffusers, onnxruntime from PyPI: several GB and some minutes, once; \
         pass --no-peers to skip the peers, or --python / {PYTHON_ENV} to use an existing interpreter)",
        venv.display(),
        requirements_path.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the stale {}", venv.display()))?;
    }
    let base = std::env::var_os("PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    run_checked(
        Command::new(&base).arg("-m").arg("venv").arg(&venv),
        "creating the venv",
    )?;
    run_checked(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "--upgrade", "pip"]),
        "upgrading pip in the venv",
    )?;
    run_checked(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements_path),
        "installing tools/bench/requirements.txt",
    )?;
    std::fs::write(&stamp, requirements).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: cannot start {command:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); pass --no-peers to run without the Python peers");
    }
    Ok(())
}

/// The last `limit` bytes of `text`, on a character boundary.
pub fn tail(text: &str, limit: usize) -> &str {
    let mut start = text.len().saturating_sub(limit);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_respects_character_boundaries() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 10), "ab");
        // "é" is two bytes: a cut inside it moves forward to the next character.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
