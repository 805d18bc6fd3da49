//! [`StartingGenerator`]: the stand-in a server fronts while its backend starts, so that it can
//! listen (and answer `/health`) at once and say "not ready" instead of refusing connections
//! during a model load of minutes.

use std::sync::{Arc, OnceLock};

use flux_types::{
    BoxFuture, Generation, Generator, GeneratorError, ModelInfo, ProgressFn, ValidRequest,
};

/// Not ready until [`StartingGenerator::started`] hands it the backend; from then on, that
/// backend. Generation requests before then fail with [`GeneratorError::NotReady`] (a server
/// answers them 503 `not_ready` with `Retry-After`).
pub struct StartingGenerator {
    backend: OnceLock<Arc<dyn Generator>>,
    description: String,
}

impl StartingGenerator {
    /// A stand-in for the backend `description` names, not yet started.
    pub fn new(description: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            backend: OnceLock::new(),
            description: description.into(),
        })
    }

    /// Puts the started backend in place. Only the first call counts; it returns whether this
    /// one did.
    pub fn started(&self, backend: Arc<dyn Generator>) -> bool {
        self.backend.set(backend).is_ok()
    }
}

impl std::fmt::Debug for StartingGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartingGenerator")
            .field("backend", &self.describe())
            .field("started", &self.backend.get().is_some())
            .finish()
    }
}

impl Generator for StartingGenerator {
    fn generate(
        &self,
        request: ValidRequest,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        match self.backend.get() {
            Some(backend) => backend.generate(request, progress),
            None => Box::pin(async { Err(GeneratorError::NotReady) }),
        }
    }

    fn is_ready(&self) -> bool {
        self.backend.get().is_some_and(|backend| backend.is_ready())
    }

    fn describe(&self) -> String {
        match self.backend.get() {
            Some(backend) => backend.describe(),
            None => format!("{} (starting)", self.description),
        }
    }

    /// `None` until the backend has started: a server routes nothing to it before then.
    fn model(&self) -> Option<ModelInfo> {
        self.backend.get().and_then(|backend| backend.model())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flux_types::GenerateRequest;
    use flux_types::test_util::FakeGenerator;

    /// Answers at once, with the request's seed.
    fn answers() -> Arc<FakeGenerator> {
        Arc::new(FakeGenerator::new().named("answers"))
    }

    fn request() -> ValidRequest {
        GenerateRequest {
            seed: Some(4),
            ..GenerateRequest::new("a cat")
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn reports_no_model_until_started_then_the_backends() {
        let starting = StartingGenerator::new("local:/models/flux");
        assert_eq!(starting.model(), None);
        let model =
            flux_types::test_util::fake_model("schnell-folder", &flux_types::variant::SCHNELL);
        assert!(starting.started(Arc::new(FakeGenerator::new().serving(model.clone()))));
        assert_eq!(starting.model(), Some(model));
    }

    #[test]
    fn not_ready_until_started_then_the_backend_itself() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let starting = StartingGenerator::new("local:/models/flux");
        assert!(!starting.is_ready());
        assert_eq!(starting.describe(), "local:/models/flux (starting)");
        assert_eq!(
            runtime.block_on(starting.generate(request(), None)).err(),
            Some(GeneratorError::NotReady)
        );

        assert!(starting.started(answers()));
        assert!(!starting.started(answers()), "only the first counts");
        assert!(starting.is_ready());
        assert_eq!(starting.describe(), "answers");
        let generation = runtime
            .block_on(starting.generate(request(), None))
            .unwrap();
        assert_eq!(generation.seed, 4);
    }
}
