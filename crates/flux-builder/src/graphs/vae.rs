//! The AutoencoderKL decoder (diffusers `Decoder`): `latent` `[B,16,h,w]` (already unscaled) to
//! `images` `[B,3,H,W]` in [-1, 1], the interface of `fixtures/tiny-flux-*/vae.opt/model.onnx`.
//!
//! Structure (diffusers `autoencoders/vae.py`, `unets/unet_2d_blocks.py`): optional
//! post_quant_conv, conv_in, mid block (resnet, self-attention, resnet), up blocks of
//! `layers_per_block + 1` resnets and, except the last, a nearest ×2 upsample + conv, then
//! GroupNorm, SiLU, conv_out. Every GroupNorm has eps 1e-6.
//!
//! The mid-block attention is ORT's fused `com.microsoft.MultiHeadAttention` (CPU kernel with a
//! flash-style tiled loop): the unfused `softmax(QKᵀ)V` holds an (h·w)² matrix, 16 GiB at a
//! 2048² image, which is what ran out of memory in issue 18.

use std::path::Path;

use super::config::Config;
use crate::error::Result;
use crate::onnx::{Attr, Dim, Elem, GraphBuilder, Value, WeightsReport};
use crate::options::{BuildOptions, Component};
use crate::weights::Checkpoint;

/// The decoder's latent scaling, as the pipeline applies it before the graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeFactors {
    pub scaling_factor: f32,
    pub shift_factor: f32,
}

/// `scaling_factor` and `shift_factor` of a VAE config (FLUX.1: 0.3611, 0.1159).
pub fn vae_factors(config: &Config) -> Result<VaeFactors> {
    Ok(VaeFactors {
        scaling_factor: config.f64_or("scaling_factor", 0.18215)? as f32,
        shift_factor: config.f64_or("shift_factor", 0.0)? as f32,
    })
}

/// How the mid-block attention is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// `com.microsoft.MultiHeadAttention` (the default).
    #[default]
    Fused,
    /// MatMul + Softmax + MatMul (for measurements against the fused kernel).
    Plain,
}

struct Vae<'a> {
    g: GraphBuilder,
    ckpt: &'a Checkpoint,
    groups: usize,
    attention: AttentionKind,
}

const EPS: f32 = 1e-6;

impl Vae<'_> {
    fn resnet(&mut self, x: &Value, prefix: &str, cin: usize, cout: usize) -> Result<Value> {
        let ckpt = self.ckpt;
        ckpt.expect_shape(&format!("{prefix}.conv1.weight"), &[cout, cin, 3, 3])?;
        ckpt.expect_shape(&format!("{prefix}.conv2.weight"), &[cout, cout, 3, 3])?;
        if cin != cout {
            ckpt.expect_shape(
                &format!("{prefix}.conv_shortcut.weight"),
                &[cout, cin, 1, 1],
            )?;
        }
        let h = self
            .g
            .group_norm(x, ckpt, &format!("{prefix}.norm1"), self.groups, cin, EPS)?;
        let h = self.g.silu(&h);
        let h = self.g.conv2d(&h, ckpt, &format!("{prefix}.conv1"), 1, 1)?;
        let h = self
            .g
            .group_norm(&h, ckpt, &format!("{prefix}.norm2"), self.groups, cout, EPS)?;
        let h = self.g.silu(&h);
        let h = self.g.conv2d(&h, ckpt, &format!("{prefix}.conv2"), 1, 1)?;
        let shortcut = format!("{prefix}.conv_shortcut");
        let skip = if ckpt.contains(&format!("{shortcut}.weight")) {
            self.g.conv2d(x, ckpt, &shortcut, 1, 0)?
        } else {
            x.clone()
        };
        Ok(self.g.add(&skip, &h))
    }

    fn attention(&mut self, x: &Value, prefix: &str, channels: usize) -> Result<Value> {
        let ckpt = self.ckpt;
        let c = channels as i64;
        for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
            ckpt.expect_shape(&format!("{prefix}.{proj}.weight"), &[channels, channels])?;
        }
        let h = self.g.group_norm(
            x,
            ckpt,
            &format!("{prefix}.group_norm"),
            self.groups,
            channels,
            EPS,
        )?;
        let flat = self.g.reshape(&h, &[0, c, -1]);
        let tokens = self.g.transpose(&flat, &[0, 2, 1]);
        let q = self.g.linear(&tokens, ckpt, &format!("{prefix}.to_q"))?;
        let k = self.g.linear(&tokens, ckpt, &format!("{prefix}.to_k"))?;
        let v = self.g.linear(&tokens, ckpt, &format!("{prefix}.to_v"))?;
        // One head of width C (diffusers: attention_head_dim = channels), scale 1/sqrt(C).
        let attended = match self.attention {
            AttentionKind::Fused => self.g.ms_op(
                "MultiHeadAttention",
                &[&q, &k, &v],
                vec![Attr::int("num_heads", 1)],
            ),
            AttentionKind::Plain => {
                let kt = self.g.transpose(&k, &[0, 2, 1]);
                let scores = self.g.matmul(&q, &kt);
                let scores = self.g.mul_scalar(&scores, 1.0 / (channels as f32).sqrt());
                let probs = self.g.softmax(&scores, -1);
                self.g.matmul(&probs, &v)
            }
        };
        let out = self
            .g
            .linear(&attended, ckpt, &format!("{prefix}.to_out.0"))?;
        let back = self.g.transpose(&out, &[0, 2, 1]);
        let shape = self.g.shape_of(x, 0, None);
        let back = self.g.reshape_to(&back, &shape);
        Ok(self.g.add(&back, x))
    }

    fn upsample(&mut self, x: &Value, prefix: &str, channels: usize) -> Result<Value> {
        self.ckpt.expect_shape(
            &format!("{prefix}.conv.weight"),
            &[channels, channels, 3, 3],
        )?;
        let scales = self.g.const_f32("up_scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        let up = self.g.op(
            "Resize",
            &[x, &GraphBuilder::none(), &scales],
            vec![
                Attr::string("mode", "nearest"),
                Attr::string("coordinate_transformation_mode", "asymmetric"),
                Attr::string("nearest_mode", "floor"),
            ],
        );
        self.g
            .conv2d(&up, self.ckpt, &format!("{prefix}.conv"), 1, 1)
    }
}

