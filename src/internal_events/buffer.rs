//! A buffer's chunks: retried, given up on, dropped to make room, recovered after a restart,
//! and how emits and flushes went. Counted in `BufferCounters` (fluentd's monitor_agent
//! counters and bqforward's own).

use crate::metrics::BufferCounters;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Events accepted into the buffer by one emit.
pub struct Emitted {
    pub records: u64,
}

impl Emitted {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.emit_count, 1);
        add(&c.emit_records, self.records);
    }
}

/// An emit refused because the buffer is full (`overflow_action throw_exception`).
pub struct OverflowRefused;

impl OverflowRefused {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.overflow_refusals, 1);
    }
}

/// An emit waited this long for room (`overflow_action block`).
pub struct Blocked {
    pub waited: Duration,
}

impl Blocked {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.blocked_nanos, self.waited.as_nanos() as u64);
    }
}

/// One delivery attempt of a chunk, and how long it took.
pub struct Flushed {
    pub took: Duration,
    pub slow: bool,
}

impl Flushed {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.write_count, 1);
        add(&c.flush_nanos, self.took.as_nanos() as u64);
        if self.slow {
            add(&c.slow_flushes, 1);
        }
    }
}

/// A delivery left rows for later: counted as an error, and as a retry and a rollback when
/// the chunk is tried again (not when it is given up on). `quiet`: an expected wait (a table
/// being created), logged at debug.
pub struct ChunkRetrying<'a> {
    pub output: &'a str,
    pub key: &'a dyn Display,
    pub chunk: &'a str,
    pub attempt: u32,
    pub delay: Duration,
    pub error: &'a str,
    pub quiet: bool,
}

impl ChunkRetrying<'_> {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.retry_count, 1);
        add(&c.rollback_count, 1);
        let retry_in_ms = self.delay.as_millis() as u64;
        if self.quiet {
            tracing::debug!(output = %self.output, key = %self.key, chunk = %self.chunk,
                attempt = self.attempt, retry_in_ms, error = %self.error, "chunk will be retried");
        } else {
            tracing::warn!(output = %self.output, key = %self.key, chunk = %self.chunk,
                attempt = self.attempt, retry_in_ms, error = %self.error, "chunk will be retried");
        }
    }
}

/// A delivery attempt failed (before it is known whether the chunk is retried).
pub struct DeliveryFailed;

impl DeliveryFailed {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.num_errors, 1);
    }
}

/// Retries are exhausted: the chunk's rows go to the sink's give-up path.
pub struct ChunkGivenUp<'a> {
    pub output: &'a str,
    pub key: &'a dyn Display,
    pub chunk: &'a str,
    pub reason: &'a str,
}

impl ChunkGivenUp<'_> {
    pub fn emit(self) {
        tracing::error!(output = %self.output, key = %self.key, chunk = %self.chunk,
            reason = %self.reason, "giving up on chunk");
    }
}

/// The oldest chunk dropped to make room (`overflow_action drop_oldest_chunk`).
pub struct ChunkDropped<'a> {
    pub output: &'a str,
    pub key: &'a dyn Display,
    pub chunk: &'a str,
    pub records: u64,
}

impl ChunkDropped<'_> {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.dropped_chunks, 1);
        add(&c.dropped_records, self.records);
        tracing::error!(output = %self.output, key = %self.key, chunk = %self.chunk,
            records = self.records, "buffer full: dropped the oldest chunk (overflow_action drop_oldest_chunk)");
    }
}

/// Chunks a previous run left in the directory, queued again.
pub struct ChunksRecovered<'a> {
    pub output: &'a str,
    pub dir: &'a dyn Display,
    pub chunks: u64,
    pub records: u64,
}

impl ChunksRecovered<'_> {
    pub fn emit(self, c: &BufferCounters) {
        if self.chunks == 0 {
            return;
        }
        add(&c.recovered_chunks, self.chunks);
        add(&c.recovered_records, self.records);
        tracing::info!(output = %self.output, chunks = self.chunks, records = self.records,
            dir = %self.dir, "recovered buffered chunks from a previous run");
    }
}

/// A memory chunk written to the buffer's path at shutdown, for the next start.
pub struct ChunkSpilled {
    pub records: u64,
}

impl ChunkSpilled {
    pub fn emit(self, c: &BufferCounters) {
        add(&c.spilled_records, self.records);
    }
}
