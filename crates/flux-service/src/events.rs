//! [`JobEvents`]: a job's status changes, for status streams and waits.

use tokio::sync::broadcast;

use crate::error::ServiceError;
use crate::job::{JobId, JobResult, JobState, JobStatus, Owner};
use crate::service::GenerationService;

/// A job's status changes: the current status first, then each change, ending after the terminal
/// one.
pub struct JobEvents {
    pub(crate) service: GenerationService,
    pub(crate) owner: Owner,
    pub(crate) id: JobId,
    pub(crate) first: Option<JobStatus>,
    pub(crate) receiver: Option<broadcast::Receiver<JobStatus>>,
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
        let receiver = self.receiver.as_mut()?;
        match receiver.recv().await {
            Ok(status) => Some(status),
            // Fell behind, or the job ended and its channel with it: what it is now.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.service.status(&self.id, self.owner).ok()
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.receiver = None;
                self.service
                    .status(&self.id, self.owner)
                    .ok()
                    .filter(|status| status.state.is_terminal())
            }
        }
    }
}
