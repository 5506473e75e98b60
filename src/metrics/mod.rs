//! Every metric bqforward exports, each named once in this file, and what `/metrics`,
//! `/readyz` and `/api/plugins.json` say. Must not cost the data path a lock or a label lookup
//! per event: inputs count per read through handles resolved once; outputs are read at scrape.
//!
//! Depends on no stage: `lib.rs` hands in plain snapshots of outputs (`Observe`), and the
//! stages hold the handles defined here (`InputMetrics`, `SinkDetail`).

pub mod http;

use prometheus::core::Metric as _;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// `/readyz` fails while any buffer holds more than this share of its `total_limit_size`.
pub const HIGH_WATER: f64 = 0.9;
/// Beyond this many series per family, new tables or tags are counted as `_other`.
const MAX_SERIES: usize = 2000;
const OTHER: &str = "_other";

/// A metric family rendered at scrape time from counters the stages already keep.
struct Def {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
}

const fn gauge(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        help,
        kind: MetricType::GAUGE,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        help,
        kind: MetricType::COUNTER,
    }
}

// fluent-plugin-prometheus's `prometheus_output_monitor` (lib/fluent/plugin/
// in_prometheus_output_monitor.rb, v2): names, help text and labels `plugin_id`, `type` as it
// exports them. With its default `gauge_all true` every one of them is a gauge, counts included.
const OUT_BUFFER_TOTAL_BYTES: Def = gauge(
    "fluentd_output_status_buffer_total_bytes",
    "Current total size of stage and queue buffers.",
);
const OUT_BUFFER_STAGE_LENGTH: Def = gauge(
    "fluentd_output_status_buffer_stage_length",
    "Current length of stage buffers.",
);
const OUT_BUFFER_STAGE_BYTE_SIZE: Def = gauge(
    "fluentd_output_status_buffer_stage_byte_size",
    "Current total size of stage buffers.",
);
const OUT_BUFFER_QUEUE_LENGTH: Def = gauge(
    "fluentd_output_status_buffer_queue_length",
    "Current length of queue buffers.",
);
const OUT_BUFFER_QUEUE_BYTE_SIZE: Def = gauge(
    "fluentd_output_status_buffer_queue_byte_size",
    "Current total size of queue buffers.",
);
const OUT_BUFFER_AVAILABLE_SPACE_RATIO: Def = gauge(
    "fluentd_output_status_buffer_available_space_ratio",
    "Ratio of available space in buffer.",
);
const OUT_RETRY_COUNT: Def = gauge("fluentd_output_status_retry_count", "Current retry counts.");
const OUT_NUM_ERRORS: Def = gauge(
    "fluentd_output_status_num_errors",
    "Current number of errors.",
);
const OUT_EMIT_COUNT: Def = gauge("fluentd_output_status_emit_count", "Current emit counts.");
const OUT_EMIT_RECORDS: Def = gauge(
    "fluentd_output_status_emit_records",
    "Current emit records.",
);
const OUT_WRITE_COUNT: Def = gauge("fluentd_output_status_write_count", "Current write counts.");
const OUT_ROLLBACK_COUNT: Def = gauge(
    "fluentd_output_status_rollback_count",
    "Current rollback counts.",
);
const OUT_FLUSH_TIME_COUNT: Def = gauge(
    "fluentd_output_status_flush_time_count",
    "Total flush time.",
);
const OUT_SLOW_FLUSH_COUNT: Def = gauge(
    "fluentd_output_status_slow_flush_count",
    "Current slow flush counts.",
);
const OUT_RETRY_WAIT: Def = gauge("fluentd_output_status_retry_wait", "Current retry wait");

// fluent-plugin-prometheus's `prometheus_monitor` (in_prometheus_monitor.rb): labels
// `plugin_id`, `plugin_category`, `type`.
const STATUS_BUFFER_QUEUE_LENGTH: Def = gauge(
    "fluentd_status_buffer_queue_length",
    "Current buffer queue length.",
);
const STATUS_BUFFER_TOTAL_BYTES: Def = gauge(
    "fluentd_status_buffer_total_bytes",
    "Current total size of queued buffers.",
);
const STATUS_RETRY_COUNT: Def = gauge("fluentd_status_retry_count", "Current retry counts.");

