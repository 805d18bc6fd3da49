//! Which models a fleet serves: each worker writes its model's facts under its variant in the
//! models bucket when it starts, and API nodes watch the bucket, so a route answers once any
//! worker of its variant has started (and keeps queueing while none runs).

use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use flux_service::ServedModels;
use flux_types::{
    BoxFuture, Generation, Generator, GeneratorError, ModelInfo, ProgressFn, ValidRequest,
    VariantSpec,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

/// A model's facts as the bucket holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireModel {
    id: String,
    variant: String,
    text_length: Option<u32>,
    precision: Option<String>,
    device: Option<String>,
    safety_checker: Option<bool>,
}

impl WireModel {
    fn of(info: &ModelInfo) -> Self {
        WireModel {
            id: info.id.clone(),
            variant: info.variant.name.to_owned(),
            text_length: info.text_length,
            precision: info.precision.clone(),
            device: info.device.clone(),
            safety_checker: info.safety_checker,
        }
    }

    fn info(self) -> Option<ModelInfo> {
        Some(ModelInfo {
            variant: VariantSpec::named(&self.variant)?,
            id: self.id,
            text_length: self.text_length,
            precision: self.precision,
            device: self.device,
            safety_checker: self.safety_checker,
        })
    }
}

/// Writes `info` as the fleet's model of its variant (the latest worker to start wins; workers
/// of one variant should run the same model).
pub async fn register(models: &kv::Store, info: &ModelInfo) -> Result<(), ClusterError> {
    let value = serde_json::to_vec(&WireModel::of(info)).map_err(|error| ClusterError::Decode {
        what: "a model entry",
        message: error.to_string(),
    })?;
    models
        .put(info.variant.name, value.into())
        .await
        .map_err(|error| ClusterError::nats("register a model", error))?;
    Ok(())
}

/// A model served by the fleet's workers, as an API node sees it: it answers its routes, and its
/// jobs go to the workers (this value never generates).
#[derive(Debug)]
struct FleetModel {
    info: ModelInfo,
}

impl Generator for FleetModel {
    fn generate(
        &self,
        _request: ValidRequest,
        _progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, Result<Generation, GeneratorError>> {
        Box::pin(async {
            Err(GeneratorError::Inference {
                detail: "an API node runs no generations: its jobs go to the workers".to_owned(),
            })
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} on the fleet's workers)",
            self.info.id, self.info.variant.name
        )
    }

    fn model(&self) -> Option<ModelInfo> {
        Some(self.info.clone())
    }
}

/// The fleet's served models, kept current by a watch of the models bucket.
#[derive(Clone)]
pub struct ModelRegistry {
    current: Arc<RwLock<ServedModels>>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("models", &self.snapshot())
            .finish()
    }
}

impl ModelRegistry {
    /// Reads the bucket and follows its changes in a task (for the life of the process).
    pub async fn follow(models: kv::Store) -> Result<Self, ClusterError> {
        let registry = ModelRegistry {
            current: Arc::new(RwLock::new(ServedModels::by_variant(Vec::new()))),
        };
        let mut watch = models
            .watch_all()
            .await
            .map_err(|error| ClusterError::nats("watch the models bucket", error))?;
        registry.reload(&models).await?;
        let follower = registry.clone();
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Some(Ok(_change)) => {
                        if let Err(error) = follower.reload(&models).await {
                            tracing::warn!(%error, "cannot read the fleet's models");
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the models watch failed; watching again");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        match models.watch_all().await {
                            Ok(again) => {
                                watch = again;
                                let _ = follower.reload(&models).await;
                            }
                            Err(error) => tracing::warn!(%error, "cannot watch the models bucket"),
                        }
                    }
                    None => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        if let Ok(again) = models.watch_all().await {
                            watch = again;
                            let _ = follower.reload(&models).await;
                        }
                    }
                }
            }
        });
        Ok(registry)
    }

    async fn reload(&self, models: &kv::Store) -> Result<(), ClusterError> {
        let mut keys = models
            .keys()
            .await
            .map_err(|error| ClusterError::nats("list the fleet's models", error))?;
        let mut served: Vec<Arc<dyn Generator>> = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|error| ClusterError::nats("list the fleet's models", error))?;
            let Some(value) = models
                .get(&key)
                .await
                .map_err(|error| ClusterError::nats("read a model entry", error))?
            else {
                continue;
            };
            match serde_json::from_slice::<WireModel>(&value)
                .ok()
                .and_then(WireModel::info)
            {
                Some(info) => served.push(Arc::new(FleetModel { info })),
                None => tracing::warn!(key, "an unreadable model entry in the fleet's bucket"),
            }
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ServedModels::by_variant(served);
        Ok(())
    }

    /// The models served now.
    pub fn snapshot(&self) -> ServedModels {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
