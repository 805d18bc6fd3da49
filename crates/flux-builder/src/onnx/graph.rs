//! `GraphBuilder`: writes an ONNX graph node by node, with initializers taken from checkpoints.
//!
//! Initializers whose checkpoint dtype is the graph's float type point into the safetensors file
//! itself (ONNX external data: location, offset, length). ONNX Runtime 1.31 refuses an absolute
//! location, a `..` location and a symlink that leaves the model's folder, but accepts a hard link
//! inside it, at any offset (checked by `tests/it/external_data.rs`), so `finish` hard-links each
//! source file into the output folder. Where that is impossible (another filesystem, no
//! permission) or the dtype differs, the tensor is converted, one tensor at a time, into
//! `model.onnx.data` beside the graph.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use super::proto::{self, data_type};
use super::quant::WeightQuant;
use super::store::{
    DataFile, WriteError, external, hard_link_into, quantized_parts, write_converted,
};
pub use super::types::{Attr, Dim, Elem, Value};
use crate::error::{BuilderError, Result};
use crate::weights::{self, Checkpoint, TensorInfo};

/// Name of the converted-weights file written beside `model.onnx`.
pub const DATA_FILE: &str = "model.onnx.data";
/// Tensors converted into [`DATA_FILE`] start at multiples of this (ORT's own writer aligns too).
const DATA_ALIGN: u64 = 64;

/// How an initializer's data is produced at `finish`.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// From a checkpoint file, as stored or converted to `target`.
    Tensor { info: TensorInfo, transpose: bool },
    /// Computed in memory (f32).
    Owned {
        shape: Vec<usize>,
        data: Arc<[f32]>,
        transpose: bool,
    },
    /// A linear layer's `[N, K]` weight (itself a `Tensor` or `Owned` source, untransposed),
    /// stored as the quantized kernel's initializers `<name>.codes`, `.scales` (and for
    /// MatMulNBits `.zero_points`).
    Quantized {
        weight: Box<Source>,
        quant: WeightQuant,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    name: String,
    source: Source,
}

/// What `finish` did with the weights (for build reports and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightsReport {
    /// Tensors pointing into hard-linked checkpoint files.
    pub linked_tensors: usize,
    /// Tensors converted or copied into `model.onnx.data`.
    pub converted_tensors: usize,
    pub converted_bytes: u64,
    /// Hard links made (file names inside the output folder).
    pub linked_files: Vec<String>,
}

/// Builds one ONNX model. See the module docs for how weights are stored.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    float: Elem,
    nodes: Vec<proto::NodeProto>,
    inputs: Vec<proto::ValueInfoProto>,
    outputs: Vec<proto::ValueInfoProto>,
    inline: Vec<proto::TensorProto>,
    pending: Vec<Pending>,
    weights: HashMap<String, Value>,
    counter: usize,
    link_weights: bool,
    weight_quant: Option<WeightQuant>,
}

/// Where a checkpoint tensor's data comes from: computed in memory (a LoRA merge, a BFL split)
/// or read from its file at `finish`.
fn checkpoint_source(ckpt: &Checkpoint, name: &str, info: TensorInfo, transpose: bool) -> Source {
    match ckpt.owned(name) {
        Some(data) => Source::Owned {
            shape: info.shape,
            data,
            transpose,
        },
        None => Source::Tensor { info, transpose },
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> proto::ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Sym(s) => dimension::Value::DimParam((*s).to_owned()),
            }),
            denotation: String::new(),
        })
        .collect();
    proto::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: elem.code(),
                    shape: Some(proto::TensorShapeProto { dim }),
                },
            )),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

impl GraphBuilder {
    /// A graph computing in f32.
    pub fn new(name: &str) -> Self {
        Self::with_float(name, Elem::F32)
    }

    /// A graph whose weights are stored as `float` (F32, F16 or BF16).
    pub fn with_float(name: &str, float: Elem) -> Self {
        Self {
            name: name.to_owned(),
            float,
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            inline: Vec::new(),
            pending: Vec::new(),
            weights: HashMap::new(),
            counter: 0,
            link_weights: true,
            weight_quant: None,
        }
    }

    /// The float type weights are stored in.
    pub fn float(&self) -> Elem {
        self.float
    }

