//! FluxTransformer2DModel (dev with `guidance_embeds`, schnell without), the interface of
//! `fixtures/tiny-flux-*/transformer.opt/fp32/model.onnx`: `hidden_states` `[B,S,64]`,
//! `encoder_hidden_states` `[B,L,Dt]`, `pooled_projections` `[B,Dp]`, `timestep` `[B]` (sigma: the
//! graph multiplies by 1000, as diffusers' transformer does), `img_ids` `[S,3]`, `txt_ids` `[L,3]`,
//! `guidance` `[B]` (dev: the scale as given, also ×1000) → `latent` `[B,S,64]`.
//!
//! Structure follows diffusers `transformers/transformer_flux.py`. Fused ORT kernels (CPU, 1.31):
//! `com.microsoft.MultiHeadAttention` for the joint attention, `com.microsoft.RotaryEmbedding`
//! (interleaved pairs) with cos/sin tables computed in the graph from the ids in f64 as diffusers
//! does (`FluxPosEmbed`), `SimplifiedLayerNormalization` for the QK RMSNorms, `Gelu(tanh)`.

use std::path::Path;

use super::config::Config;
use crate::error::Result;
use crate::onnx::{Attr, Dim, Elem, GraphBuilder, Value, WeightsReport};
use crate::options::{BuildOptions, Component};
use crate::weights::Checkpoint;

/// The dimensions a transformer config fixes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerDims {
    pub in_channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub double_blocks: usize,
    pub single_blocks: usize,
    pub joint_dim: usize,
    pub pooled_dim: usize,
    pub guidance: bool,
    pub axes: Vec<usize>,
}

impl TransformerDims {
    /// Reads and checks a `transformer/config.json`.
    pub fn from_config(config: &Config) -> Result<Self> {
        config.expect_class(&["FluxTransformer2DModel"])?;
        let dims = Self {
            in_channels: config.usize_or("in_channels", 64)?,
            heads: config.usize_or("num_attention_heads", 24)?,
            head_dim: config.usize_or("attention_head_dim", 128)?,
            double_blocks: config.usize_or("num_layers", 19)?,
            single_blocks: config.usize_or("num_single_layers", 38)?,
            joint_dim: config.usize_or("joint_attention_dim", 4096)?,
            pooled_dim: config.usize_or("pooled_projection_dim", 768)?,
            guidance: config.bool_or("guidance_embeds", false)?,
            axes: match config.json.get("axes_dims_rope") {
                Some(v) if !v.is_null() => config.usizes("axes_dims_rope")?,
                _ => vec![16, 56, 56],
            },
        };
        if config.usize_or("patch_size", 1)? != 1 {
            return Err(config.error("patch_size other than 1 is not supported (FLUX.1 uses 1)"));
        }
        let out = config.usize_or("out_channels", dims.in_channels)?;
        if out != dims.in_channels {
            return Err(config.error(format!(
                "out_channels {out} != in_channels {}",
                dims.in_channels
            )));
        }
        if dims.axes.iter().sum::<usize>() != dims.head_dim || dims.axes.iter().any(|a| a % 2 != 0)
        {
            return Err(config.error(format!(
                "axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                dims.axes, dims.head_dim
            )));
        }
        Ok(dims)
    }

    fn inner(&self) -> usize {
        self.heads * self.head_dim
    }
}

struct Flux<'a> {
    g: GraphBuilder,
    ckpt: &'a Checkpoint,
    dims: TransformerDims,
    /// cos/sin tables [L+S, head_dim/2] and the RotaryEmbedding position offset.
    rope: (Value, Value, Value),
}

const EPS: f32 = 1e-6;