// bqforward's own, per Prometheus naming conventions (base units, `_total` on counters).
const BUFFER_OLDEST_AGE: Def = gauge(
    "bqforward_buffer_oldest_chunk_age_seconds",
    "Age of the oldest chunk still in the buffer (0 when empty).",
);
const BUFFER_LIMIT_BYTES: Def = gauge(
    "bqforward_buffer_limit_bytes",
    "The buffer's total_limit_size.",
);
const BUFFER_BLOCKED: Def = counter(
    "bqforward_buffer_blocked_seconds_total",
    "Time emits spent waiting for buffer space (overflow_action block): backpressure.",
);
const BUFFER_OVERFLOWS: Def = counter(
    "bqforward_buffer_overflow_refusals_total",
    "Emits refused because the buffer was full (overflow_action throw_exception).",
);
const BUFFER_DROPPED_CHUNKS: Def = counter(
    "bqforward_buffer_dropped_chunks_total",
    "Chunks dropped to make room (overflow_action drop_oldest_chunk).",
);
const BUFFER_DROPPED_RECORDS: Def = counter(
    "bqforward_buffer_dropped_records_total",
    "Records in chunks dropped to make room (overflow_action drop_oldest_chunk).",
);
const ROWS_INSERTED: Def = counter(
    "bqforward_bigquery_rows_inserted_total",
    "Rows BigQuery accepted, per table.",
);
const ROWS_RETRIED: Def = counter(
    "bqforward_bigquery_rows_retried_total",
    "Rows kept for another attempt, per table and reason.",
);
const ROWS_DEAD_LETTERED: Def = counter(
    "bqforward_bigquery_rows_dead_lettered_total",
    "Rows written to <secondary> instead of BigQuery, per table and reason.",
);
const ROWS_DROPPED: Def = counter(
    "bqforward_bigquery_rows_dropped_total",
    "Rows given up on with no <secondary> to take them (logged), per table and reason.",
);
const TABLES_CREATED: Def = counter(
    "bqforward_bigquery_tables_created_total",
    "Tables created by auto_create_table.",
);
const COLUMNS_ADDED: Def = counter(
    "bqforward_bigquery_columns_added_total",
    "Columns added to tables for new fields (schema_update_options ALLOW_FIELD_ADDITION), per table.",
);
const SCHEMA_ROWS_HELD: Def = counter(
    "bqforward_bigquery_schema_rows_held_total",
    "Rows held because insertAll did not see a new column yet (sent again), per table.",
);
const SCHEMA_CONFLICTS: Def = counter(
    "bqforward_bigquery_schema_conflicts_total",
    "Rows a schema change could not take (schema_conflict, schema_limit, schema_rejected), per table and reason.",
);
const REQUEST_DURATION: &str = "bqforward_bigquery_request_duration_seconds";
const REQUEST_DURATION_HELP: &str = "BigQuery request latency by outcome (insertAll requests; AppendRows for bigquery_storage_write).";
const BYTES_APPENDED: Def = counter(
    "bqforward_bigquery_appended_bytes_total",
    "Bytes of rows BigQuery accepted, per table and API (JSON rows for insertAll, serialized protobuf rows for the Storage Write API).",
);
const BILLED_BYTES: Def = counter(
    "bqforward_bigquery_billed_bytes_total",
    "Bytes BigQuery bills for the rows it accepted, per API: insertAll counts each row as at least 1 KB; the Storage Write API its serialized rows.",
);
const STREAM_REPLACEMENTS: Def = counter(
    "bqforward_bigquery_stream_replacements_total",
    "Storage Write streams left for a new one (finalized, broken, or an append whose outcome is unknown with exactly_once).",
);
const LOAD_JOBS: Def = counter(
    "bqforward_bigquery_load_jobs_total",
    "bigquery_load jobs per table: started (data uploaded), done (loaded), failed (retried under a new job id or dead-lettered), slow (still PENDING or RUNNING after a minute of polling, warned about in the log; once per delivery attempt). BigQuery allows 1,500 load jobs per table per day.",
);
const LOAD_BYTES: Def = counter(
    "bqforward_bigquery_load_bytes_total",
    "Uncompressed newline-delimited JSON bytes loaded by bigquery_load jobs, per table (rows: bqforward_bigquery_rows_inserted_total).",
);
const LOAD_JOB_DURATION: &str = "bqforward_bigquery_load_job_duration_seconds";
const LOAD_JOB_DURATION_HELP: &str = "bigquery_load: from the start of a job's upload to its DONE.";
const UNMATCHED: Def = counter(
    "bqforward_router_unmatched_events_total",
    "Events no <match> took (acked and discarded, as fluentd).",
);
const DATASET_MISSING: Def = gauge(
    "bqforward_bigquery_dataset_missing",
    "1 while BigQuery answers that this dataset does not exist: its rows wait in the buffer.",
);
const FILTER_DROPPED: Def = counter(
    "bqforward_filter_dropped_events_total",
    "Events a filter dropped on purpose (grep; rewrite_tag_filter with no rule for them).",
);
const ERROR_EVENTS: Def = counter(
    "bqforward_error_events_total",
    "Events a plugin could not process (fluentd's emit_error_event): routed to <label @ERROR>, or dropped when there is none.",
);
const READY: Def = gauge(
    "bqforward_ready",
    "1 when listeners are bound and every buffer is below its high-water mark.",
);

/// One output as metrics see it, built by `lib.rs` at scrape time.
pub struct OutputStatus<'a> {
    pub plugin_id: &'a str,
    pub type_name: &'a str,
    pub counts: OutputCounts,
    pub buffer: Option<BufferStatus>,
    pub sink: Option<SinkStatus<'a>>,
}

/// fluentd's per-output counters (monitor_agent's instance variables), which every output
/// has, buffered or not.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutputCounts {
    pub emit_count: u64,
    pub emit_records: u64,
    pub write_count: u64,
    pub retry_count: u64,
    pub rollback_count: u64,
    pub num_errors: u64,
}

