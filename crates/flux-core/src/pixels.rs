//! From VAE output to image files: float planes in about `[-1, 1]` to RGB bytes, rounded exactly as
//! diffusers' `VaeImageProcessor.postprocess(output_type="pil")` does, then JPEG or PNG.

use std::io::Cursor;

use flux_types::OutputFormat;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use ndarray::ArrayView4;

use crate::{FluxError, Result};

/// JPEG quality of our output: high enough that the compression is hard to see, at a fraction of
/// the PNG size. (Pillow's default of 75 shows blocking on smooth generated gradients.)
pub const JPEG_QUALITY: u8 = 95;

/// One float of a VAE image to a byte, in diffusers' float32 operation order:
/// `clamp(x * 0.5 + 0.5, 0, 1)` (torch), then `round(v * 255)` with ties to even (numpy), then the
/// cast to `uint8`. A NaN becomes 0, as numpy's cast gives on x86-64.
pub fn to_u8(value: f32) -> u8 {
    let unit = (value * 0.5 + 0.5).clamp(0.0, 1.0);
    // In [0, 255] after the clamp. Adding and subtracting 2^23 rounds to an integer with ties to
    // even (the float32 default rounding), exactly what `round_ties_even` gives in this range,
    // without the library call that baseline x86-64 makes for it. NaN stays NaN and casts to 0.
    const ROUNDING_BIAS: f32 = 8_388_608.0;
    ((unit * 255.0 + ROUNDING_BIAS) - ROUNDING_BIAS) as u8
}

/// Converts decoded images `[B, 3, H, W]` to RGB images. Errors when there are not exactly three
/// channels or a side is zero or does not fit an image dimension.
pub fn to_rgb8(images: ArrayView4<f32>) -> Result<Vec<RgbImage>> {
    let (_, channels, height, width) = images.dim();
    let side = |pixels: usize| u32::try_from(pixels).ok().filter(|&p| p > 0);
    let (Some(height_u32), Some(width_u32)) = (side(height), side(width)) else {
        return Err(shape_error(images.shape()));
    };
    if channels != 3 {
        return Err(shape_error(images.shape()));
    }
    images
        .outer_iter()
        .map(|planes| {
            // Contiguous planes (a copy only for an unusual memory layout), then one pass that
            // interleaves them: indexing `[c, y, x]` per byte cost ~30 ms at 1024².
            let planes = planes.as_standard_layout();
            let values = planes
                .as_slice()
                .ok_or_else(|| shape_error(images.shape()))?;
            let (red, rest) = values.split_at(height * width);
            let (green, blue) = rest.split_at(height * width);
            let mut bytes = vec![0u8; height * width * 3];
            for (pixel, ((&r, &g), &b)) in bytes
                .chunks_exact_mut(3)
                .zip(red.iter().zip(green).zip(blue))
            {
                pixel.copy_from_slice(&[to_u8(r), to_u8(g), to_u8(b)]);
            }
            RgbImage::from_raw(width_u32, height_u32, bytes)
                .ok_or_else(|| shape_error(images.shape()))
        })
        .collect()
}

fn shape_error(got: &[usize]) -> FluxError {
    FluxError::Shape {
        op: "to_rgb8",
        expected: "[batch, 3, height > 0, width > 0]".to_owned(),
        got: got.to_vec(),
    }
}

