//! A small map whose entries are trusted for a fixed time, bounded in size: the shape of
//! every cache the API keeps in front of Postgres (verified API keys, parsed templates).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// Entries younger than `ttl`, at most `capacity` of them. When full, expired entries are
/// dropped first; if it is still full, new values are loaded but not kept, so callers
/// probing random keys cannot grow memory past the bound.
pub struct ExpiringMap<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

/// A value, or the place it is being loaded into, and since when the key is in the map.
struct Entry<V> {
    since: Instant,
    value: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> ExpiringMap<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value under `key`: the stored one while it is fresh, otherwise what `load`
    /// gives, which is then stored.
    ///
    /// Callers asking for one key at the same time share a single `load`. Without that, a
    /// busy API that has just started (or whose entry has just expired) sends one identical
    /// query per request in flight, and opening connections for all of them at once stalls
    /// every request for a noticeable time. A failed `load` stores nothing: the caller gets
    /// its error and the next caller loads again.
    pub async fn get_or_try_load<E, F, Fut>(&self, key: K, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(cell) = self.cell_for(&key) else {
            return load().await;
        };
        match cell.get_or_try_init(load).await {
            Ok(value) => Ok(value.clone()),
            Err(error) => {
                self.drop_if_empty(&key, &cell);
                Err(error)
            }
        }
    }

    /// Drops `key`, so the next caller loads it again.
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// The fresh entry's cell for `key`, or a new one stored in its place; `None` when the
    /// map is full of fresh entries.
    fn cell_for(&self, key: &K) -> Option<Arc<OnceCell<V>>> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(key)
            && entry.since.elapsed() < self.ttl
        {
            return Some(Arc::clone(&entry.value));
        }
        if entries.len() >= self.capacity {
            entries.retain(|_, entry| entry.since.elapsed() < self.ttl);
        }
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            return None;
        }
        let value = Arc::new(OnceCell::new());
        entries.insert(
            key.clone(),
            Entry {
                since: Instant::now(),
                value: Arc::clone(&value),
            },
        );
        Some(value)
    }

    /// Removes the entry a failed load left empty, so keys that are never found (random
    /// API keys, say) take no room; an entry replaced meanwhile is left alone.
    fn drop_if_empty(&self, key: &K, cell: &Arc<OnceCell<V>>) {
        let mut entries = self.lock();
        if entries
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.value, cell) && !entry.value.initialized())
        {
            entries.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<V>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Loads `value` after `delay`, counting the loads.
    async fn counted(
        loads: &AtomicUsize,
        delay: Duration,
        value: Result<u32, &'static str>,
    ) -> Result<u32, &'static str> {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        value
    }

    #[tokio::test]
    async fn a_loaded_value_is_served_until_it_expires_or_is_removed() {
        let map = ExpiringMap::new(Duration::from_millis(50), 4);
        let loads = AtomicUsize::new(0);
        let load = || counted(&loads, Duration::ZERO, Ok(1));
        assert_eq!(map.get_or_try_load("a", load).await, Ok(1));
        assert_eq!(map.get_or_try_load("a", load).await, Ok(1));
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "the second call was served"
        );
        map.remove(&"a");
        assert_eq!(map.get_or_try_load("a", load).await, Ok(1));
        assert_eq!(loads.load(Ordering::SeqCst), 2, "removed, so loaded again");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(map.get_or_try_load("a", load).await, Ok(1));
        assert_eq!(loads.load(Ordering::SeqCst), 3, "expired, so loaded again");
    }

    #[tokio::test]
    async fn callers_asking_for_one_key_at_once_share_a_single_load() {
        let map = ExpiringMap::new(Duration::from_secs(60), 4);
        let loads = AtomicUsize::new(0);
        let callers = (0..50)
            .map(|_| map.get_or_try_load(7, || counted(&loads, Duration::from_millis(20), Ok(9))));
        let results = futures_util::future::join_all(callers).await;
        assert!(results.iter().all(|result| *result == Ok(9)));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept_and_takes_no_room() {
        let map = ExpiringMap::new(Duration::from_secs(60), 1);
        let loads = AtomicUsize::new(0);
        let failing = || counted(&loads, Duration::ZERO, Err("not found"));
        assert_eq!(map.get_or_try_load(1, failing).await, Err("not found"));
        assert_eq!(map.get_or_try_load(1, failing).await, Err("not found"));
        assert_eq!(loads.load(Ordering::SeqCst), 2, "each failure loads again");
        let found = || counted(&loads, Duration::ZERO, Ok(2));
        assert_eq!(map.get_or_try_load(2, found).await, Ok(2));
        assert_eq!(map.get_or_try_load(2, found).await, Ok(2));
        assert_eq!(
            loads.load(Ordering::SeqCst),
            3,
            "the only slot was free for key 2"
        );
    }

    #[tokio::test]
    async fn a_full_map_keeps_new_values_only_once_expired_entries_make_room() {
        let map = ExpiringMap::new(Duration::from_millis(50), 1);
        let loads = AtomicUsize::new(0);
        let load = || counted(&loads, Duration::ZERO, Ok(0));
        map.get_or_try_load(1, load).await.unwrap();
        map.get_or_try_load(2, load).await.unwrap();
        map.get_or_try_load(2, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            3,
            "full of fresh entries: 2 not kept"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        map.get_or_try_load(2, load).await.unwrap();
        map.get_or_try_load(2, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            4,
            "1 expired and made room for 2"
        );
    }
}