/// What a plugin without a buffer counts as events pass: an output's emits (fluentd's
/// `emit_sync`), a filter's drops, and events either could not process. Atomic adds per
/// batch; read at scrape time.
#[derive(Debug, Default)]
pub struct PluginCounters {
    pub emit_count: AtomicU64,
    pub emit_records: AtomicU64,
    pub num_errors: AtomicU64,
    /// Writes to a destination (a file); 0 for outputs that write nothing (null).
    pub write_count: AtomicU64,
    /// Events dropped on purpose (grep; rewrite_tag_filter with no rule for them).
    pub dropped: AtomicU64,
    /// Events this plugin could not process, routed to `<label @ERROR>`.
    pub errors_rerouted: AtomicU64,
    /// Events this plugin could not process, dropped for want of `<label @ERROR>`.
    pub errors_dropped: AtomicU64,
}

impl PluginCounters {
    /// One emit of `records` events that was accepted (`ok`) or refused.
    pub fn emitted(&self, records: usize, ok: bool, wrote: bool) {
        self.emit_count.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.emit_records
                .fetch_add(records as u64, Ordering::Relaxed);
            if wrote {
                self.write_count.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.num_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self, events: usize) {
        if events > 0 {
            self.dropped.fetch_add(events as u64, Ordering::Relaxed);
        }
    }

    /// Events that could not be processed: to @ERROR (`rerouted`) or dropped.
    pub fn errors(&self, events: usize, rerouted: bool) {
        let counter = if rerouted {
            &self.errors_rerouted
        } else {
            &self.errors_dropped
        };
        counter.fetch_add(events as u64, Ordering::Relaxed);
    }

    /// fluentd's counts for an output without a buffer: `retry_count` is its `num_errors`, as
    /// monitor_agent reports it; nothing is rolled back.
    pub fn counts(&self) -> OutputCounts {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OutputCounts {
            emit_count: n(&self.emit_count),
            emit_records: n(&self.emit_records),
            write_count: n(&self.write_count),
            retry_count: n(&self.num_errors),
            rollback_count: 0,
            num_errors: n(&self.num_errors),
        }
    }
}

/// A buffer's counters (fluentd's monitor_agent fields and bqforward's own), kept by the
/// buffer through `internal_events::buffer`, read at scrape time.
#[derive(Debug, Default)]
pub struct BufferCounters {
    pub emit_records: AtomicU64,
    pub emit_count: AtomicU64,
    pub write_count: AtomicU64,
    pub retry_count: AtomicU64,
    pub rollback_count: AtomicU64,
    pub num_errors: AtomicU64,
    pub dropped_chunks: AtomicU64,
    pub dropped_records: AtomicU64,
    pub overflow_refusals: AtomicU64,
    pub blocked_nanos: AtomicU64,
    pub recovered_chunks: AtomicU64,
    pub recovered_records: AtomicU64,
    pub spilled_records: AtomicU64,
    /// Time spent delivering chunks (fluentd's `flush_time_count`).
    pub flush_nanos: AtomicU64,
    /// Deliveries slower than 20 s (fluentd's `slow_flush_count`).
    pub slow_flushes: AtomicU64,
}

/// A plugin's drop and error counts, for filters and routing outputs.
pub struct PluginStatus<'a> {
    pub plugin_id: &'a str,
    pub type_name: &'a str,
    /// The plugin drops events on purpose (filters, rewrite_tag_filter).
    pub drops: bool,
    pub counters: &'a PluginCounters,
}

/// A buffer's sizes and counters (fluentd's monitor_agent fields), read when scraped.
#[derive(Debug, Default, Clone)]
pub struct BufferStatus {
    pub stage_length: usize,
    pub queue_length: usize,
    pub stage_bytes: usize,
    pub queue_bytes: usize,
    pub total_limit: usize,
    pub oldest_age: Option<Duration>,
    pub retry_wait: Option<Duration>,
    pub flush_time: Duration,
    pub slow_flush_count: u64,
    pub blocked: Duration,
    pub overflow_refusals: u64,
    pub dropped_chunks: u64,
    pub dropped_records: u64,
}

impl BufferStatus {
    fn total_bytes(&self) -> usize {
        self.stage_bytes + self.queue_bytes
    }

    /// fluentd's `available_buffer_space_ratios`: percent of `total_limit_size` still free.
    fn available_space_ratio(&self) -> f64 {
        if self.total_limit == 0 {
            return 100.0;
        }
        let used = self.total_bytes() as f64 / self.total_limit as f64;
        ((1.0 - used) * 100.0).clamp(0.0, 100.0)
    }

    pub fn above_high_water(&self) -> bool {
        self.total_limit > 0 && self.total_bytes() as f64 > self.total_limit as f64 * HIGH_WATER
    }
}

pub struct SinkStatus<'a> {
    pub tables_created: u64,
    /// `project.dataset` of datasets BigQuery says do not exist (rows wait for them).
    pub missing_datasets: Vec<String>,
    pub detail: &'a SinkDetail,
}

