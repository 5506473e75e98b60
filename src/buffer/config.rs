//! fluentd's `<buffer>` parameters as typed settings, with each output's defaults (a
//! `bigquery_insert` buffer has fluent-plugin-bigquery's, not fluentd's plain ones).

use crate::config::{ConfigError, Element, Location, Section, value};
use crate::format::time::Zone;
use std::path::PathBuf;
use std::time::Duration;

/// Where chunks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferKind {
    /// In memory; with `spill`, chunks undelivered at shutdown are written there and sent by
    /// the next start.
    Memory { spill: Option<PathBuf> },
    /// Every chunk in a file under `path` before it is acked.
    File { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Flush a chunk when it is `flush_interval` old (or full).
    Interval,
    /// Flush after every append.
    Immediate,
    /// Flush only full chunks (and at shutdown).
    Lazy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowAction {
    /// Stop accepting (the input stops reading its sockets) until there is room.
    Block,
    /// Refuse the events: the input sends no ack, so the sender retries.
    ThrowException,
    /// Drop the oldest queued chunk to make room (logged and counted).
    DropOldestChunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryType {
    ExponentialBackoff,
    Periodic,
}

/// fluentd's `retry_*` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_type: RetryType,
    pub wait: Duration,
    pub backoff_base: f64,
    pub max_interval: Option<Duration>,
    pub timeout: Duration,
    pub max_times: Option<u32>,
    pub forever: bool,
    /// Full jitter: each wait is drawn uniformly from [wait/2, wait] so that many chunks
    /// failing together do not retry together.
    pub randomize: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_type: RetryType::ExponentialBackoff,
            wait: Duration::from_secs(1),
            backoff_base: 2.0,
            max_interval: None,
            timeout: Duration::from_secs(72 * 3600),
            max_times: None,
            forever: false,
            randomize: true,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = match self.retry_type {
            RetryType::Periodic => self.wait.as_secs_f64(),
            RetryType::ExponentialBackoff => {
                self.wait.as_secs_f64()
                    * self
                        .backoff_base
                        .powi(attempt.saturating_sub(1).min(64) as i32)
            }
        };
        let capped = match self.max_interval {
            Some(max) => base.min(max.as_secs_f64()),
            None => base.min(24.0 * 3600.0),
        };
        let secs = if self.randomize {
            capped * (0.5 + fastrand::f64() * 0.5)
        } else {
            capped
        };
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// Whether a chunk that failed `attempts` times, the first `elapsed` ago, gives up.
    pub fn exhausted(&self, attempts: u32, elapsed: Duration) -> bool {
        if self.forever {
            return false;
        }
        elapsed >= self.timeout || self.max_times.is_some_and(|max| attempts > max)
    }
}

/// fluentd's chunk keys, `<buffer time,tag,KEY>`. bqforward keys chunks by destination,
/// which already separates what placeholders tell apart, so chunk keys only say what
/// placeholders may read, and `time` makes names use the event time cut to `timekey`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkKeys {
    pub time: bool,
    pub tag: bool,
    /// Record keys as written: `status`, `$.a.b`.
    pub record: Vec<String>,
}

impl ChunkKeys {
    /// fluentd's rules (`Output#configure`): `time`, `tag`, and record keys of
    /// `[-_.@$a-zA-Z0-9]` (so `$.a.b` paths; bracket paths are refused).
    fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Self::default();
        for key in value::parse_array(text)? {
            match key.as_str() {
                "time" => keys.time = true,
                "tag" => keys.tag = true,
                k if k.starts_with("$[") => {
                    return Err("in chunk_keys: bracket notation is not allowed".into());
                }
                k if k.is_empty()
                    || !k
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.@$".contains(&b)) =>
                {
                    return Err(format!(
                        "chunk_keys specification includes invalid char: '{k}'"
                    ));
                }
                k => {
                    crate::fluentd::accessor::KeyPath::parse(k)
                        .map_err(|e| format!("in chunk_keys: {e}"))?;
                    if !keys.record.iter().any(|r| r == k) {
                        keys.record.push(k.to_owned());
                    }
                }
            }
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        !self.time && !self.tag && self.record.is_empty()
    }

