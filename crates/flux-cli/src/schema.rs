//! `flux schema`: the JSON Schema of the wire types, or the OpenAPI document, from flux-types.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use flux_types::{ErrorBody, GenerateRequest, GenerateResponse};

/// Which wire type's JSON Schema to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WireType {
    /// The body of POST /api/v1/flux/dev.
    Request,
    /// The 200 response body.
    Response,
    /// The body of every non-2xx answer.
    Error,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  flux schema                      # JSON Schema of the request body
  flux schema --type response
  flux schema --openapi -o openapi.json")]
pub struct SchemaArgs {
    /// Print the OpenAPI 3.1 document of the whole API instead of one JSON Schema.
    #[arg(long, conflicts_with = "wire_type")]
    pub openapi: bool,

    /// The wire type whose JSON Schema (2020-12) to print.
    #[arg(long = "type", value_enum, default_value = "request", id = "wire_type")]
    pub wire_type: WireType,

    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: SchemaArgs) -> anyhow::Result<()> {
    let document = if args.openapi {
        flux_types::openapi::openapi_document()
    } else {
        match args.wire_type {
            WireType::Request => schemars::schema_for!(GenerateRequest).to_value(),
            WireType::Response => schemars::schema_for!(GenerateResponse).to_value(),
            WireType::Error => schemars::schema_for!(ErrorBody).to_value(),
        }
    };
    let mut text = serde_json::to_string_pretty(&document)?;
    text.push('\n');
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