impl Flux<'_> {
    fn linear(&mut self, x: &Value, prefix: &str) -> Result<Value> {
        self.g.linear(x, self.ckpt, prefix)
    }

    /// diffusers `get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)`
    /// of `value × 1000` (`value`: an f32 graph input), then a `TimestepEmbedding` MLP at `prefix`.
    fn time_embedding(&mut self, value: &Value, prefix: &str) -> Result<Value> {
        const HALF: usize = 128;
        // torch computes exp(-ln(10000) · i / 128) in f32 with its vectorised exp; correctly
        // rounded values agree except at i = 12 and 106, where torch (x86-64) is one ulp higher.
        // With arguments up to 10⁴ (guidance 10 × 1000) one ulp moves an angle by ~1e-3, so the
        // table reproduces torch's bits.
        let log = -(10000f64.ln() as f32);
        let freqs: Vec<f32> = (0..HALF)
            .map(|i| {
                let v = (f64::from(log * i as f32 / HALF as f32)).exp() as f32;
                if i == 12 || i == 106 {
                    f32::from_bits(v.to_bits() + 1)
                } else {
                    v
                }
            })
            .collect();
        // The sinusoids stay f32 in 16-bit graphs too (fp16 has an ulp of 0.5 at 1000), cast after.
        let freqs = self.g.const_f32("time_freqs", &[1, HALF as i64], &freqs);
        let thousand = self.g.const_f32("thousand", &[], &[1000.0]);
        let t = self.g.mul(value, &thousand);
        let t = self.g.unsqueeze(&t, &[1]);
        let args = self.g.mul(&t, &freqs);
        let cos = self.g.op("Cos", &[&args], vec![]);
        let sin = self.g.op("Sin", &[&args], vec![]);
        let emb = self.g.concat(&[&cos, &sin], 1);
        let emb = self.g.to_float(&emb);
        let h = self.linear(&emb, &format!("{prefix}.linear_1"))?;
        let h = self.g.silu(&h);
        self.linear(&h, &format!("{prefix}.linear_2"))
    }

    /// `linear(silu(temb))` split into `n` modulation vectors, each [B, 1, D].
    fn modulation(&mut self, temb: &Value, prefix: &str, n: usize) -> Result<Vec<Value>> {
        let act = self.g.silu(temb);
        let emb = self.linear(&act, prefix)?;
        let d = self.dims.inner() as i64;
        let parts = self.g.split(&emb, 1, &vec![d; n]);
        Ok(parts.iter().map(|p| self.g.unsqueeze(p, &[1])).collect())
    }

    /// `LayerNorm(x) * (1 + scale) + shift` (no affine, eps 1e-6).
    fn modulate(&mut self, x: &Value, shift: &Value, scale: &Value) -> Value {
        let normed = self.g.layer_norm_plain(x, self.dims.inner(), EPS);
        let one = self.g.add_scalar(scale, 1.0);
        let scaled = self.g.mul(&normed, &one);
        self.g.add(&scaled, shift)
    }

    /// q, k, v projections of `x` at `prefix` ([B, T, N·H]), with q and k RMS-normed per head.
    fn qkv(&mut self, x: &Value, prefix: &str, names: [&str; 5]) -> Result<[Value; 3]> {
        let (n, h) = (self.dims.heads as i64, self.dims.head_dim as i64);
        let q = self.linear(x, &format!("{prefix}.{}", names[0]))?;
        let k = self.linear(x, &format!("{prefix}.{}", names[1]))?;
        let v = self.linear(x, &format!("{prefix}.{}", names[2]))?;
        let mut normed = Vec::with_capacity(2);
        for (t, norm) in [(&q, names[3]), (&k, names[4])] {
            let heads = self.g.reshape(t, &[0, 0, n, h]);
            let weight = format!("{prefix}.{norm}.weight");
            self.ckpt.expect_shape(&weight, &[h as usize])?;
            let y = self.g.rms_norm(&heads, self.ckpt, &weight, EPS)?;
            normed.push(self.g.reshape(&y, &[0, 0, n * h]));
        }
        let k = normed.pop().unwrap_or_else(GraphBuilder::none);
        let q = normed.pop().unwrap_or_else(GraphBuilder::none);
        Ok([q, k, v])
    }

    /// RoPE on q and k, then fused attention over the joint sequence.
    fn attend(&mut self, q: &Value, k: &Value, v: &Value) -> Value {
        let (cos, sin, pos) = self.rope.clone();
        let heads = self.dims.heads as i64;
        let rotary = |g: &mut GraphBuilder, x: &Value| {
            g.ms_op(
                "RotaryEmbedding",
                &[x, &pos, &cos, &sin],
                vec![Attr::int("interleaved", 1), Attr::int("num_heads", heads)],
            )
        };
        let q = rotary(&mut self.g, q);
        let k = rotary(&mut self.g, k);
        self.g.ms_op(
            "MultiHeadAttention",
            &[&q, &k, v],
            vec![Attr::int("num_heads", heads)],
        )
    }

    fn feed_forward(&mut self, x: &Value, prefix: &str) -> Result<Value> {
        let h = self.linear(x, &format!("{prefix}.net.0.proj"))?;
        let h = self.g.gelu_tanh(&h);
        self.linear(&h, &format!("{prefix}.net.2"))
    }

    fn double_block(
        &mut self,
        img: &Value,
        txt: &Value,
        temb: &Value,
        i: usize,
        text_len: i64,
    ) -> Result<(Value, Value)> {
        let p = format!("transformer_blocks.{i}");
        let m = self.modulation(temb, &format!("{p}.norm1.linear"), 6)?;
        let c = self.modulation(temb, &format!("{p}.norm1_context.linear"), 6)?;
        let img_n = self.modulate(img, &m[0], &m[1]);
        let txt_n = self.modulate(txt, &c[0], &c[1]);
        let [iq, ik, iv] = self.qkv(
            &img_n,
            &format!("{p}.attn"),
            ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
        )?;
        let [tq, tk, tv] = self.qkv(
            &txt_n,
            &format!("{p}.attn"),
            [
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "norm_added_q",
                "norm_added_k",
            ],
        )?;
        let q = self.g.concat(&[&tq, &iq], 1);
        let k = self.g.concat(&[&tk, &ik], 1);
        let v = self.g.concat(&[&tv, &iv], 1);
        let attended = self.attend(&q, &k, &v);
        let txt_a = self.g.slice(&attended, 1, 0, text_len);
        let img_a = self.g.slice(&attended, 1, text_len, i64::MAX);
        let img_a = self.linear(&img_a, &format!("{p}.attn.to_out.0"))?;
        let txt_a = self.linear(&txt_a, &format!("{p}.attn.to_add_out"))?;

        let gated = self.g.mul(&m[2], &img_a);
        let img = self.g.add(img, &gated);
        let img_n = self.modulate(&img, &m[3], &m[4]);
        let ff = self.feed_forward(&img_n, &format!("{p}.ff"))?;
        let gated = self.g.mul(&m[5], &ff);
        let img = self.g.add(&img, &gated);

        let gated = self.g.mul(&c[2], &txt_a);
        let txt = self.g.add(txt, &gated);
        let txt_n = self.modulate(&txt, &c[3], &c[4]);
        let ff = self.feed_forward(&txt_n, &format!("{p}.ff_context"))?;
        let gated = self.g.mul(&c[5], &ff);
        let txt = self.g.add(&txt, &gated);
        Ok((img, txt))
    }

    fn single_block(&mut self, x: &Value, temb: &Value, i: usize) -> Result<Value> {
        let p = format!("single_transformer_blocks.{i}");
        let m = self.modulation(temb, &format!("{p}.norm.linear"), 3)?;
        let normed = self.modulate(x, &m[0], &m[1]);
        let mlp = self.linear(&normed, &format!("{p}.proj_mlp"))?;
        let mlp = self.g.gelu_tanh(&mlp);
        let [q, k, v] = self.qkv(
            &normed,
            &format!("{p}.attn"),
            ["to_q", "to_k", "to_v", "norm_q", "norm_k"],
        )?;
        let attended = self.attend(&q, &k, &v);
        let joined = self.g.concat(&[&attended, &mlp], 2);
        let out = self.linear(&joined, &format!("{p}.proj_out"))?;
        let gated = self.g.mul(&m[2], &out);
        Ok(self.g.add(x, &gated))
    }
}

