//! The subset of the ONNX protobuf schema that the builder writes, as hand-written prost messages.
//!
//! Field numbers are those of `onnx/onnx.proto` (ONNX 1.17). Only what a graph of ours uses is
//! declared; a reader skips nothing of ours because every field we write is declared here.
//! prost writes proto3-style packed repeated scalars, which every protobuf parser (ORT's included)
//! accepts for proto2 `repeated` fields too.

/// IR version of the models we write. IR 10 goes with opset 21..22; ORT 1.31 reads IR <= 13.
pub const IR_VERSION: i64 = 10;
/// The default-domain opset: 21 has `GroupNormalization` with per-channel scale/bias and
/// `Gelu` with `approximate`; ORT 1.31 implements it on CPU and CUDA.
pub const ONNX_OPSET: i64 = 21;
/// ORT's contrib operator domain (`MultiHeadAttention`, `RotaryEmbedding`, ...).
pub const MS_DOMAIN: &str = "com.microsoft";
/// The contrib domain's one version.
pub const MS_OPSET: i64 = 1;

/// `TensorProto.DataType` values.
pub mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
}

/// `AttributeProto.AttributeType` values.
pub mod attribute_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

/// `TensorProto.DataLocation.EXTERNAL`.
pub const DATA_LOCATION_EXTERNAL: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// `location`, `offset`, `length` (and optionally `checksum`) when `data_location` is EXTERNAL.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// The oneof of [`Dimension`].
    pub mod dimension {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> ModelProto {
        let dim = |v| tensor_shape_proto::Dimension {
            value: Some(v),
            denotation: String::new(),
        };
        let value_info = ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: data_type::FLOAT,
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            dim(tensor_shape_proto::dimension::Value::DimParam("B".into())),
                            dim(tensor_shape_proto::dimension::Value::DimValue(0)),
                            dim(tensor_shape_proto::dimension::Value::DimValue(64)),
                        ],
                    }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        };
        let weight = TensorProto {
            dims: vec![3, 4],
            data_type: data_type::FLOAT,
            name: "w".into(),
            data_location: DATA_LOCATION_EXTERNAL,
            external_data: vec![
                StringStringEntryProto {
                    key: "location".into(),
                    value: "weights.safetensors".into(),
                },
                StringStringEntryProto {
                    key: "offset".into(),
                    value: "13".into(),
                },
            ],
            ..Default::default()
        };
        let node = NodeProto {
            input: vec!["x".into(), "w".into()],
            output: vec!["y".into()],
            name: "n0".into(),
            op_type: "MultiHeadAttention".into(),
            domain: MS_DOMAIN.into(),
            attribute: vec![
                AttributeProto {
                    name: "num_heads".into(),
                    r#type: attribute_type::INT,
                    i: 2,
                    ..Default::default()
                },
                AttributeProto {
                    name: "axes".into(),
                    r#type: attribute_type::INTS,
                    ints: vec![-1, 0, 7],
                    ..Default::default()
                },
            ],
            doc_string: String::new(),
        };
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "flux-builder".into(),
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: ONNX_OPSET,
                },
                OperatorSetIdProto {
                    domain: MS_DOMAIN.into(),
                    version: MS_OPSET,
                },
            ],
            graph: Some(GraphProto {
                node: vec![node],
                name: "g".into(),
                initializer: vec![weight],
                input: vec![value_info.clone()],
                output: vec![value_info],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_prost() {
        let model = sample();
        let bytes = model.encode_to_vec();
        let decoded = ModelProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, model);
        // A zero-sized dimension is a set oneof member and must survive (not be dropped as default).
        let graph = decoded.graph.expect("graph");
        let Some(type_proto::Value::TensorType(tensor)) =
            graph.input[0].r#type.as_ref().and_then(|t| t.value.clone())
        else {
            panic!("input type lost");
        };
        let dims = tensor.shape.expect("shape").dim;
        assert_eq!(
            dims[1].value,
            Some(tensor_shape_proto::dimension::Value::DimValue(0))
        );
    }

    #[test]
    fn field_numbers_match_onnx_proto() {
        // ir_version is field 1 (varint): key byte 0x08, then 10.
        let bytes = ModelProto {
            ir_version: 10,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x08, 10]);
        // opset_import is field 8 (length-delimited): key 0x42; domain field 1, version field 2.
        let bytes = ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: "a".into(),
                version: 21,
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x42, 5, 0x0a, 1, b'a', 0x10, 21]);
        // TensorProto: data_type field 2, name field 8, data_location field 14.
        let bytes = TensorProto {
            data_type: 1,
            name: "w".into(),
            data_location: 1,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x10, 1, 0x42, 1, b'w', 0x70, 1]);
        // AttributeProto: type is field 20 (key 0xa0 0x01).
        let bytes = AttributeProto {
            r#type: attribute_type::INT,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0xa0, 0x01, 2]);
    }
}
