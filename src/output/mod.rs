//! Outputs: where routed events go. The `Output` trait is the seam every output (stdout,
//! null, file; BigQuery and buffers later) implements; inputs ack only after `emit` resolves.

pub mod bigquery;
pub mod file;
pub mod stdout;

pub use crate::event::{Batch, BoxFuture};
use crate::metrics::PluginCounters;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{output}: {source}")]
    Io {
        output: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{output}: record is not valid msgpack: {detail}")]
    Record { output: String, detail: String },
    #[error("{output}: {detail}")]
    Refused { output: String, detail: String },
    #[error("{0}: output is shut down")]
    Closed(String),
}

pub trait Output: Send + Sync {
    /// `@id` if configured, else `<type>.<n>` in config order.
    fn id(&self) -> &str;

    fn type_name(&self) -> &'static str;

    /// Resolves once the output has accepted the batch (written, or buffered as its settings
    /// promise). An input acks the sender only after this succeeds.
    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>>;

    /// Flushes what is pending; called once at shutdown after inputs have stopped. Work not
    /// done by `deadline` is kept for the next start where the output can (file buffers,
    /// spills) and dead-lettered otherwise.
    fn shutdown(&self, deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>>;

    /// The counters of an output without a buffer (`Counted`), where the router adds the
    /// events it could not take one by one.
    fn counters(&self) -> Option<&PluginCounters> {
        None
    }
}

/// An output without a buffer, counted as fluentd's `emit_sync` counts: every emit, the
/// records accepted, the refusals; `writes` for outputs that write somewhere (a file).
pub struct Counted {
    inner: Arc<dyn Output>,
    counters: Arc<PluginCounters>,
    writes: bool,
}

impl Counted {
    pub fn new(inner: Arc<dyn Output>, counters: Arc<PluginCounters>, writes: bool) -> Self {
        Self {
            inner,
            counters,
            writes,
        }
    }
}

impl Output for Counted {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(async move {
            let records = batch.events.len();
            let result = self.inner.emit(batch).await;
            self.counters.emitted(records, result.is_ok(), self.writes);
            result
        })
    }

    fn shutdown(&self, deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>> {
        self.inner.shutdown(deadline)
    }

    fn counters(&self) -> Option<&PluginCounters> {
        Some(&self.counters)
    }
}

/// `@type null`: accepts and discards.
pub struct NullOutput {
    id: String,
}

impl NullOutput {
    pub fn new(id: String) -> Self {
        Self { id }
    }
}

impl Output for NullOutput {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        "null"
    }

    fn emit(&self, _batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn shutdown(&self, _deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What fluentd accepts on every output and the local outputs have no use for.
pub const COMMON_OUTPUT_PARAMS: &[&str] = &["secondary", "time_as_integer"];

/// fluentd `<buffer>` parameters: accepted everywhere a `<buffer>` may stand; those an output
/// does not read are reported as ignored.
pub const BUFFER_PARAMS: &[&str] = &[
    "@type",
    "path",
    "chunk_keys",
    "chunk_limit_size",
    "chunk_limit_records",
    "total_limit_size",
    "queue_limit_length",
    "queued_chunks_limit_size",
    "chunk_full_threshold",
    "compress",
    "flush_at_shutdown",
    "flush_mode",
    "flush_interval",
    "flush_thread_count",
    "flush_thread_interval",
    "flush_thread_burst_interval",
    "delayed_commit_timeout",
    "overflow_action",
    "retry_timeout",
    "retry_forever",
    "retry_max_times",
    "retry_secondary_threshold",
    "retry_type",
    "retry_wait",
    "retry_exponential_backoff_base",
    "retry_max_interval",
    "retry_randomize",
    "disable_chunk_backup",
    "timekey",
    "timekey_wait",
    "timekey_use_utc",
    "timekey_zone",
];
