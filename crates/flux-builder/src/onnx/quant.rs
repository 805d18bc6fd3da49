//! 8- and 4-bit linear weights for ONNX Runtime's quantized CPU kernels.
//!
//! Two layouts, chosen per component by `Precision::weight_quant`:
//!
//! **Blocks** (`com.microsoft.MatMulNBits`, used for int4 and for T5):
//! A linear layer's `[N, K]` matrix is cut along K into blocks of `block` values; each block gets
//! a scale and a zero point from its minimum and maximum (asymmetric, with 0 always inside the
//! range, so that padding and exact zeros stay exact), and each value becomes the code
//! `round(w / scale) + zero_point` in `0..2^bits`. MatMulNBits dequantizes `(code - zero_point) *
//! scale`. Codes and 4-bit zero points are packed two to a byte, the first in the low nibble.
//! The result's error per weight is at most half a scale step (tested below).
//!
//! **Channels** (`com.microsoft.DynamicQuantizeMatMul`, the transformer under int8): each output
//! channel (row of `[N, K]`) gets one symmetric scale `max|w| / 127` and int8 codes in -127..=127,
//! stored transposed as `[K, N]`. At run time ONNX Runtime quantizes the activations to uint8 per
//! tensor and multiplies in integers with MLAS' QGEMM (AVX-512 VNNI / AMX where the CPU has them):
//! about 5× the f32 GEMM's speed on an AMX Xeon. The per-tensor activation scale is the cost in
//! fidelity, which is why T5 (whose activations have outliers in the thousands) keeps blocks.

/// How a graph's linear weights are stored when quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightQuant {
    /// MatMulNBits' asymmetric blocks along K.
    Blocks(BlockQuant),
    /// DynamicQuantizeMatMul's symmetric int8 per output channel.
    Channels8,
}

impl WeightQuant {
    /// The suffixes of a quantized weight's initializers (`<name>.<suffix>`), in the kernel's
    /// input order: what the graph's node reads and what the store writes.
    pub fn parts(self) -> &'static [&'static str] {
        match self {
            Self::Blocks(_) => &["codes", "scales", "zero_points"],
            Self::Channels8 => &["codes", "scales"],
        }
    }
}

/// MatMulNBits' layout: `bits` per weight in blocks of `block` values along K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockQuant {
    /// 4 or 8.
    pub bits: u8,
    /// Values per block along K: a power of two, at least 16 (MatMulNBits' rule).
    pub block: usize,
}

/// One matrix in MatMulNBits' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    /// `[N, k_blocks, block * bits / 8]`.
    pub codes: Vec<u8>,
    /// `[N * k_blocks]`.
    pub scales: Vec<f32>,
    /// `[N * ceil(k_blocks * bits / 8)]`.
    pub zero_points: Vec<u8>,
    pub k_blocks: usize,
}

