//! What every stage passes along: an event (its time and its record, kept as the msgpack
//! bytes it arrived in), a batch of events of one tag, and the future type of async trait
//! methods. The bottom of the module graph: depends on nothing of bqforward.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Event time with nanoseconds, as Forward's EventTime extension carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    pub secs: i64,
    pub nanos: u32,
}

impl EventTime {
    pub fn new(secs: i64, nanos: u32) -> Self {
        Self { secs, nanos }
    }

    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::new(since.as_secs() as i64, since.subsec_nanos())
    }

    /// A float time as some clients send it; `None` for NaN, infinities and out-of-range values.
    pub fn from_f64(secs: f64) -> Option<Self> {
        if !secs.is_finite() || secs.abs() > 1e15 {
            return None;
        }
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
        Some(Self::new(whole as i64, nanos))
    }

    pub fn as_f64(self) -> f64 {
        self.secs as f64 + f64::from(self.nanos) / 1e9
    }

    pub fn is_zero(self) -> bool {
        self.secs == 0 && self.nanos == 0
    }
}

/// One event: its time and its record, a msgpack map kept as the bytes it arrived in. The
/// record is exactly one complete map (the decoder cuts it so; filters rely on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: EventTime,
    pub record: Bytes,
}

/// Events of one tag, handed to an output together.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tag: Arc<str>,
    pub events: Vec<Event>,
}

/// The future an object-safe async method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
