//! A detector for scene-flux images, written for the semantic test: colour masks (nearest palette
//! colour), 4-connected components, centroids and shape templates. It knows nothing about the
//! model; `detector_agrees_with_the_renderer` checks it on scenes drawn by
//! `tools/scene-flux/scenes.py`, so that it can judge generated images once a trained scene model
//! is committed (issue 13: the semantic test of the bundled model).
//! The same rules as `tools/scene-flux/detect.py` (which the Python evaluation uses).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Deserialize;

use crate::common::{fixtures, read_json};

/// Images are judged at most this many pixels on their longer side (area-averaged down).
const MAX_SIDE: u32 = 256;
/// A pixel farther than this (RGB Euclidean) from every palette colour is "unknown".
const COLOUR_TOLERANCE: f32 = 100.0;
/// Shape masks are compared on this grid, after cropping to their bounding box.
const TEMPLATE: usize = 32;
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "ring", "cross"];

/// `fixtures/scene-eval/prompts.json` (written by `tools/scene-flux/export_eval.py`).
#[derive(Debug, Deserialize)]
pub struct SceneEval {
    pub colours: BTreeMap<String, [u8; 3]>,
    pub held_out_pairs: Vec<(String, String)>,
    pub held_out: Vec<StatedPrompt>,
    pub unplaced: Vec<StatedPrompt>,
    pub detector_cases: Vec<DetectorCase>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatedPrompt {
    pub prompt: String,
    pub stated: Stated,
}

/// What a prompt states; `background` and `position` may be left unsaid.
#[derive(Debug, Clone, Deserialize)]
pub struct Stated {
    pub colour: String,
    pub shape: String,
    pub count: usize,
    pub background: Option<String>,
    pub position: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct DetectorCase {
    pub file: String,
    pub stated: Stated,
}

pub fn eval_dir() -> PathBuf {
    fixtures().join("scene-eval")
}

pub fn scene_eval() -> Result<SceneEval> {
    read_json(&eval_dir().join("prompts.json"))
}

/// What the detector read from an image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detection {
    pub background: Option<String>,
    pub colour: Option<String>,
    pub count: usize,
    pub shape: Option<String>,
    /// Mean centroid of the objects, relative to the image (x right, y down).
    pub centre: Option<(f32, f32)>,
}

/// The palette, in the order of `colours` (names sorted; only their identity matters).
pub struct Detector {
    names: Vec<String>,
    palette: Vec<[f32; 3]>,
    templates: Vec<Vec<bool>>,
}

impl Detector {
    pub fn new(colours: &BTreeMap<String, [u8; 3]>) -> Self {
        let templates = SHAPES
            .iter()
            .map(|shape| {
                let side = 400;
                let mask: Vec<bool> = (0..side * side)
                    .map(|i| {
                        let (x, y) = ((i % side) as f32 + 0.5, (i / side) as f32 + 0.5);
                        inside(shape, x - 200.0, y - 200.0, 150.0)
                    })
                    .collect();
                normalise(&mask, side)
            })
            .collect();
        Self {
            names: colours.keys().cloned().collect(),
            palette: colours.values().map(|c| c.map(f32::from)).collect(),
            templates,
        }
    }

