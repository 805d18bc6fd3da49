//! The JSON Schemas (draft 2020-12) of the wire types, as exported to `docs/schema/`.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

use crate::{ErrorBody, GenerateRequest, GenerateResponse};

/// One exported schema: the type's name (also the file stem) and its standalone schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedSchema {
    /// Type name, e.g. `GenerateRequest`; written to `docs/schema/<name>.json`.
    pub name: &'static str,
    /// A self-contained JSON Schema 2020-12 document (referenced types under `$defs`).
    pub schema: Value,
}

/// The standalone schema of one wire type.
pub fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Every exported schema: the request body, the 200 body, the error body, the queue bodies and
/// the model list.
pub fn exported_schemas() -> Vec<ExportedSchema> {
    vec![
        ExportedSchema {
            name: "GenerateRequest",
            schema: schema_of::<GenerateRequest>(),
        },
        ExportedSchema {
            name: "GenerateResponse",
            schema: schema_of::<GenerateResponse>(),
        },
        ExportedSchema {
            name: "ErrorBody",
            schema: schema_of::<ErrorBody>(),
        },
        ExportedSchema {
            name: "QueueSubmitted",
            schema: schema_of::<crate::QueueSubmitted>(),
        },
        ExportedSchema {
            name: "QueueStatus",
            schema: schema_of::<crate::QueueStatus>(),
        },
        ExportedSchema {
            name: "CancelAccepted",
            schema: schema_of::<crate::CancelAccepted>(),
        },
        ExportedSchema {
            name: "WebhookBody",
            schema: schema_of::<crate::WebhookBody>(),
        },
        ExportedSchema {
            name: "ModelList",
            schema: schema_of::<crate::ModelList>(),
        },
    ]
}
