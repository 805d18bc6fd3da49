//! The interface every graph must have (input and output names, ranks, element classes, the
//! fixed sizes flux-rs relies on), and the checks that report each mismatch as a load problem.

use std::path::Path;

use ort::value::{Outlet, ValueType};

use super::graph::Graph;
use super::layout::relative;
use super::manifest::{MANIFEST_FILE, Manifest};
use super::spec::Variant;
use super::{LATENT_CHANNELS, PACKED_FEATURES};
use crate::tensors::{FloatType, IdType};
use crate::tokenizer::CLIP_LENGTH;

/// Shape class of a port: float (f32/f16/bf16) or token ids (int32/int64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Float,
    Id,
}

/// The expected interface of one graph input or output.
#[derive(Debug, Clone, Copy)]
pub(super) struct Port {
    name: &'static str,
    class: Class,
    /// Human shape, for messages.
    shape: &'static str,
    rank: usize,
    /// Axes that, when the graph fixes them, must have these sizes.
    fixed: &'static [(usize, i64)],
    required: bool,
}

const fn port(name: &'static str, class: Class, shape: &'static str, rank: usize) -> Port {
    Port {
        name,
        class,
        shape,
        rank,
        fixed: &[],
        required: true,
    }
}

const CLIP_INPUTS: &[Port] = &[Port {
    fixed: &[(1, CLIP_LENGTH as i64)],
    ..port("input_ids", Class::Id, "[B,77]", 2)
}];
const CLIP_OUTPUTS: &[Port] = &[
    port("pooled_embeddings", Class::Float, "[B,D]", 2),
    Port {
        required: false,
        ..port("text_embeddings", Class::Float, "[B,77,D]", 3)
    },
];
const T5_INPUTS: &[Port] = &[port("input_ids", Class::Id, "[B,L]", 2)];
const T5_OUTPUTS: &[Port] = &[port("text_embeddings", Class::Float, "[B,L,D]", 3)];
const TRANSFORMER_INPUTS: &[Port] = &[
    Port {
        fixed: &[(2, PACKED_FEATURES)],
        ..port("hidden_states", Class::Float, "[B,S,64]", 3)
    },
    port("encoder_hidden_states", Class::Float, "[B,L,D]", 3),
    port("pooled_projections", Class::Float, "[B,D]", 2),
    port("timestep", Class::Float, "[B]", 1),
    Port {
        fixed: &[(1, 3)],
        ..port("img_ids", Class::Float, "[S,3]", 2)
    },
    Port {
        fixed: &[(1, 3)],
        ..port("txt_ids", Class::Float, "[L,3]", 2)
    },
    Port {
        required: false,
        ..port("guidance", Class::Float, "[B]", 1)
    },
];
const TRANSFORMER_OUTPUTS: &[Port] = &[Port {
    fixed: &[(2, PACKED_FEATURES)],
    ..port("latent", Class::Float, "[B,S,64]", 3)
}];
const VAE_INPUTS: &[Port] = &[Port {
    fixed: &[(1, LATENT_CHANNELS)],
    ..port("latent", Class::Float, "[B,16,H/8,W/8]", 4)
}];
const VAE_OUTPUTS: &[Port] = &[Port {
    fixed: &[(1, 3)],
    ..port("images", Class::Float, "[B,3,H,W]", 4)
}];
const SAFETY_INPUTS: &[Port] = &[Port {
    fixed: &[(1, 3), (2, 224), (3, 224)],
    ..port("pixel_values", Class::Float, "[B,3,224,224]", 4)
}];
const SAFETY_OUTPUTS: &[Port] = &[Port {
    fixed: &[(1, 2)],
    ..port("logits", Class::Float, "[B,2]", 2)
}];

/// (inputs, outputs) of each graph.
pub(super) type Ports = (&'static [Port], &'static [Port]);
pub(super) const CLIP: Ports = (CLIP_INPUTS, CLIP_OUTPUTS);
pub(super) const T5: Ports = (T5_INPUTS, T5_OUTPUTS);
pub(super) const TRANSFORMER: Ports = (TRANSFORMER_INPUTS, TRANSFORMER_OUTPUTS);
pub(super) const VAE: Ports = (VAE_INPUTS, VAE_OUTPUTS);
pub(super) const SAFETY: Ports = (SAFETY_INPUTS, SAFETY_OUTPUTS);

pub(super) fn check_interface(
    root: &Path,
    graph: &Graph,
    inputs: &[Port],
    outputs: &[Port],
    problems: &mut Vec<String>,
) {
    let file = relative(root, &graph.path);
    check_ports(&file, "input", graph.session.inputs(), inputs, problems);
    check_ports(&file, "output", graph.session.outputs(), outputs, problems);
    for input in graph.session.inputs() {
        if !inputs.iter().any(|port| port.name == input.name()) {
            problems.push(format!(
                "{file}: unexpected input `{}` (flux-rs cannot feed it)",
                input.name()
            ));
        }
    }
}

