//! The OpenAPI operations of the queue API, the schnell route, the model list and the webhook.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::openapi::{RATE_LIMIT_HEADERS, error_response, header_ref, json_content};
use crate::{CancelAccepted, ErrorCode, QueueStatus, QueueSubmitted, WebhookBody};

/// The queue bodies' schemas, registered in the document's components.
pub(crate) struct QueueSchemas {
    submitted: Value,
    status: Value,
    cancel: Value,
    webhook: Value,
}

fn ok_headers() -> Value {
    let mut headers = serde_json::Map::new();
    headers.insert("X-Request-Id".to_owned(), header_ref("X-Request-Id"));
    for name in RATE_LIMIT_HEADERS {
        headers.insert(name.to_owned(), header_ref(name));
    }
    Value::Object(headers)
}

fn job_parameters() -> Value {
    json!([
        {"name": "model", "in": "path", "required": true, "description": "`dev` or `schnell`; a variant the server does not serve is 404.", "schema": {"type": "string", "enum": ["dev", "schnell"]}},
        {"name": "request_id", "in": "path", "required": true, "description": "The submit's `request_id`.", "schema": {"type": "string"}}
    ])
}

fn not_found(error_schema: &Value) -> Value {
    error_response(
        error_schema,
        "No such job for this API key: unknown, expired, submitted with another key, or under another model",
        &[ErrorCode::NotFound],
        &RATE_LIMIT_HEADERS,
    )
}

fn unauthorized(error_schema: &Value) -> Value {
    error_response(
        error_schema,
        "Missing, malformed or unknown API key",
        &[ErrorCode::Unauthorized],
        &["WWW-Authenticate"],
    )
}

impl QueueSchemas {
    pub(crate) fn new(generator: &mut SchemaGenerator) -> Self {
        QueueSchemas {
            submitted: generator.subschema_for::<QueueSubmitted>().to_value(),
            status: generator.subschema_for::<QueueStatus>().to_value(),
            cancel: generator.subschema_for::<CancelAccepted>().to_value(),
            webhook: generator.subschema_for::<WebhookBody>().to_value(),
        }
    }