/// What `lib.rs` implements to let metrics read the outputs at scrape time.
pub trait Observe: Send + Sync {
    /// Every output: buffered ones, the local ones, copy stores, `<secondary>`s and the
    /// routing outputs (copy, relabel, rewrite_tag_filter), as fluentd lists them.
    fn outputs(&self, visit: &mut dyn FnMut(&OutputStatus<'_>));
    /// Every plugin that drops events or raises error events: filters, rewrite_tag_filter,
    /// and outputs refusing single records.
    fn plugins(&self, visit: &mut dyn FnMut(&PluginStatus<'_>));
    fn unmatched_events(&self) -> u64;
}

/// The registry and the handles for what is counted as it happens.
pub struct Metrics {
    registry: Registry,
    hostname: String,
    input_events: IntCounterVec,
    input_bytes: IntCounterVec,
    input_decode_errors: IntCounterVec,
    input_connections_open: IntGaugeVec,
    input_connections: IntCounterVec,
    input_acks: IntCounterVec,
    input_records: IntCounterVec,
    input_tags: Mutex<HashSet<String>>,
    inputs: Mutex<Vec<(String, String)>>,
    listening: AtomicBool,
    observe: OnceLock<Arc<dyn Observe>>,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    // Names are constants here and unique, so registration cannot fail.
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    register(registry, vec)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("bqforward_build_info", "bqforward's version; always 1."),
            &["version"],
        )
        .expect("valid metric definition");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&r, build);
        let input_connections_open = IntGaugeVec::new(
            Opts::new(
                "bqforward_input_connections_open",
                "Forward connections open now.",
            ),
            &["input"],
        )
        .expect("valid metric definition");
        Self {
            input_events: counter_vec(
                &r,
                "bqforward_input_events_total",
                "Events decoded from Forward messages.",
                &["input"],
            ),
            input_bytes: counter_vec(
                &r,
                "bqforward_input_bytes_total",
                "Bytes read from Forward connections.",
                &["input"],
            ),
            input_decode_errors: counter_vec(
                &r,
                "bqforward_input_decode_errors_total",
                "Bad input by kind: events skipped (invalid_event_*) or connections closed.",
                &["input", "kind"],
            ),
            input_connections_open: register(&r, input_connections_open),
            input_connections: counter_vec(
                &r,
                "bqforward_input_connections_total",
                "Forward connections accepted.",
                &["input"],
            ),
            input_acks: counter_vec(
                &r,
                "bqforward_input_acks_total",
                "Forward acks sent (each after the outputs accepted the chunk).",
                &["input"],
            ),
            // The counter fluent-plugin-prometheus's README and example config define with a
            // `<filter> @type prometheus` (labels `tag`, `hostname`); dashboards expect it.
            input_records: counter_vec(
                &r,
                "fluentd_input_status_num_records_total",
                "The total number of incoming records",
                &["tag", "hostname"],
            ),
            registry: r,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            input_tags: Mutex::new(HashSet::new()),
            inputs: Mutex::new(Vec::new()),
            listening: AtomicBool::new(false),
            observe: OnceLock::new(),
        }
    }

    /// Handles for one `<source>`, resolved once.
    pub fn input(self: &Arc<Self>, id: &str, type_name: &str) -> InputMetrics {
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.push((id.to_owned(), type_name.to_owned()));
        }
        InputMetrics {
            events: self.input_events.with_label_values(&[id]),
            bytes: self.input_bytes.with_label_values(&[id]),
            acks: self.input_acks.with_label_values(&[id]),
            connections: self.input_connections.with_label_values(&[id]),
            open: self.input_connections_open.with_label_values(&[id]),
            id: Arc::from(id),
            metrics: Arc::clone(self),
        }
    }

    pub fn set_observer(&self, observe: Arc<dyn Observe>) {
        let _ = self.observe.set(observe);
    }

