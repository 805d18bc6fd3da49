//! A port of PyTorch's CPU random generator, so that a seed gives the same noise as
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`,
//! bit for bit.
//!
//! What PyTorch does (ATen `MT19937RNGEngine.h`, `CPUGeneratorImpl.cpp`, `DistributionsHelper.h`,
//! `native/cpu/DistributionTemplates.h`), and therefore what this module does:
//!
//! * The engine is the standard 32-bit Mersenne Twister, seeded with the low 32 bits of the seed.
//! * A `float` uniform in [0, 1) takes the low 24 bits of one 32-bit draw times 2^-24; a `double`
//!   uniform takes the low 53 bits of a 64-bit draw (first 32-bit draw in the high half) times 2^-53.
//! * `randn` of a contiguous float32 tensor with at least 16 elements first fills the whole tensor
//!   with float uniforms, then transforms it in blocks of 16 with Box–Muller in float precision:
//!   for `j` in 0..8, `u1 = 1 - x[j]`, `u2 = x[j + 8]`, `r = sqrt(-2 ln u1)`, `θ = 2π·u2`,
//!   `x[j] = r cos θ`, `x[j + 8] = r sin θ`. When the length is not a multiple of 16, 16 fresh
//!   uniforms overwrite the last 16 elements, which are transformed again as one more block.
//! * With fewer than 16 elements every value comes from the double-precision normal distribution,
//!   which makes two values per pair of double uniforms and caches the second (`r sin θ`) in the
//!   generator for the next call.
//!
//! The block transform exists in two versions, and which one PyTorch runs decides the last bits:
//!
//! * [`NormalKernel::X86Avx2`]: x86-64 PyTorch on a CPU with AVX2 — including AVX-512 machines,
//!   measured with torch 2.15 — runs `normal_fill_AVX2`, whose `log` and `sincos` are the
//!   Cephes-derived polynomials of `avx_mathfun.h`, evaluated in float with the multiply-adds
//!   fused (GCC contracts the intrinsics' `*` and `+` into FMA). `θ = (float)2π · u2` is a float
//!   product. This is the default: it is what the fixtures' machine and typical servers produce.
//! * [`NormalKernel::Scalar`]: the portable `normal_fill_16` (PyTorch without AVX2, or with
//!   `ATEN_CPU_CAPABILITY=default`) uses the C library's `logf`, `cosf`, `sinf` — what Rust's
//!   `f32::ln`/`cos`/`sin` call on Linux — and forms `2π · u2` in double before narrowing.
//!
//! Both were checked bit for bit against torch 2.15 on ~400 random seed/length pairs each
//! (lengths 1 to 5000 and four 262 144-element tensors).

use ndarray::{ArrayD, IxDyn};

use crate::{FluxError, Result};

/// Number of 32-bit words of Mersenne Twister state.
const MT_STATE_WORDS: usize = 624;
const MT_SHIFT_WORDS: usize = 397;
const MT_MATRIX_A: u32 = 0x9908_b0df;
const MT_UPPER_MASK: u32 = 0x8000_0000;
const MT_LOWER_MASK: u32 = 0x7fff_ffff;
const MT_INIT_MULTIPLIER: u32 = 1_812_433_253;

/// Float uniforms keep this many random bits (the `float` mantissa including the implicit bit).
const FLOAT_DIGITS: u32 = f32::MANTISSA_DIGITS;
/// Double uniforms keep this many random bits.
const DOUBLE_DIGITS: u32 = f64::MANTISSA_DIGITS;

/// PyTorch switches from the double-precision sampler to the block kernel at this length.
const BLOCK_LEN: usize = 16;
const HALF_BLOCK: usize = BLOCK_LEN / 2;

/// Which of PyTorch's two float32 normal kernels to reproduce (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NormalKernel {
    /// `normal_fill_AVX2`: x86-64 PyTorch on any CPU with AVX2 (AVX-512 machines included).
    #[default]
    X86Avx2,
    /// The portable scalar `normal_fill_16` with the C library's `logf`/`sinf`/`cosf`.
    Scalar,
}

/// The 32-bit Mersenne Twister (MT19937), as `std::mt19937` and `at::mt19937` define it.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_STATE_WORDS],
    next_index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // 624 words of state help nobody reading a debug print.
        f.debug_struct("Mt19937")
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    /// Seeds the engine the standard way (Knuth's multiplier over the previous word).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_STATE_WORDS];
        state[0] = seed;
        for index in 1..MT_STATE_WORDS {
            let previous = state[index - 1];
            // `index < 624`, so the cast is lossless.
            state[index] = MT_INIT_MULTIPLIER
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(index as u32);
        }
        Self {
            state,
            // Forces a twist before the first output, as the reference does.
            next_index: MT_STATE_WORDS,
        }
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.next_index >= MT_STATE_WORDS {
            self.twist();
        }
        let mut y = self.state[self.next_index];
        self.next_index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn twist(&mut self) {
        for index in 0..MT_STATE_WORDS {
            let mixed = (self.state[index] & MT_UPPER_MASK)
                | (self.state[(index + 1) % MT_STATE_WORDS] & MT_LOWER_MASK);
            let mut next = self.state[(index + MT_SHIFT_WORDS) % MT_STATE_WORDS] ^ (mixed >> 1);
            if mixed & 1 != 0 {
                next ^= MT_MATRIX_A;
            }
            self.state[index] = next;
        }
        self.next_index = 0;
    }
}

/// PyTorch's CPU generator (`torch.Generator("cpu")`): the engine plus the cached second
/// Box–Muller sample of the double-precision normal sampler.
///
/// Draws advance the state exactly as PyTorch's do, so successive calls on one generator give
/// the same sequence as successive calls on one `torch.Generator`.
#[derive(Debug, Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    cached_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// Same as `torch.Generator("cpu").manual_seed(seed)`. PyTorch's engine keeps only the low
    /// 32 bits of the seed, so seeds that differ only above bit 31 give the same stream.
    pub fn new(seed: u64) -> Self {
        // Truncation to the low 32 bits is what PyTorch does.
        let low_bits = (seed & u64::from(u32::MAX)) as u32;
        Self {
            engine: Mt19937::new(low_bits),
            cached_double_normal: None,
        }
    }

    /// One 32-bit draw (`CPUGeneratorImpl::random`).
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// One 64-bit draw made of two 32-bit ones, the first in the high half
    /// (`CPUGeneratorImpl::random64`).
    pub fn random64(&mut self) -> u64 {
        let high = u64::from(self.engine.next_u32());
        let low = u64::from(self.engine.next_u32());
        (high << 32) | low
    }

    /// A float uniform in [0, 1) from the low 24 bits of one draw.
    pub fn uniform_f32(&mut self) -> f32 {
        let bits = self.random() & ((1u32 << FLOAT_DIGITS) - 1);
        // 24 bits convert to f32 exactly, and the power-of-two scale is exact too.
        bits as f32 * (1.0 / (1u32 << FLOAT_DIGITS) as f32)
    }

    /// A double uniform in [0, 1) from the low 53 bits of a 64-bit draw.
    pub fn uniform_f64(&mut self) -> f64 {
        let bits = self.random64() & ((1u64 << DOUBLE_DIGITS) - 1);
        // 53 bits convert to f64 exactly.
        bits as f64 * (1.0 / (1u64 << DOUBLE_DIGITS) as f64)
    }

    /// A standard normal sample from PyTorch's `normal_distribution<double>`: Box–Muller on two
    /// double uniforms, returning `r cos θ` now and `r sin θ` on the next call.
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_double_normal.take() {
            return cached;
        }
        let angle_uniform = self.uniform_f64();
        let radius_uniform = self.uniform_f64();
        let radius = (-2.0 * (-radius_uniform).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * angle_uniform;
        self.cached_double_normal = Some(with_unit_moments_f64(radius * theta.sin()));
        with_unit_moments_f64(radius * theta.cos())
    }

    /// `numel` standard normal float32 values, as `torch.randn` on this generator produces for
    /// any contiguous float32 tensor of that many elements when PyTorch runs `kernel`.
    pub fn randn_f32(&mut self, numel: usize, kernel: NormalKernel) -> Vec<f32> {
        if numel < BLOCK_LEN {
            // PyTorch casts the double sample to float (round to nearest).
            return (0..numel).map(|_| self.normal_f64() as f32).collect();
        }
        let transform = match kernel {
            NormalKernel::X86Avx2 => box_muller_block_avx2,
            NormalKernel::Scalar => box_muller_block_scalar,
        };
        let mut values: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in values.chunks_exact_mut(BLOCK_LEN) {
            transform(block);
        }
        if !numel.is_multiple_of(BLOCK_LEN) {
            // PyTorch redraws the whole last block rather than handling a partial one, so the
            // last 16 values come from 16 new uniforms (overwriting part of a finished block).
            let tail = &mut values[numel - BLOCK_LEN..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            transform(tail);
        }
        values
    }
}

/// Box–Muller on 16 float uniforms in place, in the precision and operation order of PyTorch's
/// scalar `normal_fill_16` (with mean 0 and standard deviation 1, which are exact no-ops).
fn box_muller_block_scalar(block: &mut [f32]) {
    let (cos_half, sin_half) = block.split_at_mut(HALF_BLOCK);
    for (cos_slot, sin_slot) in cos_half.iter_mut().zip(sin_half.iter_mut()) {
        // [0, 1) -> (0, 1] so the logarithm is finite.
        let u1 = 1.0f32 - *cos_slot;
        let u2 = *sin_slot;
        let radius = (-2.0f32 * u1.ln()).sqrt();
        // The reference multiplies by 2π as a double and only then narrows to float.
        let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
        *cos_slot = with_unit_moments(radius * theta.cos());
        *sin_slot = with_unit_moments(radius * theta.sin());
    }
}

/// Box–Muller on 16 float uniforms in place, as PyTorch's `normal_fill_16_AVX2` computes it.
fn box_muller_block_avx2(block: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let (cos_half, sin_half) = block.split_at_mut(HALF_BLOCK);
    for (cos_slot, sin_slot) in cos_half.iter_mut().zip(sin_half.iter_mut()) {
        let u1 = 1.0f32 - *cos_slot;
        let u2 = *sin_slot;
        let radius = (-2.0f32 * cephes::log(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = cephes::sincos(theta);
        *cos_slot = with_unit_moments(radius * cos);
        *sin_slot = with_unit_moments(radius * sin);
    }
}

/// `value · std + mean` with PyTorch's default std 1 and mean 0. Multiplying by one changes
/// nothing, but adding +0 turns a -0 into +0: when a uniform is exactly 0 the radius is 0 and
/// `r cos θ` can be -0, which PyTorch returns as +0.
fn with_unit_moments(value: f32) -> f32 {
    value + 0.0
}

/// The double-precision twin of [`with_unit_moments`].
fn with_unit_moments_f64(value: f64) -> f64 {
    value + 0.0
}

mod cephes {
    //! Scalar copies of the Cephes-derived float `log` and `sincos` of `avx_mathfun.h`, lane by
    //! lane, so that each result matches the vector code bit for bit.

    /// The vector code's `a * b + c` as the compiler emits it: one fused multiply-add, rounded
    /// once. (Where both addends are products, GCC fuses the one computed first; the call sites
    /// below follow that.)
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    // The C header writes these as double literals stored into float arrays: convert the same way
    // (decimal to double to float, which is not always decimal to float).
    const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const LOG_P: [f32; 9] = [
        7.037_683_629_2e-2_f64 as f32,
        -1.151_461_031_0e-1_f64 as f32,
        1.167_699_874_0e-1_f64 as f32,
        -1.242_014_084_6e-1_f64 as f32,
        1.424_932_278_7e-1_f64 as f32,
        -1.666_805_766_5e-1_f64 as f32,
        2.000_071_476_5e-1_f64 as f32,
        -2.499_999_399_3e-1_f64 as f32,
        3.333_333_117_4e-1_f64 as f32,
    ];
    const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
    const LOG_Q2: f32 = 0.693_359_375_f64 as f32;

    const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
    #[allow(
        clippy::excessive_precision,
        reason = "the reference's literals, verbatim"
    )]
    const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
    #[allow(
        clippy::excessive_precision,
        reason = "the reference's literals, verbatim"
    )]
    const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
    const SIN_P: [f32; 3] = [
        -1.951_529_589_1e-4_f64 as f32,
        8.332_160_873_6e-3_f64 as f32,
        -1.666_665_461_1e-1_f64 as f32,
    ];
    const COS_P: [f32; 3] = [
        2.443_315_711_809_948e-5_f64 as f32,
        -1.388_731_625_493_765e-3_f64 as f32,
        4.166_664_568_298_827e-2_f64 as f32,
    ];
    const FOUR_OVER_PI: f32 = 1.273_239_544_735_16_f64 as f32;

    /// Natural logarithm of a positive normal float.
    pub(super) fn log(x: f32) -> f32 {
        let x = x.max(f32::MIN_POSITIVE);
        let bits = x.to_bits();
        // Biased exponent minus 127, as the integer shift-and-subtract does it.
        let exponent = (bits >> 23) as i32 - 0x7f;
        let mut e = exponent as f32 + 1.0;
        // Mantissa scaled into [0.5, 1).
        let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        let below = m < SQRT_HALF;
        let tmp = if below { m } else { 0.0 };
        m -= 1.0;
        e -= if below { 1.0 } else { 0.0 };
        m += tmp;
        let z = m * m;
        let mut y = LOG_P[0];
        for &coefficient in &LOG_P[1..] {
            y = mul_add(y, m, coefficient);
        }
        y *= m;
        y = mul_add(y, z, e * LOG_Q1);
        y = mul_add(-z, 0.5, y);
        m += y;
        mul_add(e, LOG_Q2, m)
    }

    /// Sine and cosine of a float of moderate magnitude (|x| < 8192).
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        let sign_sin = x.to_bits() & 0x8000_0000;
        let mut x = x.abs();
        // Octant index rounded up to even; truncation as `cvttps` does.
        let octant = ((x * FOUR_OVER_PI) as i32 + 1) & !1;
        let y = octant as f32;
        let swap_sign_sin = ((octant & 4) as u32) << 29;
        let use_sin_poly = octant & 2 == 0;
        x = mul_add(y, MINUS_DP1, x);
        x = mul_add(y, MINUS_DP2, x);
        x = mul_add(y, MINUS_DP3, x);
        let sign_cos = ((!(octant - 2) & 4) as u32) << 29;
        let sign_sin = sign_sin ^ swap_sign_sin;

        let z = x * x;
        let mut cos_poly = COS_P[0];
        cos_poly = mul_add(cos_poly, z, COS_P[1]);
        cos_poly = mul_add(cos_poly, z, COS_P[2]);
        cos_poly *= z;
        cos_poly = mul_add(cos_poly, z, -(z * 0.5));
        cos_poly += 1.0;

        let mut sin_poly = SIN_P[0];
        sin_poly = mul_add(sin_poly, z, SIN_P[1]);
        sin_poly = mul_add(sin_poly, z, SIN_P[2]);
        sin_poly *= z;
        sin_poly = mul_add(sin_poly, x, x);

        let (sin, cos) = if use_sin_poly {
            (sin_poly, cos_poly)
        } else {
            (cos_poly, sin_poly)
        };
        (
            f32::from_bits(sin.to_bits() ^ sign_sin),
            f32::from_bits(cos.to_bits() ^ sign_cos),
        )
    }
}

/// Standard normal float32 noise of `shape` for `seed`, bit-identical to
/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`
/// as x86-64 PyTorch computes it ([`NormalKernel::X86Avx2`]).
///
/// Errors when the number of elements overflows `usize`.
pub fn randn(seed: u64, shape: &[usize]) -> Result<ArrayD<f32>> {
    randn_with_kernel(seed, shape, NormalKernel::default())
}