    pub(crate) fn submit(&self, request_schema: &Value, error_schema: &Value) -> Value {
        json!({
            "operationId": "submitJob",
            "summary": "(ext) Queue a generation",
            "description": "The body, validation, authentication, rate limit and Idempotency-Key are the sync route's (a replayed submit answers the original job, with `Idempotent-Replayed: true`). The job is accepted at once; poll `status_url`, stream it, or get a webhook.",
            "security": [{"bearerAuth": []}],
            "parameters": [
                {"name": "model", "in": "path", "required": true, "schema": {"type": "string", "enum": ["dev", "schnell"]}},
                {"name": "fal_webhook", "in": "query", "required": false, "description": "A URL to POST a `WebhookBody` to when the job completes, signed per Standard Webhooks. Loopback, private, link-local and metadata targets are refused (400) unless the server allows them.", "schema": {"type": "string", "format": "uri"}},
                {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}}
            ],
            "requestBody": {"required": true, "content": json_content(request_schema)},
            "responses": {
                "202": {"description": "Accepted and queued.", "headers": ok_headers(), "content": json_content(&self.submitted)},
                "400": error_response(error_schema, "A bad body (as on the sync route), or a `fal_webhook` that is not allowed (`param` is `fal_webhook`)", &[ErrorCode::InvalidJson, ErrorCode::InvalidParameter, ErrorCode::UnknownField], &RATE_LIMIT_HEADERS),
                "401": unauthorized(error_schema),
                "404": error_response(error_schema, "A model this server does not serve", &[ErrorCode::NotFound], &[]),
                "413": error_response(error_schema, "The body is over 64 KiB", &[ErrorCode::PayloadTooLarge], &RATE_LIMIT_HEADERS),
                "415": error_response(error_schema, "The body is not application/json", &[ErrorCode::UnsupportedMediaType], &RATE_LIMIT_HEADERS),
                "422": error_response(error_schema, "This Idempotency-Key was used with a different body", &[ErrorCode::IdempotencyMismatch], &RATE_LIMIT_HEADERS),
                "429": error_response(error_schema, "This API key is over its request rate, or queued + running jobs are at the server's bound and nothing was queued", &[ErrorCode::RateLimited, ErrorCode::Overloaded], &["Retry-After"]),
                "503": error_response(error_schema, "The model is still loading, the server is draining, or it cannot store images", &[ErrorCode::NotReady, ErrorCode::ShuttingDown, ErrorCode::StorageUnavailable], &[]),
            }
        })
    }

    pub(crate) fn status(&self, error_schema: &Value) -> Value {
        let mut parameters = job_parameters();
        if let Some(list) = parameters.as_array_mut() {
            list.push(json!({"name": "logs", "in": "query", "required": false, "description": "`1` adds the job's log.", "schema": {"type": "string", "enum": ["1", "true"]}}));
        }
        json!({
            "operationId": "jobStatus",
            "summary": "(ext) A job's status",
            "security": [{"bearerAuth": []}],
            "parameters": parameters,
            "responses": {
                "200": {"description": "The status object.", "headers": ok_headers(), "content": json_content(&self.status)},
                "401": unauthorized(error_schema),
                "404": not_found(error_schema),
            }
        })
    }

    pub(crate) fn stream(&self, error_schema: &Value) -> Value {
        json!({
            "operationId": "jobStatusStream",
            "summary": "(ext) A job's status as server-sent events",
            "description": "One `data:` line with a status object per change: the current status first, then every change (queue position, each denoising step, the end); the stream ends after the `COMPLETED` one. Comment lines keep idle connections alive.",
            "security": [{"bearerAuth": []}],
            "parameters": job_parameters(),
            "responses": {
                "200": {"description": "An event stream of status objects.", "headers": ok_headers(), "content": {"text/event-stream": {"schema": {"type": "string"}, "itemSchema": self.status}}},
                "401": unauthorized(error_schema),
                "404": not_found(error_schema),
            }
        })
    }

    pub(crate) fn result(&self, response_schema: &Value, error_schema: &Value) -> Value {
        json!({
            "operationId": "jobResult",
            "summary": "(ext) A completed job's result",
            "security": [{"bearerAuth": []}],
            "parameters": job_parameters(),
            "responses": {
                "200": {"description": "The sync route's 200 body.", "headers": ok_headers(), "content": json_content(response_schema)},
                "400": error_response(error_schema, "The job has not completed yet", &[ErrorCode::NotCompleted], &RATE_LIMIT_HEADERS),
                "401": unauthorized(error_schema),
                "404": not_found(error_schema),
                "410": error_response(error_schema, "The job was cancelled", &[ErrorCode::Cancelled], &RATE_LIMIT_HEADERS),
                "500": error_response(error_schema, "The job failed (its error, as the sync route would have answered it; other statuses such as 429 or 503 are possible when that is what the generator answered)", &[ErrorCode::InferenceFailed], &RATE_LIMIT_HEADERS),
            }
        })
    }

    pub(crate) fn cancel(&self, error_schema: &Value) -> Value {
        json!({
            "operationId": "cancelJob",
            "summary": "(ext) Cancel a job",
            "description": "A queued job is COMPLETED/cancelled at once; a running one stops at its next denoising step boundary. Nothing more is generated for it.",
            "security": [{"bearerAuth": []}],
            "parameters": job_parameters(),
            "responses": {
                "202": {"description": "Cancellation requested.", "headers": ok_headers(), "content": json_content(&self.cancel)},
                "400": error_response(error_schema, "The job has already completed", &[ErrorCode::AlreadyCompleted], &RATE_LIMIT_HEADERS),
                "401": unauthorized(error_schema),
                "404": not_found(error_schema),
            }
        })
    }

    pub(crate) fn webhook(&self) -> Value {
        let signed = |description: &str| json!({"required": true, "description": description, "schema": {"type": "string"}});
        json!({
            "summary": "(ext) A job completed",
            "description": "POSTed to a submit's `fal_webhook` URL, signed per Standard Webhooks with the server's `--webhook-secret-file` key. Retried on a non-2xx answer or a connection error (the first retry within about 10 s, then with jittered exponential backoff for a bounded time, 2 h by default); a 410 stops retries.",
            "parameters": [
                {"name": "webhook-id", "in": "header", "required": true, "description": "The same on every retry of one delivery.", "schema": {"type": "string"}},
                {"name": "webhook-timestamp", "in": "header", "required": true, "description": "Unix seconds of this attempt.", "schema": {"type": "string"}},
                {"name": "webhook-signature", "in": "header", "required": true, "description": "`v1,` + base64(HMAC-SHA256(key, \"{webhook-id}.{webhook-timestamp}.{body}\")).", "schema": {"type": "string"}}
            ],
            "requestBody": {"required": true, "content": json_content(&self.webhook)},
            "responses": {
                "200": signed("Accepted (any 2xx)."),
                "410": signed("Stop retrying."),
            }
        })
    }
}

pub(crate) fn schnell_operation(
    request_schema: &Value,
    response_schema: &Value,
    error_schema: &Value,
) -> Value {
    json!({
        "operationId": "generateFluxSchnell",
        "summary": "Generate images with FLUX.1-schnell",
        "description": "As `POST /api/v1/flux/dev`, answered by the server's schnell model: `num_inference_steps` defaults to 4 (1–12), `guidance_scale` is accepted and ignored. 404 when the server serves no schnell model.",
        "security": [{"bearerAuth": []}],
        "requestBody": {"required": true, "content": json_content(request_schema)},
        "responses": {
            "200": {"description": "The generated images.", "headers": ok_headers(), "content": json_content(response_schema)},
            "404": error_response(error_schema, "This server serves no schnell model", &[ErrorCode::NotFound], &[]),
        }
    })
}

pub(crate) fn models_operation(error_schema: &Value) -> Value {
    json!({
        "operationId": "listModels",
        "summary": "The models this server serves",
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": {"description": "One entry per model: `id`, `variant`, `text_length`, `precision`, `device`.", "headers": {"X-Request-Id": header_ref("X-Request-Id")}, "content": {"application/json": {"schema": {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "object"}}}}}}},
            "401": unauthorized(error_schema),
        }
    })
}