    pub fn detect(&self, image: &RgbImage) -> Detection {
        let (w, h, pixels) = downscale(image);
        let classes: Vec<Option<usize>> = pixels.iter().map(|p| self.classify(*p)).collect();
        let border = ((0.04 * w.min(h) as f32).round() as usize).max(1);
        let mut frame = vec![0usize; self.names.len()];
        for y in 0..h {
            for x in 0..w {
                let on_frame = y < border || y >= h - border || x < border || x >= w - border;
                if let (true, Some(c)) = (on_frame, classes[y * w + x]) {
                    frame[c] += 1;
                }
            }
        }
        let mut found = Detection::default();
        let Some(bg) = argmax(&frame).filter(|&c| frame[c] > 0) else {
            return found;
        };
        found.background = Some(self.names[bg].clone());
        let mut counts = vec![0usize; self.names.len()];
        for c in classes.iter().flatten().filter(|&&c| c != bg) {
            counts[*c] += 1;
        }
        let min_area = 0.002 * (w * h) as f32;
        let Some(colour) = argmax(&counts).filter(|&c| counts[c] as f32 >= min_area) else {
            return found;
        };
        let mask: Vec<bool> = classes.iter().map(|c| *c == Some(colour)).collect();
        let mut parts = components(&mask, w, h);
        parts.retain(|p| p.len() as f32 >= min_area);
        let Some(largest) = parts.iter().map(Vec::len).max() else {
            return found;
        };
        parts.retain(|p| p.len() * 4 >= largest);
        parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut shapes = Vec::new();
        let (mut sum_x, mut sum_y) = (0.0, 0.0);
        for part in &parts {
            let n = part.len() as f32;
            sum_x += part.iter().map(|&i| (i % w) as f32 + 0.5).sum::<f32>() / n / w as f32;
            sum_y += part.iter().map(|&i| (i / w) as f32 + 0.5).sum::<f32>() / n / h as f32;
            let mut own = vec![false; w * h];
            for &i in part {
                own[i] = true;
            }
            shapes.push(self.classify_shape(&normalise_region(&own, w, h)));
        }
        // The group's shape: the most common, ties to the larger component's.
        let shape = shapes
            .iter()
            .max_by_key(|s| {
                let first = shapes.iter().position(|t| t == *s).unwrap_or(0);
                (
                    shapes.iter().filter(|t| t == s).count(),
                    std::cmp::Reverse(first),
                )
            })
            .map(|s| (*s).to_owned());
        let n = parts.len() as f32;
        found.colour = Some(self.names[colour].clone());
        found.count = parts.len();
        found.shape = shape;
        found.centre = Some((sum_x / n, sum_y / n));
        found
    }

    fn classify(&self, pixel: [f32; 3]) -> Option<usize> {
        let distance = |c: &[f32; 3]| {
            c.iter()
                .zip(pixel)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
        };
        let (best, d) = self
            .palette
            .iter()
            .map(distance)
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        (d <= COLOUR_TOLERANCE).then_some(best)
    }

    fn classify_shape(&self, mask: &[bool]) -> &'static str {
        let iou = |t: &Vec<bool>| {
            let and = t.iter().zip(mask).filter(|(a, b)| **a && **b).count();
            let or = t.iter().zip(mask).filter(|(a, b)| **a || **b).count();
            and as f32 / or.max(1) as f32
        };
        let best = self
            .templates
            .iter()
            .map(iou)
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(i, _)| i);
        SHAPES[best]
    }

    /// `{attribute: agrees}` for every attribute the prompt states.
    pub fn score(
        &self,
        image: &RgbImage,
        stated: &Stated,
    ) -> (BTreeMap<&'static str, bool>, Detection) {
        let found = self.detect(image);
        let mut out = BTreeMap::new();
        out.insert(
            "colour",
            found.colour.as_deref() == Some(stated.colour.as_str()),
        );
        out.insert(
            "shape",
            found.shape.as_deref() == Some(stated.shape.as_str()),
        );
        out.insert(
            "count",
            found.colour.is_some() && found.count == stated.count,
        );
        if let Some(background) = &stated.background {
            out.insert(
                "background",
                found.background.as_deref() == Some(background.as_str()),
            );
        }
        if let Some(position) = &stated.position {
            let agrees = found
                .centre
                .is_some_and(|(x, y)| position_agrees(position, x, y, found.count));
            out.insert("position", agrees);
        }
        (out, found)
    }
}

