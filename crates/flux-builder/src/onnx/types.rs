//! The value types of the graph builder: element types, dimensions, values, attributes.

use super::proto::{self, attribute_type, data_type};
use crate::weights::DType;

/// Element type of a graph value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    I8,
    Bool,
}

impl Elem {
    /// The `TensorProto.DataType` code.
    pub fn code(self) -> i32 {
        match self {
            Elem::F32 => data_type::FLOAT,
            Elem::F16 => data_type::FLOAT16,
            Elem::BF16 => data_type::BFLOAT16,
            Elem::F64 => data_type::DOUBLE,
            Elem::I64 => data_type::INT64,
            Elem::I32 => data_type::INT32,
            Elem::U8 => data_type::UINT8,
            Elem::I8 => data_type::INT8,
            Elem::Bool => data_type::BOOL,
        }
    }

    /// The graph element type of a checkpoint dtype.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::BF16 => Elem::BF16,
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Sym(&'static str),
}

/// A tensor in the graph under construction (its name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(pub(super) String);

impl Value {
    /// The tensor's name in the graph.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub struct Attr(pub(super) proto::AttributeProto);

impl Attr {
    fn base(name: &str, kind: i32) -> proto::AttributeProto {
        proto::AttributeProto {
            name: name.to_owned(),
            r#type: kind,
            ..Default::default()
        }
    }
    pub fn int(name: &str, value: i64) -> Self {
        Self(proto::AttributeProto {
            i: value,
            ..Self::base(name, attribute_type::INT)
        })
    }
    pub fn float(name: &str, value: f32) -> Self {
        Self(proto::AttributeProto {
            f: value,
            ..Self::base(name, attribute_type::FLOAT)
        })
    }
    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self(proto::AttributeProto {
            ints: values.to_vec(),
            ..Self::base(name, attribute_type::INTS)
        })
    }
    pub fn floats(name: &str, values: &[f32]) -> Self {
        Self(proto::AttributeProto {
            floats: values.to_vec(),
            ..Self::base(name, attribute_type::FLOATS)
        })
    }
    pub fn string(name: &str, value: &str) -> Self {
        Self(proto::AttributeProto {
            s: value.as_bytes().to_vec(),
            ..Self::base(name, attribute_type::STRING)
        })
    }
    pub fn tensor(name: &str, value: proto::TensorProto) -> Self {
        Self(proto::AttributeProto {
            t: Some(value),
            ..Self::base(name, attribute_type::TENSOR)
        })
    }
}
