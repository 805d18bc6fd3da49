//! How `GraphBuilder::finish` stores initializer data: external-data entries, hard links into
//! checkpoint files, and streamed conversion into `model.onnx.data`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::graph::{Elem, Source};
use super::proto;
use super::quant::{WeightQuant, quantize_channels};
use crate::error::{BuilderError, Result};
use crate::weights;

pub(super) fn external(
    name: &str,
    dims: &[i64],
    elem: Elem,
    location: &str,
    offset: u64,
    len: u64,
) -> proto::TensorProto {
    let entry = |key: &str, value: String| proto::StringStringEntryProto {
        key: key.to_owned(),
        value,
    };
    proto::TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: elem.code(),
        data_location: proto::DATA_LOCATION_EXTERNAL,
        external_data: vec![
            entry("location", location.to_owned()),
            entry("offset", offset.to_string()),
            entry("length", len.to_string()),
        ],
        ..Default::default()
    }
}

/// Bytes of the initializers a written graph loads (external ranges plus inline data): what
/// ONNX Runtime reads into memory. A folder's file sizes are no such measure, since a build
/// hard-links whole checkpoint files for the tensors it uses from them.
pub fn initializer_bytes(graph: &Path) -> Result<u64> {
    use prost::Message;
    let bytes = std::fs::read(graph).map_err(|e| BuilderError::io(graph, e))?;
    let model = proto::ModelProto::decode(bytes.as_slice()).map_err(|e| BuilderError::Graph {
        graph: graph.display().to_string(),
        message: format!("not an ONNX model: {e}"),
    })?;
    let mut total = 0;
    for tensor in model.graph.map(|g| g.initializer).unwrap_or_default() {
        total += tensor.raw_data.len() as u64;
        for entry in tensor.external_data.iter().filter(|e| e.key == "length") {
            total += entry
                .value
                .parse::<u64>()
                .map_err(|e| BuilderError::Graph {
                    graph: graph.display().to_string(),
                    message: format!("{}: external length {:?}: {e}", tensor.name, entry.value),
                })?;
        }
    }
    Ok(total)
}

/// Hard-links `source` into `dir` as `weights-<n>.safetensors`; `None` when that is impossible.
pub(super) fn hard_link_into(source: &Path, dir: &Path, n: usize) -> Option<String> {
    // A Hugging Face cache folder holds symlinks into its blob store: link the file itself.
    let target = std::fs::canonicalize(source).ok()?;
    let name = format!("weights-{n}.safetensors");
    let link = dir.join(&name);
    let _ = std::fs::remove_file(&link);
    match std::fs::hard_link(&target, &link) {
        Ok(()) => Some(name),
        Err(error) => {
            tracing::info!(source = %source.display(), %error, "cannot hard-link weights; converting into model.onnx.data");
            None
        }
    }
}

pub(super) enum WriteError {
    Io(std::io::Error),
    Builder(BuilderError),
}

/// `model.onnx.data`, created on its first tensor; each tensor starts at a multiple of `align`.
pub(super) struct DataFile {
    path: PathBuf,
    align: u64,
    open: Option<(BufWriter<File>, u64)>,
}

impl DataFile {
    pub(super) fn new(path: PathBuf, align: u64) -> Self {
        Self {
            path,
            align,
            open: None,
        }
    }

    /// Appends what `write` writes (it returns the byte count); the tensor's offset and length.
    pub(super) fn append(
        &mut self,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<u64, WriteError>,
    ) -> Result<(u64, u64)> {
        let path = &self.path;
        if self.open.is_none() {
            let file = File::create(path).map_err(|e| BuilderError::io(path, e))?;
            self.open = Some((BufWriter::with_capacity(1 << 20, file), 0));
        }
        let Some((writer, offset)) = self.open.as_mut() else {
            return Err(BuilderError::io(path, std::io::ErrorKind::Other.into()));
        };
        let pad = (self.align - *offset % self.align) % self.align;
        writer
            .write_all(&vec![0u8; pad as usize])
            .map_err(|e| BuilderError::io(path, e))?;
        *offset += pad;
        let start = *offset;
        let written = write(writer).map_err(|e| match e {
            WriteError::Io(e) => BuilderError::io(path, e),
            WriteError::Builder(e) => e,
        })?;
        *offset += written;
        Ok((start, written))
    }

    /// Flushes and fsyncs the file, if any tensor went into it.
    pub(super) fn finish(self) -> Result<()> {
        let Some((writer, _)) = self.open else {
            return Ok(());
        };
        let path = &self.path;
        let file = writer
            .into_inner()
            .map_err(|e| BuilderError::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| BuilderError::io(path, e))
    }
}

/// A whole checkpoint tensor as f32 (for the conversions that need all of it at once).
fn read_f32(info: &weights::TensorInfo) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(info.numel());
    weights::for_each_chunk(info, |bytes| {
        weights::extend_f32(&mut values, bytes, info.dtype);
        Ok(())
    })?;
    Ok(values)
}

/// One of MatMulNBits' weight initializers, in memory.
pub(super) struct QuantizedPart {
    pub(super) name: String,
    pub(super) dims: Vec<i64>,
    pub(super) elem: Elem,
    pub(super) bytes: Vec<u8>,
}