/// Side positions of a group constrain only their axis; a single object must also be central on
/// the other axis; corners and the centre constrain both.
pub fn position_agrees(stated: &str, x: f32, y: f32, count: usize) -> bool {
    let side_x = |s: &str| match s {
        "left" => Some(x < 0.4),
        "right" => Some(x > 0.6),
        _ => None,
    };
    let side_y = |s: &str| match s {
        "top" => Some(y < 0.4),
        "bottom" => Some(y > 0.6),
        _ => None,
    };
    if stated == "centre" {
        return (0.33..=0.67).contains(&x) && (0.33..=0.67).contains(&y);
    }
    if let Some((row, col)) = stated.split_once(' ') {
        return side_y(row) == Some(true) && side_x(col) == Some(true);
    }
    if let Some(ok) = side_x(stated) {
        return ok && (count > 1 || (0.3..=0.7).contains(&y));
    }
    side_y(stated) == Some(true) && (count > 1 || (0.3..=0.7).contains(&x))
}

/// Whether the point (dx, dy) from the centre is inside `shape` of radius `r`, drawn as
/// `scenes.draw_shape` draws it.
fn inside(shape: &str, dx: f32, dy: f32, r: f32) -> bool {
    let d = (dx * dx + dy * dy).sqrt();
    match shape {
        "circle" => d <= r,
        "square" => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
        "triangle" => in_polygon(
            &[(0.0, -r), (0.95 * r, 0.75 * r), (-0.95 * r, 0.75 * r)],
            dx,
            dy,
        ),
        "star" => {
            let points: Vec<(f32, f32)> = (0..10)
                .map(|i| {
                    let radius = if i % 2 == 0 { 1.1 * r } else { 1.1 * r * 0.45 };
                    let a = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 5.0;
                    (radius * a.cos(), radius * a.sin())
                })
                .collect();
            in_polygon(&points, dx, dy)
        }
        "ring" => d <= r && d > 0.55 * r,
        "cross" => {
            let arm = 0.32 * r;
            (dx.abs() <= r && dy.abs() <= arm) || (dx.abs() <= arm && dy.abs() <= r)
        }
        _ => false,
    }
}

