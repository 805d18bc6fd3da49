//! The OpenAPI 3.1 document of the API, built from the wire types' JSON Schemas.
//!
//! OpenAPI 3.1's schema dialect is JSON Schema 2020-12, so schemars' output goes into
//! `components/schemas` unchanged; only the reference prefix differs from the standalone files.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::{ErrorBody, ErrorCode, GenerateRequest, GenerateResponse};

/// The API's version in the document's `info` (the contract is v1).
pub const API_VERSION: &str = "1.0.0";

/// The path of the generation route.
pub const GENERATE_PATH: &str = "/api/v1/flux/dev";

/// Builds the OpenAPI 3.1 document for every route of the contract. Deterministic: the same
/// source gives the same document, key order included.
pub fn openapi_document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    let request_schema = generator.subschema_for::<GenerateRequest>().to_value();
    let response_schema = generator.subschema_for::<GenerateResponse>().to_value();
    let error_schema = generator.subschema_for::<ErrorBody>().to_value();
    let queue = crate::openapi_queue::QueueSchemas::new(&mut generator);
    let mut schemas = generator.take_definitions(true);
    let schnell_request_schema =
        crate::openapi_queue::add_variant_request(&mut schemas, &crate::variant::SCHNELL);

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flux-rs API",
            "version": API_VERSION,
            "description": "Text-to-image generation with FLUX.1-dev, following a hosted FLUX provider's `flux/dev` endpoint. Fields and headers marked (ext) are flux-rs extensions. Every answer carries `X-Request-Id`; every non-2xx answer has an `ErrorBody`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "paths": {
            GENERATE_PATH: {"post": generate_operation(&request_schema, &response_schema, &error_schema)},
            "/api/v1/files/{file}": {"get": file_operation(&error_schema)},
            "/health": {"get": health_operation()},
            "/ready": {"get": ready_operation(&error_schema)},
            "/metrics": {"get": metrics_operation()},
            "/openapi.json": {"get": openapi_operation()},
            "/api/v1/flux/schnell": {"post": crate::openapi_queue::schnell_operation(generate_operation(&schnell_request_schema, &response_schema, &error_schema), &error_schema)},
            "/api/v1/models": {"get": queue.models(&error_schema)},
            "/api/v1/queue/flux/{model}": {"post": queue.submit(&request_schema, &schnell_request_schema, &error_schema)},
            "/api/v1/queue/flux/{model}/requests/{request_id}/status": {"get": queue.status(&error_schema)},
            "/api/v1/queue/flux/{model}/requests/{request_id}/status/stream": {"get": queue.stream(&error_schema)},
            "/api/v1/queue/flux/{model}/requests/{request_id}": {"get": queue.result(&response_schema, &error_schema)},
            "/api/v1/queue/flux/{model}/requests/{request_id}/cancel": {"put": queue.cancel(&error_schema)},
        },
        "webhooks": {
            "jobCompleted": {"post": queue.webhook()},
        },
        "components": {
            "schemas": Value::Object(schemas),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key of the server, as `Authorization: Bearer <key>`."
                }
            },
            "headers": headers_components(),
        }
    })
}

pub(crate) fn header_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/headers/{name}")})
}

fn headers_components() -> Value {
    json!({
        "X-Request-Id": {
            "description": "The request's id (also in the error body's `request_id`); quote it when reporting a problem.",
            "required": true,
            "schema": {"type": "string"}
        },
        "Retry-After": {
            "description": "Whole seconds to wait before retrying, rounded up, at least 1.",
            "required": true,
            "schema": {"type": "integer", "minimum": 1}
        },
        "Allow": {
            "description": "The methods the path serves.",
            "required": true,
            "schema": {"type": "string"}
        },
        "X-RateLimit-Limit": {
            "description": "Requests this API key may make per rate-limit window (the bucket's burst size).",
            "schema": {"type": "integer", "minimum": 0}
        },
        "X-RateLimit-Remaining": {
            "description": "Requests this API key may still make right now.",
            "schema": {"type": "integer", "minimum": 0}
        },
        "X-RateLimit-Reset": {
            "description": "Seconds until this API key's allowance is full again.",
            "schema": {"type": "integer", "minimum": 0}
        },
        "Idempotent-Replayed": {
            "description": "(ext) `true` when this is the stored answer of an earlier request with the same `Idempotency-Key` and body; nothing was generated again.",
            "schema": {"type": "string", "enum": ["true"]}
        },
        "WWW-Authenticate": {
            "description": "The authentication scheme: `Bearer`.",
            "required": true,
            "schema": {"type": "string"}
        }
    })
}

