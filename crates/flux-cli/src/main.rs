//! The `flux` command line: generate images, serve the HTTP API, print the schema.
//!
//! Exit codes: 0 success, 2 bad usage or bad input (clap's errors, request validation, a bad
//! backend spec, a folder that is not a model), 130 a second signal cutting `serve`'s drain
//! short, 1 anything else. Errors print as one line, causes
//! joined by `: `; `-v` puts each cause on its own line and logs more.

// The doc comments of the argument structs are the command's help text, written for a terminal
// (`<user data dir>`, bare URLs), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

mod api_node;
mod bytes;
mod fleet;
mod generate;
mod logging;
mod model;
mod schema;
mod serve;
mod serve_defaults;
mod worker;
mod worker_faults;
mod worker_health;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  flux generate \"a lighthouse on a cliff at dusk\" -o out
  flux generate \"a red fox in the snow\" --size square --steps 20 --seed 42 --format png
  flux generate \"a red fox\" --model /models/FLUX.1-dev-onnx --device cuda
  FLUX_API_KEY=sk-... flux generate \"a red fox\" --backend https://flux.example.com
  flux serve --allow-unauthenticated --listen 127.0.0.1:8080
  flux serve --api-key-file keys.txt --model /models/FLUX.1-dev-onnx
  flux schema --openapi -o openapi.json

With no --model or --backend, flux uses the tiny FLUX model bundled in the binary: it makes
abstract images and exists to try the tool end to end. Logs go to stderr; set RUST_LOG to tune them.";

/// Text-to-image generation with FLUX.1 on ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "flux", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Print the full cause chain of errors, and more logs.
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate images from a prompt and write them to a folder.
    Generate(generate::GenerateArgs),
    /// Serve the HTTP API (POST /api/v1/flux/dev) over a local model or a remote backend.
    Serve(Box<serve::ServeArgs>),
    /// Run generations for a fleet: take one model's jobs from NATS JetStream (`--queue`).
    Worker(worker::WorkerArgs),
    /// Print or write the JSON Schema of the API's wire types, or its OpenAPI document.
    Schema(schema::SchemaArgs),
    /// Build a checkpoint (diffusers folder or BFL files) into ONNX graphs.
    Model(model::ModelArgs),
}

/// Marks an error as the user's input being wrong: exit code 2 instead of 1.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            // clap prints help/version to stdout with exit 0 and usage errors to stderr with 2.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let verbose = cli.verbose;
    let subcommand_matches = matches.subcommand().map(|(_, sub)| sub);
    let result = match cli.command {
        Command::Generate(mut args) => {
            if let Some(sub) = subcommand_matches {
                args.backend.note_sources(sub);
            }
            generate::run(args, verbose)
        }
        Command::Serve(mut args) => {
            if let Some(sub) = subcommand_matches {
                args.backend.note_sources(sub);
            }
            serve::run(*args, verbose)
        }
        Command::Worker(mut args) => {
            if let Some(sub) = subcommand_matches {
                args.backend.note_sources(sub);
            }
            worker::run(args, verbose)
        }
        Command::Schema(args) => schema::run(args),
        Command::Model(args) => model::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, verbose);
            ExitCode::from(exit_code(&error))
        }
    }
}

/// One line, the causes joined by `: `; with `-v`, one line per cause instead.
fn report(error: &anyhow::Error, verbose: bool) {
    if verbose {
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    } else {
        eprintln!("error: {error:#}");
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    let bad_input = error.chain().any(|cause| {
        cause.is::<BadInput>()
            || cause.is::<flux_types::RequestError>()
            || cause
                .downcast_ref::<flux_facade::FacadeError>()
                .is_some_and(flux_facade::FacadeError::is_bad_input)
            || matches!(
                cause.downcast_ref::<flux_types::GeneratorError>(),
                Some(
                    flux_types::GeneratorError::InvalidRequest { .. }
                        | flux_types::GeneratorError::ExceedsMemoryLimit { .. }
                )
            )
    });
    if bad_input { 2 } else { 1 }
}

/// Installs the stderr text log subscriber (see [`logging`]). A second installation can only
/// happen in tests that call this twice; logs then go to the first.
fn init_logging(default_level: &str) {
    let _ = logging::init_logging(false, default_level);
}

/// A multi-threaded tokio runtime for one command.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_input_anywhere_in_the_chain_exits_2() {
        let error = anyhow::Error::new(BadInput("nope".into())).context("while generating");
        assert_eq!(exit_code(&error), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), 1);
    }

    #[test]
    fn serve_without_flags_configures_the_library_defaults() -> anyhow::Result<()> {
        // Environment variables would be read as flags: the test parses an explicit command line
        // only where none of serve's variables is set.
        if std::env::vars().any(|(name, _)| {
            name.starts_with("FLUX_") && name != "FLUX_RS_CACHE_DIR" && name != "FLUX_RS_TEST_CHILD"
        }) {
            anyhow::bail!("unset the FLUX_* variables to run this test");
        }
        let cli = Cli::try_parse_from(["flux", "serve", "--allow-unauthenticated"])?;
        let Command::Serve(args) = cli.command else {
            anyhow::bail!("not serve");
        };
        let parsed = serve::server_config(&args)?;
        let defaults = flux_remote::ServerConfig::default();
        assert_eq!(parsed.listen, defaults.listen);
        assert_eq!(parsed.rate_limit, defaults.rate_limit);
        assert_eq!(parsed.queue_depth, defaults.queue_depth);
        assert_eq!(parsed.files_quota, defaults.files_quota);
        assert_eq!(parsed.files_dir, defaults.files_dir);
        // The one difference: the library keeps jobs in memory, `flux serve` durably.
        assert_eq!(parsed.data_dir, Some(flux_remote::default_data_dir()));
        assert_eq!(parsed.retention, defaults.retention);
        assert_eq!(parsed.request_timeout, defaults.request_timeout);
        assert_eq!(parsed.read_timeout, defaults.read_timeout);
        assert_eq!(parsed.drain_timeout, defaults.drain_timeout);
        assert_eq!(parsed.file_durability, defaults.file_durability);
        assert_eq!(parsed.trust_forwarded_for, defaults.trust_forwarded_for);
        Ok(())
    }
}
