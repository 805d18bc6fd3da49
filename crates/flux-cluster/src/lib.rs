//! flux-rs scale-out over NATS JetStream: stateless API nodes and `flux worker` processes.
//!
//! Each served model has a work-queue stream with one shared durable pull consumer; the job's
//! record in a key-value bucket is the source of truth (every change a compare-and-set on its
//! revision), images go to a shared store, and any API node answers any job. [`FleetJobs`] is
//! the API node's job service (behind flux-service's `JobService`, so the HTTP layer is the
//! same), [`Worker`] runs one engine's jobs.

mod api;
mod attempt_result;
mod attempt_tasks;
mod error;
mod fleet;
mod images;
mod images_nats;
mod images_s3;
mod reaper;
mod record;
mod records;
mod registry;
mod resolve;
pub mod servers;
mod settings_check;
mod stats;
mod watch;
mod webhooks;
mod worker;

pub use api::FleetJobs;
pub use error::ClusterError;
pub use fleet::{
    Fleet, FleetSettings, JOBS_BUCKET, MODELS_BUCKET, WORKERS_CONSUMER, job_subject, jobs_stream,
};
pub use images::{FolderImages, ImageStore, image_name};
pub use images_nats::{IMAGES_BUCKET, NatsImages};
pub use images_s3::S3Images;
pub use reaper::{ReapReport, Reaper, ReaperConfig};
pub use record::FleetRecord;
pub use records::{Changed, Records};
pub use settings_check::FLEET_BUCKET;
pub use stats::WorkerStats;
pub use webhooks::FleetWebhooks;
pub use worker::{Stage, StageHook, Worker, WorkerConfig};
