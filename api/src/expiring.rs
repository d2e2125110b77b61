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
pub(crate) struct ExpiringMap<K, V> {
    ttl: Duration,
    capacity: usize,
    /// Whether a loaded value is kept (a found template is; a lookup that failed is not).
    keep: fn(&V) -> bool,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

/// A value, or the place it is being loaded into, and since when the key is in the map.
struct Entry<V> {
    since: Instant,
    value: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> ExpiringMap<K, V> {
    pub(crate) fn new(ttl: Duration, capacity: usize, keep: fn(&V) -> bool) -> Self {
        Self {
            ttl,
            capacity,
            keep,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value under `key`: the stored one while it is fresh, otherwise what `load`
    /// gives, which is then stored if `keep` says so.
    ///
    /// Callers asking for one key at the same time share a single `load`, and its outcome
    /// whatever it is. Without that, a busy API that has just started (or whose entry has
    /// just expired) sends one identical query per request in flight, and opening
    /// connections for all of them at once stalls every request for a noticeable time.
    /// An outcome that is not kept is forgotten as soon as it is handed out, so the next
    /// caller loads again.
    pub(crate) async fn get_or_load<F, Fut>(&self, key: K, load: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let Some(cell) = self.cell_for(&key) else {
            return load().await;
        };
        let value = cell.get_or_init(load).await.clone();
        if !(self.keep)(&value) {
            self.forget_cell(&key, &cell);
        }
        value
    }

    /// Drops `key`, so the next caller loads it again. A load under way for it completes
    /// for its callers but is not stored.
    pub(crate) fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Drops every entry, as [`remove`](Self::remove) for each.
    pub(crate) fn clear(&self) {
        self.lock().clear();
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

    /// Removes the entry holding `cell`, so outcomes that are not kept (unknown API keys,
    /// say) take no room; an entry replaced meanwhile is left alone.
    fn forget_cell(&self, key: &K, cell: &Arc<OnceCell<V>>) {
        let mut entries = self.lock();
        if entries
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.value, cell))
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

    type Outcome = Result<u32, &'static str>;

    /// Loads `outcome` after `delay`, counting the loads.
    async fn counted(loads: &AtomicUsize, delay: Duration, outcome: Outcome) -> Outcome {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        outcome
    }

    fn map(ttl: Duration, capacity: usize) -> ExpiringMap<u32, Outcome> {
        ExpiringMap::new(ttl, capacity, Result::is_ok)
    }

    /// Fifty callers asking for key 7 together, each with a load that takes 20 ms.
    async fn fifty_callers_at_once(
        map: &ExpiringMap<u32, Outcome>,
        loads: &AtomicUsize,
        outcome: Outcome,
    ) -> Vec<Outcome> {
        let callers = (0..50)
            .map(|_| map.get_or_load(7, || counted(loads, Duration::from_millis(20), outcome)));
        futures_util::future::join_all(callers).await
    }

    fn loads_so_far(loads: &AtomicUsize) -> usize {
        loads.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_loaded_value_is_served_until_it_expires_or_is_removed() {
        let map = map(Duration::from_millis(50), 4);
        let loads = AtomicUsize::new(0);
        let load = || counted(&loads, Duration::ZERO, Ok(1));
        assert_eq!(map.get_or_load(1, load).await, Ok(1));
        assert_eq!(map.get_or_load(1, load).await, Ok(1));
        assert_eq!(loads_so_far(&loads), 1, "the second call was served");
        map.remove(&1);
        assert_eq!(map.get_or_load(1, load).await, Ok(1));
        assert_eq!(loads_so_far(&loads), 2, "removed, so loaded again");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(map.get_or_load(1, load).await, Ok(1));
        assert_eq!(loads_so_far(&loads), 3, "expired, so loaded again");
    }

    #[tokio::test]
    async fn a_load_under_way_when_the_map_is_cleared_is_not_stored() {
        let map = map(Duration::from_secs(60), 4);
        let loads = AtomicUsize::new(0);
        let release = tokio::sync::Notify::new();
        let mut slow = std::pin::pin!(map.get_or_load(1, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Ok(1)
        }));
        assert!(
            futures_util::poll!(&mut slow).is_pending(),
            "the load started"
        );

        map.clear();
        release.notify_one();

        assert_eq!(slow.await, Ok(1), "its caller still gets it");
        let load = || counted(&loads, Duration::ZERO, Ok(2));
        assert_eq!(map.get_or_load(1, load).await, Ok(2));
        assert_eq!(loads_so_far(&loads), 2, "loaded again after the clear");
    }

    #[tokio::test]
    async fn callers_asking_for_one_key_at_once_share_a_single_load() {
        let map = map(Duration::from_secs(60), 4);
        let loads = AtomicUsize::new(0);
        let outcomes = fifty_callers_at_once(&map, &loads, Ok(9)).await;
        assert!(outcomes.iter().all(|outcome| *outcome == Ok(9)));
        assert_eq!(loads_so_far(&loads), 1);
    }

    #[tokio::test]
    async fn callers_asking_at_once_share_a_failure_too_but_it_is_not_kept() {
        let map = map(Duration::from_secs(60), 4);
        let loads = AtomicUsize::new(0);
        let outcomes = fifty_callers_at_once(&map, &loads, Err("not found")).await;
        assert!(outcomes.iter().all(|outcome| *outcome == Err("not found")));
        assert_eq!(loads_so_far(&loads), 1, "one load for the whole burst");
        let failing = || counted(&loads, Duration::ZERO, Err("not found"));
        assert_eq!(map.get_or_load(7, failing).await, Err("not found"));
        assert_eq!(loads_so_far(&loads), 2, "the failure was not kept");
    }

    #[tokio::test]
    async fn an_outcome_that_is_not_kept_takes_no_room() {
        let map = map(Duration::from_secs(60), 1);
        let loads = AtomicUsize::new(0);
        let failing = || counted(&loads, Duration::ZERO, Err("not found"));
        assert_eq!(map.get_or_load(1, failing).await, Err("not found"));
        let found = || counted(&loads, Duration::ZERO, Ok(2));
        assert_eq!(map.get_or_load(2, found).await, Ok(2));
        assert_eq!(map.get_or_load(2, found).await, Ok(2));
        assert_eq!(loads_so_far(&loads), 2, "the only slot was free for key 2");
    }

    #[tokio::test]
    async fn a_full_map_keeps_new_values_only_once_expired_entries_make_room() {
        let map = map(Duration::from_millis(50), 1);
        let loads = AtomicUsize::new(0);
        let load = || counted(&loads, Duration::ZERO, Ok(0));
        map.get_or_load(1, load).await.unwrap();
        map.get_or_load(2, load).await.unwrap();
        map.get_or_load(2, load).await.unwrap();
        assert_eq!(loads_so_far(&loads), 3, "full of fresh entries: 2 not kept");
        tokio::time::sleep(Duration::from_millis(60)).await;
        map.get_or_load(2, load).await.unwrap();
        map.get_or_load(2, load).await.unwrap();
        assert_eq!(loads_so_far(&loads), 4, "1 expired and made room for 2");
    }
}
