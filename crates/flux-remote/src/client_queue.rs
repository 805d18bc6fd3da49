//! The queue API from the client: submit, status, the status stream (server-sent events), result,
//! cancel, and wait (the stream, then the result).

use std::time::Duration;

use flux_types::{
    CancelAccepted, GenerateRequest, GenerateResponse, QueueState, QueueStatus, QueueSubmitted,
};
use futures::Stream;
use reqwest::header;

use crate::client::{FluxClient, api_error, request_body};
use crate::error::RemoteError;
use crate::ids::random_hex;
use crate::routes::QUEUE_PATH;

/// Largest small JSON answer of the queue routes (status with logs, submit, cancel).
const MAX_STATUS_BYTES: usize = 1024 * 1024;
/// Largest result body: as the sync route's.
const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;
/// Largest single server-sent event.
const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// How often `wait` polls when the stream broke off.
const POLL_EVERY: Duration = Duration::from_millis(500);

fn invalid(what: &str, error: serde_json::Error) -> RemoteError {
    RemoteError::InvalidResponse(format!("the answer is not a {what}: {error}"))
}

impl FluxClient {
    fn job_url(&self, model: &str, request_id: &str) -> String {
        format!("{}{QUEUE_PATH}/{model}/requests/{request_id}", self.base)
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Queues a generation on `model` (`dev`, `schnell`), with a fresh `Idempotency-Key` unless
    /// the builder turned that off (a retried submit then answers the original job).
    pub async fn submit(
        &self,
        model: &str,
        request: &GenerateRequest,
    ) -> Result<QueueSubmitted, RemoteError> {
        let key = self.auto_idempotency_key.then(|| random_hex(16));
        self.submit_with(model, request, key.as_deref(), None).await
    }

    /// Queues a generation with the given `Idempotency-Key` (or none) and webhook URL (or none).
    pub async fn submit_with(
        &self,
        model: &str,
        request: &GenerateRequest,
        idempotency_key: Option<&str>,
        webhook: Option<&str>,
    ) -> Result<QueueSubmitted, RemoteError> {
        let body = request_body(request)?;
        let mut url = reqwest::Url::parse(&format!("{}{QUEUE_PATH}/{model}", self.base))
            .map_err(|error| RemoteError::InvalidResponse(format!("bad base URL: {error}")))?;
        if let Some(webhook) = webhook {
            url.query_pairs_mut().append_pair("fal_webhook", webhook);
        }
        let bytes = self
            .send_with_retries(idempotency_key.is_some(), MAX_STATUS_BYTES, |remaining| {
                let mut builder = self
                    .authorized(self.http.post(url.clone()))
                    .timeout(remaining)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(key) = idempotency_key {
                    builder = builder.header("idempotency-key", key);
                }
                builder
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| invalid("submit answer", error))
    }

    /// The job's status; `logs` adds its log.
    pub async fn status(
        &self,
        model: &str,
        request_id: &str,
        logs: bool,
    ) -> Result<QueueStatus, RemoteError> {
        let mut url = format!("{}/status", self.job_url(model, request_id));
        if logs {
            url.push_str("?logs=1");
        }
        let bytes = self
            .send_with_retries(true, MAX_STATUS_BYTES, |remaining| {
                self.authorized(self.http.get(&url)).timeout(remaining)
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| invalid("status object", error))
    }

    /// The completed job's result (the sync route's 200 body); errors as the server answers them
    /// (400 `not_completed`, 410 `cancelled`, the job's own failure).
    pub async fn result(
        &self,
        model: &str,
        request_id: &str,
    ) -> Result<GenerateResponse, RemoteError> {
        let url = self.job_url(model, request_id);
        let bytes = self
            .send_with_retries(true, MAX_RESULT_BYTES, |remaining| {
                self.authorized(self.http.get(&url)).timeout(remaining)
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| invalid("GenerateResponse", error))
    }

    /// Asks for the job's cancellation.
    pub async fn cancel(&self, model: &str, request_id: &str) -> Result<(), RemoteError> {
        let url = format!("{}/cancel", self.job_url(model, request_id));
        let bytes = self
            .send_with_retries(true, MAX_STATUS_BYTES, |remaining| {
                self.authorized(self.http.put(&url)).timeout(remaining)
            })
            .await?;
        serde_json::from_slice::<CancelAccepted>(&bytes)
            .map(|_| ())
            .map_err(|error| invalid("cancel answer", error))
    }

    /// The job's status stream: the current status, then every change; it ends after the
    /// `COMPLETED` one (or when the connection ends; `wait` then falls back to polling).
    pub async fn stream(
        &self,
        model: &str,
        request_id: &str,
    ) -> Result<impl Stream<Item = Result<QueueStatus, RemoteError>> + Send + use<>, RemoteError>
    {
        let url = format!("{}/status/stream", self.job_url(model, request_id));
        let response = self
            .authorized(self.http.get(&url))
            .timeout(self.total_timeout)
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        let state = (response, Vec::<u8>::new(), false);
        Ok(futures::stream::unfold(
            state,
            |(mut response, mut buffer, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(end) = find_event_end(&buffer) {
                        let event: Vec<u8> = buffer.drain(..end).collect();
                        let Some(data) = event_data(&event) else {
                            continue; // a comment (keep-alive) or an empty event
                        };
                        let parsed = serde_json::from_str::<QueueStatus>(&data)
                            .map_err(|error| invalid("status event", error));
                        let terminal = matches!(&parsed, Ok(status) if status.status == QueueState::Completed)
                            || parsed.is_err();
                        return Some((parsed, (response, buffer, terminal)));
                    }
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            buffer.extend_from_slice(&chunk);
                            if buffer.len() > MAX_EVENT_BYTES {
                                let error = RemoteError::InvalidResponse(
                                    "a status event is larger than 1 MiB".to_owned(),
                                );
                                return Some((Err(error), (response, Vec::new(), true)));
                            }
                        }
                        Ok(None) => return None,
                        Err(error) => {
                            return Some((Err(error.into()), (response, Vec::new(), true)));
                        }
                    }
                }
            },
        ))
    }

    /// Waits for the job's end, calling `on_status` with each status seen, then returns its
    /// result (or its error).
    pub async fn wait(
        &self,
        model: &str,
        request_id: &str,
        mut on_status: impl FnMut(&QueueStatus) + Send,
    ) -> Result<GenerateResponse, RemoteError> {
        use futures::StreamExt as _;
        let mut completed = false;
        if let Ok(stream) = self.stream(model, request_id).await {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(status)) = stream.next().await {
                on_status(&status);
                if status.status == QueueState::Completed {
                    completed = true;
                    break;
                }
            }
        }
        while !completed {
            let status = self.status(model, request_id, false).await?;
            on_status(&status);
            completed = status.status == QueueState::Completed;
            if !completed {
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
        self.result(model, request_id).await
    }
}

/// The end of the first complete event in `buffer` (after its blank line), if any.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| at + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` lines of one event, joined by newlines; `None` when it has none.
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines_and_comments_carry_no_data() {
        let buffer = b": keep-alive\n\ndata: {\"a\":1}\n\ndata: x";
        let first = find_event_end(buffer).unwrap_or(0);
        assert_eq!(event_data(&buffer[..first]), None);
        let rest = &buffer[first..];
        let second = find_event_end(rest).unwrap_or(0);
        assert_eq!(event_data(&rest[..second]).as_deref(), Some("{\"a\":1}"));
        assert_eq!(find_event_end(&rest[second..]), None, "incomplete");
    }
}
