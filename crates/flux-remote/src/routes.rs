//! The contract's paths, shared by the server's router and the client.

/// The generation route.
pub const GENERATE_PATH: &str = "/api/v1/flux/dev";
/// The prefix of image URLs.
pub const FILES_PATH: &str = "/api/v1/files";
/// The prefix of every queue route.
pub const QUEUE_PATH: &str = "/api/v1/queue/flux";