/// Encodes an image as JPEG (quality [`JPEG_QUALITY`], 4:4:4) or lossless PNG.
pub fn encode(image: &RgbImage, format: OutputFormat) -> Result<Vec<u8>> {
    let (width, height) = image.dimensions();
    match format {
        OutputFormat::Jpeg => {
            let too_large = || {
                FluxError::ImageEncode(format!(
                    "Jpeg: {width}x{height} exceeds JPEG's 65535-pixel side"
                ))
            };
            let jpeg_width = u16::try_from(width).map_err(|_| too_large())?;
            let jpeg_height = u16::try_from(height).map_err(|_| too_large())?;
            let mut bytes = Vec::with_capacity(image.as_raw().len() / 4);
            let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, JPEG_QUALITY);
            // Full-resolution chroma (4:4:4): generated images have fine coloured detail that
            // subsampling visibly smears, and the bytes grow by only about a fifth.
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
            encoder
                .encode(
                    image.as_raw(),
                    jpeg_width,
                    jpeg_height,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map_err(|err| FluxError::ImageEncode(format!("Jpeg: {err}")))?;
            Ok(bytes)
        }
        OutputFormat::Png => {
            let mut bytes = Cursor::new(Vec::new());
            PngEncoder::new(&mut bytes)
                .write_image(image.as_raw(), width, height, ExtendedColorType::Rgb8)
                .map_err(|err| FluxError::ImageEncode(format!("Png: {err}")))?;
            Ok(bytes.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use image::ImageFormat;
    use ndarray::Array4;

    use super::*;

    #[test]
    fn endpoints_and_midpoint() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        // 0 maps to 0.5, 127.5, which rounds to the even 128.
        assert_eq!(to_u8(0.0), 128);
    }

    #[test]
    fn out_of_range_values_clamp() {
        assert_eq!(to_u8(-7.5), 0);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(f32::NEG_INFINITY), 0);
        assert_eq!(to_u8(f32::INFINITY), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn exact_halves_round_to_even() {
        // Inputs whose scaled value is exactly k + 0.5 in float32, with what numpy's
        // `(v * 255).round().astype("uint8")` gives for them (ties to even; half away from zero
        // would give 65, 66, 67).
        for (bits, half, expected) in [
            (0xbefc_fcfb_u32, 64.5f32, 64u8),
            (0xbef8_f8f7, 65.5, 66),
            (0xbef4_f4f3, 66.5, 66),
        ] {
            let x = f32::from_bits(bits);
            assert_eq!((x * 0.5 + 0.5) * 255.0, half, "{x}");
            assert_eq!(to_u8(x), expected, "{x}");
        }
    }

    #[test]
    fn to_rgb8_interleaves_planes_per_image() {
        let images = Array4::from_shape_fn((2, 3, 2, 3), |(b, c, y, x)| {
            // Distinct levels: ((value + 1) / 2) · 255 lands on integers for value = 2k/255 - 1.
            let level = (b * 100 + c * 30 + y * 10 + x) as f32;
            2.0 * level / 255.0 - 1.0
        });
        let rgb = to_rgb8(images.view()).expect("valid shape");
        assert_eq!(rgb.len(), 2);
        assert_eq!(rgb[1].dimensions(), (3, 2));
        assert_eq!(rgb[1].get_pixel(2, 1).0, [112, 142, 172]);
        assert_eq!(rgb[0].get_pixel(0, 0).0, [0, 30, 60]);
    }

    #[test]
    fn rounding_matches_round_ties_even_across_the_float_range() {
        // Every 251st bit pattern (NaNs, infinities, subnormals, both signs included), plus the
        // exact halves around every level.
        let reference =
            |value: f32| ((value * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
        for bits in (0..=u32::MAX).step_by(251) {
            let value = f32::from_bits(bits);
            assert_eq!(to_u8(value), reference(value), "{value:e} ({bits:#x})");
        }
        for level in 0..=255u16 {
            for offset in [-0.5f32, 0.5] {
                let scaled = f32::from(level) + offset;
                let value = (scaled / 255.0 - 0.5) / 0.5;
                for candidate in [value, value.next_down(), value.next_up()] {
                    assert_eq!(to_u8(candidate), reference(candidate), "{candidate:e}");
                }
            }
        }
    }

    #[test]
    fn to_rgb8_keeps_image_order_for_any_memory_layout() {
        use ndarray::ShapeBuilder;
        let level = |(b, c, y, x): (usize, usize, usize, usize)| {
            2.0 * (b * 100 + c * 30 + y * 10 + x) as f32 / 255.0 - 1.0
        };
        let row_major = Array4::from_shape_fn((2, 3, 2, 3), level);
        let column_major = Array4::from_shape_fn((2, 3, 2, 3).f(), level);
        assert!(!column_major.is_standard_layout());
        let expected = to_rgb8(row_major.view()).expect("valid shape");
        let actual = to_rgb8(column_major.view()).expect("valid shape");
        assert_eq!(actual, expected);
    }

    #[test]
    fn to_rgb8_rejects_other_shapes() {
        assert!(to_rgb8(Array4::<f32>::zeros((1, 4, 2, 2)).view()).is_err());
        assert!(to_rgb8(Array4::<f32>::zeros((1, 3, 0, 2)).view()).is_err());
        assert!(
            to_rgb8(Array4::<f32>::zeros((0, 3, 2, 2)).view())
                .expect("empty batch")
                .is_empty()
        );
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn png_round_trips_exactly() {
        let original = gradient(37, 21);
        let bytes = encode(&original, OutputFormat::Png).expect("encodes");
        assert_eq!(
            image::guess_format(&bytes).expect("known"),
            ImageFormat::Png
        );
        let decoded = image::load_from_memory(&bytes).expect("decodes").to_rgb8();
        assert_eq!(decoded, original);
    }

    #[test]
    fn jpeg_decodes_to_the_right_size_and_close_colours() {
        let original = RgbImage::from_pixel(48, 32, image::Rgb([200, 40, 90]));
        let bytes = encode(&original, OutputFormat::Jpeg).expect("encodes");
        assert_eq!(
            image::guess_format(&bytes).expect("known"),
            ImageFormat::Jpeg
        );
        let decoded = image::load_from_memory(&bytes).expect("decodes").to_rgb8();
        assert_eq!(decoded.dimensions(), (48, 32));
        // A flat colour survives quality-95 JPEG within a few levels (chroma subsampling and
        // YCbCr rounding).
        for (a, b) in decoded.pixels().zip(original.pixels()) {
            for channel in 0..3 {
                assert!(a.0[channel].abs_diff(b.0[channel]) <= 3, "{a:?} vs {b:?}");
            }
        }
    }

    /// Peak signal-to-noise ratio of `decoded` against `original`, in dB.
    fn psnr(original: &RgbImage, decoded: &RgbImage) -> f64 {
        let squared: f64 = original
            .as_raw()
            .iter()
            .zip(decoded.as_raw())
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let mse = squared / original.as_raw().len() as f64;
        10.0 * (255.0 * 255.0 / mse).log10()
    }

    #[test]
    fn jpeg_keeps_detail_at_odd_sizes() {
        // Odd sizes exercise partial 8x8 blocks; the gradient has sharp wrap-around edges in every
        // channel, which chroma subsampling would smear (to about 28 dB).
        for (width, height) in [(37, 21), (130, 67), (64, 64)] {
            let original = gradient(width, height);
            let bytes = encode(&original, OutputFormat::Jpeg).expect("encodes");
            let decoded = image::load_from_memory(&bytes).expect("decodes").to_rgb8();
            assert_eq!(decoded.dimensions(), (width, height));
            let quality = psnr(&original, &decoded);
            assert!(quality > 40.0, "{width}x{height}: PSNR {quality:.1} dB");
        }
    }
}
