//! Reading a component's `config.json` with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{BuilderError, Result};

/// A component config and the path its errors name.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    pub json: &'a Json,
    pub path: &'a Path,
}

impl<'a> Config<'a> {
    pub fn new(json: &'a Json, path: &'a Path) -> Self {
        Self { json, path }
    }

    /// A config error naming this file.
    pub fn error(&self, message: impl Into<String>) -> BuilderError {
        BuilderError::Config {
            path: self.path.to_owned(),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(Json::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.error(format!("{key} is missing or not a non-negative integer")))
    }

    /// An optional non-negative integer with a default.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    /// An optional number with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(format!("{key} is not a number"))),
        }
    }

    /// An optional boolean with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("{key} is not a boolean"))),
        }
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Json::as_str)
    }

    /// A required list of non-negative integers.
    pub fn usizes(&self, key: &str) -> Result<Vec<usize>> {
        self.get(key)
            .and_then(Json::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.error(format!("{key} is missing or not a list of integers")))
    }

    /// A list of strings (empty when absent).
    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(Json::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| self.error(format!("{key} is not a list of strings"))),
        }
    }

    /// Checks `_class_name` (diffusers) or `architectures` (transformers) names `expected`.
    pub fn expect_class(&self, expected: &[&str]) -> Result<()> {
        let class = self.str_opt("_class_name").map(str::to_owned).or_else(|| {
            self.get("architectures")
                .and_then(Json::as_array)
                .and_then(|a| a.first())
                .and_then(Json::as_str)
                .map(str::to_owned)
        });
        match class {
            Some(c) if expected.contains(&c.as_str()) => Ok(()),
            Some(c) => Err(self.error(format!(
                "unknown architecture {c:?}; flux-builder builds {}",
                expected.join(" or ")
            ))),
            None => Err(self.error(format!(
                "no _class_name or architectures field; expected {}",
                expected.join(" or ")
            ))),
        }
    }
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<(Json, PathBuf)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| BuilderError::io(&path, e))?;
    let json = serde_json::from_str(&text).map_err(|e| BuilderError::Config {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    Ok((json, path))
}
