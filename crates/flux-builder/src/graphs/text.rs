//! What the two text-encoder graphs share: config reading, the token-id input, output casts.

use std::path::PathBuf;

use serde_json::Value as Json;

use crate::error::{BuilderError, Result};
use crate::onnx::quant::WeightQuant;
use crate::onnx::{Dim, Elem, GraphBuilder, Value};
use crate::weights::Checkpoint;

/// The interface choices of a text-encoder graph that the checkpoint does not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextGraphOptions {
    /// The float type weights are stored and computed in (outputs are always f32).
    pub float: Elem,
    /// The element type of `input_ids`: I64 (diffusers' own) or I32 (the official ONNX export's).
    pub ids: Elem,
    /// Linear weights quantized (MatMulNBits blocks for T5) instead of stored in `float`.
    pub weight_quant: Option<WeightQuant>,
}

impl Default for TextGraphOptions {
    fn default() -> Self {
        Self {
            float: Elem::F32,
            ids: Elem::I64,
            weight_quant: None,
        }
    }
}

/// A component config with the file its errors name (the `config.json` beside the weights).
pub(crate) struct TextConfig<'a> {
    pub json: &'a Json,
    pub path: PathBuf,
}

impl<'a> TextConfig<'a> {
    pub fn new(json: &'a Json, ckpt: &Checkpoint) -> Self {
        let path = ckpt
            .files()
            .first()
            .and_then(|f| f.path.parent())
            .map(|dir| dir.join("config.json"))
            .unwrap_or_else(|| PathBuf::from("config.json"));
        Self { json, path }
    }

    pub fn error(&self, message: impl Into<String>) -> BuilderError {
        BuilderError::Config {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(Json::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| self.error(format!("{key} is missing or not a positive integer")))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| self.error(format!("{key} is not a number"))),
        }
    }

    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| self.error(format!("{key} is not an integer"))),
        }
    }

    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.error(format!("{key} is not a string"))),
        }
    }

    /// Refuses a config whose `architectures` names none of `known`.
    pub fn expect_architecture(&self, known: &[&str]) -> Result<()> {
        let Some(list) = self.get("architectures").and_then(Json::as_array) else {
            return Ok(());
        };
        if list
            .iter()
            .filter_map(Json::as_str)
            .any(|a| known.contains(&a))
        {
            return Ok(());
        }
        Err(self.error(format!(
            "architectures {list:?} is none of {known:?}, which this graph builds"
        )))
    }
}

/// The tensor-name prefix under which a checkpoint stores a module: `candidates` are tried in
/// order (transformers 5 saves CLIP without `text_model.`, earlier versions with it).
pub(crate) fn find_prefix<'p>(
    ckpt: &Checkpoint,
    probe: &str,
    candidates: &[&'p str],
) -> Result<&'p str> {
    for prefix in candidates {
        if ckpt.contains(&format!("{prefix}{probe}")) {
            return Ok(prefix);
        }
    }
    // The error names the first spelling (the missing-tensor message lists the files).
    ckpt.info(&format!("{}{probe}", candidates[0]))?;
    Ok(candidates[0])
}

/// Declares `input_ids [B, length]` and returns it as int64 (Gather's index type).
pub(crate) fn ids_input(g: &mut GraphBuilder, ids: Elem, length: usize) -> Result<Value> {
    let input = g.input(
        "input_ids",
        ids,
        &[Dim::Sym("B"), Dim::Fixed(length as i64)],
    );
    match ids {
        Elem::I64 => Ok(input),
        Elem::I32 => Ok(g.cast(&input, Elem::I64)),
        other => Err(BuilderError::Graph {
            graph: "text encoder".into(),
            message: format!("input_ids must be int32 or int64, not {other:?}"),
        }),
    }
}

/// Declares an f32 output, casting from the graph's float type where it differs.
pub(crate) fn f32_output(g: &mut GraphBuilder, value: &Value, name: &str, dims: &[Dim]) {
    let value = if g.float() == Elem::F32 {
        value.clone()
    } else {
        g.cast(value, Elem::F32)
    };
    g.output(&value, name, Elem::F32, dims);
}

/// An f32 constant in the graph's float type.
pub(crate) fn float_const(g: &mut GraphBuilder, hint: &str, dims: &[i64], data: &[f32]) -> Value {
    let c = g.const_f32(hint, dims, data);
    if g.float() == Elem::F32 {
        c
    } else {
        let float = g.float();
        g.cast(&c, float)
    }
}

/// The `[vocab, width]` embedding matrix's rows for `ids` (int64).
pub(crate) fn embed(
    g: &mut GraphBuilder,
    ckpt: &Checkpoint,
    name: &str,
    width: usize,
    ids: &Value,
) -> Result<Value> {
    let shape = ckpt.shape(name)?;
    if shape.len() != 2 || shape[1] != width {
        return Err(BuilderError::ShapeMismatch {
            path: ckpt.info(name)?.file,
            tensor: name.to_owned(),
            expected: vec![shape.first().copied().unwrap_or(0), width],
            got: shape,
        });
    }
    let table = g.weight(ckpt, name)?;
    Ok(g.op(
        "Gather",
        &[&table, ids],
        vec![crate::onnx::Attr::int("axis", 0)],
    ))
}
