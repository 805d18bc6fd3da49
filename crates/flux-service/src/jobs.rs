//! [`JobService`]: what the HTTP layer asks of a deployment's jobs, whether they run in this
//! process ([`GenerationService`]) or on workers elsewhere (a NATS JetStream fleet), so that the
//! handlers are the same for both.

use std::time::Duration;

use flux_types::BoxFuture;

use crate::error::ServiceError;
use crate::events::JobEvents;
use crate::job::{JobId, JobStatus, Owner};
use crate::models::ServedModels;
use crate::service::{Cancelled, GenerationService, Submission, Submitted};
use crate::store::JobRecord;

/// A deployment's jobs: submit, read, follow and cancel them.
pub trait JobService: Send + Sync + 'static {
    /// The models served now (a fleet's change as workers come and go).
    fn models(&self) -> ServedModels;
    /// Admits a job, or refuses at once ([`ServiceError::Overloaded`] when the queue is full).
    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, ServiceError>>;
    /// The job's record, for its owner.
    fn record<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobRecord, ServiceError>>;
    /// The job's current status, for its owner.
    fn status<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobStatus, ServiceError>>;
    /// The job's current status first, then every change, ending after the terminal one.
    fn events<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobEvents, ServiceError>>;
    /// Cancels the job (a running one stops at its next denoising step).
    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<Cancelled, ServiceError>>;
    /// Jobs this process admitted that are queued or running now.
    fn in_flight(&self) -> usize;
    /// About when the queue frees its next place, given the mean generation time.
    fn next_place_in(&self, mean_generation: Duration) -> Duration;
    /// Waits until no job this process admitted is queued or running.
    fn wait_idle(&self) -> BoxFuture<'_, ()>;
    /// Forgets jobs completed longer ago than the retention; returns how many.
    fn sweep(&self) -> usize;
    /// An image the deployment serves itself on the file route (a fleet's JetStream object
    /// store); `None` sends the route to the server's files folder.
    fn read_image<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Option<bytes::Bytes>> {
        Box::pin(async { None })
    }
    /// The HTTP server's public base URL, once it is bound (a fleet's results name their images
    /// by reference and get their URLs where they are answered).
    fn set_public_base_url(&self, _url: &str) {}
    /// Whether the job store can be reached (a fleet's NATS connection); `/ready` says so.
    fn is_connected(&self) -> bool {
        true
    }
}

impl JobService for GenerationService {
    fn models(&self) -> ServedModels {
        GenerationService::models(self).clone()
    }

    fn submit(&self, submission: Submission) -> BoxFuture<'_, Result<Submitted, ServiceError>> {
        let submitted = GenerationService::submit(self, submission);
        Box::pin(async move { submitted })
    }

    fn record<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobRecord, ServiceError>> {
        Box::pin(async move { GenerationService::record(self, id, owner) })
    }

    fn status<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobStatus, ServiceError>> {
        Box::pin(async move { GenerationService::status(self, id, owner) })
    }

    fn events<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<JobEvents, ServiceError>> {
        Box::pin(async move { GenerationService::events(self, id, owner) })
    }

    fn cancel<'a>(
        &'a self,
        id: &'a JobId,
        owner: Owner,
    ) -> BoxFuture<'a, Result<Cancelled, ServiceError>> {
        Box::pin(async move { GenerationService::cancel(self, id, owner) })
    }

    fn in_flight(&self) -> usize {
        GenerationService::in_flight(self)
    }

    fn next_place_in(&self, mean_generation: Duration) -> Duration {
        GenerationService::next_place_in(self, mean_generation)
    }

    fn wait_idle(&self) -> BoxFuture<'_, ()> {
        Box::pin(GenerationService::wait_idle(self))
    }

    fn sweep(&self) -> usize {
        GenerationService::sweep(self)
    }
}