    /// Every input is bound (or no longer, at shutdown).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    /// Ready: listeners bound and every buffer below `HIGH_WATER`. `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listeners are not bound".into());
        }
        let mut full = Vec::new();
        let mut missing = Vec::new();
        if let Some(observe) = self.observe.get() {
            observe.outputs(&mut |o| {
                if o.buffer
                    .as_ref()
                    .is_some_and(BufferStatus::above_high_water)
                {
                    full.push(o.plugin_id.to_owned());
                }
                if let Some(sink) = &o.sink {
                    missing.extend(
                        sink.missing_datasets
                            .iter()
                            .map(|d| format!("{}: dataset {d} not found", o.plugin_id)),
                    );
                }
            });
        }
        let mut why = Vec::new();
        if !full.is_empty() {
            why.push(format!(
                "buffer above {:.0}% of total_limit_size: {}",
                HIGH_WATER * 100.0,
                full.join(", ")
            ));
        }
        why.extend(missing);
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut families = Families::default();
        for family in self.registry.gather() {
            families.0.insert(family.name().to_owned(), family);
        }
        if let Some(observe) = self.observe.get() {
            observe.outputs(&mut |o| families.output(o));
            observe.plugins(&mut |p| families.plugin(p));
            families.add(&UNMATCHED, &[], observe.unmatched_events() as f64);
        }
        families.add(&READY, &[], f64::from(u8::from(self.readiness().is_ok())));
        let families: Vec<MetricFamily> = families
            .0
            .into_values()
            .filter(|f| !f.get_metric().is_empty())
            .collect();
        let mut out = String::new();
        if let Err(err) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }

    /// fluentd's monitor_agent `/api/plugins.json`: one entry per plugin.
    pub fn plugins_json(&self) -> serde_json::Value {
        let mut plugins = Vec::new();
        if let Ok(inputs) = self.inputs.lock() {
            for (id, type_name) in inputs.iter() {
                plugins.push(serde_json::json!({
                    "plugin_id": id, "plugin_category": "input", "type": type_name,
                    "output_plugin": false, "config": {},
                }));
            }
        }
        if let Some(observe) = self.observe.get() {
            observe.outputs(&mut |o| {
                let c = &o.counts;
                let mut entry = serde_json::json!({
                    "plugin_id": o.plugin_id, "plugin_category": "output", "type": o.type_name,
                    "output_plugin": true, "config": {},
                    "retry_count": c.retry_count, "emit_records": c.emit_records,
                    "emit_count": c.emit_count, "write_count": c.write_count,
                    "rollback_count": c.rollback_count,
                });
                if let Some(b) = &o.buffer {
                    entry["buffer_queue_length"] = b.queue_length.into();
                    entry["buffer_total_queued_size"] = b.total_bytes().into();
                    entry["buffer_stage_length"] = b.stage_length.into();
                    entry["buffer_stage_byte_size"] = b.stage_bytes.into();
                    entry["buffer_queue_byte_size"] = b.queue_bytes.into();
                    entry["buffer_available_buffer_space_ratios"] =
                        b.available_space_ratio().into();
                    entry["slow_flush_count"] = b.slow_flush_count.into();
                    entry["flush_time_count"] = (b.flush_time.as_millis() as u64).into();
                }
                plugins.push(entry);
            });
        }
        serde_json::json!({ "plugins": plugins })
    }
}

/// One input's handles. Cloned into each connection; counting is an atomic add.
#[derive(Clone)]
pub struct InputMetrics {
    id: Arc<str>,
    events: IntCounter,
    bytes: IntCounter,
    acks: IntCounter,
    connections: IntCounter,
    open: IntGauge,
    metrics: Arc<Metrics>,
}

impl InputMetrics {
    pub fn read(&self, bytes: usize) {
        self.bytes.inc_by(bytes as u64);
    }

    pub fn received(&self, events: usize) {
        self.events.inc_by(events as u64);
    }

    pub fn acked(&self, acks: usize) {
        self.acks.inc_by(acks as u64);
    }

    /// Bad input of `kind` (rare: the label is looked up here).
    pub fn decode_error(&self, kind: &str, n: u64) {
        self.metrics
            .input_decode_errors
            .with_label_values(&[&*self.id, kind])
            .inc_by(n);
    }

    /// Counts a connection as open until the guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        self.open.inc();
        ConnectionGuard(self.open.clone())
    }

    /// `fluentd_input_status_num_records_total{tag, hostname}` for `tag`: callers keep the
    /// handle with their per-tag cache, so counting a batch is one atomic add.
    pub fn records(&self, tag: &str) -> IntCounter {
        let m = &self.metrics;
        let known = m.input_tags.lock().is_ok_and(|mut tags| {
            tags.contains(tag) || (tags.len() < MAX_SERIES && tags.insert(tag.to_owned()))
        });
        let tag = if known { tag } else { OTHER };
        m.input_records.with_label_values(&[tag, &m.hostname])
    }
}

pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Bytes accepted and bytes billed, for one API and table.
type Appended = (u64, u64);
/// What schema evolution counts per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaCount {
    ColumnsAdded,
    RowsHeld,
    Conflicts,
}

/// What happened to rows, for `SinkDetail::rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowFate {
    Inserted,
    Retried,
    DeadLettered,
    Dropped,
}

/// How an insertAll request ended, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// 200, whatever its per-row errors.
    Ok,
    /// Transient: rate limits, 5xx, timeouts, network, auth refresh.
    Retryable,
    TooLarge,
    NotFound,
    /// Permanent: the rows go to the dead letters.
    Rejected,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 5] = [
        Self::Ok,
        Self::Retryable,
        Self::TooLarge,
        Self::NotFound,
        Self::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retryable => "retryable",
            Self::TooLarge => "too_large",
            Self::NotFound => "not_found",
            Self::Rejected => "rejected",
        }
    }
}

/// What happened to a load job, for `SinkDetail::load_job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadJobEvent {
    Started,
    Done,
    Failed,
    /// Still PENDING or RUNNING after a minute of polling.
    Slow,
}

impl LoadJobEvent {
    fn label(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Slow => "slow",
        }
    }
}

