//! CLIPTextModel (CLIP-L's text tower) -> `clip.opt/model.onnx`: `input_ids [B, 77]` ->
//! `text_embeddings [B, 77, D]` (final layer norm) and `pooled_embeddings [B, D]` (the state at the
//! EOS token), as transformers' `CLIPTextTransformer` computes them.
//!
//! Attention is ORT's `MultiHeadAttention` (com.microsoft; CPU kernel, `unidirectional=1` is CLIP's
//! causal mask, so no mask tensor), quick_gelu is ORT's `QuickGelu`. Residual adds stay a plain
//! `Add` and `LayerNormalization`: `SkipLayerNormalization` would need its fourth output (the sum,
//! the next residual), which the graph builder's one-output `ms_op` cannot name, and ORT 1.31 does
//! not fuse the pair here itself (checked on the optimized graph: the linears' reshapes block it).

use std::path::Path;

use serde_json::Value as Json;

use super::text::{TextConfig, TextGraphOptions, embed, f32_output, find_prefix, ids_input};
use crate::error::Result;
use crate::onnx::{Attr, Dim, Elem, GraphBuilder, Value, WeightsReport};
use crate::options::{BuildOptions, Component};
use crate::weights::Checkpoint;

/// The CLIP dimensions the graph depends on, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub length: usize,
    pub eps: f32,
    pub act: String,
    pub eos_token_id: i64,
}

