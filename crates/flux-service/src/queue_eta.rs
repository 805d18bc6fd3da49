//! When the generation queue frees its next place, for the `Retry-After` of `overloaded`: the
//! oldest admitted generation is the one running (the engine works in order), it started when it
//! was admitted or when the one before it finished, whichever was later, and it should take about
//! the mean generation time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

#[derive(Debug, Default)]
pub struct QueueClock {
    inner: Mutex<Admitted>,
}

#[derive(Debug, Default)]
struct Admitted {
    /// Admission instants by admission order.
    since: BTreeMap<u64, Instant>,
    next_id: u64,
    last_finished: Option<Instant>,
}

/// An admitted generation's queue place: the semaphore permit, and its entry in the clock.
#[derive(Debug)]
pub struct Place {
    clock: Arc<QueueClock>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut admitted = self.clock.lock();
        admitted.since.remove(&self.id);
        admitted.last_finished = Some(Instant::now());
    }
}

impl QueueClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Admitted> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Place {
        let mut admitted = self.lock();
        let id = admitted.next_id;
        admitted.next_id += 1;
        admitted.since.insert(id, Instant::now());
        Place {
            clock: self.clone(),
            id,
            _permit: permit,
        }
    }

    /// How long until the running generation should be done, given the mean generation time;
    /// zero when it is already overdue or nothing runs.
    pub fn next_place_in(&self, mean_generation: Duration) -> Duration {
        let admitted = self.lock();
        let Some((_, oldest)) = admitted.since.first_key_value() else {
            return Duration::ZERO;
        };
        let running_since = match admitted.last_finished {
            Some(finished) if finished > *oldest => finished,
            _ => *oldest,
        };
        mean_generation.saturating_sub(running_since.elapsed())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn the_estimate_counts_down_from_when_the_running_generation_started() {
        let clock = Arc::new(QueueClock::default());
        let queue = Arc::new(Semaphore::new(2));
        assert_eq!(clock.next_place_in(Duration::from_secs(10)), Duration::ZERO);
        let first = clock.admit(queue.clone().try_acquire_owned().unwrap());
        let _second = clock.admit(queue.clone().try_acquire_owned().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        let eta = clock.next_place_in(Duration::from_secs(10));
        assert!(eta <= Duration::from_millis(9700), "{eta:?}");
        assert!(eta > Duration::from_secs(9), "{eta:?}");
        // The second starts running when the first finishes: its full mean is ahead of it.
        drop(first);
        let eta = clock.next_place_in(Duration::from_secs(10));
        assert!(eta > Duration::from_millis(9900), "{eta:?}");
    }
}
