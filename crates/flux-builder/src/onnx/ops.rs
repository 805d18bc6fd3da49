//! Layer helpers shared by every graph module: linear, norms, activations, shape plumbing.
//!
//! Kernel choices (checked against ONNX Runtime 1.31.1's CPU provider, see the module tests and
//! `tests/it/kernels.rs`): `Gemm(transB=1)` for linears, so that the `[out, in]` matrix of a
//! checkpoint is used as stored (zero-copy); `LayerNormalization` (opset 17); ORT's
//! `SimplifiedLayerNormalization` (registered in the default domain) for RMS norms; `Gelu`
//! (opset 20, `approximate`); `InstanceNormalization` on a `[B, G, -1]` view for GroupNorm (a
//! kernel, where `GroupNormalization`-21 is expanded into a function of reductions). Under
//! `--precision int8|int4` a linear is one `com.microsoft.MatMulNBits` over block-quantized
//! weights or one `com.microsoft.DynamicQuantizeMatMul` over per-channel int8 weights
//! (`quant.rs`) instead.

use super::graph::{Attr, GraphBuilder, Value};
use super::quant::WeightQuant;
use crate::error::Result;
use crate::weights::Checkpoint;

/// MatMulNBits' `accuracy_level` for quantized linears: 4 quantizes the activations to int8 per
/// block, so that MLAS multiplies with integer dot products (its fast CPU path; 0 dequantizes
/// the weights and multiplies in f32). Its error is measured against fp32 in the builder's tests
/// and the benchmark's quality table.
const MATMUL_NBITS_ACCURACY: i64 = 4;