/// The RoPE tables of diffusers' `FluxPosEmbed(theta=10000)`: for each token and rotary pair j
/// (pairs of axis a take `axes[a] / 2` slots), angle = id[a] · 10000^(-2k/axes[a]) in f64, then
/// cos and sin rounded to f32. Returns (cos, sin, position offset 0).
fn rope_tables(g: &mut GraphBuilder, ids: &Value, axes: &[usize]) -> (Value, Value, Value) {
    let mut axis_of = Vec::new();
    let mut freqs = Vec::new();
    for (a, &dim) in axes.iter().enumerate() {
        for k in 0..dim / 2 {
            axis_of.push(a as i64);
            // 1 / theta^(2k/dim), as torch evaluates it in f64.
            freqs.push(1.0 / 10000f64.powf((2 * k) as f64 / dim as f64));
        }
    }
    let half = freqs.len() as i64;
    let ids64 = g.cast(ids, Elem::F64);
    let index = g.const_i64("rope_axis", &[half], &axis_of);
    let pos = g.op("Gather", &[&ids64, &index], vec![Attr::int("axis", 1)]);
    let freqs = g.const_f64("rope_freqs", &[1, half], &freqs);
    let angles = g.mul(&pos, &freqs);
    let cos = g.op("Cos", &[&angles], vec![]);
    let sin = g.op("Sin", &[&angles], vec![]);
    let float = g.float();
    let cos = g.cast(&cos, float);
    let sin = g.cast(&sin, float);
    let offset = g.const_i64("rope_offset", &[1], &[0]);
    (cos, sin, offset)
}

