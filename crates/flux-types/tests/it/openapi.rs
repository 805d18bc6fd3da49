//! The OpenAPI document covers every route of the contract with its responses and headers, and
//! its component schemas are the same schemas as the standalone exports.

use flux_types::openapi::openapi_document;
use flux_types::schema::exported_schemas;
use serde_json::Value;

fn resolve<'a>(document: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("non-local $ref {reference}"));
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("dangling $ref {reference}"))
}

fn collect_refs<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => refs.push(reference),
                    _ => collect_refs(child, refs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, refs)),
        _ => {}
    }
}

fn header_names(document: &Value, response: &Value) -> Vec<String> {
    response["headers"]
        .as_object()
        .map(|headers| {
            headers
                .iter()
                .map(|(name, header)| {
                    if let Some(reference) = header["$ref"].as_str() {
                        assert!(resolve(document, reference).is_object());
                    }
                    name.clone()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_reference_resolves() {
    let document = openapi_document();
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);
    assert!(refs.len() > 20, "{} refs", refs.len());
    for reference in refs {
        resolve(&document, reference);
    }
}

#[test]
fn every_route_of_the_contract_is_documented() {
    let document = openapi_document();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    let mut routes: Vec<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "GET /api/v1/files/{file}",
            "GET /api/v1/models",
            "GET /api/v1/queue/flux/{model}/requests/{request_id}",
            "GET /api/v1/queue/flux/{model}/requests/{request_id}/status",
            "GET /api/v1/queue/flux/{model}/requests/{request_id}/status/stream",
            "GET /health",
            "GET /metrics",
            "GET /openapi.json",
            "GET /ready",
            "POST /api/v1/flux/dev",
            "POST /api/v1/flux/schnell",
            "POST /api/v1/queue/flux/{model}",
            "PUT /api/v1/queue/flux/{model}/requests/{request_id}/cancel",
        ]
    );
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            assert!(operation["operationId"].is_string(), "{method} {path}");
            for (status, response) in operation["responses"].as_object().expect("responses") {
                let headers = header_names(&document, response);
                assert!(
                    headers.iter().any(|h| h == "X-Request-Id"),
                    "{method} {path} {status} lacks X-Request-Id"
                );
            }
        }
    }
}

#[test]
fn generation_route_has_auth_idempotency_and_every_error_status() {
    let document = openapi_document();
    let operation = &document["paths"]["/api/v1/flux/dev"]["post"];
    assert_eq!(
        operation["security"],
        serde_json::json!([{"bearerAuth": []}])
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let idempotency = &operation["parameters"][0];
    assert_eq!(idempotency["name"], "Idempotency-Key");
    assert_eq!(idempotency["in"], "header");
    assert_eq!(idempotency["schema"]["maxLength"], 255);

    let request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .expect("request $ref");
    assert_eq!(request_ref, "#/components/schemas/GenerateRequest");

    let responses = operation["responses"].as_object().expect("responses");
    let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
    assert_eq!(
        statuses,
        [
            "200", "400", "401", "405", "409", "413", "415", "422", "429", "500", "503"
        ]
    );
    // Every answer after the rate-limit check reports the caller's bucket; a 401 has none.
    for status in ["400", "409", "413", "415", "422", "429", "500", "503"] {
        let headers = header_names(&document, &responses[status]);
        assert!(
            headers.iter().any(|h| h == "X-RateLimit-Remaining"),
            "{status} lacks the rate-limit headers"
        );
    }
    assert!(
        !header_names(&document, &responses["401"])
            .iter()
            .any(|h| h.starts_with("X-RateLimit"))
    );
    assert!(
        header_names(&document, &responses["405"])
            .iter()
            .any(|h| h == "Allow")
    );
    // not_ready carries Retry-After, shutting_down does not: present but not required on 503.
    let unavailable = &responses["503"]["headers"]["Retry-After"];
    assert_eq!(unavailable["required"], false, "{unavailable}");
    let retry_after = resolve(&document, "#/components/headers/Retry-After");
    assert_eq!(retry_after["schema"]["minimum"], 1, "never 0: rounded up");
    let ok_headers = header_names(&document, &responses["200"]);
    for header in [
        "X-Request-Id",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Idempotent-Replayed",
    ] {
        assert!(ok_headers.iter().any(|h| h == header), "200 lacks {header}");
    }
    let limited_headers = header_names(&document, &responses["429"]);
    for header in [
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ] {
        assert!(
            limited_headers.iter().any(|h| h == header),
            "429 lacks {header}"
        );
    }
    assert!(
        header_names(&document, &responses["401"])
            .iter()
            .any(|h| h == "WWW-Authenticate")
    );
    for (status, response) in responses {
        if status != "200" {
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{status}"
            );
        }
    }
    let description = responses["429"]["description"]
        .as_str()
        .expect("description");
    assert!(description.contains("`rate_limited`") && description.contains("`overloaded`"));
}

/// Rewrites `$ref`s from the standalone `$defs` form to the OpenAPI components form.
fn as_component_refs(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(key, _)| key.as_str() != "$schema" && key.as_str() != "$defs")
                .map(|(key, child)| {
                    let child = match (key.as_str(), child) {
                        ("$ref", Value::String(reference)) => {
                            Value::String(reference.replace("#/$defs/", "#/components/schemas/"))
                        }
                        _ => as_component_refs(child),
                    };
                    (key.clone(), child)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_component_refs).collect()),
        other => other.clone(),
    }
}

