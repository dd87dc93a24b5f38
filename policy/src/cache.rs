//! A small TTL cache with an injected clock, for positive and negative
//! answers (DNS outcomes, DORMS metadata).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ingest_types::shrink_when_sparse;

/// Bounds applied to TTLs taken from the network, so a zero TTL does not
/// cause a query storm and a huge TTL does not pin stale data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    pub min: Duration,
    pub max: Duration,
}

impl TtlBounds {
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min, self.max.max(self.min))
    }
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    expires: Instant,
}

/// Map whose entries expire at an explicit `Instant`.
#[derive(Debug, Clone)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, Entry<V>>,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V> TtlCache<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value for `key` if it has not expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| &e.value)
    }

    /// The value and its expiry even if expired (stale data is still useful
    /// when a refresh fails).
    pub fn get_stale(&self, key: &K) -> Option<(&V, Instant)> {
        self.entries.get(key).map(|e| (&e.value, e.expires))
    }

    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) -> Instant {
        let expires = now + ttl;
        self.entries.insert(key, Entry { value, expires });
        expires
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// Drops entries expired at `now`.
    pub fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
        shrink_when_sparse(&mut self.entries);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A [`TtlCache`] shared by the tasks of one client. A poisoned lock
/// reads as empty and drops writes: it is a cache, not the truth.
#[derive(Debug)]
pub struct SharedTtlCache<K, V>(Mutex<TtlCache<K, V>>);

impl<K, V> Default for SharedTtlCache<K, V> {
    fn default() -> Self {
        Self(Mutex::new(TtlCache::default()))
    }
}

impl<K: Eq + Hash, V: Clone> SharedTtlCache<K, V> {
    /// A copy of the value for `key` if it has not expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.lock().and_then(|cache| cache.get(key, now).cloned())
    }

    pub fn remove(&self, key: &K) {
        if let Some(mut cache) = self.lock() {
            cache.remove(key);
        }
    }

    /// The cache itself, for several steps under one lock.
    pub fn lock(&self) -> Option<MutexGuard<'_, TtlCache<K, V>>> {
        self.0.lock().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_injected_clock() {
        let t0 = Instant::now();
        let mut cache: TtlCache<&str, Result<u32, &str>> = TtlCache::new();
        cache.insert("pos", Ok(1), Duration::from_secs(30), t0);
        cache.insert("neg", Err("nxdomain"), Duration::from_secs(5), t0);
        assert_eq!(cache.get(&"pos", t0), Some(&Ok(1)));
        assert_eq!(
            cache.get(&"neg", t0 + Duration::from_secs(4)),
            Some(&Err("nxdomain"))
        );
        assert_eq!(cache.get(&"neg", t0 + Duration::from_secs(5)), None);
        assert_eq!(
            cache.get_stale(&"neg"),
            Some((&Err("nxdomain"), t0 + Duration::from_secs(5)))
        );
        cache.prune(t0 + Duration::from_secs(10));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&"pos", t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn ttl_bounds_clamp() {
        let b = TtlBounds {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        assert_eq!(b.clamp(Duration::ZERO), Duration::from_secs(30));
        assert_eq!(b.clamp(Duration::from_secs(300)), Duration::from_secs(300));
        assert_eq!(
            b.clamp(Duration::from_secs(86400)),
            Duration::from_secs(3600)
        );
    }
}
