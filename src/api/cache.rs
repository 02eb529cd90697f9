//! The cache-aside state cache: entries live for a TTL (default 5 min), are dropped when
//! any replica writes the key (NOTIFY owsync_state, with a polling fallback), and are
//! served stale while PostgreSQL is unreachable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Clone)]
pub struct Cached {
    pub value: serde_json::Value,
    pub updated_at: DateTime<Utc>,
    fetched: Instant,
}

pub struct StateCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Cached>>,
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Cached),
    Stale(Cached),
    Missing,
}

impl StateCache {
    pub fn new(ttl: Duration) -> StateCache {
        StateCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        let Ok(m) = self.entries.lock() else { return Lookup::Missing };
        match m.get(key) {
            Some(c) if c.fetched.elapsed() < self.ttl => Lookup::Fresh(c.clone()),
            Some(c) => Lookup::Stale(c.clone()),
            None => Lookup::Missing,
        }
    }

    pub fn insert(&self, key: &str, value: serde_json::Value, updated_at: DateTime<Utc>) {
        if let Ok(mut m) = self.entries.lock() {
            m.insert(key.to_string(), Cached { value, updated_at, fetched: Instant::now() });
        }
    }

    /// Drops a key (a write anywhere in the cluster); keeps nothing stale of it.
    pub fn invalidate(&self, key: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(key);
        }
    }

    /// Drops keys whose cached version is older than `updated_at`.
    pub fn invalidate_if_older(&self, key: &str, updated_at: DateTime<Utc>) {
        if let Ok(mut m) = self.entries.lock()
            && m.get(key).is_some_and(|c| c.updated_at < updated_at)
        {
            m.remove(key);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_invalidation() {
        let c = StateCache::new(Duration::from_millis(50));
        assert!(matches!(c.lookup("k"), Lookup::Missing));
        let t = Utc::now();
        c.insert("k", serde_json::json!(1), t);
        assert!(matches!(c.lookup("k"), Lookup::Fresh(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(c.lookup("k"), Lookup::Stale(_)));
        c.insert("k", serde_json::json!(2), t);
        c.invalidate_if_older("k", t);
        assert!(matches!(c.lookup("k"), Lookup::Fresh(_)));
        c.invalidate_if_older("k", t + chrono::Duration::seconds(1));
        assert!(matches!(c.lookup("k"), Lookup::Missing));
    }
}
