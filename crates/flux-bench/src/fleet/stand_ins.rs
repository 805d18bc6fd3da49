//! The stand-ins of the fleet section: the one-machine path's image folder (as `flux serve` stores
//! images) and the generator that answers at once (for the latency part).

use super::*;

/// Images into a folder, as `flux serve` stores them by default: written to a temporary file and
/// renamed into place before the answer, flushed to disk right after it.
#[derive(Debug)]
pub(super) struct FolderResults {
    dir: PathBuf,
}

impl FolderResults {
    pub(super) fn new(dir: PathBuf) -> Result<FolderResults> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(FolderResults { dir })
    }
}

/// Writes each image as `<random>.jpg` (or `.png`) in `dir`; the files, still to be flushed.
fn write_images(
    dir: &Path,
    images: Vec<GeneratedImage>,
) -> std::io::Result<(Vec<ImageRef>, Vec<std::fs::File>)> {
    let mut refs = Vec::with_capacity(images.len());
    let mut files = Vec::with_capacity(images.len());
    for image in images {
        let extension = if image.content_type == "image/png" {
            "png"
        } else {
            "jpg"
        };
        let name = format!("{:032x}.{extension}", unique_suffix());
        let temp = dir.join(format!(".tmp-{name}"));
        let mut file = std::fs::File::create_new(&temp)?;
        file.write_all(&image.bytes)?;
        std::fs::rename(&temp, dir.join(&name))?;
        files.push(file);
        refs.push(ImageRef {
            url: format!("http://127.0.0.1/api/v1/files/{name}"),
            width: image.width,
            height: image.height,
            content_type: image.content_type,
        });
    }
    Ok((refs, files))
}

/// A unique enough file name part: the clock's nanoseconds and a counter.
fn unique_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos << 32) ^ u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ResultStore for FolderResults {
    fn store<'a>(
        &'a self,
        _request: &'a ValidRequest,
        generation: Generation,
        _started: Instant,
    ) -> BoxFuture<'a, Result<StoredResult, JobFailure>> {
        Box::pin(async move {
            let written_from = Instant::now();
            let written_from_wall = SystemTime::now();
            let dir = self.dir.clone();
            let Generation {
                images,
                seed,
                has_nsfw_concepts,
                timings,
            } = generation;
            let (images, files) = tokio::task::spawn_blocking(move || write_images(&dir, images))
                .await
                .map_err(|_| JobFailure::Storage)?
                .map_err(|_| JobFailure::Storage)?;
            // Flushed after the answer, off its path.
            tokio::task::spawn_blocking(move || {
                for file in files {
                    let _ = file.sync_all();
                }
            });
            let body = GenerateResponse {
                images,
                seed,
                has_nsfw_concepts,
                timings: Timings {
                    inference: timings.inference.as_secs_f64(),
                },
            };
            let body = serde_json::to_vec(&body).map_err(|_| JobFailure::Storage)?;
            Ok(StoredResult {
                body: body.into(),
                written_from,
                written_from_wall,
            })
        })
    }
}

/// A generator that does no work: each image is the same small JPEG, encoded once, and every
/// step is reported at once. It serves the dev variant.
#[derive(Debug)]
pub(super) struct InstantGenerator {
    jpeg: Vec<u8>,
}

impl InstantGenerator {
    pub(super) fn new() -> Result<InstantGenerator> {
        let [width, height] = LATENCY_SIZE;
        let image = image::RgbImage::from_pixel(width, height, image::Rgb([90, 120, 150]));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .context("encoding the instant generator's image")?;
        Ok(InstantGenerator {
            jpeg: jpeg.into_inner(),
        })
    }
}

impl Generator for InstantGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async move {
            let total_steps = request.num_inference_steps();
            if let Some(progress) = &progress {
                for step in 1..=total_steps {
                    progress(flux_types::Progress { step, total_steps });
                }
            }
            let count = request.num_images() as usize;
            let [width, height] = LATENCY_SIZE;
            Ok(Generation {
                images: vec![
                    GeneratedImage {
                        bytes: self.jpeg.clone(),
                        width,
                        height,
                        content_type: "image/jpeg".to_owned(),
                    };
                    count
                ],
                seed: request.seed().unwrap_or_default(),
                has_nsfw_concepts: vec![false; count],
                timings: GenerationTimings::default(),
            })
        })
    }

    fn describe(&self) -> String {
        "flux-bench instant generator".to_owned()
    }

    fn model(&self) -> Option<ModelInfo> {
        Some(ModelInfo {
            id: "flux-bench-instant-dev".to_owned(),
            variant: VariantSpec::dev(),
            text_length: None,
            precision: None,
            device: Some("cpu".to_owned()),
            safety_checker: Some(false),
        })
    }
}