pub(crate) fn json_content(schema: &Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// An error answer: `ErrorBody`, the codes it can carry, and the headers it sends.
pub(crate) fn error_response(
    error_schema: &Value,
    description: &str,
    codes: &[ErrorCode],
    extra_headers: &[&str],
) -> Value {
    let mut headers = Map::new();
    headers.insert("X-Request-Id".to_owned(), header_ref("X-Request-Id"));
    for name in extra_headers {
        headers.insert((*name).to_owned(), header_ref(name));
    }
    let code_list = codes
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    json!({
        "description": format!("{description} (`error.code`: {code_list})."),
        "headers": headers,
        "content": json_content(error_schema),
    })
}

pub(crate) const RATE_LIMIT_HEADERS: [&str; 3] = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
];

fn generate_operation(
    request_schema: &Value,
    response_schema: &Value,
    error_schema: &Value,
) -> Value {
    let mut ok_headers = Map::new();
    ok_headers.insert("X-Request-Id".to_owned(), header_ref("X-Request-Id"));
    for name in RATE_LIMIT_HEADERS.iter().chain(&["Idempotent-Replayed"]) {
        ok_headers.insert((*name).to_owned(), header_ref(name));
    }
    let with_rate_limit: Vec<&str> = ["Retry-After"]
        .into_iter()
        .chain(RATE_LIMIT_HEADERS)
        .collect();
    // Every answer after authentication passed the rate-limit check and reports the bucket.
    let rate = &RATE_LIMIT_HEADERS;
    let mut unavailable = error_response(
        error_schema,
        "The model is still loading (with `Retry-After`), the server is draining for shutdown, or it cannot store images (`sync_mode` still works)",
        &[
            ErrorCode::NotReady,
            ErrorCode::ShuttingDown,
            ErrorCode::StorageUnavailable,
        ],
        rate,
    );
    unavailable["headers"]["Retry-After"] = json!({
        "description": "Sent with `not_ready`: whole seconds to wait before retrying.",
        "required": false,
        "schema": {"type": "integer", "minimum": 1}
    });
    json!({
        "operationId": "generateFluxDev",
        "summary": "Generate images from a text prompt with FLUX.1-dev",
        "description": "Validates the body (every problem is reported at once in `error.message`; `error.param` and `error.code` are the first problem's), then generates `num_images` images. With `sync_mode` the images come back as `data:` URIs and nothing is stored.",
        "security": [{"bearerAuth": []}],
        "parameters": [{
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "(ext) 1 to 255 visible ASCII characters. The same key with the same body (same API key) within the retention window replays the stored answer with `Idempotent-Replayed: true`; with a different body: 422; while the first request is still running: 409. Makes retrying a 500 or a dropped connection safe.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
        }],
        "requestBody": {
            "required": true,
            "description": "At most 64 KiB of JSON.",
            "content": {
                "application/json": {
                    "schema": request_schema,
                    "examples": {
                        "minimal": {"value": {"prompt": "a red fox in the snow"}},
                        "full": {"value": {
                            "prompt": "a red fox in the snow, golden hour, 35mm photo",
                            "num_images": 2,
                            "image_size": {"width": 1280, "height": 720},
                            "guidance_scale": 3.5,
                            "num_inference_steps": 28,
                            "seed": 123456789,
                            "output_format": "png",
                            "sync_mode": false,
                            "enable_safety_checker": true
                        }}
                    }
                }
            }
        },
        "responses": {
            "200": {
                "description": "The generated images, in order, with the seed used.",
                "headers": ok_headers,
                "content": json_content(response_schema),
            },
            "400": error_response(error_schema, "The body is malformed or breaks a rule (the message names the field and the rule; integers must be JSON integer literals, so `2.0` and `1e3` are refused), or the Idempotency-Key header is malformed (`param` is `Idempotency-Key`); `malformed_request` for two `Authorization` headers or an HTTP request that cannot be parsed", &[ErrorCode::InvalidJson, ErrorCode::InvalidParameter, ErrorCode::UnknownField, ErrorCode::MalformedRequest], rate),
            "401": error_response(error_schema, "Missing, malformed or unknown API key", &[ErrorCode::Unauthorized], &["WWW-Authenticate"]),
            "405": error_response(error_schema, "The path does not serve this method; `Allow` lists those it does (the contract has no code of its own for this)", &[ErrorCode::NotFound], &["Allow"]),
            "409": error_response(error_schema, "A request with this Idempotency-Key and body is still running; retry after `Retry-After` (when it should be done) to get its stored answer", &[ErrorCode::IdempotencyConflict], &with_rate_limit),
            "413": error_response(error_schema, "The body is over 64 KiB (also when sent without Content-Length)", &[ErrorCode::PayloadTooLarge], rate),
            "415": error_response(error_schema, "The body is not application/json (parameters such as `; charset=utf-8` are accepted)", &[ErrorCode::UnsupportedMediaType], rate),
            "422": error_response(error_schema, "This Idempotency-Key was used with a different body (`idempotency_mismatch`), or the request's estimated peak memory (model, image size, number of images) is over the server's memory limit, so it can never run there and nothing was queued (`exceeds_memory_limit`; ask for a smaller image or fewer images)", &[ErrorCode::IdempotencyMismatch, ErrorCode::ExceedsMemoryLimit], rate),
            "429": error_response(error_schema, "This API key is over its request rate, or the generation queue is full and nothing was queued", &[ErrorCode::RateLimited, ErrorCode::Overloaded], &with_rate_limit),
            "500": error_response(error_schema, "Generation failed or did not finish within the server's request timeout; the message carries no internals. Safe to retry with the same Idempotency-Key", &[ErrorCode::InferenceFailed], rate),
            "503": unavailable,
        }
    })
}

