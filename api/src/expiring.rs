//! A small map whose entries are trusted for a fixed time, bounded in size: the shape of
//! every cache the API keeps in front of Postgres (verified API keys, parsed templates).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries younger than `ttl`, at most `capacity` of them. When full, expired entries are
/// dropped first; if it is still full, new entries are not kept, so callers probing random
/// keys cannot grow memory past the bound.
pub struct ExpiringMap<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> ExpiringMap<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value stored under `key`, unless it is older than the time to live.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    /// Stores `value` under `key`, fresh from now.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        if entries.len() < self.capacity || entries.contains_key(&key) {
            entries.insert(key, (Instant::now(), value));
        }
    }

    /// Drops `key`, so the next lookup asks the source again.
    pub fn remove(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_returned_until_it_expires_or_is_removed() {
        let map = ExpiringMap::new(Duration::from_millis(50), 4);
        map.insert("a", 1);
        map.insert("b", 2);
        assert_eq!(map.get(&"a"), Some(1));
        map.remove(&"a");
        assert_eq!(map.get(&"a"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(map.get(&"b"), None, "expired");
    }

    #[test]
    fn a_full_map_makes_room_only_by_dropping_expired_entries() {
        let map = ExpiringMap::new(Duration::from_millis(50), 2);
        map.insert(1, ());
        map.insert(2, ());
        map.insert(3, ());
        assert_eq!(map.get(&3), None, "full of live entries: not kept");
        std::thread::sleep(Duration::from_millis(60));
        map.insert(3, ());
        assert_eq!(map.get(&3), Some(()), "the expired entries made room");
    }
}