impl ClipConfig {
    /// Reads and checks a `CLIPTextModel` config (also the text part of a full `CLIPModel`
    /// config is refused: FLUX's folder holds the text model alone).
    pub fn from_json(json: &Json, ckpt: &Checkpoint) -> Result<Self> {
        let c = TextConfig::new(json, ckpt);
        c.expect_architecture(&["CLIPTextModel", "CLIPTextModelWithProjection"])?;
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        if hidden % heads != 0 {
            return Err(c.error(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let act = c.str_or("hidden_act", "quick_gelu")?.to_owned();
        if !matches!(
            act.as_str(),
            "quick_gelu" | "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(c.error(format!("hidden_act {act:?} is not one CLIP uses")));
        }
        Ok(Self {
            hidden,
            layers: c.usize("num_hidden_layers")?,
            heads,
            intermediate: c.usize("intermediate_size")?,
            length: c.usize_or("max_position_embeddings", 77)?,
            eps: c.f32_or("layer_norm_eps", 1e-5)?,
            act,
            // transformers' default, and the value of openai/clip-vit-large-patch14 (FLUX.1's).
            eos_token_id: c.i64_or("eos_token_id", 2)?,
        })
    }
}

/// Builds `out/model.onnx` (ids int64; float type from the options' precision for CLIP).
pub fn build_clip(
    ckpt: &Checkpoint,
    config: &Json,
    opts: &BuildOptions,
    out: &Path,
) -> Result<WeightsReport> {
    let float = opts.precision.resolve(opts.device, Component::Clip)?;
    let text = TextGraphOptions {
        float,
        ids: Elem::I64,
        weight_quant: opts.precision.weight_quant(Component::Clip),
    };
    clip_graph(ckpt, config, text)?.finish(out)
}

fn activation(g: &mut GraphBuilder, x: &Value, act: &str) -> Value {
    match act {
        "quick_gelu" => g.ms_op("QuickGelu", &[x], vec![Attr::float("alpha", 1.702)]),
        "gelu" => g.gelu(x),
        _ => g.gelu_tanh(x),
    }
}

/// The CLIP graph, not yet written (tests encode it inline).
pub fn clip_graph(
    ckpt: &Checkpoint,
    config: &Json,
    text: TextGraphOptions,
) -> Result<GraphBuilder> {
    let cfg = ClipConfig::from_json(config, ckpt)?;
    let p = find_prefix(
        ckpt,
        "embeddings.token_embedding.weight",
        &["text_model.", ""],
    )?;
    let d = cfg.hidden;
    let mut g = GraphBuilder::with_float("clip_text_model", text.float);
    g.set_weight_quant(text.weight_quant);
    let ids = ids_input(&mut g, text.ids, cfg.length)?;
    let tokens = embed(
        &mut g,
        ckpt,
        &format!("{p}embeddings.token_embedding.weight"),
        d,
        &ids,
    )?;
    let pos_name = format!("{p}embeddings.position_embedding.weight");
    ckpt.expect_shape(&pos_name, &[cfg.length, d])?;
    // position_ids are arange(77): the whole table, broadcast over the batch.
    let positions = g.weight(ckpt, &pos_name)?;
    let mut h = g.add(&tokens, &positions);
    let scale = (1.0 / ((d / cfg.heads) as f64).sqrt()) as f32;
    for l in 0..cfg.layers {
        let lp = format!("{p}encoder.layers.{l}.");
        for (name, shape) in [
            ("self_attn.q_proj.weight", [d, d]),
            ("self_attn.k_proj.weight", [d, d]),
            ("self_attn.v_proj.weight", [d, d]),
            ("self_attn.out_proj.weight", [d, d]),
            ("mlp.fc1.weight", [cfg.intermediate, d]),
            ("mlp.fc2.weight", [d, cfg.intermediate]),
        ] {
            ckpt.expect_shape(&format!("{lp}{name}"), &shape)?;
        }
        let x = g.layer_norm(&h, ckpt, &format!("{lp}layer_norm1"), cfg.eps)?;
        let q = g.linear(&x, ckpt, &format!("{lp}self_attn.q_proj"))?;
        let k = g.linear(&x, ckpt, &format!("{lp}self_attn.k_proj"))?;
        let v = g.linear(&x, ckpt, &format!("{lp}self_attn.v_proj"))?;
        let a = g.ms_op(
            "MultiHeadAttention",
            &[&q, &k, &v],
            vec![
                Attr::int("num_heads", cfg.heads as i64),
                Attr::int("unidirectional", 1),
                Attr::float("scale", scale),
            ],
        );
        let a = g.linear(&a, ckpt, &format!("{lp}self_attn.out_proj"))?;
        h = g.add(&h, &a);
        let x = g.layer_norm(&h, ckpt, &format!("{lp}layer_norm2"), cfg.eps)?;
        let x = g.linear(&x, ckpt, &format!("{lp}mlp.fc1"))?;
        let x = activation(&mut g, &x, &cfg.act);
        let x = g.linear(&x, ckpt, &format!("{lp}mlp.fc2"))?;
        h = g.add(&h, &x);
    }
    let last = g.layer_norm(&h, ckpt, &format!("{p}final_layer_norm"), cfg.eps)?;

    // The pooled state: with the legacy eos_token_id 2, the position of the largest id (CLIP's
    // EOS is its largest id); otherwise the first position of eos_token_id.
    let key = if cfg.eos_token_id == 2 {
        g.cast(&ids, Elem::F32)
    } else {
        let eos = g.const_i64("eos_token_id", &[], &[cfg.eos_token_id]);
        let hit = g.op("Equal", &[&ids, &eos], vec![]);
        g.cast(&hit, Elem::F32)
    };
    let at = g.op(
        "ArgMax",
        &[&key],
        vec![
            Attr::int("axis", 1),
            Attr::int("keepdims", 1),
            Attr::int("select_last_index", 0),
        ],
    );
    // [B, 1] -> [B, 1, 1] -> [B, 1, D] indices for GatherElements along the token axis.
    let at = g.unsqueeze(&at, &[2]);
    let batch = g.shape_of(&last, 0, Some(1));
    let tail = g.ints(&[1, d as i64]);
    let shape = g.concat(&[&batch, &tail], 0);
    let index = g.op("Expand", &[&at, &shape], vec![]);
    let pooled = g.op(
        "GatherElements",
        &[&last, &index],
        vec![Attr::int("axis", 1)],
    );
    let pooled = g.reshape(&pooled, &[-1, d as i64]);

    let b = Dim::Sym("B");
    f32_output(
        &mut g,
        &last,
        "text_embeddings",
        &[b, Dim::Fixed(cfg.length as i64), Dim::Fixed(d as i64)],
    );
    f32_output(
        &mut g,
        &pooled,
        "pooled_embeddings",
        &[b, Dim::Fixed(d as i64)],
    );
    Ok(g)
}
