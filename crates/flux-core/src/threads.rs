//! The threads that run inference: how ONNX Runtime's intra-op pools are organised
//! ([`ThreadPool`]) and at which scheduling priority they run ([`ComputePriority`]).

use crate::{FluxError, Result};

/// How the sessions' intra-op threads are organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPool {
    /// Every session of the process runs on ONNX Runtime's one process-wide pool. The pipeline's
    /// graphs run one after another, so one pool is enough, and no finished stage's pool keeps
    /// spinning on the cores the next stage needs: on 2 cores this made the tiny model's 512²
    /// 4-step image 1.8× faster than with a pool per session. ONNX Runtime creates that pool once
    /// per process, with the thread count and priority of the first configuration that uses it;
    /// a later configuration that asks for other settings gets a pool per session (and says so in
    /// the log).
    #[default]
    Shared,
    /// Each session has its own pool (ONNX Runtime's default).
    PerSession,
}

/// Scheduling priority of the threads that run inference: the pool threads, and the engine's
/// thread, which takes part in every operator. (A caller that drives a pipeline on a thread of
/// its own keeps that thread's priority.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputePriority {
    /// The operating system's normal priority.
    #[default]
    Normal,
    /// Linux `SCHED_IDLE`: inference gets the CPU whenever no normal-priority thread wants it.
    /// A server's HTTP threads then answer at once while inference saturates every core (the
    /// 429 path, health checks, image downloads), at no measurable cost to inference on a
    /// machine dedicated to it. On a machine where other work keeps the CPU busy, inference
    /// waits for it: use it on dedicated hosts. Linux only; refused elsewhere.
    Idle,
}

impl std::str::FromStr for ComputePriority {
    type Err = FluxError;

    /// `normal` or `idle`, case-insensitive.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "idle" => Ok(Self::Idle),
            _ => Err(FluxError::InvalidInput {
                param: "compute priority",
                message: format!("{text:?} is not a priority; expected `normal` or `idle`"),
            }),
        }
    }
}

impl std::fmt::Display for ComputePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Idle => "idle",
        })
    }
}

impl ComputePriority {
    /// Gives the calling thread this priority. `Normal` leaves the thread as it is.
    pub fn apply_to_current_thread(self) -> Result<()> {
        match self {
            Self::Normal => Ok(()),
            Self::Idle => set_idle_policy(),
        }
    }

    /// Whether this priority can be set on this operating system.
    pub(crate) fn check_supported(self) -> Result<()> {
        match self {
            Self::Idle if !cfg!(target_os = "linux") => Err(FluxError::ThreadPriority {
                reason: "the `idle` compute priority (SCHED_IDLE) exists only on Linux".to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(target_os = "linux")]
fn set_idle_policy() -> Result<()> {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|error| FluxError::ThreadPriority {
        reason: format!("cannot switch a thread to SCHED_IDLE: {error:?}"),
    })
}

#[cfg(not(target_os = "linux"))]
fn set_idle_policy() -> Result<()> {
    ComputePriority::Idle.check_supported()
}

/// Creates ONNX Runtime's pool threads: named `flux-ort`, at the configured priority.
#[derive(Debug)]
pub(crate) struct PoolThreads {
    pub(crate) priority: ComputePriority,
}

impl ort::environment::ThreadManager for PoolThreads {
    type Thread = std::thread::JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        let priority = self.priority;
        std::thread::Builder::new()
            .name("flux-ort".to_owned())
            .spawn(move || {
                // The priority was checked before the pool was made; a failure here (a
                // seccomp filter, say) leaves this one thread at normal priority.
                if let Err(error) = priority.apply_to_current_thread() {
                    tracing::warn!(%error, "an ONNX Runtime pool thread keeps normal priority");
                }
                work();
            })
            .map_err(|error| ort::Error::new(format!("cannot spawn a pool thread: {error}")))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread
            .join()
            .map_err(|_| ort::Error::new("an ONNX Runtime pool thread panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_print() {
        for priority in [ComputePriority::Normal, ComputePriority::Idle] {
            assert_eq!(
                priority.to_string().parse::<ComputePriority>().ok(),
                Some(priority)
            );
        }
        assert_eq!(
            " IDLE ".parse::<ComputePriority>().ok(),
            Some(ComputePriority::Idle)
        );
        assert!("low".parse::<ComputePriority>().is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn idle_priority_switches_the_calling_thread_to_sched_idle() {
        let policy = std::thread::spawn(|| {
            ComputePriority::Idle.apply_to_current_thread()?;
            thread_priority::unix::thread_schedule_policy().map_err(|error| {
                FluxError::ThreadPriority {
                    reason: format!("{error:?}"),
                }
            })
        })
        .join()
        .map_err(|_| "thread panicked");
        assert_eq!(
            policy.ok().and_then(|policy| policy.ok()),
            Some(thread_priority::unix::ThreadSchedulePolicy::Normal(
                thread_priority::unix::NormalThreadSchedulePolicy::Idle
            ))
        );
    }
}