/// Per-table row counts and request latencies of one BigQuery output, the tables it
/// created and the datasets it found missing: one short lock per request or chunk, never
/// per row. Written through `internal_events::bigquery`.
#[derive(Debug)]
pub struct SinkDetail {
    rows: Mutex<HashMap<(RowFate, String, String), u64>>,
    /// Per (API, table): bytes accepted and bytes billed.
    appended: Mutex<HashMap<(&'static str, String), Appended>>,
    stream_replacements: AtomicU64,
    requests: Vec<Histogram>,
    tables_created: AtomicU64,
    missing_datasets: Mutex<std::collections::BTreeSet<String>>,
    /// bigquery_load: jobs per (table, event), bytes loaded per table, job latency.
    load_jobs: Mutex<HashMap<(String, LoadJobEvent), u64>>,
    load_bytes: Mutex<HashMap<String, u64>>,
    load_latency: Histogram,
    /// Schema evolution's counts by table and reason.
    schema: Mutex<HashMap<(SchemaCount, String, String), u64>>,
}

impl Default for SinkDetail {
    fn default() -> Self {
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let requests = RequestOutcome::ALL
            .iter()
            .map(|_| {
                Histogram::with_opts(
                    HistogramOpts::new(REQUEST_DURATION, REQUEST_DURATION_HELP)
                        .buckets(buckets.clone()),
                )
                .expect("valid histogram definition")
            })
            .collect();
        Self {
            rows: Mutex::new(HashMap::new()),
            appended: Mutex::new(HashMap::new()),
            stream_replacements: AtomicU64::new(0),
            requests,
            tables_created: AtomicU64::new(0),
            missing_datasets: Mutex::new(std::collections::BTreeSet::new()),
            load_jobs: Mutex::new(HashMap::new()),
            load_bytes: Mutex::new(HashMap::new()),
            load_latency: Histogram::with_opts(
                HistogramOpts::new(LOAD_JOB_DURATION, LOAD_JOB_DURATION_HELP).buckets(vec![
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ]),
            )
            .expect("valid histogram definition"),
            schema: Mutex::new(HashMap::new()),
        }
    }
}

impl SinkDetail {
    /// `n` rows of `table` (a partition decorator is dropped) came to `fate` for `reason`
    /// (empty for inserted rows).
    pub fn rows(&self, fate: RowFate, table: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let table = table.split('$').next().unwrap_or(table);
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        let key = (fate, table.to_owned(), reason.to_owned());
        if rows.len() >= MAX_SERIES && !rows.contains_key(&key) {
            *rows
                .entry((fate, OTHER.to_owned(), reason.to_owned()))
                .or_default() += n;
            return;
        }
        *rows.entry(key).or_default() += n;
    }

    /// `bytes` of rows of `table` accepted through `api`, billed as `billed`.
    pub fn appended(&self, api: &'static str, table: &str, bytes: u64, billed: u64) {
        let table = table.split('$').next().unwrap_or(table);
        let Ok(mut appended) = self.appended.lock() else {
            return;
        };
        let key =
            if appended.len() >= MAX_SERIES && !appended.contains_key(&(api, table.to_owned())) {
                (api, OTHER.to_owned())
            } else {
                (api, table.to_owned())
            };
        let entry = appended.entry(key).or_default();
        entry.0 += bytes;
        entry.1 += billed;
    }

