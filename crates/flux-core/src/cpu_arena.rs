//! One CPU memory arena for every session of the process, registered on the `ort` environment,
//! and the rule for when its free memory goes back to the system.
//!
//! Why one: ONNX Runtime gives each session its own arena by default, and an arena keeps its
//! peak. The transformer's activations (during the steps) and the VAE's (during the decode) are
//! never alive at once, but with an arena each the process held both: the VAE's was shrunk after
//! every decode to stop that, and the next decode faulted its pages in again (0.3-0.5 s of a
//! 1.2 s decode at 1024x576 on the medium model). With one arena the decode reuses the blocks the
//! steps freed, the peak is the larger of the two instead of their sum, and nothing needs to be
//! given back inside a request of the usual sizes. A request larger than
//! [`KEEP_ARENA_MAX_PIXELS`] gives it back after its last step and after each image's decode, as
//! each session's arena used to (kept, one decode's blocks did not all fit the next one's: the
//! tiny model's 2048² × 4 peaked at 2218 MiB instead of 1189), and any request's is given back
//! once the engine has been idle a while ([`crate::engine`]), so a large request's memory never
//! stays resident.

// The C API call that registers an environment allocator has no safe wrapper in `ort`.
#![allow(unsafe_code)]

use ort::AsPointer;
use ort::environment::Environment;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};

/// Requests of at most this many pixels in all (width × height × images) keep the arena's memory
/// for the next request: at these sizes the memory is reused by the next request of the same size,
/// and giving it back would cost the page faults described in the module docs. Larger requests
/// give it back when they end. 1024² is the largest preset size (`square_hd`).
pub const KEEP_ARENA_MAX_PIXELS: usize = 1024 * 1024;

/// Whether a request of `width` × `height` × `images` gives the arena's free memory back (see
/// [`KEEP_ARENA_MAX_PIXELS`]).
pub fn releases_arena_after(width: usize, height: usize, images: usize) -> bool {
    width.saturating_mul(height).saturating_mul(images) > KEEP_ARENA_MAX_PIXELS
}

/// Registers a CPU arena (ONNX Runtime's default arena settings) on `environment`; sessions built
/// with `with_env_allocators` then all allocate from it. Called once, right after the
/// environment is made.
pub(crate) fn register_shared_cpu_arena(environment: &Environment) -> ort::Result<()> {
    let memory = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )?;
    let create_and_register = ort::api().CreateAndRegisterAllocator;
    // SAFETY: both pointers come from live `ort` wrappers that outlive the call (ONNX Runtime
    // copies the memory info; the environment owns the allocator it makes), a null arena config
    // asks for ONNX Runtime's defaults, and the returned status is handed to
    // `result_from_status`, which takes ownership of it (null means success).
    unsafe {
        let status =
            create_and_register(environment.ptr().cast_mut(), memory.ptr(), std::ptr::null());
        ort::Error::result_from_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_beyond_the_largest_preset_release_the_arena() {
        assert!(!releases_arena_after(1024, 1024, 1));
        assert!(!releases_arena_after(1024, 768, 1));
        assert!(!releases_arena_after(512, 512, 4));
        assert!(releases_arena_after(1024, 1024, 2));
        assert!(releases_arena_after(1280, 1024, 1));
        assert!(releases_arena_after(2048, 2048, 4));
    }
}