/// Checks every weight the graph reads against the shape the config implies, so that a checkpoint
/// that contradicts its config fails here, naming the tensor, not inside ONNX Runtime.
fn check_weights(ckpt: &Checkpoint, dims: &TransformerDims) -> Result<()> {
    let (d, h, c) = (dims.inner(), dims.head_dim, dims.in_channels);
    let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
    let mut linear = |name: String, out: usize, inp: usize| {
        expected.push((format!("{name}.weight"), vec![out, inp]));
        expected.push((format!("{name}.bias"), vec![out]));
    };
    linear("x_embedder".into(), d, c);
    linear("context_embedder".into(), d, dims.joint_dim);
    let mut embedders = vec!["timestep_embedder"];
    if dims.guidance {
        embedders.push("guidance_embedder");
    }
    for e in embedders {
        linear(format!("time_text_embed.{e}.linear_1"), d, 256);
        linear(format!("time_text_embed.{e}.linear_2"), d, d);
    }
    linear(
        "time_text_embed.text_embedder.linear_1".into(),
        d,
        dims.pooled_dim,
    );
    linear("time_text_embed.text_embedder.linear_2".into(), d, d);
    for i in 0..dims.double_blocks {
        let p = format!("transformer_blocks.{i}");
        linear(format!("{p}.norm1.linear"), 6 * d, d);
        linear(format!("{p}.norm1_context.linear"), 6 * d, d);
        for proj in [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_add_out",
        ] {
            linear(format!("{p}.attn.{proj}"), d, d);
        }
        for ff in ["ff", "ff_context"] {
            linear(format!("{p}.{ff}.net.0.proj"), 4 * d, d);
            linear(format!("{p}.{ff}.net.2"), d, 4 * d);
        }
    }
    for i in 0..dims.single_blocks {
        let p = format!("single_transformer_blocks.{i}");
        linear(format!("{p}.norm.linear"), 3 * d, d);
        for proj in ["to_q", "to_k", "to_v"] {
            linear(format!("{p}.attn.{proj}"), d, d);
        }
        linear(format!("{p}.proj_mlp"), 4 * d, d);
        linear(format!("{p}.proj_out"), d, 5 * d);
    }
    linear("norm_out.linear".into(), 2 * d, d);
    linear("proj_out".into(), c, d);
    for i in 0..dims.double_blocks {
        for norm in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            expected.push((
                format!("transformer_blocks.{i}.attn.{norm}.weight"),
                vec![h],
            ));
        }
    }
    for i in 0..dims.single_blocks {
        for norm in ["norm_q", "norm_k"] {
            expected.push((
                format!("single_transformer_blocks.{i}.attn.{norm}.weight"),
                vec![h],
            ));
        }
    }
    for (name, shape) in expected {
        ckpt.expect_shape(&name, &shape)?;
    }
    Ok(())
}

