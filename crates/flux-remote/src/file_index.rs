//! The files folder's size accounting: every stored image by age, so a size quota can delete the
//! oldest first, and a health flag for `/ready` and the metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

/// Stored images, oldest first, and their total size.
#[derive(Debug, Default)]
pub(crate) struct FileIndex {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_age: BTreeMap<(SystemTime, String), u64>,
    written: HashMap<String, SystemTime>,
    total: u64,
}

impl Entries {
    fn remove(&mut self, name: &str) {
        if let Some(written) = self.written.remove(name)
            && let Some(size) = self.by_age.remove(&(written, name.to_owned()))
        {
            self.total = self.total.saturating_sub(size);
        }
    }
}

impl FileIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an image (found at start-up, or about to be written).
    pub(crate) fn insert(&self, name: &str, written: SystemTime, size: u64) {
        let mut entries = self.lock();
        entries.remove(name);
        entries.by_age.insert((written, name.to_owned()), size);
        entries.written.insert(name.to_owned(), written);
        entries.total = entries.total.saturating_add(size);
    }

    pub(crate) fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Reserves `size` bytes for `name` under `quota`: takes the oldest images out of the index
    /// until the new one fits, and returns their names for the caller to delete.
    pub(crate) fn reserve(&self, name: &str, size: u64, quota: Option<u64>) -> Vec<String> {
        let mut entries = self.lock();
        let mut evicted = Vec::new();
        if let Some(quota) = quota {
            while entries.total.saturating_add(size) > quota {
                let Some(((_, oldest), _)) = entries.by_age.first_key_value() else {
                    break;
                };
                let oldest = oldest.clone();
                entries.remove(&oldest);
                evicted.push(oldest);
            }
        }
        let now = SystemTime::now();
        entries.by_age.insert((now, name.to_owned()), size);
        entries.written.insert(name.to_owned(), now);
        entries.total = entries.total.saturating_add(size);
        evicted
    }

    /// Bytes the indexed images take.
    pub(crate) fn total(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_go_first_until_the_new_one_fits() {
        let index = FileIndex::default();
        let start = SystemTime::now() - Duration::from_secs(60);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            index.insert(name, start + Duration::from_secs(i as u64), 10);
        }
        assert_eq!(index.total(), 30);
        assert_eq!(index.reserve("d", 15, Some(40)), ["a"]);
        assert_eq!(index.total(), 35);
        assert_eq!(index.reserve("e", 30, Some(40)), ["b", "c", "d"]);
        assert_eq!(index.total(), 30);
        assert!(index.reserve("f", 500, None).is_empty());
        index.remove("f");
        assert_eq!(index.total(), 30);
    }
}