    /// As fluentd writes them: `time,tag,status`.
    pub fn describe(&self) -> String {
        let mut all: Vec<&str> = Vec::new();
        if self.time {
            all.push("time");
        }
        if self.tag {
            all.push("tag");
        }
        all.extend(self.record.iter().map(String::as_str));
        all.join(",")
    }
}

/// `timekey` with a `time` chunk key: names take the start of the event's period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeKey {
    /// The period, in seconds (at least 1).
    pub period: i64,
    /// `timekey_wait`: with `flush_mode lazy`, how long after a period ends its chunk waits
    /// for late events before it is flushed.
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub kind: BufferKind,
    /// File buffers: fdatasync each append before the ack (survives power loss, not only a
    /// process crash).
    pub fsync: bool,
    pub chunk_limit_size: usize,
    pub chunk_limit_records: Option<usize>,
    pub total_limit_size: usize,
    pub queued_chunks_limit_size: Option<usize>,
    pub flush_mode: FlushMode,
    pub flush_interval: Duration,
    pub flush_thread_count: usize,
    pub flush_thread_interval: Duration,
    pub flush_at_shutdown: bool,
    pub overflow_action: OverflowAction,
    pub retry: RetryPolicy,
    pub chunk_keys: ChunkKeys,
    /// Set when `time` is a chunk key.
    pub timekey: Option<TimeKey>,
    /// The zone of strftime parts in names and of timekey periods: `timekey_zone`, UTC with
    /// `timekey_use_utc`, else local time (fluentd's default).
    pub time_zone: Zone,
    pub location: Option<Location>,
}

impl BufferConfig {
    /// fluent-plugin-bigquery's `bigquery_insert` defaults (its out_bigquery_insert.rb).
    pub fn bigquery_insert_defaults() -> Self {
        Self {
            kind: BufferKind::Memory { spill: None },
            fsync: false,
            chunk_limit_size: 1024 * 1024,
            chunk_limit_records: Some(500),
            total_limit_size: 1024 * 1024 * 1024,
            queued_chunks_limit_size: None,
            flush_mode: FlushMode::Interval,
            flush_interval: Duration::from_secs(1),
            flush_thread_count: 1,
            flush_thread_interval: Duration::from_millis(50),
            flush_at_shutdown: true,
            overflow_action: OverflowAction::ThrowException,
            retry: RetryPolicy::default(),
            chunk_keys: ChunkKeys::default(),
            timekey: None,
            time_zone: Zone::Local,
            location: None,
        }
    }

    /// fluent-plugin-bigquery's `bigquery_load` defaults (its out_bigquery_load.rb): a file
    /// buffer (its `path` still has to be given, as fluentd asks), hourly flushes of chunks up
    /// to 1 GiB, 32 GiB in all, and (fluentd's rule for persistent buffers) no flush at
    /// shutdown: the chunks wait on disk for the next start.
    pub fn bigquery_load_defaults() -> Self {
        Self {
            kind: BufferKind::File {
                path: PathBuf::new(),
            },
            chunk_limit_size: 1024 * 1024 * 1024,
            chunk_limit_records: None,
            total_limit_size: 32 * 1024 * 1024 * 1024,
            flush_interval: Duration::from_secs(3600),
            flush_thread_interval: Duration::from_secs(5),
            flush_at_shutdown: false,
            ..Self::bigquery_insert_defaults()
        }
    }

