//! Build options: precision, device, LoRAs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{BuilderError, Result};
use crate::onnx::Elem;
use crate::onnx::quant::{BlockQuant, WeightQuant};

/// `--precision`: the float type of the built graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// fp32 on CPU; on CUDA fp16 where known to be correct (T5 stays fp32: it overflows in fp16).
    #[default]
    Auto,
    F32,
    F16,
    BF16,
    /// fp32 graphs whose transformer linears are int8 per output channel, multiplied in integers
    /// (DynamicQuantizeMatMul), and whose T5 linears are 8-bit blocks (MatMulNBits).
    Int8,
    /// fp32 graphs whose transformer and T5 linear weights are 4-bit blocks (MatMulNBits).
    Int4,
}

impl FromStr for Precision {
    type Err = BuilderError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "fp32" | "f32" | "float32" => Ok(Self::F32),
            "fp16" | "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "int8" => Ok(Self::Int8),
            "int4" => Ok(Self::Int4),
            other => Err(BuilderError::Precision {
                precision: other.to_owned(),
                device: "any device".into(),
                reason: "unknown precision; expected auto, fp32, fp16, bf16, int8 or int4".into(),
            }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "fp32",
            Self::F16 => "fp16",
            Self::BF16 => "bf16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        })
    }
}

/// Where the built graphs will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// Which graph a precision is resolved for (T5 differs from the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Clip,
    T5,
    Transformer,
    Vae,
}

impl Precision {
    /// The float type a component's graph is built in, or a refusal (never a silent fallback).
    pub fn resolve(self, device: Device, component: Component) -> Result<Elem> {
        let refuse = |reason: &str| BuilderError::Precision {
            precision: self.to_string(),
            device: device.to_string(),
            reason: reason.to_owned(),
        };
        match (device, self) {
            (Device::Cpu, Self::Auto | Self::F32 | Self::Int8 | Self::Int4) => Ok(Elem::F32),
            (Device::Cuda, Self::Int8 | Self::Int4) => Err(refuse(
                "8- and 4-bit graphs are built for ONNX Runtime's CPU provider (MatMulNBits and DynamicQuantizeMatMul over f32 activations); on CUDA use fp16",
            )),
            (Device::Cpu, Self::F16 | Self::BF16) => Err(refuse(
                "ONNX Runtime's CPU provider runs FLUX graphs only in fp32 (it has no bf16 kernels and fp16 ones only for a few operators); use --precision fp32 or auto",
            )),
            (Device::Cuda, Self::F32) => Ok(Elem::F32),
            // T5 v1.1 overflows in fp16 (activations past 65504): it stays fp32 under auto, and
            // an explicit fp16 is refused for it rather than producing NaNs.
            (Device::Cuda, Self::Auto) if component == Component::T5 => Ok(Elem::F32),
            (Device::Cuda, Self::Auto) => Ok(Elem::F16),
            (Device::Cuda, Self::F16) if component == Component::T5 => Ok(Elem::F32),
            (Device::Cuda, Self::F16) => Ok(Elem::F16),
            (Device::Cuda, Self::BF16) => Err(refuse(
                "bf16 graphs are not built yet: ONNX Runtime's CUDA bf16 kernels have gaps (Pow, Sigmoid, reductions); use fp16 or fp32",
            )),
        }
    }
}

/// Values per quantization block: genai's default for FLUX-sized layers (every FLUX and T5 width
/// is a multiple of it); smaller blocks cost more scales, larger ones more error.
const QUANT_BLOCK: usize = 32;

