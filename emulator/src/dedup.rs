// Owns insertId de-duplication: which (table, insertId) pairs were accepted within the window.
// Must not touch the store; it is best effort and in memory, as BigQuery's is
// (<https://cloud.google.com/bigquery/docs/streaming-data-into-bigquery#dataconsistency>).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Dedup {
    window: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashMap<String, Instant>,
    last_prune: Instant,
}

fn key(table: &str, id: &str) -> String {
    format!("{table}\u{0}{id}")
}

impl Dedup {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For each row id, whether the row is new (`true`) or a duplicate seen within the window.
    /// New ids are remembered at once, so duplicates inside one request are caught too. Rows
    /// without an id are always new.
    pub fn claim(&self, table: &str, ids: &[Option<&str>]) -> Vec<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if now.duration_since(inner.last_prune) > self.window / 4 {
            let window = self.window;
            inner.seen.retain(|_, t| now.duration_since(*t) < window);
            inner.last_prune = now;
        }
        ids.iter()
            .map(|id| {
                let Some(id) = id else { return true };
                let k = key(table, id);
                match inner.seen.get(&k) {
                    Some(t) if now.duration_since(*t) < self.window => false,
                    _ => {
                        inner.seen.insert(k, now);
                        true
                    }
                }
            })
            .collect()
    }

    /// Forgets ids whose rows could not be stored, so a retry is not mistaken for a duplicate.
    pub fn release(&self, table: &str, ids: &[&str]) {
        let mut inner = self.lock();
        for id in ids {
            inner.seen.remove(&key(table, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_is_new_once_per_table() {
        let d = Dedup::new(Duration::from_secs(60));
        assert_eq!(
            d.claim("t", &[Some("a"), Some("a"), None, None]),
            [true, false, true, true]
        );
        assert_eq!(d.claim("t", &[Some("a")]), [false]);
        assert_eq!(d.claim("u", &[Some("a")]), [true]);
    }

    #[test]
    fn ids_expire_after_the_window() {
        let d = Dedup::new(Duration::from_millis(10));
        assert_eq!(d.claim("t", &[Some("a")]), [true]);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(d.claim("t", &[Some("a")]), [true]);
    }
}
