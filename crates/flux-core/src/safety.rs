//! The optional safety checker: an ONNX image classifier (`pixel_values` `[B,3,224,224]` →
//! `logits` `[B,2]`, index 1 = nsfw) run on the final RGB images.
//!
//! Its input is the image resized to 224×224 the way Pillow's `Image.resize(…, BILINEAR)` does
//! it on 8-bit RGB (separable passes, horizontal first, fixed-point coefficients, rounding to 8
//! bits after each pass), then `(x/255 - 0.5) / 0.5`: the preprocessing the classifier was
//! calibrated with, reproduced so probabilities match the reference to 1e-4.

use image::RgbImage;
use ndarray::{Array4, Axis};

use crate::error::{FluxError, Result};
use crate::model::Graph;
use crate::tensors::{self, NamedInput};

/// Side of the square the classifier looks at.
pub const SAFETY_INPUT_SIZE: usize = 224;

/// Bits of Pillow's fixed-point resampling coefficients (32 bits minus 8 for the value and 2 of
/// headroom).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The nsfw probability of each image.
pub(crate) fn nsfw_probabilities(graph: &mut Graph, images: &[RgbImage]) -> Result<Vec<f32>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let pixel_values = pixel_values(images);
    let element = graph.float_type("pixel_values");
    let inputs: Vec<NamedInput<'_>> = vec![(
        "pixel_values".into(),
        tensors::float_input(pixel_values.view().into_dyn(), element, "safety checker")?,
    )];
    let mut session_time = std::time::Duration::ZERO;
    let outputs = graph.run(inputs, &mut session_time)?;
    let logits = outputs.f32("logits")?;
    if logits.shape() != [images.len(), 2] {
        return Err(FluxError::Shape {
            op: "safety checker logits",
            expected: format!("[{}, 2]", images.len()),
            got: logits.shape().to_vec(),
        });
    }
    Ok(logits
        .axis_iter(Axis(0))
        .map(|row| nsfw_probability(row[0], row[1]))
        .collect())
}

/// Softmax probability of class 1, computed the numerically stable way.
fn nsfw_probability(normal: f32, nsfw: f32) -> f32 {
    let max = normal.max(nsfw);
    let normal = (normal - max).exp();
    let nsfw = (nsfw - max).exp();
    nsfw / (normal + nsfw)
}

/// The classifier input for a batch of images: `[B,3,224,224]`.
pub fn pixel_values(images: &[RgbImage]) -> Array4<f32> {
    let mut batch = Array4::<f32>::zeros((images.len(), 3, SAFETY_INPUT_SIZE, SAFETY_INPUT_SIZE));
    for (image, mut planes) in images.iter().zip(batch.outer_iter_mut()) {
        let resized =
            resize_bilinear_like_pillow(image, SAFETY_INPUT_SIZE as u32, SAFETY_INPUT_SIZE as u32);
        for (x, y, pixel) in resized.enumerate_pixels() {
            for channel in 0..3 {
                let unit = f32::from(pixel[channel]) / 255.0;
                planes[[channel, y as usize, x as usize]] = (unit - 0.5) / 0.5;
            }
        }
    }
    batch
}

/// Pillow's 8-bit bilinear resize (`Image.resize(size, Image.BILINEAR)` on an RGB image).
pub fn resize_bilinear_like_pillow(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = image.dimensions();
    let horizontal = if in_width == width {
        image.clone()
    } else {
        let weights = Coefficients::new(in_width as usize, width as usize);
        RgbImage::from_fn(width, in_height, |x, y| {
            let (start, taps) = weights.taps(x as usize);
            let mut sums = [1_i64 << (PRECISION_BITS - 1); 3];
            for (offset, &weight) in taps.iter().enumerate() {
                let pixel = image.get_pixel((start + offset) as u32, y);
                for (sum, &value) in sums.iter_mut().zip(pixel.0.iter()) {
                    *sum += i64::from(value) * weight;
                }
            }
            image::Rgb(sums.map(clip8))
        })
    };
    if in_height == height {
        return horizontal;
    }
    let weights = Coefficients::new(in_height as usize, height as usize);
    RgbImage::from_fn(width, height, |x, y| {
        let (start, taps) = weights.taps(y as usize);
        let mut sums = [1_i64 << (PRECISION_BITS - 1); 3];
        for (offset, &weight) in taps.iter().enumerate() {
            let pixel = horizontal.get_pixel(x, (start + offset) as u32);
            for (sum, &value) in sums.iter_mut().zip(pixel.0.iter()) {
                *sum += i64::from(value) * weight;
            }
        }
        image::Rgb(sums.map(clip8))
    })
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Per output position: first input index and fixed-point weights of the triangle filter.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i64>,
    stride: usize,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        // Bilinear's support is 1, widened when shrinking so every input pixel contributes.
        let support = filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0_i64; out_size * stride];
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // Truncation toward zero, as C's (int) cast; both values are non-negative here or
            // clamped right after.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = end.saturating_sub(start);
            let raw: Vec<f64> = (0..count)
                .map(|tap| triangle(((tap + start) as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            for (tap, weight) in raw.iter().enumerate() {
                let normalised = if total != 0.0 {
                    weight / total
                } else {
                    *weight
                };
                let scaled = normalised * f64::from(1_u32 << PRECISION_BITS);
                weights[out * stride + tap] = if scaled < 0.0 {
                    (scaled - 0.5) as i64
                } else {
                    (scaled + 0.5) as i64
                };
            }
            bounds.push((start, count));
        }
        Self {
            bounds,
            weights,
            stride,
        }
    }

    fn taps(&self, out: usize) -> (usize, &[i64]) {
        let (start, count) = self.bounds[out];
        (
            start,
            &self.weights[out * self.stride..out * self.stride + count],
        )
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_image_stays_constant_and_normalises_to_the_expected_value() {
        let image = RgbImage::from_pixel(64, 48, image::Rgb([255, 0, 51]));
        let resized = resize_bilinear_like_pillow(&image, 224, 224);
        assert!(resized.pixels().all(|pixel| pixel.0 == [255, 0, 51]));
        let values = pixel_values(&[image]);
        assert_eq!(values.shape(), &[1, 3, 224, 224]);
        assert!((values[[0, 0, 5, 5]] - 1.0).abs() < 1e-6);
        assert!((values[[0, 1, 5, 5]] + 1.0).abs() < 1e-6);
        assert!((values[[0, 2, 5, 5]] - (51.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    }

    #[test]
    fn upscaling_interpolates_between_neighbours_with_half_pixel_centres() {
        // Two columns, 0 and 200: Pillow's 2 → 4 bilinear gives 0, 50, 150, 200.
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let resized = resize_bilinear_like_pillow(&image, 4, 1);
        let row: Vec<u8> = resized.pixels().map(|pixel| pixel.0[0]).collect();
        assert_eq!(row, vec![0, 50, 150, 200]);
    }

    #[test]
    fn softmax_probability_is_stable_for_large_logits() {
        assert!((nsfw_probability(0.0, 0.0) - 0.5).abs() < 1e-7);
        assert!((nsfw_probability(1000.0, 1001.0) - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    }
}
