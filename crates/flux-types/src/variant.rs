//! What the API does differently per FLUX.1 variant, as data: one [`VariantSpec`] per variant
//! (its route name, its `num_inference_steps` default and limit, whether `guidance_scale` means
//! anything). Validation and routing ask the spec; nothing matches on a variant.
//!
//! ```
//! use flux_types::VariantSpec;
//!
//! let schnell = VariantSpec::named("schnell").expect("a variant");
//! assert_eq!((schnell.default_inference_steps, schnell.max_inference_steps), (4, 12));
//! assert!(!schnell.uses_guidance);
//! assert!(VariantSpec::named("pro").is_none());
//! ```

use crate::request::{DEFAULT_INFERENCE_STEPS, MAX_INFERENCE_STEPS};

/// The API's facts about one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariantSpec {
    /// The variant's name in routes (`/api/v1/flux/{name}`) and model listings.
    pub name: &'static str,
    /// `num_inference_steps` when the body has none.
    pub default_inference_steps: u32,
    /// Most `num_inference_steps` a request may ask for (the fewest is always 1).
    pub max_inference_steps: u32,
    /// Whether `guidance_scale` is used (and so range-checked). When not, the field is accepted
    /// (any number) and ignored: the validated request carries the default instead.
    pub uses_guidance: bool,
}

/// FLUX.1-dev: guidance-distilled, 28 steps by default.
pub const DEV: VariantSpec = VariantSpec {
    name: "dev",
    default_inference_steps: DEFAULT_INFERENCE_STEPS,
    max_inference_steps: MAX_INFERENCE_STEPS,
    uses_guidance: true,
};

/// FLUX.1-schnell: timestep-distilled for 1–4 steps, no guidance input.
pub const SCHNELL: VariantSpec = VariantSpec {
    name: "schnell",
    default_inference_steps: 4,
    max_inference_steps: 12,
    uses_guidance: false,
};

/// Every variant the API knows, in the order listings use.
pub const VARIANTS: [&VariantSpec; 2] = [&DEV, &SCHNELL];

impl VariantSpec {
    /// The variant with this route name (exact, case-sensitive).
    pub fn named(name: &str) -> Option<&'static VariantSpec> {
        VARIANTS.into_iter().find(|spec| spec.name == name)
    }

    /// The variant the plain API (`parse_request`, `GenerateRequest::validate`) validates for.
    pub fn dev() -> &'static VariantSpec {
        &DEV
    }
}

impl std::fmt::Display for VariantSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_found_by_its_name_and_dev_keeps_the_contract_defaults() {
        for spec in VARIANTS {
            assert_eq!(VariantSpec::named(spec.name), Some(spec));
            assert!(spec.default_inference_steps <= spec.max_inference_steps);
        }
        assert_eq!(VariantSpec::dev(), &DEV);
        assert_eq!(
            (DEV.default_inference_steps, DEV.max_inference_steps),
            (28, 50)
        );
        assert_eq!(VariantSpec::named("Dev"), None);
    }
}