/// [`randn`] reproducing a chosen PyTorch kernel.
pub fn randn_with_kernel(seed: u64, shape: &[usize], kernel: NormalKernel) -> Result<ArrayD<f32>> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| FluxError::InvalidInput {
            param: "shape",
            message: format!("noise shape {shape:?} has more elements than fit in memory"),
        })?;
    let values = TorchGenerator::new(seed).randn_f32(numel, kernel);
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|err| FluxError::Shape {
        op: "randn",
        expected: format!("{numel} elements ({err})"),
        got: shape.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_standard_vector_for_seed_5489() {
        let mut engine = Mt19937::new(5489);
        let first: Vec<u32> = (0..5).map(|_| engine.next_u32()).collect();
        assert_eq!(
            first,
            [
                3_499_211_612,
                581_869_302,
                3_890_346_734,
                3_586_334_585,
                545_404_204
            ]
        );
        // The C++ standard fixes the 10000th output of a default-seeded mt19937.
        let mut engine = Mt19937::new(5489);
        let ten_thousandth = (0..10_000).map(|_| engine.next_u32()).last();
        assert_eq!(ten_thousandth, Some(4_123_659_995));
    }

    #[test]
    fn generator_uses_only_the_low_32_bits_of_the_seed() {
        let mut low = TorchGenerator::new(7);
        let mut high = TorchGenerator::new(7 | (1 << 40));
        for _ in 0..10 {
            assert_eq!(low.random(), high.random());
        }
    }

    #[test]
    fn random64_puts_the_first_draw_in_the_high_half() {
        let mut engine = Mt19937::new(5489);
        let (a, b) = (engine.next_u32(), engine.next_u32());
        let mut generator = TorchGenerator::new(5489);
        assert_eq!(generator.random64(), (u64::from(a) << 32) | u64::from(b));
    }

    #[test]
    fn uniforms_lie_in_the_half_open_unit_interval() {
        let mut generator = TorchGenerator::new(0);
        for _ in 0..10_000 {
            let single = generator.uniform_f32();
            let double = generator.uniform_f64();
            assert!((0.0..1.0).contains(&single), "{single}");
            assert!((0.0..1.0).contains(&double), "{double}");
        }
    }

    #[test]
    fn short_tensors_pair_up_cached_double_samples() {
        // Two values from one Box–Muller pair: their squares sum to r^2 = -2 ln(1 - u).
        let mut reference = TorchGenerator::new(3);
        let angle = reference.uniform_f64();
        let radius_uniform = reference.uniform_f64();
        let radius = (-2.0 * (-radius_uniform).ln_1p()).sqrt();
        let values = TorchGenerator::new(3).randn_f32(2, NormalKernel::X86Avx2);
        assert_eq!(
            values[0],
            (radius * (2.0 * std::f64::consts::PI * angle).cos()) as f32
        );
        assert_eq!(
            values[1],
            (radius * (2.0 * std::f64::consts::PI * angle).sin()) as f32
        );
    }

    #[test]
    fn tail_block_is_redrawn_from_fresh_uniforms() {
        // The first 16 of 17 values equal the first 16 of 16 values, except the last 15 of them,
        // which the redrawn tail block overwrites.
        let exact = TorchGenerator::new(11).randn_f32(16, NormalKernel::X86Avx2);
        let longer = TorchGenerator::new(11).randn_f32(17, NormalKernel::X86Avx2);
        assert_eq!(exact[0].to_bits(), longer[0].to_bits());
        assert_ne!(exact[1..], longer[1..16]);
    }

    #[test]
    fn randn_has_the_requested_shape_and_sane_moments() {
        let noise = randn(42, &[2, 16, 8, 8]).expect("shape fits");
        assert_eq!(noise.shape(), &[2, 16, 8, 8]);
        let count = noise.len() as f64;
        let mean = noise.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
        let variance = noise
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / count;
        // 2048 samples: the standard error of the mean is about 0.022.
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((variance - 1.0).abs() < 0.15, "variance {variance}");
    }

    #[test]
    fn randn_rejects_an_overflowing_shape() {
        assert!(matches!(
            randn(0, &[usize::MAX, 2]),
            Err(FluxError::InvalidInput { param: "shape", .. })
        ));
    }

    #[test]
    fn empty_shapes_give_empty_noise() {
        assert_eq!(randn(0, &[0, 16]).expect("empty is fine").len(), 0);
        assert_eq!(randn(0, &[]).expect("scalar").len(), 1);
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    // Expected bits printed by torch 2.15 on x86-64: `torch.randn(17, generator=
    // torch.Generator().manual_seed(0)).view(torch.int32)`, with `ATEN_CPU_CAPABILITY=default`
    // for the scalar kernel and `avx2` for the vector one.
    const SEED0_17_SCALAR: [u32; 17] = [
        0xbf901b85, 0xbfd91447, 0x3f111002, 0x3f4b235e, 0x3f194d8b, 0xbfc70d5b, 0xbeaec6c7,
        0x3fed2f4e, 0x3eefaa55, 0xbf15e324, 0xbe318efd, 0x3e3be1a3, 0x3fb1d6c0, 0x3fcb0d01,
        0x3f72409c, 0xbf57fb34, 0x3f6e8c31,
    ];
    const SEED0_17_AVX2: [u32; 17] = [
        0xbf901b85, 0xbfd91446, 0x3f111004, 0x3f4b235d, 0x3f194d8b, 0xbfc70d5b, 0xbeaec6ca,
        0x3fed2f4e, 0x3eefaa55, 0xbf15e32b, 0xbe318eeb, 0x3e3be1a4, 0x3fb1d6c0, 0x3fcb0d00,
        0x3f72409c, 0xbf57fb33, 0x3f6e8c30,
    ];

    #[test]
    fn scalar_kernel_matches_torch_default_capability() {
        let values = TorchGenerator::new(0).randn_f32(17, NormalKernel::Scalar);
        assert_eq!(bits(&values), SEED0_17_SCALAR);
    }

    #[test]
    fn avx2_kernel_matches_torch_avx2_capability() {
        let values = TorchGenerator::new(0).randn_f32(17, NormalKernel::X86Avx2);
        assert_eq!(bits(&values), SEED0_17_AVX2);
        let default = randn(0, &[17]).expect("small shape");
        assert_eq!(bits(default.as_slice().expect("contiguous")), SEED0_17_AVX2);
    }

    #[test]
    fn cephes_functions_are_accurate() {
        // Not the parity check (that is bit-exact against torch), but a guard against a typo in a
        // coefficient: the polynomials are good to a few float ulps over the ranges we use.
        for step in 1..=4096u32 {
            let x = step as f32 / 4096.0;
            let log_error = (f64::from(cephes::log(x)) - f64::from(x).ln()).abs();
            assert!(
                log_error <= 4.0 * f64::from(f32::EPSILON),
                "log({x}) off by {log_error}"
            );
            let theta = x * (2.0 * std::f32::consts::PI);
            let (sin, cos) = cephes::sincos(theta);
            let theta = f64::from(theta);
            assert!(
                (f64::from(sin) - theta.sin()).abs() < 4.0 * f64::from(f32::EPSILON),
                "sin({theta})"
            );
            assert!(
                (f64::from(cos) - theta.cos()).abs() < 4.0 * f64::from(f32::EPSILON),
                "cos({theta})"
            );
        }
    }

    #[test]
    fn a_zero_radius_gives_positive_zeros_as_torch_does() {
        // In torch.randn(298496, generator=torch.Generator().manual_seed(34)) the uniform behind
        // elements 298484 and 298492 is exactly 0, so the radius is -0 and the raw products are
        // -0; torch returns +0 for both.
        let values = TorchGenerator::new(34).randn_f32(298_496, NormalKernel::X86Avx2);
        assert_eq!(values[298_484].to_bits(), 0);
        assert_eq!(values[298_492].to_bits(), 0);
        assert_eq!(with_unit_moments(-0.0).to_bits(), 0);
        assert_eq!(with_unit_moments_f64(-0.0).to_bits(), 0);
    }
}
