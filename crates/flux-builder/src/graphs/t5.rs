//! T5EncoderModel (T5 v1.1 / T5-XXL) -> `t5.opt/model.onnx`: `input_ids [B, L]` ->
//! `text_embeddings [B, L, d_model]`, as transformers' T5 encoder computes them (no padding mask:
//! FLUX's pipeline passes none).
//!
//! The relative position bias depends only on the fixed text length, so it is computed here, once,
//! from layer 0's `relative_attention_bias` table (bucketed exactly as transformers does, in f32)
//! and stored as a `[1, heads, L, L]` constant that every layer's ORT `MultiHeadAttention`
//! (com.microsoft, `scale=1`: T5 does not scale its scores) takes as `attention_bias`. RMS norms
//! are ORT's `SimplifiedLayerNormalization` (the residual adds stay plain: the fused
//! `SkipSimplifiedLayerNormalization` would need its sum output, see clip.rs). The gated-gelu FF
//! uses ONNX `Gelu(approximate=tanh)` (transformers' gelu_new).

use std::path::Path;

use serde_json::Value as Json;

use super::text::{
    TextConfig, TextGraphOptions, embed, f32_output, find_prefix, float_const, ids_input,
};
use crate::error::Result;
use crate::onnx::{Attr, Dim, Elem, GraphBuilder, Value, WeightsReport};
use crate::options::{BuildOptions, Component};
use crate::weights::Checkpoint;

/// The T5 dimensions the graph depends on, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub buckets: usize,
    pub max_distance: usize,
    pub eps: f32,
    /// `gelu_new` (v1.1, gated), `relu` (v1.0) ...
    pub act: String,
    pub gated: bool,
}

impl T5Config {
    pub fn from_json(json: &Json, ckpt: &Checkpoint) -> Result<Self> {
        let c = TextConfig::new(json, ckpt);
        c.expect_architecture(&["T5EncoderModel", "T5ForConditionalGeneration", "T5Model"])?;
        let proj = c.str_or("feed_forward_proj", "relu")?;
        let (gated, act) = match proj.strip_prefix("gated-") {
            Some(act) => (true, act),
            None => (false, proj),
        };
        // transformers maps "gated-gelu" to gelu_new (dense_act_fn).
        let act = match act {
            "gelu" if gated => "gelu_new",
            other => other,
        };
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu" | "relu") {
            return Err(c.error(format!(
                "feed_forward_proj {proj:?} has an activation this graph does not build"
            )));
        }
        Ok(Self {
            d_model: c.usize("d_model")?,
            d_kv: c.usize("d_kv")?,
            d_ff: c.usize("d_ff")?,
            layers: c.usize("num_layers")?,
            heads: c.usize("num_heads")?,
            buckets: c.usize_or("relative_attention_num_buckets", 32)?,
            max_distance: c.usize_or("relative_attention_max_distance", 128)?,
            eps: c.f32_or("layer_norm_epsilon", 1e-6)?,
            act: act.to_owned(),
            gated,
        })
    }
}

/// transformers' `T5Attention._relative_position_bucket` for an encoder (bidirectional), in the
/// same f32 arithmetic (a bucket off by one at a boundary would change the output).
pub fn relative_position_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = (buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = n as f32 / max_exact as f32;
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = (ratio.ln() / denom * (half - max_exact) as f32) as i64;
        bucket += (max_exact + large).min(half - 1);
    }
    bucket as usize
}

/// The `[heads, L, L]` position bias: `bias[h, i, j] = table[bucket(j - i), h]`.
pub fn position_bias(table: &[f32], cfg: &T5Config, length: usize) -> Vec<f32> {
    let mut out = vec![0.0; cfg.heads * length * length];
    for i in 0..length {
        for j in 0..length {
            let bucket =
                relative_position_bucket(j as i64 - i as i64, cfg.buckets, cfg.max_distance);
            for h in 0..cfg.heads {
                out[(h * length + i) * length + j] = table[bucket * cfg.heads + h];
            }
        }
    }
    out
}

/// Builds `out/model.onnx` for a fixed text length (ids int64; float type from the options'
/// precision for T5).
pub fn build_t5(
    ckpt: &Checkpoint,
    config: &Json,
    text_length: usize,
    opts: &BuildOptions,
    out: &Path,
) -> Result<WeightsReport> {
    let float = opts.precision.resolve(opts.device, Component::T5)?;
    let text = TextGraphOptions {
        float,
        ids: Elem::I64,
        weight_quant: opts.precision.weight_quant(Component::T5),
    };
    t5_graph(ckpt, config, text_length, text)?.finish(out)
}

