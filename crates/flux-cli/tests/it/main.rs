//! flux-cli's integration tests, linked into one test binary: the built `flux` binary end to end.

mod cli;
mod fleet;
mod json_logs;
mod memory;
mod model_build;
mod playground;
mod restart;
mod serve_models;
mod serve_queue;
mod webdriver;
