//! The contract's paths, shared by the server's router and the client.

/// The generation route of the dev model (the one a single-model server serves).
pub const GENERATE_PATH: &str = "/api/v1/flux/dev";
/// The prefix of every model's generation route: `/api/v1/flux/{variant}`.
pub const SYNC_PREFIX: &str = "/api/v1/flux";
/// The prefix of image URLs.
pub const FILES_PATH: &str = "/api/v1/files";
/// The prefix of every queue route.
pub const QUEUE_PATH: &str = "/api/v1/queue/flux";