    /// Reads `<buffer>` over `defaults`. Returns the warnings for parameters bqforward accepts
    /// and ignores.
    pub fn from_config(
        element: Option<&Element>,
        defaults: Self,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let Some(element) = element else {
            return Ok((defaults, Vec::new()));
        };
        let s = Section::new(element);
        let path = s.str("path").map(PathBuf::from);
        // Without `@type`, the output's default kind (file for bigquery_load).
        let default_type = match defaults.kind {
            BufferKind::File { .. } => "file",
            BufferKind::Memory { .. } => "memory",
        };
        let kind = match (s.type_name().unwrap_or(default_type), path) {
            ("memory", spill) => BufferKind::Memory { spill },
            ("file", Some(path)) => BufferKind::File { path },
            ("file", None) => {
                return Err(ConfigError::at(
                    s.location(),
                    "<buffer> @type file needs 'path' (a directory)",
                ));
            }
            (other, _) => {
                return Err(ConfigError::at(
                    s.location(),
                    format!("<buffer> @type {other} is not supported (supported: memory, file)"),
                ));
            }
        };
        let at = |message: String| ConfigError::at(s.location(), message);
        // The section's argument, or fluentd's equivalent `chunk_keys` parameter.
        let chunk_keys = match (element.arg.trim(), s.str("chunk_keys")) {
            ("", None) => ChunkKeys::default(),
            ("", Some(param)) => ChunkKeys::parse(param).map_err(at)?,
            (arg, _) => ChunkKeys::parse(arg).map_err(at)?,
        };
        let mut c = defaults;
        c.kind = kind;
        if let Some(v) = s.bool("fsync")? {
            c.fsync = v;
        }
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = s.size("chunk_limit_size")? {
            c.chunk_limit_size = to_usize(v).max(1);
        }
        // The plugin's README calls it chunk_records_limit; its code reads chunk_limit_records.
        if let Some(v) = s
            .int::<usize>("chunk_limit_records")?
            .or(s.int("chunk_records_limit")?)
        {
            c.chunk_limit_records = Some(v.max(1));
        }
        if let Some(v) = s.size("total_limit_size")? {
            c.total_limit_size = to_usize(v).max(1);
        }
        if let Some(v) = s.int::<usize>("queued_chunks_limit_size")? {
            c.queued_chunks_limit_size = Some(v.max(1));
        }
        let flush_interval = s.time("flush_interval")?;
        if let Some(v) = flush_interval {
            c.flush_interval = v;
        }
        if let Some(mode) = s.one_of("flush_mode", &["default", "interval", "immediate", "lazy"])? {
            c.flush_mode = match mode {
                "immediate" => FlushMode::Immediate,
                "lazy" => FlushMode::Lazy,
                "interval" => FlushMode::Interval,
                // fluentd's `default`: interval when flush_interval is set, else lazy for
                // time-keyed chunks.
                _ if flush_interval.is_none() && chunk_keys.time => FlushMode::Lazy,
                _ => FlushMode::Interval,
            };
        }
        if let Some(v) = s.int::<usize>("flush_thread_count")? {
            c.flush_thread_count = v.clamp(1, 256);
        }
        if let Some(v) = s.time("flush_thread_interval")? {
            c.flush_thread_interval = v.max(Duration::from_millis(1));
        }
        if let Some(v) = s.bool("flush_at_shutdown")? {
            c.flush_at_shutdown = v;
        }
        if let Some(action) = s.one_of(
            "overflow_action",
            &["block", "throw_exception", "drop_oldest_chunk"],
        )? {
            c.overflow_action = match action {
                "block" => OverflowAction::Block,
                "drop_oldest_chunk" => OverflowAction::DropOldestChunk,
                _ => OverflowAction::ThrowException,
            };
        }
        read_retry(&s, &mut c.retry)?;
        let (timekey, zone) = read_timekey(&s, chunk_keys.time)?;
        c.timekey = timekey;
        c.time_zone = zone;
        c.chunk_keys = chunk_keys;
        c.location = Some(s.location().clone());
        let warnings = s.finish(&[
            "flush_thread_burst_interval",
            "delayed_commit_timeout",
            "retry_secondary_threshold",
            "chunk_full_threshold",
            "compress",
            "disable_chunk_backup",
            "queue_limit_length",
        ])?;
        Ok((c, warnings))
    }

