//! Rate limits for warnings that one misbehaving peer could repeat thousands of times a second:
//! the first occurrence per key is logged, then at most one per interval with how many were
//! suppressed. Counters, not logs, are the record of how often something happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most; past this the memory is cleared (a flood of distinct keys then
/// logs again, once each, which is the right thing to see).
const MAX_KEYS: usize = 4096;

pub struct RateLimit {
    interval: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a warning for `key` should be logged now, with the number of
    /// occurrences not logged since the last one; `None` to stay quiet.
    pub fn check(&self, key: &str) -> Option<u64> {
        let Ok(mut seen) = self.seen.lock() else {
            return Some(0);
        };
        let now = Instant::now();
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            seen.clear();
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_warning_per_key_passes_then_repeats_are_counted() {
        let limit = RateLimit::new(Duration::from_millis(50));
        assert_eq!(limit.check("10.0.0.1"), Some(0));
        assert_eq!(limit.check("10.0.0.1"), None);
        assert_eq!(limit.check("10.0.0.1"), None);
        assert_eq!(limit.check("10.0.0.2"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.check("10.0.0.1"), Some(2));
        assert_eq!(limit.check("10.0.0.1"), None);
    }
}
