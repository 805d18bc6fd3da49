//! [`JobEvents`]: a job's status changes, for status streams and waits.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

use crate::error::ServiceError;
use crate::job::{JobId, JobResult, JobState, JobStatus, Owner};
use crate::service::GenerationService;

/// Statuses from elsewhere (a fleet's key-value watch), for [`JobEvents::from_stream`].
pub type StatusStream = Pin<Box<dyn Stream<Item = JobStatus> + Send>>;

/// A job's status changes: the current status first, then each change, ending after the terminal
/// one.
pub struct JobEvents {
    pub(crate) service: Option<GenerationService>,
    pub(crate) owner: Owner,
    pub(crate) id: JobId,
    pub(crate) first: Option<JobStatus>,
    pub(crate) receiver: Option<broadcast::Receiver<JobStatus>>,
    pub(crate) stream: Option<StatusStream>,
    pub(crate) done: bool,
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl JobEvents {
    /// Events read from `stream`, which yields the current status first and ends after the
    /// terminal one (or early, when its source goes away).
    pub fn from_stream(id: JobId, owner: Owner, stream: StatusStream) -> Self {
        JobEvents {
            service: None,
            owner,
            id,
            first: None,
            receiver: None,
            stream: Some(stream),
            done: false,
        }
    }

    /// The next status; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<JobStatus> {
        if self.done {
            return None;
        }
        let status = match self.first.take() {
            Some(first) => first,
            None => self.next_change().await?,
        };
        self.done = status.state.is_terminal();
        Some(status)
    }

    /// Waits for the job's end.
    pub async fn wait(mut self) -> Result<JobResult, ServiceError> {
        while let Some(status) = self.next().await {
            if let JobState::Completed(result) = status.state {
                return Ok(result);
            }
        }
        Err(ServiceError::NotFound)
    }

    async fn next_change(&mut self) -> Option<JobStatus> {
        if let Some(stream) = self.stream.as_mut() {
            return stream.next().await;
        }
        let receiver = self.receiver.as_mut()?;
        let service = self.service.as_ref()?;
        match receiver.recv().await {
            Ok(status) => Some(status),
            // Fell behind, or the job ended and its channel with it: what it is now.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                service.status(&self.id, self.owner).ok()
            }
            Err(broadcast::error::RecvError::Closed) => {
                let status = service.status(&self.id, self.owner);
                self.receiver = None;
                status.ok().filter(|status| status.state.is_terminal())
            }
        }
    }
}