/// Writes `out/model.onnx` (+ weights) of a FLUX transformer for a fixed T5 text length.
pub fn build_transformer(
    ckpt: &Checkpoint,
    config: &Config,
    text_length: usize,
    opts: &BuildOptions,
    out: &Path,
) -> Result<WeightsReport> {
    let dims = TransformerDims::from_config(config)?;
    let float = opts
        .precision
        .resolve(opts.device, Component::Transformer)?;
    if dims.guidance != ckpt.contains("time_text_embed.guidance_embedder.linear_1.weight") {
        return Err(config.error(format!(
            "guidance_embeds is {} but the checkpoint {} guidance_embedder weights",
            dims.guidance,
            if dims.guidance { "has no" } else { "has" }
        )));
    }
    check_weights(ckpt, &dims)?;
    let mut g = GraphBuilder::with_float("flux_transformer", float);
    g.set_weight_quant(opts.precision.weight_quant(Component::Transformer));
    let (b, s, l) = (Dim::Sym("B"), Dim::Sym("S"), Dim::Fixed(text_length as i64));
    let c = Dim::Fixed(dims.in_channels as i64);
    let hidden = g.input("hidden_states", Elem::F32, &[b, s, c]);
    let encoder = g.input(
        "encoder_hidden_states",
        Elem::F32,
        &[b, l, Dim::Fixed(dims.joint_dim as i64)],
    );
    let pooled = g.input(
        "pooled_projections",
        Elem::F32,
        &[b, Dim::Fixed(dims.pooled_dim as i64)],
    );
    let timestep = g.input("timestep", Elem::F32, &[b]);
    let img_ids = g.input("img_ids", Elem::F32, &[s, Dim::Fixed(3)]);
    let txt_ids = g.input("txt_ids", Elem::F32, &[l, Dim::Fixed(3)]);
    let guidance = dims.guidance.then(|| g.input("guidance", Elem::F32, &[b]));

    let ids = g.concat(&[&txt_ids, &img_ids], 0);
    let rope = rope_tables(&mut g, &ids, &dims.axes);
    let mut f = Flux {
        g,
        ckpt,
        dims,
        rope,
    };
    let (hidden, encoder, pooled) = (
        f.g.to_float(&hidden),
        f.g.to_float(&encoder),
        f.g.to_float(&pooled),
    );

    let mut img = f.linear(&hidden, "x_embedder")?;
    let mut temb = f.time_embedding(&timestep, "time_text_embed.timestep_embedder")?;
    if let Some(guidance) = guidance {
        let gemb = f.time_embedding(&guidance, "time_text_embed.guidance_embedder")?;
        temb = f.g.add(&temb, &gemb);
    }
    let text = f.linear(&pooled, "time_text_embed.text_embedder.linear_1")?;
    let text = f.g.silu(&text);
    let text = f.linear(&text, "time_text_embed.text_embedder.linear_2")?;
    let temb = f.g.add(&temb, &text);
    let mut txt = f.linear(&encoder, "context_embedder")?;

    let text_len = text_length as i64;
    for i in 0..f.dims.double_blocks {
        (img, txt) = f.double_block(&img, &txt, &temb, i, text_len)?;
    }
    let mut x = f.g.concat(&[&txt, &img], 1);
    for i in 0..f.dims.single_blocks {
        x = f.single_block(&x, &temb, i)?;
    }
    let img = f.g.slice(&x, 1, text_len, i64::MAX);
    // AdaLayerNormContinuous: chunk order is (scale, shift).
    let m = f.modulation(&temb, "norm_out.linear", 2)?;
    let img = f.modulate(&img, &m[1], &m[0]);
    let y = f.linear(&img, "proj_out")?;
    let y = f.g.to_f32(&y);
    f.g.output(&y, "latent", Elem::F32, &[b, s, c]);
    f.g.finish(out)
}
