//! Which output gets an event: `<match>` patterns in config order, first match wins, and
//! name templates for what an output writes to. Knows outputs only through the Output trait.

pub mod pattern;
pub mod template;

use crate::output::Output;
use pattern::MatchPatterns;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Route {
    pub patterns: MatchPatterns,
    pub output: Arc<dyn Output>,
}

pub struct Router {
    routes: Vec<Route>,
    unmatched: AtomicU64,
    unmatched_events: AtomicU64,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes,
            unmatched: AtomicU64::new(0),
            unmatched_events: AtomicU64::new(0),
        }
    }

    /// Index of the first route whose patterns match `tag`. Callers cache this per tag.
    pub fn route(&self, tag: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.patterns.matches(tag))
    }

    pub fn output(&self, route: usize) -> Option<&Arc<dyn Output>> {
        self.routes.get(route).map(|r| &r.output)
    }

    pub fn outputs(&self) -> impl Iterator<Item = &Arc<dyn Output>> {
        self.routes.iter().map(|r| &r.output)
    }

    /// Counts events no `<match>` took, warning as fluentd does: on the 1st, 2nd, 4th, ...
    /// 256th unmatched batch, then every 512th.
    pub fn note_unmatched(&self, tag: &str, events: usize) {
        self.unmatched_events
            .fetch_add(events as u64, Ordering::Relaxed);
        let count = self.unmatched.fetch_add(1, Ordering::Relaxed) + 1;
        let warn = if count < 512 {
            count.is_power_of_two()
        } else {
            count.is_multiple_of(512)
        };
        if warn {
            tracing::warn!(tag, events, total_unmatched = count, "no patterns matched");
        }
    }

    pub fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }

    /// Events (not batches) no `<match>` took.
    pub fn unmatched_events(&self) -> u64 {
        self.unmatched_events.load(Ordering::Relaxed)
    }
}