fn in_polygon(points: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = points.len() - 1;
    for i in 0..points.len() {
        let ((xi, yi), (xj, yj)) = (points[i], points[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Crops a mask to its bounding box and resamples it to TEMPLATE² (a cell is set when at least
/// half of the source pixels it covers are).
fn normalise(mask: &[bool], side: usize) -> Vec<bool> {
    normalise_region(mask, side, mask.len() / side)
}

fn normalise_region(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    if x1 <= x0 || y1 <= y0 {
        return vec![false; TEMPLATE * TEMPLATE];
    }
    let (bw, bh) = ((x1 - x0) as f32, (y1 - y0) as f32);
    let mut out = vec![false; TEMPLATE * TEMPLATE];
    for ty in 0..TEMPLATE {
        for tx in 0..TEMPLATE {
            // Source pixels whose centres fall in the cell; at least the nearest one.
            let sx0 = x0 + (tx as f32 * bw / TEMPLATE as f32) as usize;
            let sx1 = (x0 + ((tx + 1) as f32 * bw / TEMPLATE as f32).ceil() as usize).max(sx0 + 1);
            let sy0 = y0 + (ty as f32 * bh / TEMPLATE as f32) as usize;
            let sy1 = (y0 + ((ty + 1) as f32 * bh / TEMPLATE as f32).ceil() as usize).max(sy0 + 1);
            let (mut on, mut all) = (0, 0);
            for y in sy0..sy1.min(y1) {
                for x in sx0..sx1.min(x1) {
                    all += 1;
                    on += usize::from(mask[y * w + x]);
                }
            }
            out[ty * TEMPLATE + tx] = all > 0 && on * 2 >= all;
        }
    }
    out
}

/// 4-connected components of a mask, each as its pixel indices.
fn components(mask: &[bool], w: usize, h: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut parts = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut part = Vec::new();
        while let Some(i) = stack.pop() {
            part.push(i);
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        parts.push(part);
    }
    parts
}

/// Area-averages an image down to at most MAX_SIDE on its longer side.
fn downscale(image: &RgbImage) -> (usize, usize, Vec<[f32; 3]>) {
    let (iw, ih) = image.dimensions();
    let scale = (MAX_SIDE as f32 / iw.max(ih) as f32).min(1.0);
    let (w, h) = (
        ((iw as f32 * scale).round() as u32).max(1),
        ((ih as f32 * scale).round() as u32).max(1),
    );
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        let (sy0, sy1) = (y * ih / h, ((y + 1) * ih / h).max(y * ih / h + 1));
        for x in 0..w {
            let (sx0, sx1) = (x * iw / w, ((x + 1) * iw / w).max(x * iw / w + 1));
            let mut sum = [0.0f32; 3];
            for sy in sy0..sy1 {
                for sx in sx0..sx1 {
                    let p = image.get_pixel(sx, sy).0;
                    for c in 0..3 {
                        sum[c] += f32::from(p[c]);
                    }
                }
            }
            let n = ((sy1 - sy0) * (sx1 - sx0)) as f32;
            out.push(sum.map(|s| s / n));
        }
    }
    (w as usize, h as usize, out)
}

fn argmax(values: &[usize]) -> Option<usize> {
    (0..values.len()).max_by_key(|&i| (values[i], std::cmp::Reverse(i)))
}

pub fn load_png(path: &std::path::Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .to_rgb8())
}

#[test]
fn detector_agrees_with_the_renderer() -> Result<()> {
    let eval = scene_eval()?;
    let detector = Detector::new(&eval.colours);
    let (mut agree, mut total) = (0, 0);
    for case in &eval.detector_cases {
        let image = load_png(&eval_dir().join("detector").join(&case.file))?;
        let (scores, found) = detector.score(&image, &case.stated);
        total += scores.len();
        agree += scores.values().filter(|v| **v).count();
        if scores.values().any(|v| !v) {
            eprintln!(
                "{}: stated {:?}, found {found:?}: {scores:?}",
                case.file, case.stated
            );
        }
    }
    eprintln!("detector on rendered scenes: {agree}/{total} attributes");
    assert!(eval.detector_cases.len() >= 40 && total >= 150, "{total}");
    // The renderer's own images: at most one attribute in a hundred may be misread.
    assert!(agree * 100 >= total * 99, "{agree}/{total}");
    Ok(())
}

#[test]
fn a_plain_image_has_no_object() -> Result<()> {
    let eval = scene_eval()?;
    let detector = Detector::new(&eval.colours);
    let blue = eval.colours["blue"];
    let found = detector.detect(&RgbImage::from_pixel(64, 48, image::Rgb(blue)));
    assert_eq!(found.background.as_deref(), Some("blue"));
    assert_eq!((found.colour, found.count, found.centre), (None, 0, None));
    Ok(())
}

#[test]
fn positions_follow_the_stated_rules() {
    assert!(position_agrees("top left", 0.2, 0.2, 1));
    assert!(!position_agrees("top left", 0.5, 0.2, 1));
    assert!(position_agrees("left", 0.2, 0.5, 1));
    assert!(
        !position_agrees("left", 0.2, 0.1, 1),
        "a single object on the left is central in y"
    );
    assert!(
        position_agrees("left", 0.2, 0.1, 2),
        "a group on the left constrains only x"
    );
    assert!(position_agrees("centre", 0.5, 0.5, 3));
    assert!(!position_agrees("bottom", 0.5, 0.5, 1));
}

/// The prompts the semantic test of the bundled scene model will judge it on: every held-out
/// prompt names a colour x shape pair training never shows, and says it in words.
#[test]
fn the_held_out_prompt_set_is_what_it_claims() -> Result<()> {
    let eval = scene_eval()?;
    assert!(eval.held_out.len() >= 40, "{}", eval.held_out.len());
    for case in &eval.held_out {
        let pair = (case.stated.colour.clone(), case.stated.shape.clone());
        assert!(
            eval.held_out_pairs.contains(&pair),
            "{}: {pair:?}",
            case.prompt
        );
        assert!(case.prompt.contains(&case.stated.colour), "{}", case.prompt);
        assert!(SHAPES.contains(&case.stated.shape.as_str()));
        assert!((1..=3).contains(&case.stated.count));
    }
    assert!(eval.unplaced.iter().all(|c| c.stated.position.is_none()));
    Ok(())
}
