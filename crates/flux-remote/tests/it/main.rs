//! flux-remote's integration tests, one module per subject, linked into one test binary (one link
//! of the server and client instead of one per file).
//!
//! Tests share this process. The SIGTERM test, whose signal goes to the whole process, runs itself
//! again in a child process through [`support::in_own_process`].

mod support;

mod config;
mod connections;
mod docs_examples;
mod hardening_auth;
mod hardening_connections;
mod hardening_storage;
mod loopback;
mod models;
mod playground;
mod queue_client;
mod queue_routes;
mod router;
mod sigterm;
mod webhooks;