fn check_ports(
    file: &str,
    direction: &str,
    outlets: &[Outlet],
    ports: &[Port],
    problems: &mut Vec<String>,
) {
    for port in ports {
        let expected_type = match port.class {
            Class::Float => "float32, float16 or bfloat16",
            Class::Id => "int32 or int64",
        };
        let Some(outlet) = outlets.iter().find(|outlet| outlet.name() == port.name) else {
            if port.required {
                let names: Vec<&str> = outlets.iter().map(Outlet::name).collect();
                problems.push(format!(
                    "{file}: missing {direction} `{}` ({expected_type} {}); the graph has {names:?}",
                    port.name, port.shape
                ));
            }
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            problems.push(format!(
                "{file}: {direction} `{}` is not a tensor",
                port.name
            ));
            continue;
        };
        let class_ok = match port.class {
            Class::Float => FloatType::from_element(*ty).is_some(),
            Class::Id => IdType::from_element(*ty).is_some(),
        };
        if !class_ok {
            problems.push(format!(
                "{file}: {direction} `{}` has element type {ty}, expected {expected_type}",
                port.name
            ));
        }
        if shape.len() != port.rank {
            problems.push(format!(
                "{file}: {direction} `{}` has rank {} ({}), expected rank {} {}",
                port.name,
                shape.len(),
                outlet.dtype(),
                port.rank,
                port.shape
            ));
            continue;
        }
        for &(axis, size) in port.fixed {
            let dim = shape[axis];
            if dim > 0 && dim != size {
                problems.push(format!(
                    "{file}: {direction} `{}` has size {dim} on axis {axis}, expected {size} {}",
                    port.name, port.shape
                ));
            }
        }
    }
}

fn agree(
    (left, left_name, left_axis): (&Graph, &str, usize),
    (right, right_name, right_axis): (&Graph, &str, usize),
    what: &str,
    root: &Path,
    problems: &mut Vec<String>,
) {
    if let (Some(a), Some(b)) = (
        left.fixed_dim(left_name, left_axis),
        right.fixed_dim(right_name, right_axis),
    ) && a != b
    {
        problems.push(format!(
            "{what} disagrees: {} `{left_name}` has {a}, {} `{right_name}` has {b}",
            relative(root, &left.path),
            relative(root, &right.path)
        ));
    }
}

/// Cross-graph agreement the pipeline relies on: the T5 width and the pooled width as the
/// transformer takes them.
pub(super) fn check_cross_graph(
    root: &Path,
    clip: Option<&Graph>,
    t5: Option<&Graph>,
    transformer: Option<&Graph>,
    problems: &mut Vec<String>,
) {
    if let (Some(t5), Some(transformer)) = (t5, transformer) {
        agree(
            (t5, "text_embeddings", 2),
            (transformer, "encoder_hidden_states", 2),
            "T5 width",
            root,
            problems,
        );
    }
    if let (Some(clip), Some(transformer)) = (clip, transformer) {
        agree(
            (clip, "pooled_embeddings", 1),
            (transformer, "pooled_projections", 1),
            "pooled width",
            root,
            problems,
        );
    }
}

/// The T5 text length: the manifest's, else the first graph axis that fixes it, else the
/// variant's default. Every axis that fixes it, in both graphs, must agree: a T5 export with a
/// dynamic length beside a transformer fixed to one would load and then fail every request.
pub(super) fn resolve_text_length(
    root: &Path,
    manifest: &Manifest,
    variant: Variant,
    t5: Option<&Graph>,
    transformer: Option<&Graph>,
    problems: &mut Vec<String>,
) -> usize {
    let fixed_text_lengths: Vec<(String, i64)> = [
        (t5, "input_ids", 1),
        (t5, "text_embeddings", 1),
        (transformer, "encoder_hidden_states", 1),
        (transformer, "txt_ids", 0),
    ]
    .into_iter()
    .filter_map(|(graph, name, axis)| {
        let graph = graph?;
        let length = graph.fixed_dim(name, axis)?;
        Some((format!("{} `{name}`", relative(root, &graph.path)), length))
    })
    .collect();
    let text_length = match (manifest.text_length, fixed_text_lengths.first()) {
        (Some(declared), _) => declared,
        (None, Some((_, length))) => usize::try_from(*length).unwrap_or(0),
        (None, None) => variant.spec().default_text_length,
    };
    let source = if manifest.text_length.is_some() {
        format!("{MANIFEST_FILE}'s text_length")
    } else {
        match fixed_text_lengths.first() {
            Some((first, _)) => first.clone(),
            None => "the default".to_owned(),
        }
    };
    for (place, length) in &fixed_text_lengths {
        if usize::try_from(*length).ok() != Some(text_length) {
            problems.push(format!(
                "text length disagrees: {place} takes {length} tokens, but {source} is {text_length}"
            ));
        }
    }
    if text_length == 0 {
        problems.push("text length is 0".to_owned());
    }
    text_length
}