    pub fn stream_replaced(&self) {
        self.stream_replacements.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` of `what` for `table` (a partition decorator is dropped) and `reason` (empty but
    /// for conflicts).
    pub fn schema(&self, what: SchemaCount, table: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let table = table.split('$').next().unwrap_or(table);
        let Ok(mut counts) = self.schema.lock() else {
            return;
        };
        let key = (what, table.to_owned(), reason.to_owned());
        if counts.len() >= MAX_SERIES && !counts.contains_key(&key) {
            *counts
                .entry((what, OTHER.to_owned(), reason.to_owned()))
                .or_default() += n;
            return;
        }
        *counts.entry(key).or_default() += n;
    }

    /// One schema count, all tables and reasons (for tests and logs).
    pub fn schema_total(&self, what: SchemaCount) -> u64 {
        self.schema.lock().map_or(0, |counts| {
            counts
                .iter()
                .filter(|((w, _, _), _)| *w == what)
                .map(|(_, n)| n)
                .sum()
        })
    }

    pub fn table_created(&self) {
        self.tables_created.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tables_created(&self) -> u64 {
        self.tables_created.load(Ordering::Relaxed)
    }

    /// Marks `dataset` (`project.dataset`) missing; true when it was not already.
    pub fn dataset_missing(&self, dataset: &str) -> bool {
        self.missing_datasets
            .lock()
            .is_ok_and(|mut missing| missing.insert(dataset.to_owned()))
    }

    /// Marks `dataset` found; true when it was missing.
    pub fn dataset_found(&self, dataset: &str) -> bool {
        self.missing_datasets
            .lock()
            .is_ok_and(|mut missing| !missing.is_empty() && missing.remove(dataset))
    }

    /// `project.dataset` of the datasets missing now.
    pub fn missing_datasets(&self) -> Vec<String> {
        self.missing_datasets
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn request(&self, outcome: RequestOutcome, elapsed: Duration) {
        let index = RequestOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.requests[index].observe(elapsed.as_secs_f64());
    }

    /// A load job of `table` (a partition decorator is dropped) came to `event`.
    pub fn load_job(&self, table: &str, event: LoadJobEvent) {
        let table = table.split('$').next().unwrap_or(table);
        if let Ok(mut jobs) = self.load_jobs.lock() {
            let key = if jobs.len() >= MAX_SERIES && !jobs.contains_key(&(table.to_owned(), event))
            {
                (OTHER.to_owned(), event)
            } else {
                (table.to_owned(), event)
            };
            *jobs.entry(key).or_default() += 1;
        }
    }

    /// A load job of `table` loaded `bytes` (uncompressed), `elapsed` after its upload began.
    pub fn loaded(&self, table: &str, bytes: u64, elapsed: Option<Duration>) {
        let table = table.split('$').next().unwrap_or(table);
        if let Ok(mut loaded) = self.load_bytes.lock() {
            let key = if loaded.len() >= MAX_SERIES && !loaded.contains_key(table) {
                OTHER
            } else {
                table
            };
            *loaded.entry(key.to_owned()).or_default() += bytes;
        }
        if let Some(elapsed) = elapsed {
            self.load_latency.observe(elapsed.as_secs_f64());
        }
    }

    /// Load jobs of one event, all tables (for tests and logs).
    pub fn load_jobs(&self, event: LoadJobEvent) -> u64 {
        self.load_jobs.lock().map_or(0, |jobs| {
            jobs.iter()
                .filter(|((_, e), _)| *e == event)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// Rows of one fate, all tables and reasons (for tests and logs).
    pub fn total(&self, fate: RowFate) -> u64 {
        self.rows.lock().map_or(0, |rows| {
            rows.iter()
                .filter(|((f, _, _), _)| *f == fate)
                .map(|(_, n)| n)
                .sum()
        })
    }
}

/// Families being rendered, by name.
#[derive(Default)]
struct Families(BTreeMap<String, MetricFamily>);

impl Families {
    fn push(&mut self, name: &str, help: &str, kind: MetricType, metric: proto::Metric) {
        let family = self.0.entry(name.to_owned()).or_insert_with(|| {
            let mut family = MetricFamily::default();
            family.set_name(name.to_owned());
            family.set_help(help.to_owned());
            family.set_field_type(kind);
            family
        });
        family.mut_metric().push(metric);
    }

    fn add(&mut self, def: &Def, labels: &[(&str, &str)], value: f64) {
        let mut metric = proto::Metric::from_label(label_pairs(labels));
        if def.kind == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        self.push(def.name, def.help, def.kind, metric);
    }

    fn output(&mut self, o: &OutputStatus<'_>) {
        let out = [("plugin_id", o.plugin_id), ("type", o.type_name)];
        let c = &o.counts;
        for (def, value) in [
            (&OUT_RETRY_COUNT, c.retry_count),
            (&OUT_NUM_ERRORS, c.num_errors),
            (&OUT_EMIT_COUNT, c.emit_count),
            (&OUT_EMIT_RECORDS, c.emit_records),
            (&OUT_WRITE_COUNT, c.write_count),
            (&OUT_ROLLBACK_COUNT, c.rollback_count),
        ] {
            self.add(def, &out, value as f64);
        }
        if let Some(b) = &o.buffer {
            self.buffer(&out, o, b);
        }
        if let Some(sink) = &o.sink {
            self.sink(o.plugin_id, sink);
        }
    }

    fn plugin(&mut self, p: &PluginStatus<'_>) {
        let labels = [("plugin_id", p.plugin_id), ("type", p.type_name)];
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let c = p.counters;
        if p.drops {
            self.add(&FILTER_DROPPED, &labels, n(&c.dropped));
        }
        for (routed, value) in [
            ("@ERROR", n(&c.errors_rerouted)),
            ("dropped", n(&c.errors_dropped)),
        ] {
            self.add(
                &ERROR_EVENTS,
                &[
                    ("plugin_id", p.plugin_id),
                    ("type", p.type_name),
                    ("routed_to", routed),
                ],
                value,
            );
        }
    }

    fn buffer(&mut self, out: &[(&str, &str)], o: &OutputStatus<'_>, b: &BufferStatus) {
        let secs = |d: Duration| d.as_secs_f64();
        for (def, value) in [
            (&OUT_BUFFER_TOTAL_BYTES, b.total_bytes() as f64),
            (&OUT_BUFFER_STAGE_LENGTH, b.stage_length as f64),
            (&OUT_BUFFER_STAGE_BYTE_SIZE, b.stage_bytes as f64),
            (&OUT_BUFFER_QUEUE_LENGTH, b.queue_length as f64),
            (&OUT_BUFFER_QUEUE_BYTE_SIZE, b.queue_bytes as f64),
            (&OUT_BUFFER_AVAILABLE_SPACE_RATIO, b.available_space_ratio()),
            // fluentd counts flush time in milliseconds.
            (&OUT_FLUSH_TIME_COUNT, b.flush_time.as_millis() as f64),
            (&OUT_SLOW_FLUSH_COUNT, b.slow_flush_count as f64),
            (&OUT_RETRY_WAIT, b.retry_wait.map_or(0.0, secs)),
            (&BUFFER_OLDEST_AGE, b.oldest_age.map_or(0.0, secs)),
            (&BUFFER_LIMIT_BYTES, b.total_limit as f64),
            (&BUFFER_BLOCKED, secs(b.blocked)),
            (&BUFFER_OVERFLOWS, b.overflow_refusals as f64),
            (&BUFFER_DROPPED_CHUNKS, b.dropped_chunks as f64),
            (&BUFFER_DROPPED_RECORDS, b.dropped_records as f64),
        ] {
            self.add(def, out, value);
        }
        let status = [
            ("plugin_id", o.plugin_id),
            ("plugin_category", "output"),
            ("type", o.type_name),
        ];
        self.add(&STATUS_BUFFER_QUEUE_LENGTH, &status, b.queue_length as f64);
        self.add(&STATUS_BUFFER_TOTAL_BYTES, &status, b.total_bytes() as f64);
        self.add(&STATUS_RETRY_COUNT, &status, o.counts.retry_count as f64);
    }

    fn sink(&mut self, plugin_id: &str, sink: &SinkStatus<'_>) {
        self.add(
            &TABLES_CREATED,
            &[("plugin_id", plugin_id)],
            sink.tables_created as f64,
        );
        for dataset in &sink.missing_datasets {
            self.add(
                &DATASET_MISSING,
                &[("plugin_id", plugin_id), ("dataset", dataset)],
                1.0,
            );
        }
        let rows: Vec<((RowFate, String, String), u64)> = sink
            .detail
            .rows
            .lock()
            .map(|rows| rows.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for ((fate, table, reason), n) in rows {
            let labels = [
                ("plugin_id", plugin_id),
                ("table", table.as_str()),
                ("reason", reason.as_str()),
            ];
            let (def, labels) = match fate {
                RowFate::Inserted => (&ROWS_INSERTED, &labels[..2]),
                RowFate::Retried => (&ROWS_RETRIED, &labels[..]),
                RowFate::DeadLettered => (&ROWS_DEAD_LETTERED, &labels[..]),
                RowFate::Dropped => (&ROWS_DROPPED, &labels[..]),
            };
            self.add(def, labels, n as f64);
        }
        let appended: Vec<((&str, String), Appended)> = sink
            .detail
            .appended
            .lock()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut billed: BTreeMap<&str, u64> = BTreeMap::new();
        for ((api, table), (bytes, bill)) in appended {
            self.add(
                &BYTES_APPENDED,
                &[("plugin_id", plugin_id), ("table", &table), ("api", api)],
                bytes as f64,
            );
            *billed.entry(api).or_default() += bill;
        }
        for (api, bill) in billed {
            self.add(
                &BILLED_BYTES,
                &[("plugin_id", plugin_id), ("api", api)],
                bill as f64,
            );
        }
        let replaced = sink.detail.stream_replacements.load(Ordering::Relaxed);
        if replaced > 0 {
            self.add(
                &STREAM_REPLACEMENTS,
                &[("plugin_id", plugin_id)],
                replaced as f64,
            );
        }
        self.load(plugin_id, sink.detail);
        let schema: Vec<((SchemaCount, String, String), u64)> = sink
            .detail
            .schema
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for ((what, table, reason), n) in schema {
            let labels = [
                ("plugin_id", plugin_id),
                ("table", table.as_str()),
                ("reason", reason.as_str()),
            ];
            let (def, labels) = match what {
                SchemaCount::ColumnsAdded => (&COLUMNS_ADDED, &labels[..2]),
                SchemaCount::RowsHeld => (&SCHEMA_ROWS_HELD, &labels[..2]),
                SchemaCount::Conflicts => (&SCHEMA_CONFLICTS, &labels[..]),
            };
            self.add(def, labels, n as f64);
        }
        for (outcome, histogram) in RequestOutcome::ALL.iter().zip(&sink.detail.requests) {
            let mut metric = histogram.metric();
            metric.set_label(label_pairs(&[
                ("plugin_id", plugin_id),
                ("outcome", outcome.label()),
            ]));
            self.push(
                REQUEST_DURATION,
                REQUEST_DURATION_HELP,
                MetricType::HISTOGRAM,
                metric,
            );
        }
    }
}

impl Families {
    /// bigquery_load's jobs, bytes and job latency (nothing for outputs that ran no job).
    fn load(&mut self, plugin_id: &str, detail: &SinkDetail) {
        let jobs: Vec<((String, LoadJobEvent), u64)> = detail
            .load_jobs
            .lock()
            .map(|jobs| jobs.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        if jobs.is_empty() {
            return;
        }
        for ((table, event), n) in jobs {
            self.add(
                &LOAD_JOBS,
                &[
                    ("plugin_id", plugin_id),
                    ("table", table.as_str()),
                    ("event", event.label()),
                ],
                n as f64,
            );
        }
        let bytes: Vec<(String, u64)> = detail
            .load_bytes
            .lock()
            .map(|b| b.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for (table, n) in bytes {
            self.add(
                &LOAD_BYTES,
                &[("plugin_id", plugin_id), ("table", table.as_str())],
                n as f64,
            );
        }
        let mut metric = detail.load_latency.metric();
        metric.set_label(label_pairs(&[("plugin_id", plugin_id)]));
        self.push(
            LOAD_JOB_DURATION,
            LOAD_JOB_DURATION_HELP,
            MetricType::HISTOGRAM,
            metric,
        );
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

#[cfg(test)]
mod tests;
