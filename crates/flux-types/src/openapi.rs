//! The OpenAPI 3.1 document of the API, built from the wire types' JSON Schemas.