/// Writes `out/model.onnx` (+ weights) of the decoder of an AutoencoderKL `vae/` component.
pub fn build_vae(
    ckpt: &Checkpoint,
    config: &Config,
    opts: &BuildOptions,
    out: &Path,
) -> Result<WeightsReport> {
    build_vae_with(ckpt, config, opts, AttentionKind::Fused, out)
}

/// [`build_vae`] with a choice of attention (measurements).
pub fn build_vae_with(
    ckpt: &Checkpoint,
    config: &Config,
    opts: &BuildOptions,
    attention: AttentionKind,
    out: &Path,
) -> Result<WeightsReport> {
    config.expect_class(&["AutoencoderKL"])?;
    let float = opts.precision.resolve(opts.device, Component::Vae)?;
    let blocks = config.usizes("block_out_channels")?;
    let layers = config.usize_or("layers_per_block", 2)?;
    let groups = config.usize_or("norm_num_groups", 32)?;
    let latent = config.usize_or("latent_channels", 4)?;
    let out_channels = config.usize_or("out_channels", 3)?;
    if let Some(act) = config.str_opt("act_fn").filter(|a| *a != "silu") {
        return Err(config.error(format!(
            "act_fn {act:?} is not supported (FLUX's VAE uses silu)"
        )));
    }
    let up_types = config.strings("up_block_types")?;
    if up_types.len() != blocks.len() || up_types.iter().any(|t| *t != "UpDecoderBlock2D") {
        return Err(config.error(format!(
            "up_block_types {up_types:?}: expected {} x UpDecoderBlock2D",
            blocks.len()
        )));
    }
    if blocks.is_empty() || blocks.iter().any(|c| *c == 0 || c % groups != 0) {
        return Err(config.error(format!(
            "block_out_channels {blocks:?} must be non-empty multiples of norm_num_groups {groups}"
        )));
    }
    let top = blocks[blocks.len() - 1];
    ckpt.expect_shape("decoder.conv_in.weight", &[top, latent, 3, 3])?;
    ckpt.expect_shape("decoder.conv_out.weight", &[out_channels, blocks[0], 3, 3])?;

    let mut vae = Vae {
        g: GraphBuilder::with_float("vae_decoder", float),
        ckpt,
        groups,
        attention,
    };
    let dims = [
        Dim::Sym("B"),
        Dim::Fixed(latent as i64),
        Dim::Sym("h"),
        Dim::Sym("w"),
    ];
    let input = vae.g.input("latent", Elem::F32, &dims);
    let mut x = vae.g.to_float(&input);
    if config.bool_or("use_post_quant_conv", true)? && ckpt.contains("post_quant_conv.weight") {
        x = vae.g.conv2d(&x, ckpt, "post_quant_conv", 1, 0)?;
    }
    x = vae.g.conv2d(&x, ckpt, "decoder.conv_in", 1, 1)?;
    x = vae.resnet(&x, "decoder.mid_block.resnets.0", top, top)?;
    if config.bool_or("mid_block_add_attention", true)? {
        x = vae.attention(&x, "decoder.mid_block.attentions.0", top)?;
    }
    x = vae.resnet(&x, "decoder.mid_block.resnets.1", top, top)?;
    let mut channels = top;
    for (i, &cout) in blocks.iter().rev().enumerate() {
        for j in 0..=layers {
            let cin = if j == 0 { channels } else { cout };
            x = vae.resnet(&x, &format!("decoder.up_blocks.{i}.resnets.{j}"), cin, cout)?;
        }
        channels = cout;
        if i + 1 < blocks.len() {
            x = vae.upsample(&x, &format!("decoder.up_blocks.{i}.upsamplers.0"), cout)?;
        }
    }
    x = vae
        .g
        .group_norm(&x, ckpt, "decoder.conv_norm_out", groups, channels, EPS)?;
    x = vae.g.silu(&x);
    x = vae.g.conv2d(&x, ckpt, "decoder.conv_out", 1, 1)?;
    let (hs, ws) = match blocks.len() {
        4 => ("8*h", "8*w"),
        _ => ("H", "W"),
    };
    let dims = [
        Dim::Sym("B"),
        Dim::Fixed(out_channels as i64),
        Dim::Sym(hs),
        Dim::Sym(ws),
    ];
    let x = vae.g.to_f32(&x);
    vae.g.output(&x, "images", Elem::F32, &dims);
    vae.g.finish(out)
}
