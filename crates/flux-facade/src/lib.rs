//! One `Generator` trait, two backends: local (flux-core on its owner thread) and remote (the
//! flux-remote client), chosen from one backend string.
//!
//! - [`Generator`] (re-exported from flux-types): a validated request in; encoded images, the seed
//!   used, NSFW flags and timings out; progress per denoising step; dropping the future cancels.
//! - [`LocalGenerator`] (feature `local`, default): FLUX on this machine. With no model folder it
//!   runs the tiny FLUX model compiled into the binary ([`bundled`]), which makes abstract images
//!   and exists so everything works end to end with nothing to download.
//! - [`RemoteGenerator`] (feature `remote`, default): a flux server over HTTP;
//!   [`FailoverGenerator`] tries several in order.
//! - [`Backend`]: picks one from a string — `local`, `local:/path/to/model`,
//!   `http(s)://host:port` (with `FLUX_API_KEY`), `failover:URL,URL` — or from `FLUX_BACKEND`
//!   with [`Backend::from_env`].
//!
//! With no features the crate is the trait and the backend parser only: no ONNX Runtime, no HTTP
//! client.
#![cfg_attr(
    all(feature = "local", feature = "remote"),
    doc = r#"
# Quickstart: local

```
use flux_facade::{Backend, GenerateRequest, ImageSize};

# fn main() -> Result<(), Box<dyn std::error::Error>> {
// `Backend::from_env()` reads FLUX_BACKEND; unset, it is this: the bundled tiny model.
let generator = "local".parse::<Backend>()?.start()?;

let request = GenerateRequest {
    image_size: ImageSize::Custom { width: 64, height: 64 },
    num_inference_steps: 2,
    ..GenerateRequest::new("a lighthouse on a cliff at dusk")
}
.validate()?; // the API's rules and messages

let runtime = tokio::runtime::Runtime::new()?;
let generation = runtime.block_on(generator.generate(request, None))?;
let image = &generation.images[0];
assert_eq!((image.width, image.height), (64, 64));
assert_eq!(image.content_type, "image/jpeg");
println!("seed {} reproduces this image", generation.seed);
# Ok(())
# }
```

# Quickstart: remote

The same code against a flux server (`flux serve`); only the backend string changes. Here the
server is started in the example itself, on a free loopback port, fronting the bundled model.

```
use flux_facade::{Backend, GenerateRequest, ImageSize, Progress};
use std::sync::Arc;

# #[tokio::main]
# async fn main() -> Result<(), Box<dyn std::error::Error>> {
# let files = tempfile::tempdir()?;
# let local = tokio::task::spawn_blocking(|| Backend::default().start()).await??;
# let config = flux_remote::ServerConfig {
#     listen: "127.0.0.1:0".parse()?,
#     api_keys: vec!["sk-demo-0123456789".to_owned()],
#     files_dir: files.path().to_path_buf(),
#     ..Default::default()
# };
# let server = flux_remote::Server::bind(config, local).await?;
# let address = server.local_addr()?;
# tokio::spawn(server.run(std::future::pending()));
// FLUX_BACKEND=http://host:port and FLUX_API_KEY=... do the same through `Backend::from_env()`.
let backend: Backend = format!("http://{address}").parse()?;
let generator = backend.with_api_key(Some("sk-demo-0123456789".to_owned())).start()?;

let request = GenerateRequest {
    image_size: ImageSize::Custom { width: 96, height: 64 },
    num_inference_steps: 2,
    seed: Some(42),
    ..GenerateRequest::new("a red fox in the snow")
}
.validate()?;
let on_step = Arc::new(|p: Progress| eprintln!("step {}/{}", p.step, p.total_steps));
let generation = generator.generate(request, Some(on_step)).await?;
assert_eq!(generation.seed, 42);
assert_eq!((generation.images[0].width, generation.images[0].height), (96, 64));
# Ok(())
# }
```
"#
)]

pub mod backend;
#[cfg(feature = "local")]
pub mod bundled;
pub mod error;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "remote")]
pub mod remote;
pub mod starting;

pub use backend::{API_KEY_ENV, BACKEND_ENV, Backend};
pub use error::FacadeError;
#[cfg(feature = "local")]
pub use flux_core::config::{ExecutionProvider, SessionConfig};
#[cfg(feature = "local")]
pub use flux_core::model::source::{BuildOptions, LoraSpec, Precision};
#[cfg(feature = "local")]
pub use flux_core::threads::{ComputePriority, ThreadPool};
pub use flux_types::{
    BoxFuture, GenerateRequest, GeneratedImage, Generation, GenerationTimings, Generator,
    GeneratorError, ImageSize, ImageSizePreset, OutputFormat, Progress, ProgressFn, ValidRequest,
};
#[cfg(feature = "local")]
pub use local::{LocalGenerator, LocalOptions};
#[cfg(feature = "remote")]
pub use remote::{FailoverGenerator, RemoteGenerator};
pub use starting::StartingGenerator;