impl BlockQuant {
    fn levels(self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// Blocks per row of a K-wide matrix (the last one zero-padded).
    pub fn k_blocks(self, k: usize) -> usize {
        k.div_ceil(self.block)
    }

    /// Bytes of one block's codes.
    pub fn blob(self) -> usize {
        self.block * usize::from(self.bits) / 8
    }

    /// Bytes of one row's zero points.
    pub fn zero_point_row(self, k: usize) -> usize {
        (self.k_blocks(k) * usize::from(self.bits)).div_ceil(8)
    }

    /// Quantizes a row-major `[n, k]` matrix.
    pub fn quantize(self, values: &[f32], n: usize, k: usize) -> QuantizedMatrix {
        let k_blocks = self.k_blocks(k);
        let blob = self.blob();
        let zp_row = self.zero_point_row(k);
        let mut codes = vec![0u8; n * k_blocks * blob];
        let mut scales = vec![0f32; n * k_blocks];
        let mut zero_points = vec![0u8; n * zp_row];
        let levels = self.levels();
        let mut block_codes = vec![0u8; self.block];
        for row in 0..n {
            let row_values = &values[row * k..(row + 1) * k];
            for b in 0..k_blocks {
                let start = b * self.block;
                let block = &row_values[start..(start + self.block).min(k)];
                let (lo, hi) = block
                    .iter()
                    .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let scale = if hi > lo { (hi - lo) / levels } else { 1.0 };
                let zero_point = (-lo / scale).round().clamp(0.0, levels);
                // Padding (past K) takes the zero point's code: it dequantizes to exactly 0.
                block_codes.fill(zero_point as u8);
                for (code, &v) in block_codes.iter_mut().zip(block) {
                    *code = ((v / scale).round() + zero_point).clamp(0.0, levels) as u8;
                }
                scales[row * k_blocks + b] = scale;
                let out = &mut codes[(row * k_blocks + b) * blob..][..blob];
                pack(&block_codes, self.bits, out);
                let zp = zero_point as u8;
                let zps = &mut zero_points[row * zp_row..][..zp_row];
                if self.bits == 8 {
                    zps[b] = zp;
                } else {
                    zps[b / 2] |= zp << (4 * (b % 2));
                }
            }
        }
        QuantizedMatrix {
            codes,
            scales,
            zero_points,
            k_blocks,
        }
    }
}

fn pack(codes: &[u8], bits: u8, out: &mut [u8]) {
    if bits == 8 {
        out.copy_from_slice(codes);
    } else {
        for (byte, pair) in out.iter_mut().zip(codes.chunks(2)) {
            *byte = pair[0] | (pair.get(1).copied().unwrap_or(0) << 4);
        }
    }
}

impl QuantizedMatrix {
    /// The `[n, k]` matrix MatMulNBits computes with (for tests and error reports).
    pub fn dequantize(&self, quant: BlockQuant, n: usize, k: usize) -> Vec<f32> {
        let blob = quant.blob();
        let zp_row = quant.zero_point_row(k);
        let mut out = vec![0f32; n * k];
        for row in 0..n {
            for col in 0..k {
                let b = col / quant.block;
                let within = col % quant.block;
                let block = &self.codes[(row * self.k_blocks + b) * blob..][..blob];
                let zps = &self.zero_points[row * zp_row..][..zp_row];
                let (code, zp) = if quant.bits == 8 {
                    (block[within], zps[b])
                } else {
                    (
                        (block[within / 2] >> (4 * (within % 2))) & 0xF,
                        (zps[b / 2] >> (4 * (b % 2))) & 0xF,
                    )
                };
                out[row * k + col] =
                    (f32::from(code) - f32::from(zp)) * self.scales[row * self.k_blocks + b];
            }
        }
        out
    }
}

/// One matrix in DynamicQuantizeMatMul's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMatrix {
    /// `[K, N]` (the checkpoint's `[N, K]` transposed), codes in -127..=127.
    pub codes: Vec<i8>,
    /// `[N]`: output channel `j` is `codes[.., j] * scales[j]`.
    pub scales: Vec<f32>,
}

/// Quantizes a row-major `[n, k]` matrix with one symmetric scale per row (output channel).
/// -128 is never used, so that the codes are symmetric and a zero row stays exactly zero.
pub fn quantize_channels(values: &[f32], n: usize, k: usize) -> ChannelMatrix {
    let mut codes = vec![0i8; n * k];
    let mut scales = vec![1f32; n];
    for (row, scale) in scales.iter_mut().enumerate() {
        let row_values = &values[row * k..(row + 1) * k];
        let max = row_values.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max > 0.0 {
            *scale = max / 127.0;
        }
        for (col, &v) in row_values.iter().enumerate() {
            codes[col * n + row] = (v / *scale).round().clamp(-127.0, 127.0) as i8;
        }
    }
    ChannelMatrix { codes, scales }
}