#[test]
fn components_are_the_exported_schemas() {
    let document = openapi_document();
    let components = &document["components"]["schemas"];
    let exported = exported_schemas();
    let names: Vec<&str> = exported.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "GenerateRequest",
            "GenerateResponse",
            "ErrorBody",
            "QueueSubmitted",
            "QueueStatus",
            "CancelAccepted",
            "WebhookBody",
            "ModelList"
        ]
    );
    for export in exported {
        // A root schema carries a `title`; a component is named by its key instead.
        let mut root = as_component_refs(&export.schema);
        root.as_object_mut().expect("object").remove("title");
        assert_eq!(components[export.name], root, "{}", export.name);
        if let Some(defs) = export.schema["$defs"].as_object() {
            for (name, schema) in defs {
                assert_eq!(
                    components[name.as_str()],
                    as_component_refs(schema),
                    "{name}"
                );
            }
        }
    }
    let preset = &components["ImageSizePreset"]["oneOf"];
    let names: Vec<&str> = preset
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|variant| variant["const"].as_str().expect("const"))
        .collect();
    assert_eq!(
        names,
        [
            "square_hd",
            "square",
            "portrait_4_3",
            "portrait_16_9",
            "landscape_4_3",
            "landscape_16_9"
        ]
    );
}

#[test]
fn request_schema_states_bounds_and_defaults() {
    let document = openapi_document();
    let request = &document["components"]["schemas"]["GenerateRequest"];
    assert_eq!(request["additionalProperties"], false);
    assert_eq!(request["required"], serde_json::json!(["prompt"]));
    let properties = &request["properties"];
    assert_eq!(properties["prompt"]["maxLength"], 1000);
    assert_eq!(properties["prompt"]["minLength"], 1);
    assert!(properties["prompt"]["pattern"].is_string());
    for (field, minimum, maximum, default) in [
        ("num_images", 1.0, 4.0, Some(1.0)),
        ("guidance_scale", 1.0, 20.0, Some(3.5)),
        ("num_inference_steps", 1.0, 50.0, Some(28.0)),
        ("seed", 0.0, 4294967295.0, None),
    ] {
        assert_eq!(
            properties[field]["minimum"].as_f64(),
            Some(minimum),
            "{field}"
        );
        assert_eq!(
            properties[field]["maximum"].as_f64(),
            Some(maximum),
            "{field}"
        );
        assert_eq!(properties[field]["default"].as_f64(), default, "{field}");
        assert!(properties[field]["description"].is_string(), "{field}");
    }
    assert_eq!(properties["image_size"]["default"], "landscape_4_3");
    assert_eq!(properties["output_format"]["default"], "jpeg");
    assert_eq!(properties["sync_mode"]["default"], false);
    assert_eq!(properties["enable_safety_checker"]["default"], true);
    let custom = &document["components"]["schemas"]["ImageSize"]["anyOf"][1];
    assert_eq!(custom["additionalProperties"], false);
    for side in ["width", "height"] {
        assert_eq!(custom["properties"][side]["multipleOf"], 16);
        assert_eq!(custom["properties"][side]["minimum"], 64);
        assert_eq!(custom["properties"][side]["maximum"], 2048);
    }
}

#[test]
fn document_is_deterministic() {
    assert_eq!(openapi_document(), openapi_document());
    assert_eq!(
        serde_json::to_string(&openapi_document()).expect("serialize"),
        serde_json::to_string(&openapi_document()).expect("serialize")
    );
}

#[test]
fn the_openapi_schnell_body_has_schnells_defaults_and_limits() {
    let document = openapi_document();
    let schemas = &document["components"]["schemas"];
    let schnell = &schemas["GenerateRequestSchnell"]["properties"];
    assert_eq!(schnell["num_inference_steps"]["default"], 4);
    assert_eq!(schnell["num_inference_steps"]["maximum"], 12);
    assert!(schnell["guidance_scale"].get("maximum").is_none());
    assert!(schnell["guidance_scale"].get("minimum").is_none());
    let dev = &schemas["GenerateRequest"]["properties"];
    assert_eq!(dev["num_inference_steps"]["maximum"], 50);
    assert_eq!(dev["guidance_scale"]["maximum"], 20.0);
    let operation = &document["paths"]["/api/v1/flux/schnell"]["post"];
    assert_eq!(
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/GenerateRequestSchnell"
    );
    for status in ["200", "400", "401", "404", "429", "503"] {
        assert!(operation["responses"][status].is_object(), "{status}");
    }
    let models = &document["paths"]["/api/v1/models"]["get"]["responses"]["200"];
    assert_eq!(
        models["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ModelList"
    );
    let entry = &schemas["ServedModel"]["properties"];
    for field in [
        "id",
        "variant",
        "text_length",
        "precision",
        "device",
        "safety_checker",
        "sync_path",
        "queue_path",
    ] {
        assert!(entry[field].is_object(), "{field}");
    }
}
