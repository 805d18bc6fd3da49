//! The OpenAPI operations of the queue API, the schnell route, the model list and the webhook.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use crate::openapi::{RATE_LIMIT_HEADERS, error_response, header_ref, json_content};
use crate::variant::VariantSpec;
use crate::{CancelAccepted, ErrorCode, ModelList, QueueStatus, QueueSubmitted, WebhookBody};

/// The queue bodies' schemas, registered in the document's components.
pub(crate) struct QueueSchemas {
    submitted: Value,
    status: Value,
    cancel: Value,
    webhook: Value,
    models: Value,
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
            models: generator.subschema_for::<ModelList>().to_value(),
        }
    }

    pub(crate) fn submit(
        &self,
        request_schema: &Value,
        schnell_request_schema: &Value,
        error_schema: &Value,
    ) -> Value {
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
            "requestBody": {"required": true, "description": "The body of the model's sync route: `GenerateRequest` for dev, `GenerateRequestSchnell` for schnell.", "content": json_content(&json!({"anyOf": [request_schema, schnell_request_schema]}))},
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

/// Adds the request schema of `variant` to the components, as `GenerateRequest` with the
/// variant's `num_inference_steps` default and limit, and `guidance_scale` unchecked when the
/// variant ignores it; returns its reference.
pub(crate) fn add_variant_request(
    schemas: &mut serde_json::Map<String, Value>,
    variant: &VariantSpec,
) -> Value {
    let mut schema = schemas.get("GenerateRequest").cloned().unwrap_or_default();
    let steps = &mut schema["properties"]["num_inference_steps"];
    steps["default"] = json!(variant.default_inference_steps);
    steps["maximum"] = json!(variant.max_inference_steps);
    steps["description"] = json!(format!(
        "Number of denoising steps, 1 to {}.",
        variant.max_inference_steps
    ));
    if !variant.uses_guidance {
        let guidance = &mut schema["properties"]["guidance_scale"];
        if let Some(guidance) = guidance.as_object_mut() {
            guidance.remove("minimum");
            guidance.remove("maximum");
        }
        guidance["description"] = json!(format!(
            "Accepted (any number) and ignored: FLUX.1-{} has no guidance input.",
            variant.name
        ));
    }
    schema["description"] = json!(format!(
        "The JSON body of `POST /api/v1/flux/{}`: the dev body with this variant's defaults and limits.",
        variant.name
    ));
    if let Some(examples) = schema.get_mut("examples").and_then(Value::as_array_mut) {
        for example in examples {
            example["num_inference_steps"] = json!(variant.default_inference_steps);
        }
    }
    let name = format!("GenerateRequest{}", capitalized(variant.name));
    let reference = json!({"$ref": format!("#/components/schemas/{name}")});
    schemas.insert(name, schema);
    reference
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The schnell route: the dev route's operation (`dev`, built on the schnell body) under its own
/// name, with a 404 for a server that serves no schnell model.
pub(crate) fn schnell_operation(mut dev: Value, error_schema: &Value) -> Value {
    dev["operationId"] = json!("generateFluxSchnell");
    dev["summary"] = json!("Generate images from a text prompt with FLUX.1-schnell");
    dev["description"] = json!(
        "As `POST /api/v1/flux/dev`, answered by the server's schnell model: `num_inference_steps` defaults to 4 (1–12), `guidance_scale` is accepted (any number) and ignored. 404 when the server serves no schnell model."
    );
    let examples = &mut dev["requestBody"]["content"]["application/json"]["examples"];
    examples["full"]["value"]["num_inference_steps"] = json!(4);
    dev["responses"]["404"] = error_response(
        error_schema,
        "This server serves no schnell model",
        &[ErrorCode::NotFound],
        &[],
    );
    if let Some(responses) = dev["responses"].as_object_mut() {
        // In status order, as every other operation lists them.
        let mut sorted: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
        sorted.sort_by(|(a, _), (b, _)| a.cmp(b));
        responses.extend(sorted);
    }
    dev
}

impl QueueSchemas {
    pub(crate) fn models(&self, error_schema: &Value) -> Value {
        json!({
            "operationId": "listModels",
            "summary": "The models this server serves",
            "description": "One entry per served model (at most one per variant), with its routes; a variant not listed answers 404 on its routes.",
            "security": [{"bearerAuth": []}],
            "responses": {
                "200": {"description": "The served models.", "headers": ok_headers(), "content": json_content(&self.models)},
                "401": unauthorized(error_schema),
            }
        })
    }
}
