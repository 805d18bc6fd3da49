//! flux-facade's integration tests, one module per backend, linked into one test binary. Each
//! module needs the backends it drives (what `required-features` said when they were binaries of
//! their own).

#[cfg(feature = "local")]
mod local;
#[cfg(all(feature = "local", feature = "remote"))]
mod remote;
#[cfg(all(feature = "local", feature = "remote"))]
mod remote_progress;
