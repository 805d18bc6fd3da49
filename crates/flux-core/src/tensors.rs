//! Element-type conversion at the ONNX boundary: the pipeline computes in f32 and i64; each graph
//! input gets the element type its session declares (f32/f16/bf16, int32/int64), and outputs come
//! back as f32 whatever the graph produced.

use std::borrow::Cow;

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD};
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef};

use crate::error::{FluxError, Result};

/// A float element type a graph may declare for an input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    /// The float type of an ONNX element type, if it is one flux-rs converts.
    pub fn from_element(element: TensorElementType) -> Option<Self> {
        match element {
            TensorElementType::Float32 => Some(Self::F32),
            TensorElementType::Float16 => Some(Self::F16),
            TensorElementType::Bfloat16 => Some(Self::Bf16),
            _ => None,
        }
    }
}

/// An integer element type a graph may declare for token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    I32,
    I64,
}

impl IdType {
    /// The id type of an ONNX element type, if it is one flux-rs converts.
    pub fn from_element(element: TensorElementType) -> Option<Self> {
        match element {
            TensorElementType::Int32 => Some(Self::I32),
            TensorElementType::Int64 => Some(Self::I64),
            _ => None,
        }
    }
}

fn ort_error(stage: &'static str) -> impl FnOnce(ort::Error) -> FluxError {
    move |source| FluxError::Ort { stage, source }
}

/// An owned input tensor of `element` type holding `values` (standard layout is taken care of).
pub fn float_value(
    values: ArrayViewD<'_, f32>,
    element: FloatType,
    stage: &'static str,
) -> Result<DynValue> {
    let shape = values.shape().to_vec();
    let value = match element {
        FloatType::F32 => Tensor::from_array((shape, values.iter().copied().collect::<Vec<f32>>()))
            .map_err(ort_error(stage))?
            .into_dyn(),
        FloatType::F16 => Tensor::from_array((
            shape,
            values.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
        ))
        .map_err(ort_error(stage))?
        .into_dyn(),
        FloatType::Bf16 => Tensor::from_array((
            shape,
            values
                .iter()
                .map(|&x| bf16::from_f32(x))
                .collect::<Vec<_>>(),
        ))
        .map_err(ort_error(stage))?
        .into_dyn(),
    };
    Ok(value)
}

/// A session input for `values`: borrowed without a copy when the graph takes f32 and the array
/// is contiguous (the per-step latents), converted otherwise.
pub fn float_input<'a>(
    values: ArrayViewD<'a, f32>,
    element: FloatType,
    stage: &'static str,
) -> Result<SessionInputValue<'a>> {
    if element == FloatType::F32 && values.is_standard_layout() {
        let borrowed = TensorRef::from_array_view(values).map_err(ort_error(stage))?;
        return Ok(SessionInputValue::from(borrowed));
    }
    Ok(SessionInputValue::from(float_value(
        values, element, stage,
    )?))
}

/// An owned id tensor of `element` type with `shape`.
pub fn id_value(
    shape: &[usize],
    ids: &[i64],
    element: IdType,
    stage: &'static str,
) -> Result<DynValue> {
    let shape = shape.to_vec();
    let value = match element {
        IdType::I64 => Tensor::from_array((shape, ids.to_vec()))
            .map_err(ort_error(stage))?
            .into_dyn(),
        IdType::I32 => {
            let narrowed = ids
                .iter()
                .map(|&id| {
                    i32::try_from(id).map_err(|_| FluxError::InvalidInput {
                        param: "token ids",
                        message: format!("token id {id} does not fit the graph's int32 input"),
                    })
                })
                .collect::<Result<Vec<i32>>>()?;
            Tensor::from_array((shape, narrowed))
                .map_err(ort_error(stage))?
                .into_dyn()
        }
    };
    Ok(value)
}

/// A graph output as an owned f32 array, whatever float type the graph produced.
pub fn output_f32(value: &DynValue, stage: &'static str) -> Result<ArrayD<f32>> {
    let element = value.dtype().tensor_type().ok_or_else(|| FluxError::Ort {
        stage,
        source: ort::Error::new("output is not a tensor"),
    })?;
    match FloatType::from_element(element) {
        Some(FloatType::F32) => Ok(value
            .try_extract_array::<f32>()
            .map_err(ort_error(stage))?
            .to_owned()),
        Some(FloatType::F16) => Ok(value
            .try_extract_array::<f16>()
            .map_err(ort_error(stage))?
            .mapv(f16::to_f32)),
        Some(FloatType::Bf16) => Ok(value
            .try_extract_array::<bf16>()
            .map_err(ort_error(stage))?
            .mapv(bf16::to_f32)),
        None => Err(FluxError::Ort {
            stage,
            source: ort::Error::new(format!(
                "output has element type {element}, expected a float type"
            )),
        }),
    }
}

/// One named session input.
pub type NamedInput<'a> = (Cow<'static, str>, SessionInputValue<'a>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_classes_cover_exactly_the_supported_types() {
        assert_eq!(
            FloatType::from_element(TensorElementType::Float16),
            Some(FloatType::F16)
        );
        assert_eq!(
            FloatType::from_element(TensorElementType::Bfloat16),
            Some(FloatType::Bf16)
        );
        assert_eq!(FloatType::from_element(TensorElementType::Float64), None);
        assert_eq!(
            IdType::from_element(TensorElementType::Int32),
            Some(IdType::I32)
        );
        assert_eq!(IdType::from_element(TensorElementType::Uint8), None);
    }
}