impl Precision {
    /// How a component's linear weights are stored: quantized (the transformer and T5, which
    /// hold nearly all the weights) or as floats (`None`; CLIP and the VAE stay fp32 under
    /// int8/int4: together about 0.2 B parameters, and the VAE's are convolutions).
    ///
    /// Under int8 the transformer's linears use integer GEMMs over per-tensor activations (the
    /// fast kernel); T5's activations reach thousands in a few channels (why it overflows fp16),
    /// which one scale per tensor would flatten, so T5 keeps 8-bit blocks whose activations are
    /// quantized per block of 32.
    pub fn weight_quant(self, component: Component) -> Option<WeightQuant> {
        let blocks = |bits| {
            WeightQuant::Blocks(BlockQuant {
                bits,
                block: QUANT_BLOCK,
            })
        };
        match (self, component) {
            (Self::Int8, Component::Transformer) => Some(WeightQuant::Channels8),
            (Self::Int8, Component::T5) => Some(blocks(8)),
            (Self::Int4, Component::Transformer | Component::T5) => Some(blocks(4)),
            _ => None,
        }
    }
}

/// One `--lora FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl FromStr for LoraSpec {
    type Err = BuilderError;
    /// `FILE` or `FILE:SCALE` (the scale is taken after the last colon when it parses as a number).
    fn from_str(s: &str) -> Result<Self> {
        if let Some((path, scale)) = s.rsplit_once(':')
            && let Ok(scale) = scale.parse::<f32>()
        {
            if !scale.is_finite() {
                return Err(BuilderError::Lora {
                    path: path.into(),
                    tensor: String::new(),
                    message: format!("scale {scale} is not finite"),
                });
            }
            return Ok(Self {
                path: path.into(),
                scale,
            });
        }
        Ok(Self {
            path: s.into(),
            scale: 1.0,
        })
    }
}

/// What to build, and for where.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildOptions {
    pub precision: Precision,
    pub device: Device,
    pub loras: Vec<LoraSpec>,
    /// T5 tokens per prompt fixed into the graphs; default 512 for dev, 256 for schnell (the
    /// diffusers pipelines' `max_sequence_length` defaults).
    pub text_length: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_and_cpu_refuses_16_bit() {
        assert_eq!("FP16".parse::<Precision>().expect("fp16"), Precision::F16);
        assert!("int3".parse::<Precision>().is_err());
        assert_eq!("INT4".parse::<Precision>().expect("int4"), Precision::Int4);
        assert_eq!(
            Precision::Int8
                .resolve(Device::Cpu, Component::T5)
                .expect("cpu"),
            Elem::F32
        );
        assert!(
            Precision::Int4
                .resolve(Device::Cuda, Component::Vae)
                .is_err()
        );
        assert_eq!(
            Precision::Int4.weight_quant(Component::Transformer),
            Some(WeightQuant::Blocks(BlockQuant { bits: 4, block: 32 }))
        );
        assert_eq!(
            Precision::Int8.weight_quant(Component::Transformer),
            Some(WeightQuant::Channels8)
        );
        assert_eq!(
            Precision::Int8.weight_quant(Component::T5),
            Some(WeightQuant::Blocks(BlockQuant { bits: 8, block: 32 }))
        );
        assert_eq!(Precision::Int8.weight_quant(Component::Clip), None);
        assert_eq!(Precision::F32.weight_quant(Component::Transformer), None);
        assert_eq!(
            Precision::Auto
                .resolve(Device::Cpu, Component::Transformer)
                .expect("auto"),
            Elem::F32
        );
        let err = Precision::BF16
            .resolve(Device::Cpu, Component::Vae)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("bf16") && err.contains("cpu"), "{err}");
        assert_eq!(
            Precision::Auto
                .resolve(Device::Cuda, Component::T5)
                .expect("t5"),
            Elem::F32
        );
        assert_eq!(
            Precision::F16
                .resolve(Device::Cuda, Component::Vae)
                .expect("vae"),
            Elem::F16
        );
    }

    #[test]
    fn lora_spec_parses_scale() {
        let spec: LoraSpec = "a/b.safetensors:0.5".parse().expect("spec");
        assert_eq!(
            (spec.path, spec.scale),
            (PathBuf::from("a/b.safetensors"), 0.5)
        );
        let spec: LoraSpec = "c:/x.safetensors".parse().expect("spec");
        assert_eq!(
            (spec.path, spec.scale),
            (PathBuf::from("c:/x.safetensors"), 1.0)
        );
    }
}