fn activation(g: &mut GraphBuilder, x: &Value, act: &str) -> Value {
    match act {
        "relu" => g.op("Relu", &[x], vec![]),
        "gelu" => g.gelu(x),
        _ => g.gelu_tanh(x),
    }
}

/// The T5 encoder graph, not yet written (tests encode it inline).
pub fn t5_graph(
    ckpt: &Checkpoint,
    config: &Json,
    length: usize,
    text: TextGraphOptions,
) -> Result<GraphBuilder> {
    let cfg = T5Config::from_json(config, ckpt)?;
    let (d, inner) = (cfg.d_model, cfg.heads * cfg.d_kv);
    let mut g = GraphBuilder::with_float("t5_encoder", text.float);
    g.set_weight_quant(text.weight_quant);
    let ids = ids_input(&mut g, text.ids, length)?;
    // T5EncoderModel ties encoder.embed_tokens to shared; checkpoints store one or both.
    let table = find_prefix(ckpt, "", &["shared.weight", "encoder.embed_tokens.weight"])?;
    let mut h = embed(&mut g, ckpt, table, d, &ids)?;

    let rel = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    ckpt.expect_shape(rel, &[cfg.buckets, cfg.heads])?;
    let bias = position_bias(&ckpt.read_f32(rel)?, &cfg, length);
    let l = length as i64;
    let bias = float_const(&mut g, "position_bias", &[1, cfg.heads as i64, l, l], &bias);

    for b in 0..cfg.layers {
        let bp = format!("encoder.block.{b}.layer.");
        let mut shapes = vec![
            ("0.SelfAttention.q.weight", [inner, d]),
            ("0.SelfAttention.k.weight", [inner, d]),
            ("0.SelfAttention.v.weight", [inner, d]),
            ("0.SelfAttention.o.weight", [d, inner]),
            ("1.DenseReluDense.wo.weight", [d, cfg.d_ff]),
        ];
        if cfg.gated {
            shapes.push(("1.DenseReluDense.wi_0.weight", [cfg.d_ff, d]));
            shapes.push(("1.DenseReluDense.wi_1.weight", [cfg.d_ff, d]));
        } else {
            shapes.push(("1.DenseReluDense.wi.weight", [cfg.d_ff, d]));
        }
        for (name, shape) in shapes {
            ckpt.expect_shape(&format!("{bp}{name}"), &shape)?;
        }
        let x = g.rms_norm(&h, ckpt, &format!("{bp}0.layer_norm.weight"), cfg.eps)?;
        let q = g.linear(&x, ckpt, &format!("{bp}0.SelfAttention.q"))?;
        let k = g.linear(&x, ckpt, &format!("{bp}0.SelfAttention.k"))?;
        let v = g.linear(&x, ckpt, &format!("{bp}0.SelfAttention.v"))?;
        let none = GraphBuilder::none();
        let a = g.ms_op(
            "MultiHeadAttention",
            &[&q, &k, &v, &none, &none, &bias],
            vec![
                Attr::int("num_heads", cfg.heads as i64),
                Attr::float("scale", 1.0),
            ],
        );
        let a = g.linear(&a, ckpt, &format!("{bp}0.SelfAttention.o"))?;
        h = g.add(&h, &a);
        let x = g.rms_norm(&h, ckpt, &format!("{bp}1.layer_norm.weight"), cfg.eps)?;
        let ff = format!("{bp}1.DenseReluDense.");
        let x = if cfg.gated {
            let gate = g.linear(&x, ckpt, &format!("{ff}wi_0"))?;
            let gate = activation(&mut g, &gate, &cfg.act);
            let lin = g.linear(&x, ckpt, &format!("{ff}wi_1"))?;
            g.mul(&gate, &lin)
        } else {
            let x = g.linear(&x, ckpt, &format!("{ff}wi"))?;
            activation(&mut g, &x, &cfg.act)
        };
        let x = g.linear(&x, ckpt, &format!("{ff}wo"))?;
        h = g.add(&h, &x);
    }
    let out = g.rms_norm(&h, ckpt, "encoder.final_layer_norm.weight", cfg.eps)?;
    f32_output(
        &mut g,
        &out,
        "text_embeddings",
        &[Dim::Sym("B"), Dim::Fixed(l), Dim::Fixed(d as i64)],
    );
    Ok(g)
}