    /// For `check`: what the chunk keys do here, when there are any.
    pub fn describe_chunk_keys(&self) -> Option<String> {
        if self.chunk_keys.is_empty() {
            return None;
        }
        let time = match self.timekey {
            Some(t) => format!("; names use the event time cut to timekey {}s", t.period),
            None => String::new(),
        };
        Some(format!(
            "<buffer {}>: chunks are keyed by destination, which separates what the placeholders tell apart; the chunk keys say what placeholders read{time}",
            self.chunk_keys.describe()
        ))
    }
}

/// `timekey`, `timekey_wait`, `timekey_use_utc`, `timekey_zone` as fluentd reads them: a
/// `time` chunk key needs a positive timekey.
fn read_timekey(s: &Section<'_>, time_key: bool) -> Result<(Option<TimeKey>, Zone), ConfigError> {
    let at = |message: String| ConfigError::at(s.location(), message);
    let period = s.time("timekey")?;
    let wait = s.time("timekey_wait")?.unwrap_or(Duration::from_secs(600));
    let utc = s.bool("timekey_use_utc")?.unwrap_or(false);
    let zone = match s.str("timekey_zone") {
        Some(name) => Zone::parse(name).map_err(|e| at(format!("timekey_zone: {e}")))?,
        None => Zone::Local,
    };
    let zone = if utc { Zone::Utc } else { zone };
    if !time_key {
        return Ok((None, zone));
    }
    let Some(period) = period else {
        return Err(at(
            "<buffer ...> argument includes 'time', but timekey is not configured".into(),
        ));
    };
    let secs = period.as_secs() as i64;
    if secs <= 0 {
        return Err(at(format!(
            "timekey should be greater than 0. current timekey: {secs}"
        )));
    }
    Ok((Some(TimeKey { period: secs, wait }), zone))
}

fn read_retry(s: &Section<'_>, r: &mut RetryPolicy) -> Result<(), ConfigError> {
    if let Some(kind) = s.one_of("retry_type", &["exponential_backoff", "periodic"])? {
        r.retry_type = if kind == "periodic" {
            RetryType::Periodic
        } else {
            RetryType::ExponentialBackoff
        };
    }
    if let Some(v) = s.time("retry_wait")? {
        r.wait = v;
    }
    if let Some(v) = s.float("retry_exponential_backoff_base")? {
        r.backoff_base = v.max(1.0);
    }
    if let Some(v) = s.time("retry_max_interval")? {
        r.max_interval = Some(v);
    }
    if let Some(v) = s.time("retry_timeout")? {
        r.timeout = v;
    }
    if let Some(v) = s.int::<u32>("retry_max_times")? {
        r.max_times = Some(v);
    }
    if let Some(v) = s.bool("retry_forever")? {
        r.forever = v;
    }
    if let Some(v) = s.bool("retry_randomize")? {
        r.randomize = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_and_caps() {
        let r = RetryPolicy {
            randomize: false,
            max_interval: Some(Duration::from_secs(5)),
            ..RetryPolicy::default()
        };
        let delays: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        let jittered = RetryPolicy::default().delay(3);
        assert!(jittered >= Duration::from_secs(2) && jittered <= Duration::from_secs(4));
    }

    #[test]
    fn retry_limits() {
        let r = RetryPolicy {
            max_times: Some(3),
            timeout: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert!(!r.exhausted(3, Duration::from_secs(1)));
        assert!(r.exhausted(4, Duration::from_secs(1)));
        assert!(r.exhausted(1, Duration::from_secs(61)));
        let forever = RetryPolicy { forever: true, ..r };
        assert!(!forever.exhausted(1000, Duration::from_secs(1_000_000)));
    }
}