fn file_operation(error_schema: &Value) -> Value {
    let image =
        |media_type: &str| json!({"schema": {"type": "string", "contentMediaType": media_type}});
    json!({
        "operationId": "getFile",
        "summary": "Fetch a generated image",
        "description": "Serves an image from a 200 answer's `url`. Ids are random (at least 128 bits), so the URL is the capability and no API key is needed. Files are kept for the server's retention (24 h by default), then 404. A URL never serves a partial file.",
        "security": [],
        "parameters": [{
            "name": "file",
            "in": "path",
            "required": true,
            "description": "`{id}.{ext}` as it appears in the image's `url`, e.g. `6f1c…e2.jpg`.",
            "schema": {"type": "string"}
        }],
        "responses": {
            "200": {
                "description": "The image.",
                "headers": {"X-Request-Id": header_ref("X-Request-Id")},
                "content": {"image/jpeg": image("image/jpeg"), "image/png": image("image/png")}
            },
            "404": error_response(error_schema, "No such file, or it expired", &[ErrorCode::NotFound], &[]),
        }
    })
}

fn health_operation() -> Value {
    json!({
        "operationId": "health",
        "summary": "Liveness",
        "description": "200 while the process is serving HTTP, whether or not the model is loaded.",
        "security": [],
        "responses": {
            "200": {
                "description": "The process is live.",
                "headers": {"X-Request-Id": header_ref("X-Request-Id")}
            }
        }
    })
}

fn ready_operation(error_schema: &Value) -> Value {
    json!({
        "operationId": "ready",
        "summary": "Readiness",
        "description": "200 once the model is loaded and warm and the files folder is writable; 503 before that, while draining for shutdown, and while images cannot be stored.",
        "security": [],
        "responses": {
            "200": {
                "description": "Ready to generate.",
                "headers": {"X-Request-Id": header_ref("X-Request-Id")}
            },
            "503": error_response(error_schema, "Not ready", &[ErrorCode::NotReady, ErrorCode::ShuttingDown, ErrorCode::StorageUnavailable], &[]),
        }
    })
}

fn metrics_operation() -> Value {
    json!({
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "description": "Prometheus text exposition: requests by route and status, queue depth, a histogram of generation seconds, images generated.",
        "security": [],
        "responses": {
            "200": {
                "description": "Metrics in the Prometheus text format.",
                "headers": {"X-Request-Id": header_ref("X-Request-Id")},
                "content": {"text/plain": {"schema": {"type": "string"}}}
            }
        }
    })
}

fn openapi_operation() -> Value {
    json!({
        "operationId": "openapi",
        "summary": "This document",
        "description": "The OpenAPI 3.1 document of the API, as committed in `docs/openapi.json`.",
        "security": [],
        "responses": {
            "200": {
                "description": "The OpenAPI document.",
                "headers": {"X-Request-Id": header_ref("X-Request-Id")},
                "content": {"application/json": {"schema": {"type": "object"}}}
            }
        }
    })
}
