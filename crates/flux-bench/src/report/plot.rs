//! The time-versus-image-tokens plot: drawn with plotters into a pixel buffer and saved as PNG.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::*;

/// Fonts tried for the plot's text, in order (`FLUX_BENCH_FONT` first).
const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<()> {
    let candidates = std::env::var_os("FLUX_BENCH_FONT")
        .map(PathBuf::from)
        .into_iter()
        .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps fonts for the life of the process; this runs once per process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    anyhow::bail!(
        "no TrueType font found (tried $FLUX_BENCH_FONT and {}); install fonts-dejavu-core or set FLUX_BENCH_FONT",
        FONT_CANDIDATES.join(", ")
    )
}

struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn plot_series(results: &BenchResults) -> Vec<Series> {
    let colors = [
        (implementation::FLUX_RS, RGBColor(204, 51, 17)),
        (implementation::PYTHON_ORT, RGBColor(0, 119, 187)),
        (implementation::DIFFUSERS, RGBColor(0, 153, 136)),
    ];
    let mut series = Vec::new();
    for model in &results.models {
        let Some(&steps) = model.steps.iter().max() else {
            continue;
        };
        for (name, color) in colors {
            let mut points: Vec<(f64, f64)> = results
                .pipeline
                .iter()
                .filter(|e| e.model == model.name && e.document.implementation == name)
                .flat_map(|e| e.document.runs.iter())
                .filter(|r| r.steps == steps)
                .filter_map(|r| Some((f64::from(r.image_tokens), r.median_of(stage::TOTAL)?)))
                .collect();
            // Sizes with the same token count (768×1024 and 1024×768) both stay: one point each.
            points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            if !points.is_empty() {
                let color = if model.name == "medium" {
                    color
                } else {
                    blend(color)
                };
                series.push(Series {
                    label: format!("{name}, {} model, {steps} steps", model.name),
                    color,
                    points,
                });
            }
        }
    }
    series
}

/// A lighter shade, to tell the tiny model's series from the medium one's.
fn blend(color: RGBColor) -> RGBColor {
    let mix = |c: u8| ((u16::from(c) + 2 * 200) / 3) as u8;
    RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

pub(super) fn draw_plot(results: &BenchResults, path: &Path) -> Result<()> {
    let series = plot_series(results);
    if series.is_empty() {
        anyhow::bail!("no pipeline measurements to plot");
    }
    register_font()?;
    let (width, height) = (1000u32, 640u32);
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let all = series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_min, mut y_max) = (f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        let draw_error = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing the plot: {e:?}");
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "End-to-end time per image versus image tokens",
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max * 1.08, (y_min * 0.7..y_max * 1.5).log_scale())
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("image tokens (H/16 · W/16)")
            .y_desc("seconds (log)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(draw_error)?;
        for s in &series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_error)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(draw_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let image = image::RgbImage::from_raw(width, height, buffer).context("plot buffer size")?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))
}