    /// `false` copies every weight into `model.onnx.data` instead of hard-linking checkpoint files.
    pub fn set_link_weights(&mut self, link: bool) {
        self.link_weights = link;
    }

    /// Linear layers' weights quantized as `quant` instead of stored as floats.
    pub fn set_weight_quant(&mut self, quant: Option<WeightQuant>) {
        self.weight_quant = quant;
    }

    /// How linear layers' weights are stored: `None` as floats.
    pub fn weight_quant(&self) -> Option<WeightQuant> {
        self.weight_quant
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> Value {
        self.inputs.push(value_info(name, elem, dims));
        Value(name.to_owned())
    }

    /// Declares a graph output named `name` (an Identity is added when the value has another name).
    pub fn output(&mut self, value: &Value, name: &str, elem: Elem, dims: &[Dim]) {
        if value.0 != name {
            self.nodes.push(proto::NodeProto {
                input: vec![value.0.clone()],
                output: vec![name.to_owned()],
                name: format!("output_{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
    }

    fn add_weight(&mut self, ckpt: &Checkpoint, name: &str, transpose: bool) -> Result<Value> {
        let graph_name = if transpose {
            format!("{name}^T")
        } else {
            name.to_owned()
        };
        if let Some(value) = self.weights.get(&graph_name) {
            return Ok(value.clone());
        }
        let info = ckpt.info(name)?;
        if transpose && info.shape.len() != 2 {
            return Err(BuilderError::BadTensor {
                path: info.file.clone(),
                tensor: name.to_owned(),
                message: format!("expected a 2-D matrix, got shape {:?}", info.shape),
            });
        }
        self.pending.push(Pending {
            name: graph_name.clone(),
            source: checkpoint_source(ckpt, name, info, transpose),
        });
        let value = Value(graph_name.clone());
        self.weights.insert(graph_name, value.clone());
        Ok(value)
    }

    /// A checkpoint tensor as an initializer (stored in the graph's float type).
    pub fn weight(&mut self, ckpt: &Checkpoint, name: &str) -> Result<Value> {
        self.add_weight(ckpt, name, false)
    }

    /// A 2-D checkpoint tensor, transposed (always converted into `model.onnx.data`). Prefer
    /// [`GraphBuilder::linear`], which uses `Gemm(transB=1)` on the stored matrix.
    pub fn weight_transposed(&mut self, ckpt: &Checkpoint, name: &str) -> Result<Value> {
        self.add_weight(ckpt, name, true)
    }

    /// A linear layer's `[N, K]` checkpoint weight quantized as `quant`: the kernel's weight
    /// inputs (MatMulNBits' `B`, `scales`, `zero_points`; DynamicQuantizeMatMul's `B`, `b_scale`).
    pub fn quantized_weight(
        &mut self,
        ckpt: &Checkpoint,
        name: &str,
        quant: WeightQuant,
    ) -> Result<Vec<Value>> {
        let parts: Vec<Value> = quant
            .parts()
            .iter()
            .map(|part| Value(format!("{name}.{part}")))
            .collect();
        if self.weights.contains_key(name) {
            return Ok(parts);
        }
        let weight = checkpoint_source(ckpt, name, ckpt.info(name)?, false);
        self.pending.push(Pending {
            name: name.to_owned(),
            source: Source::Quantized {
                weight: Box::new(weight),
                quant,
            },
        });
        self.weights.insert(name.to_owned(), parts[0].clone());
        Ok(parts)
    }

    fn push_inline(&mut self, hint: &str, tensor: proto::TensorProto) -> Value {
        let name = self.fresh(hint);
        self.inline.push(proto::TensorProto {
            name: name.clone(),
            ..tensor
        });
        Value(name)
    }

    /// An f32 constant stored inline in the graph.
    pub fn const_f32(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> Value {
        self.push_inline(
            hint,
            proto::TensorProto {
                dims: dims.to_vec(),
                data_type: data_type::FLOAT,
                raw_data: weights::f32_bytes(data),
                ..Default::default()
            },
        )
    }

    /// An f64 constant stored inline (RoPE frequencies are computed in f64, as diffusers does).
    pub fn const_f64(&mut self, hint: &str, dims: &[i64], data: &[f64]) -> Value {
        self.push_inline(
            hint,
            proto::TensorProto {
                dims: dims.to_vec(),
                data_type: data_type::DOUBLE,
                raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
        )
    }

    /// An i64 constant stored inline.
    pub fn const_i64(&mut self, hint: &str, dims: &[i64], data: &[i64]) -> Value {
        self.push_inline(
            hint,
            proto::TensorProto {
                dims: dims.to_vec(),
                data_type: data_type::INT64,
                raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            },
        )
    }

    /// A 1-D i64 constant (shapes, axes).
    pub fn ints(&mut self, data: &[i64]) -> Value {
        self.const_i64("ints", &[data.len() as i64], data)
    }

    /// A constant in the graph's float type (f32, or f16/bf16 for 16-bit graphs): for values
    /// that meet activations (scalars, norm scales). Shapes and `Resize` scales stay f32.
    pub fn const_float(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> Value {
        let raw_data = match self.float {
            Elem::F16 => data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Elem::BF16 => data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => weights::f32_bytes(data),
        };
        let data_type = match self.float {
            Elem::F16 | Elem::BF16 => self.float.code(),
            _ => data_type::FLOAT,
        };
        self.push_inline(
            hint,
            proto::TensorProto {
                dims: dims.to_vec(),
                data_type,
                raw_data,
                ..Default::default()
            },
        )
    }

    /// A scalar constant (rank 0) in the graph's float type.
    pub fn scalar(&mut self, value: f32) -> Value {
        self.const_float("scalar", &[], &[value])
    }

    /// Casts a graph input to the graph's float type (identity for f32 graphs).
    pub fn to_float(&mut self, x: &Value) -> Value {
        match self.float {
            Elem::F32 => x.clone(),
            other => self.op("Cast", &[x], vec![Attr::int("to", other.code() as i64)]),
        }
    }

    /// Casts a result back to f32 for a graph output (identity for f32 graphs).
    pub fn to_f32(&mut self, x: &Value) -> Value {
        match self.float {
            Elem::F32 => x.clone(),
            _ => self.op("Cast", &[x], vec![Attr::int("to", Elem::F32.code() as i64)]),
        }
    }

    fn node(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<Attr>,
        n: usize,
    ) -> Vec<Value> {
        let hint = op_type.to_ascii_lowercase();
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(&hint)).collect();
        self.nodes.push(proto::NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outputs.clone(),
            name: format!("{}_node", outputs.first().map_or("node", String::as_str)),
            op_type: op_type.to_owned(),
            attribute: attrs.into_iter().map(|a| a.0).collect(),
            domain: domain.to_owned(),
            doc_string: String::new(),
        });
        outputs.into_iter().map(Value).collect()
    }

    /// A default-domain node with one output.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: Vec<Attr>) -> Value {
        self.op_n(op_type, inputs, attrs, 1).remove(0)
    }

    /// A default-domain node with `n` outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<Attr>,
        n: usize,
    ) -> Vec<Value> {
        self.node("", op_type, inputs, attrs, n.max(1))
    }

    /// A `com.microsoft` node with one output.
    pub fn ms_op(&mut self, op_type: &str, inputs: &[&Value], attrs: Vec<Attr>) -> Value {
        self.node(proto::MS_DOMAIN, op_type, inputs, attrs, 1)
            .remove(0)
    }

    /// A node input left out (an optional input before a given one).
    pub fn none() -> Value {
        Value(String::new())
    }

    /// The model as protobuf, with initializers resolved as `finish` would (for tests).
    fn model(&self, initializers: Vec<proto::TensorProto>) -> proto::ModelProto {
        let mut initializer = self.inline.clone();
        initializer.extend(initializers);
        proto::ModelProto {
            ir_version: proto::IR_VERSION,
            producer_name: "flux-rs flux-builder".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            opset_import: vec![
                proto::OperatorSetIdProto {
                    domain: String::new(),
                    version: proto::ONNX_OPSET,
                },
                proto::OperatorSetIdProto {
                    domain: proto::MS_DOMAIN.into(),
                    version: proto::MS_OPSET,
                },
            ],
            graph: Some(proto::GraphProto {
                node: self.nodes.clone(),
                name: self.name.clone(),
                initializer,
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Writes `out_dir/model.onnx` and the weights (hard links and/or `model.onnx.data`).
    pub fn finish(self, out_dir: &Path) -> Result<WeightsReport> {
        std::fs::create_dir_all(out_dir).map_err(|e| BuilderError::io(out_dir, e))?;
        let mut report = WeightsReport::default();
        let mut links: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
        let mut data = DataFile::new(out_dir.join(DATA_FILE), DATA_ALIGN);
        let mut initializers = Vec::with_capacity(self.pending.len());
        for pending in &self.pending {
            let (shape, transpose, stored) = match &pending.source {
                Source::Tensor { info, transpose } => (info.shape.clone(), *transpose, Some(info)),
                Source::Owned {
                    shape, transpose, ..
                } => (shape.clone(), *transpose, None),
                Source::Quantized { weight, quant } => {
                    for part in quantized_parts(&pending.name, weight, *quant)? {
                        let (start, len) = data.append(|out| {
                            out.write_all(&part.bytes)
                                .map(|()| part.bytes.len() as u64)
                                .map_err(WriteError::Io)
                        })?;
                        initializers.push(external(
                            &part.name, &part.dims, part.elem, DATA_FILE, start, len,
                        ));
                        report.converted_tensors += 1;
                        report.converted_bytes += len;
                    }
                    continue;
                }
            };
            let dims: Vec<i64> = if transpose {
                vec![shape[1] as i64, shape[0] as i64]
            } else {
                shape.iter().map(|&d| d as i64).collect()
            };
            // Zero-copy where the bytes on disk are exactly what the graph needs.
            if let Some(info) = stored
                && !transpose
                && Elem::of(info.dtype) == self.float
                && self.link_weights
            {
                let link = match links.get(&info.file) {
                    Some(link) => link.clone(),
                    None => {
                        let link = hard_link_into(&info.file, out_dir, links.len());
                        if let Some(name) = &link {
                            report.linked_files.push(name.clone());
                        }
                        links.insert(info.file.clone(), link.clone());
                        link
                    }
                };
                if let Some(location) = link {
                    initializers.push(external(
                        &pending.name,
                        &dims,
                        self.float,
                        &location,
                        info.offset,
                        info.len,
                    ));
                    report.linked_tensors += 1;
                    continue;
                }
            }
            let (start, written) =
                data.append(|out| write_converted(&pending.source, self.float, out))?;
            initializers.push(external(
                &pending.name,
                &dims,
                self.float,
                DATA_FILE,
                start,
                written,
            ));
            report.converted_tensors += 1;
            report.converted_bytes += written;
        }
        data.finish()?;
        let model = self.model(initializers);
        let path = out_dir.join("model.onnx");
        let mut file = File::create(&path).map_err(|e| BuilderError::io(&path, e))?;
        file.write_all(&model.encode_to_vec())
            .and_then(|()| file.sync_all())
            .map_err(|e| BuilderError::io(&path, e))?;
        Ok(report)
    }

    /// The graph encoded with every checkpoint weight inline (small graphs and tests only).
    pub fn encode_inline(&self) -> Result<Vec<u8>> {
        let mut initializers = Vec::new();
        for pending in &self.pending {
            let (shape, transpose) = match &pending.source {
                Source::Tensor { info, transpose } => (info.shape.clone(), *transpose),
                Source::Owned {
                    shape, transpose, ..
                } => (shape.clone(), *transpose),
                Source::Quantized { weight, quant } => {
                    for part in quantized_parts(&pending.name, weight, *quant)? {
                        initializers.push(proto::TensorProto {
                            name: part.name,
                            dims: part.dims,
                            data_type: part.elem.code(),
                            raw_data: part.bytes,
                            ..Default::default()
                        });
                    }
                    continue;
                }
            };
            let mut raw = Vec::new();
            write_converted(&pending.source, self.float, &mut raw).map_err(|e| match e {
                WriteError::Io(e) => BuilderError::io("<memory>", e),
                WriteError::Builder(e) => e,
            })?;
            let mut dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            if transpose {
                dims.reverse();
            }
            initializers.push(proto::TensorProto {
                name: pending.name.clone(),
                dims,
                data_type: self.float.code(),
                raw_data: raw,
                ..Default::default()
            });
        }
        Ok(self.model(initializers).encode_to_vec())
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