/// Reads a linear weight (one tensor in memory at a time) and quantizes it into the kernel's
/// initializers: for MatMulNBits `<name>.codes` `[N, k_blocks, blob]`, `<name>.scales`
/// `[N * k_blocks]` (f32) and `<name>.zero_points` `[N * ceil(k_blocks * bits / 8)]`; for
/// DynamicQuantizeMatMul `<name>.codes` `[K, N]` (int8) and `<name>.scales` `[N]`.
pub(super) fn quantized_parts(
    name: &str,
    weight: &Source,
    quant: WeightQuant,
) -> Result<Vec<QuantizedPart>> {
    let (values, shape) = match weight {
        Source::Owned { shape, data, .. } => (data.to_vec(), shape.clone()),
        Source::Tensor { info, .. } => (read_f32(info)?, info.shape.clone()),
        Source::Quantized { .. } => {
            return Err(BuilderError::Graph {
                graph: String::new(),
                message: format!("{name}: a quantized weight cannot be quantized again"),
            });
        }
    };
    let [n, k] = shape[..] else {
        return Err(BuilderError::Graph {
            graph: String::new(),
            message: format!("{name}: only 2-D weights are quantized, got {shape:?}"),
        });
    };
    // (dims, element type, bytes) of each initializer, in the order of `quant.parts()`.
    let tensors: Vec<(Vec<i64>, Elem, Vec<u8>)> = match quant {
        WeightQuant::Blocks(blocks) => {
            let q = blocks.quantize(&values, n, k);
            let (rows, k_blocks) = (n as i64, q.k_blocks as i64);
            vec![
                (
                    vec![rows, k_blocks, blocks.blob() as i64],
                    Elem::U8,
                    q.codes,
                ),
                (
                    vec![rows * k_blocks],
                    Elem::F32,
                    weights::f32_bytes(&q.scales),
                ),
                (
                    vec![rows * blocks.zero_point_row(k) as i64],
                    Elem::U8,
                    q.zero_points,
                ),
            ]
        }
        WeightQuant::Channels8 => {
            let q = quantize_channels(&values, n, k);
            vec![
                (
                    vec![k as i64, n as i64],
                    Elem::I8,
                    q.codes.iter().map(|&c| c as u8).collect(),
                ),
                (vec![n as i64], Elem::F32, weights::f32_bytes(&q.scales)),
            ]
        }
    };
    Ok(quant
        .parts()
        .iter()
        .zip(tensors)
        .map(|(suffix, (dims, elem, bytes))| QuantizedPart {
            name: format!("{name}.{suffix}"),
            dims,
            elem,
            bytes,
        })
        .collect())
}

pub(super) fn encode_into(
    values: &[f32],
    float: Elem,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    match float {
        Elem::F16 => bytes.extend(
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
        ),
        Elem::BF16 => bytes.extend(
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        ),
        _ => bytes.extend(values.iter().flat_map(|v| v.to_le_bytes())),
    }
    out.write_all(&bytes)?;
    Ok(bytes.len() as u64)
}

pub(super) fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Writes one initializer's data converted to `float`; returns the bytes written. Untransposed
/// tensors stream in chunks (memory: one chunk), transposed ones need the whole tensor.
pub(super) fn write_converted(
    source: &Source,
    float: Elem,
    out: &mut impl Write,
) -> Result<u64, WriteError> {
    match source {
        Source::Quantized { .. } => Err(WriteError::Builder(BuilderError::Graph {
            graph: String::new(),
            message: "a quantized weight is written by its parts".into(),
        })),
        Source::Owned {
            shape,
            data,
            transpose,
        } => {
            let values = if *transpose {
                transposed(data, shape[0], shape[1])
            } else {
                data.to_vec()
            };
            encode_into(&values, float, out).map_err(WriteError::Io)
        }
        Source::Tensor {
            info,
            transpose: true,
        } => {
            let values = read_f32(info).map_err(WriteError::Builder)?;
            let values = transposed(&values, info.shape[0], info.shape[1]);
            encode_into(&values, float, out).map_err(WriteError::Io)
        }
        Source::Tensor {
            info,
            transpose: false,
        } => {
            let mut written = 0u64;
            let mut io_error = None;
            let same = Elem::of(info.dtype) == float;
            weights::for_each_chunk(info, |bytes| {
                let result = if same {
                    out.write_all(bytes).map(|()| bytes.len() as u64)
                } else {
                    let mut values = Vec::with_capacity(bytes.len() / info.dtype.size());
                    weights::extend_f32(&mut values, bytes, info.dtype);
                    encode_into(&values, float, out)
                };
                match result {
                    Ok(n) => {
                        written += n;
                        Ok(())
                    }
                    Err(e) => {
                        io_error = Some(e);
                        Err(BuilderError::Graph {
                            graph: String::new(),
                            message: "write failed".into(),
                        })
                    }
                }
            })
            .map_err(|e| match io_error.take() {
                Some(io) => WriteError::Io(io),
                None => WriteError::Builder(e),
            })?;
            Ok(written)
        }
    }
}