impl ChannelMatrix {
    /// The `[n, k]` matrix DynamicQuantizeMatMul computes with (for tests and error reports).
    pub fn dequantize(&self, n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let (row, col) = (i / k, i % k);
                f32::from(self.codes[col * n + row]) * self.scales[row]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n: usize, k: usize) -> Vec<f32> {
        // Deterministic values of mixed sign and size, with exact zeros and a one-signed row.
        (0..n * k)
            .map(|i| {
                let x = ((i * 7919) % 1000) as f32 / 1000.0 - 0.4;
                match i % 11 {
                    0 => 0.0,
                    _ if i / k == 1 => x.abs() + 0.1,
                    _ => x * (1.0 + (i % 5) as f32),
                }
            })
            .collect()
    }

    #[test]
    fn every_weight_is_within_half_a_step_and_zeros_stay_zero() {
        for bits in [4u8, 8] {
            for (n, k) in [(3, 64), (4, 48), (2, 17)] {
                let quant = BlockQuant { bits, block: 32 };
                let w = matrix(n, k);
                let q = quant.quantize(&w, n, k);
                assert_eq!(q.codes.len(), n * quant.k_blocks(k) * quant.blob());
                assert_eq!(q.scales.len(), n * quant.k_blocks(k));
                assert_eq!(q.zero_points.len(), n * quant.zero_point_row(k));
                let back = q.dequantize(quant, n, k);
                for (i, (&a, &b)) in w.iter().zip(&back).enumerate() {
                    let scale = q.scales[(i / k) * q.k_blocks + (i % k) / quant.block];
                    assert!(
                        (a - b).abs() <= scale * 0.5 + 1e-6,
                        "bits {bits} [{n}x{k}] #{i}: {a} -> {b} (step {scale})"
                    );
                    if a == 0.0 {
                        assert_eq!(b, 0.0, "a zero weight stays zero");
                    }
                }
            }
        }
    }

    #[test]
    fn four_bit_codes_pack_low_nibble_first() {
        let quant = BlockQuant { bits: 4, block: 16 };
        // One row, one block: 0 and 15 steps apart, so codes are 0..=15 exactly.
        let w: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let q = quant.quantize(&w, 1, 16);
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.zero_points, vec![0]);
        assert_eq!(q.codes[0], 0x10);
        assert_eq!(q.codes[7], 0xFE);
    }

    #[test]
    fn a_constant_block_and_a_padded_block_dequantize_exactly() {
        let quant = BlockQuant { bits: 4, block: 16 };
        let w = vec![0.0f32; 20];
        let q = quant.quantize(&w, 1, 20);
        assert_eq!(q.dequantize(quant, 1, 20), w);
        let w: Vec<f32> = (0..20).map(|i| if i < 16 { 0.5 } else { -0.25 }).collect();
        let back = quant.quantize(&w, 1, 20).dequantize(quant, 1, 20);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
    }

    #[test]
    fn channel_codes_are_transposed_symmetric_and_within_half_a_step() {
        for (n, k) in [(3, 64), (5, 17), (1, 1)] {
            let w = matrix(n, k);
            let q = quantize_channels(&w, n, k);
            assert_eq!((q.codes.len(), q.scales.len()), (n * k, n));
            assert!(q.codes.iter().all(|&c| c != i8::MIN), "-128 is never used");
            let back = q.dequantize(n, k);
            for (i, (&a, &b)) in w.iter().zip(&back).enumerate() {
                let scale = q.scales[i / k];
                assert!(
                    (a - b).abs() <= scale * 0.5 + 1e-6,
                    "[{n}x{k}] #{i}: {a} -> {b}"
                );
                if a == 0.0 {
                    assert_eq!(b, 0.0, "a zero weight stays zero");
                }
            }
        }
        // Row 0 of [[1, -2], [0, 0]]: scale 2/127, codes stored column-major.
        let q = quantize_channels(&[1.0, -2.0, 0.0, 0.0], 2, 2);
        assert_eq!(q.codes, vec![64, 0, -127, 0]);
        assert_eq!(q.scales, vec![2.0 / 127.0, 1.0]);
    }
}
