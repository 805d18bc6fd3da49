//! The model registry: which generator answers each variant's routes. A server holds one
//! generator per variant (each with its own engine), and a job runs on the generator of the
//! variant it was submitted to.

use std::sync::Arc;

use flux_types::{Generator, ModelInfo, VariantSpec};

/// One served generator: on the variant it reports ([`Generator::model`]), or on a fixed one.
struct Slot {
    generator: Arc<dyn Generator>,
    fixed: Option<&'static VariantSpec>,
}

impl Slot {
    /// The variant it serves; `None` while its model is still loading.
    fn variant(&self) -> Option<&'static VariantSpec> {
        self.fixed
            .or_else(|| self.generator.model().map(|model| model.variant))
    }
}

/// What a variant's routes reach.
#[derive(Clone)]
pub enum ModelLookup {
    /// This generator serves the variant (it may still report not ready).
    Served(Arc<dyn Generator>),
    /// No loaded model is of this variant, but a model is still loading and may be.
    Loading,
    /// The server does not serve this variant (404).
    NotServed,
}

impl std::fmt::Debug for ModelLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelLookup::Served(generator) => write!(f, "Served({})", generator.describe()),
            ModelLookup::Loading => f.write_str("Loading"),
            ModelLookup::NotServed => f.write_str("NotServed"),
        }
    }
}

/// One entry of [`ServedModels::listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub variant: &'static VariantSpec,
    /// The model's facts, when its generator reports them.
    pub model: Option<ModelInfo>,
    /// The generator's description (the id of a generator that reports no model).
    pub description: String,
}

/// The generators of a service, at most one per variant. Cheap to clone.
#[derive(Clone)]
pub struct ServedModels {
    slots: Arc<Vec<Slot>>,
}

impl std::fmt::Debug for ServedModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ServedModels {
    /// One generator on the dev routes, whatever model it reports (a test fake, a remote
    /// backend): the server as it was before it served several models.
    pub fn dev(generator: Arc<dyn Generator>) -> Self {
        Self {
            slots: Arc::new(vec![Slot {
                generator,
                fixed: Some(VariantSpec::dev()),
            }]),
        }
    }

    /// Each generator on the routes of the variant its model reports; one still loading (no
    /// model yet) serves nothing until it reports. The caller keeps variants unique (`flux serve`
    /// refuses two models of one variant before it hands them over); if two report the same,
    /// the first one given serves it.
    pub fn by_variant(generators: Vec<Arc<dyn Generator>>) -> Self {
        Self {
            slots: Arc::new(
                generators
                    .into_iter()
                    .map(|generator| Slot {
                        generator,
                        fixed: None,
                    })
                    .collect(),
            ),
        }
    }

    /// The generator of the variant named `variant` (a route's `{model}`).
    pub fn lookup(&self, variant: &str) -> ModelLookup {
        let mut loading = false;
        for slot in self.slots.iter() {
            match slot.variant() {
                Some(spec) if spec.name == variant => {
                    return ModelLookup::Served(Arc::clone(&slot.generator));
                }
                Some(_) => {}
                None => loading = true,
            }
        }
        if loading && VariantSpec::named(variant).is_some() {
            ModelLookup::Loading
        } else {
            ModelLookup::NotServed
        }
    }

    /// Whether every model is loaded and ready (what `/ready` reports).
    pub fn all_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| slot.variant().is_some() && slot.generator.is_ready())
    }

    /// Every served model whose variant is known, in the order given.
    pub fn listing(&self) -> Vec<Listed> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let model = slot.generator.model();
                let variant = slot.fixed.or(model.as_ref().map(|model| model.variant))?;
                Some(Listed {
                    variant,
                    model,
                    description: slot.generator.describe(),
                })
            })
            .collect()
    }

    /// Every generator's description, for logs.
    pub fn describe(&self) -> String {
        self.slots
            .iter()
            .map(|slot| slot.generator.describe())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use flux_types::test_util::FakeGenerator;

    use super::*;

    #[test]
    fn a_single_generator_serves_the_dev_routes_only() {
        let models = ServedModels::dev(Arc::new(FakeGenerator::new()));
        assert!(matches!(models.lookup("dev"), ModelLookup::Served(_)));
        assert!(matches!(models.lookup("schnell"), ModelLookup::NotServed));
        assert!(matches!(models.lookup("pro"), ModelLookup::NotServed));
        assert_eq!(models.listing().len(), 1);
        assert_eq!(models.listing()[0].variant.name, "dev");
        assert!(models.all_ready());
    }

    #[test]
    fn a_generator_without_a_model_yet_makes_its_variant_loading_and_the_server_not_ready() {
        let models = ServedModels::by_variant(vec![Arc::new(FakeGenerator::new())]);
        assert!(matches!(models.lookup("schnell"), ModelLookup::Loading));
        assert!(matches!(models.lookup("pro"), ModelLookup::NotServed));
        assert!(!models.all_ready());
        assert!(models.listing().is_empty());
    }
}
