//! The fleet's settings, written once by the first process to open the fleet and compared by
//! every later one: a process given other flags (another `--ack-wait`, `--queue-depth`,
//! `--retention`, `--max-attempts` or `--replicas`) refuses to start instead of running with
//! settings the streams and buckets do not have.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::fleet::FleetSettings;
use crate::record::duration_ms;

/// The key-value bucket holding the fleet's settings.
pub const FLEET_BUCKET: &str = "flux-fleet";
/// Its one key.
const SETTINGS_KEY: &str = "settings";

/// The settings as the bucket holds them, each with the flag that sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSettings {
    ack_wait_ms: u64,
    max_attempts: u32,
    queue_depth: usize,
    retention_ms: u64,
    duplicate_window_ms: u64,
    memory_storage: bool,
    replicas: usize,
}

impl StoredSettings {
    fn of(settings: &FleetSettings) -> Self {
        StoredSettings {
            ack_wait_ms: duration_ms(settings.ack_wait),
            max_attempts: settings.max_deliver,
            queue_depth: settings.queue_depth,
            retention_ms: duration_ms(settings.retention),
            duplicate_window_ms: duration_ms(settings.duplicate_window),
            memory_storage: settings.memory_storage,
            replicas: settings.replicas,
        }
    }

    /// Each setting that differs: "flag: the fleet's value, this process's value".
    fn differences(&self, given: &StoredSettings) -> Vec<String> {
        let seconds = |ms: u64| format!("{}s", Duration::from_millis(ms).as_secs_f64());
        let mut out = Vec::new();
        let mut differ = |flag: &str, fleet: String, mine: String| {
            if fleet != mine {
                out.push(format!("{flag} is {fleet} in the fleet, {mine} here"));
            }
        };
        differ(
            "--ack-wait",
            seconds(self.ack_wait_ms),
            seconds(given.ack_wait_ms),
        );
        differ(
            "--max-attempts",
            self.max_attempts.to_string(),
            given.max_attempts.to_string(),
        );
        differ(
            "--queue-depth",
            self.queue_depth.to_string(),
            given.queue_depth.to_string(),
        );
        differ(
            "--retention",
            seconds(self.retention_ms),
            seconds(given.retention_ms),
        );
        differ(
            "--replicas",
            self.replicas.to_string(),
            given.replicas.to_string(),
        );
        differ(
            "the duplicate window",
            seconds(self.duplicate_window_ms),
            seconds(given.duplicate_window_ms),
        );
        differ(
            "memory storage",
            self.memory_storage.to_string(),
            given.memory_storage.to_string(),
        );
        out
    }
}

/// Writes `settings` as the fleet's if none are written yet; otherwise refuses settings that
/// differ from the fleet's, naming each.
pub(crate) async fn check_settings(
    js: &jetstream::Context,
    settings: &FleetSettings,
) -> Result<(), ClusterError> {
    let bucket = crate::fleet::open_bucket(
        js,
        kv::Config {
            bucket: FLEET_BUCKET.to_owned(),
            description: "flux-rs fleet settings (written by the first process)".to_owned(),
            history: 1,
            storage: settings.storage(),
            num_replicas: settings.replicas,
            ..Default::default()
        },
    )
    .await?;
    let given = StoredSettings::of(settings);
    let bytes = serde_json::to_vec(&given).map_err(|error| ClusterError::Decode {
        what: "the fleet's settings",
        message: error.to_string(),
    })?;
    match bucket.create(SETTINGS_KEY, bytes.into()).await {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(error) => return Err(ClusterError::nats("write the fleet's settings", error)),
    }
    let stored = bucket
        .get(SETTINGS_KEY)
        .await
        .map_err(|error| ClusterError::nats("read the fleet's settings", error))?
        .ok_or_else(|| ClusterError::Nats {
            operation: "read the fleet's settings",
            message: "written, then gone".to_owned(),
        })?;
    let fleet: StoredSettings =
        serde_json::from_slice(&stored).map_err(|error| ClusterError::Decode {
            what: "the fleet's settings",
            message: error.to_string(),
        })?;
    let differences = fleet.differences(&given);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Settings(format!(
            "{}; give every process of the fleet the same settings (to change them, stop every \
             process, then delete the key: `nats kv del {FLEET_BUCKET} {SETTINGS_KEY}`; streams \
             and buckets keep the limits they were created with until they are edited too)",
            differences.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_differing_setting_is_named_with_both_values() {
        let fleet = StoredSettings::of(&FleetSettings::default());
        let mine = StoredSettings::of(&FleetSettings {
            ack_wait: Duration::from_secs(1),
            queue_depth: 7,
            ..FleetSettings::default()
        });
        assert_eq!(
            fleet.differences(&mine),
            [
                "--ack-wait is 30s in the fleet, 1s here",
                "--queue-depth is 256 in the fleet, 7 here"
            ]
        );
        assert!(fleet.differences(&fleet.clone()).is_empty());
    }
}
