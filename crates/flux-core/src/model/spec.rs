//! What differs between FLUX.1 variants, as data: one [`ModelSpec`] per variant. Nothing outside
//! this file matches on [`Variant`]; code asks the spec instead.

use serde::Deserialize;

/// FLUX.1 variant: dev takes a guidance input; schnell does not (and uses an unshifted schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

/// The facts of one variant that the loader and the pipeline rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    pub variant: Variant,
    /// The variant's name as users write it (`dev`, `schnell`).
    pub name: &'static str,
    /// Whether the transformer takes the distilled `guidance` input (how a graph shows its
    /// variant: a `guidance` input means dev).
    pub takes_guidance: bool,
    /// T5 tokens per prompt when no graph fixes the length and no manifest names it.
    pub default_text_length: usize,
    /// The `use_dynamic_shifting` a scheduler config of this variant usually has (another value is
    /// followed, with a warning).
    pub usual_dynamic_shifting: bool,
}

const DEV: ModelSpec = ModelSpec {
    variant: Variant::Dev,
    name: "dev",
    takes_guidance: true,
    default_text_length: 512,
    usual_dynamic_shifting: true,
};

const SCHNELL: ModelSpec = ModelSpec {
    variant: Variant::Schnell,
    name: "schnell",
    takes_guidance: false,
    default_text_length: 256,
    usual_dynamic_shifting: false,
};

/// Every variant's spec, for lookups by property.
const SPECS: [ModelSpec; 2] = [DEV, SCHNELL];

impl Variant {
    /// This variant's facts.
    pub fn spec(self) -> &'static ModelSpec {
        match self {
            Self::Dev => &DEV,
            Self::Schnell => &SCHNELL,
        }
    }

    /// The variant a transformer graph is, from whether it has a `guidance` input.
    pub fn from_guidance_input(has_guidance: bool) -> Self {
        SPECS
            .iter()
            .find(|spec| spec.takes_guidance == has_guidance)
            .map_or(Self::Dev, |spec| spec.variant)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_spec_belongs_to_its_variant_and_a_graph_shows_its_variant() {
        for spec in SPECS {
            assert_eq!(spec.variant.spec(), &spec);
            assert_eq!(
                Variant::from_guidance_input(spec.takes_guidance),
                spec.variant
            );
            assert_eq!(spec.variant.to_string(), spec.name);
        }
        assert_eq!(Variant::Dev.spec().default_text_length, 512);
        assert_eq!(Variant::Schnell.spec().default_text_length, 256);
    }
}