impl GraphBuilder {
    /// `x + y` (broadcasting).
    pub fn add(&mut self, x: &Value, y: &Value) -> Value {
        self.op("Add", &[x, y], vec![])
    }
    /// `x - y` (broadcasting).
    pub fn sub(&mut self, x: &Value, y: &Value) -> Value {
        self.op("Sub", &[x, y], vec![])
    }
    /// `x * y` (broadcasting).
    pub fn mul(&mut self, x: &Value, y: &Value) -> Value {
        self.op("Mul", &[x, y], vec![])
    }
    /// `x / y` (broadcasting).
    pub fn div(&mut self, x: &Value, y: &Value) -> Value {
        self.op("Div", &[x, y], vec![])
    }
    /// `x * s` for an f32 scalar.
    pub fn mul_scalar(&mut self, x: &Value, s: f32) -> Value {
        let c = self.scalar(s);
        self.mul(x, &c)
    }
    /// `x + s` for an f32 scalar.
    pub fn add_scalar(&mut self, x: &Value, s: f32) -> Value {
        let c = self.scalar(s);
        self.add(x, &c)
    }
    /// Matrix product (numpy semantics).
    pub fn matmul(&mut self, x: &Value, y: &Value) -> Value {
        self.op("MatMul", &[x, y], vec![])
    }
    /// Reshape to a constant shape (0 copies a dimension, -1 infers one).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], vec![])
    }
    /// Reshape to a computed shape.
    pub fn reshape_to(&mut self, x: &Value, shape: &Value) -> Value {
        self.op("Reshape", &[x, shape], vec![])
    }
    /// Permutes axes.
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x], vec![Attr::ints("perm", perm)])
    }
    /// Concatenates along `axis`.
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.op("Concat", xs, vec![Attr::int("axis", axis)])
    }
    /// Splits along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &Value, axis: i64, sizes: &[i64]) -> Vec<Value> {
        let s = self.ints(sizes);
        self.op_n(
            "Split",
            &[x, &s],
            vec![Attr::int("axis", axis)],
            sizes.len(),
        )
    }
    /// `x[..., start:end, ...]` along one axis.
    pub fn slice(&mut self, x: &Value, axis: i64, start: i64, end: i64) -> Value {
        let (s, e, a) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]));
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }
    /// Inserts size-1 axes.
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }
    /// The shape of `x`, dimensions `start..end` (ONNX `Shape` with start/end).
    pub fn shape_of(&mut self, x: &Value, start: i64, end: Option<i64>) -> Value {
        let mut attrs = vec![Attr::int("start", start)];
        if let Some(end) = end {
            attrs.push(Attr::int("end", end));
        }
        self.op("Shape", &[x], attrs)
    }
    /// Element type conversion.
    pub fn cast(&mut self, x: &Value, to: super::graph::Elem) -> Value {
        self.op("Cast", &[x], vec![Attr::int("to", to.code() as i64)])
    }
    /// Softmax over `axis`.
    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        self.op("Softmax", &[x], vec![Attr::int("axis", axis)])
    }

    /// `x * sigmoid(x)`.
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.op("Sigmoid", &[x], vec![]);
        self.mul(x, &s)
    }
    /// `x * sigmoid(1.702 x)` (CLIP's quick_gelu).
    pub fn quick_gelu(&mut self, x: &Value) -> Value {
        let scaled = self.mul_scalar(x, 1.702);
        let s = self.op("Sigmoid", &[&scaled], vec![]);
        self.mul(x, &s)
    }
    /// GELU with the tanh approximation (torch `approximate="tanh"`, T5's gelu_new).
    pub fn gelu_tanh(&mut self, x: &Value) -> Value {
        self.op("Gelu", &[x], vec![Attr::string("approximate", "tanh")])
    }
    /// Exact (erf) GELU.
    pub fn gelu(&mut self, x: &Value) -> Value {
        self.op("Gelu", &[x], vec![])
    }

    /// `x @ W^T + b` for a checkpoint linear `prefix.weight` `[out, in]` (+ `prefix.bias` if
    /// present), on inputs of any rank: the leading axes are flattened for `Gemm(transB=1)`, which
    /// reads the matrix as stored, and restored afterwards.
    pub fn linear(&mut self, x: &Value, ckpt: &Checkpoint, prefix: &str) -> Result<Value> {
        let weight_name = format!("{prefix}.weight");
        let shape = ckpt.shape(&weight_name)?;
        let (out, inp) = match shape.as_slice() {
            [o, i] => (*o as i64, *i as i64),
            _ => {
                return Err(crate::error::BuilderError::BadTensor {
                    path: ckpt.info(&weight_name)?.file,
                    tensor: weight_name,
                    message: format!("a linear weight must be 2-D, got {shape:?}"),
                });
            }
        };
        let bias_name = format!("{prefix}.bias");
        if let Some(quant) = self.weight_quant() {
            let parts = self.quantized_weight(ckpt, &weight_name, quant)?;
            let bias = if ckpt.contains(&bias_name) {
                ckpt.expect_shape(&bias_name, &[out as usize])?;
                Some(self.weight(ckpt, &bias_name)?)
            } else {
                None
            };
            let none = GraphBuilder::none();
            let mut inputs: Vec<&Value> = std::iter::once(x).chain(parts.iter()).collect();
            if let Some(bias) = &bias {
                // Both kernels take one optional input between the weight's parts and the bias
                // (MatMulNBits' g_idx: blocks are in order; DynamicQuantizeMatMul's zero point
                // of B: the codes are symmetric): left out.
                inputs.extend([&none, bias]);
            }
            return Ok(match quant {
                WeightQuant::Blocks(blocks) => self.ms_op(
                    "MatMulNBits",
                    &inputs,
                    vec![
                        Attr::int("K", inp),
                        Attr::int("N", out),
                        Attr::int("bits", i64::from(blocks.bits)),
                        Attr::int("block_size", blocks.block as i64),
                        Attr::int("accuracy_level", MATMUL_NBITS_ACCURACY),
                    ],
                ),
                WeightQuant::Channels8 => self.ms_op("DynamicQuantizeMatMul", &inputs, vec![]),
            });
        }
        let w = self.weight(ckpt, &weight_name)?;
        let mut inputs = vec![];
        let flat = self.reshape(x, &[-1, inp]);
        inputs.push(flat);
        inputs.push(w);
        if ckpt.contains(&bias_name) {
            ckpt.expect_shape(&bias_name, &[out as usize])?;
            inputs.push(self.weight(ckpt, &bias_name)?);
        }
        let refs: Vec<&Value> = inputs.iter().collect();
        let y = self.op("Gemm", &refs, vec![Attr::int("transB", 1)]);
        let lead = self.shape_of(x, 0, Some(-1));
        let last = self.ints(&[out]);
        let shape = self.concat(&[&lead, &last], 0);
        Ok(self.reshape_to(&y, &shape))
    }

    /// LayerNorm over the last axis with checkpoint `prefix.weight` / `prefix.bias`.
    pub fn layer_norm(
        &mut self,
        x: &Value,
        ckpt: &Checkpoint,
        prefix: &str,
        eps: f32,
    ) -> Result<Value> {
        let g = self.weight(ckpt, &format!("{prefix}.weight"))?;
        let b = self.weight(ckpt, &format!("{prefix}.bias"))?;
        Ok(self.op(
            "LayerNormalization",
            &[x, &g, &b],
            vec![Attr::int("axis", -1), Attr::float("epsilon", eps)],
        ))
    }

    /// LayerNorm over the last axis without affine parameters (`elementwise_affine=False`).
    pub fn layer_norm_plain(&mut self, x: &Value, dim: usize, eps: f32) -> Value {
        let g = self.const_float("ln_ones", &[dim as i64], &vec![1.0; dim]);
        let b = self.const_float("ln_zeros", &[dim as i64], &vec![0.0; dim]);
        self.op(
            "LayerNormalization",
            &[x, &g, &b],
            vec![Attr::int("axis", -1), Attr::float("epsilon", eps)],
        )
    }

    /// RMSNorm over the last axis, `x / sqrt(mean(x²) + eps) * weight` (T5, FLUX's QK norm),
    /// as ORT's `SimplifiedLayerNormalization` (computes in f32).
    pub fn rms_norm(
        &mut self,
        x: &Value,
        ckpt: &Checkpoint,
        weight: &str,
        eps: f32,
    ) -> Result<Value> {
        let g = self.weight(ckpt, weight)?;
        Ok(self.op(
            "SimplifiedLayerNormalization",
            &[x, &g],
            vec![Attr::int("axis", -1), Attr::float("epsilon", eps)],
        ))
    }

    /// GroupNorm of an NCHW tensor with checkpoint `prefix.weight` / `prefix.bias` `[C]`.
    pub fn group_norm(
        &mut self,
        x: &Value,
        ckpt: &Checkpoint,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f32,
    ) -> Result<Value> {
        let (wn, bn) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        ckpt.expect_shape(&wn, &[channels])?;
        ckpt.expect_shape(&bn, &[channels])?;
        let grouped = self.reshape(x, &[0, groups as i64, -1]);
        let ones = self.const_float("gn_ones", &[groups as i64], &vec![1.0; groups]);
        let zeros = self.const_float("gn_zeros", &[groups as i64], &vec![0.0; groups]);
        let normed = self.op(
            "InstanceNormalization",
            &[&grouped, &ones, &zeros],
            vec![Attr::float("epsilon", eps)],
        );
        let shape = self.shape_of(x, 0, None);
        let back = self.reshape_to(&normed, &shape);
        // [C] -> [C, 1, 1]: a Reshape of the initializer, folded by ORT at load (the stored
        // tensor stays zero-copy).
        let w = self.weight(ckpt, &wn)?;
        let b = self.weight(ckpt, &bn)?;
        let w = self.reshape(&w, &[-1, 1, 1]);
        let b = self.reshape(&b, &[-1, 1, 1]);
        let scaled = self.mul(&back, &w);
        Ok(self.add(&scaled, &b))
    }

    /// 2-D convolution with checkpoint `prefix.weight` `[O, I, k, k]` (+ `prefix.bias`).
    pub fn conv2d(
        &mut self,
        x: &Value,
        ckpt: &Checkpoint,
        prefix: &str,
        stride: i64,
        pad: i64,
    ) -> Result<Value> {
        let wn = format!("{prefix}.weight");
        let shape = ckpt.shape(&wn)?;
        if shape.len() != 4 {
            return Err(crate::error::BuilderError::BadTensor {
                path: ckpt.info(&wn)?.file,
                tensor: wn,
                message: format!("a conv weight must be 4-D, got {shape:?}"),
            });
        }
        let w = self.weight(ckpt, &wn)?;
        let mut inputs = vec![w];
        let bn = format!("{prefix}.bias");
        if ckpt.contains(&bn) {
            ckpt.expect_shape(&bn, &[shape[0]])?;
            inputs.push(self.weight(ckpt, &bn)?);
        }
        let mut refs: Vec<&Value> = vec![x];
        refs.extend(inputs.iter());
        Ok(self.op(
            "Conv",
            &refs,
            vec![
                Attr::ints("kernel_shape", &[shape[2] as i64, shape[3] as i64]),
                Attr::ints("strides", &[stride, stride]),
                Attr::ints("pads", &[pad, pad, pad, pad]),
            ],
        ))
    }
}
