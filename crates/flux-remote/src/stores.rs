//! The server's stores: with a data folder (`--data-dir`), job records, the webhook outbox and
//! idempotency records in one redb file there; without one, in memory.

use std::sync::Arc;

use flux_service::{IdempotencyLog, JobStore, MemoryJobStore, MemoryOutbox, Outbox, RedbStore};

use crate::config::ServerConfig;
use crate::error::RemoteError;

/// Where jobs, webhooks and idempotency records live: one redb file under the data folder, or
/// memory.
pub(crate) struct Stores {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) outbox: Arc<dyn Outbox>,
    pub(crate) idempotency: Option<Arc<dyn IdempotencyLog>>,
}

impl Stores {
    pub(crate) fn open(config: &ServerConfig) -> Result<Stores, RemoteError> {
        let Some(dir) = &config.data_dir else {
            return Ok(Stores {
                jobs: Arc::new(MemoryJobStore::default()),
                outbox: Arc::new(MemoryOutbox::default()),
                idempotency: None,
            });
        };
        let store = RedbStore::open(dir).map_err(|error| RemoteError::DataDir {
            path: dir.clone(),
            message: error.to_string(),
        })?;
        tracing::info!(database = %store.path().display(), "job database opened");
        Ok(Stores {
            jobs: store.clone(),
            outbox: store.clone(),
            idempotency: Some(store),
        })
    }
}
