//! `@type bigquery_load`: fluent-plugin-bigquery's load-job output, configured the same way.
//! Events are keyed by destination at emit and buffered (a file buffer by default, flushed
//! hourly); each chunk becomes one load job (`sink`) whose id is derived from the chunk
//! (`job`), with the chunk's rows as NDJSON (`ndjson`; plain as the plugin uploads it, or
//! gzipped with `<buffer> compress gzip`) uploaded by `service`.
//! Shares destinations, schemas, conversion, `<inject>` and dead letters with
//! `bigquery_insert`; must not hold insertAll logic.

pub mod job;
pub mod ndjson;
pub mod service;
pub mod sink;

use super::BigQueryOutput;
use super::config::Common;
use super::dead_letter::DeadLetters;
use super::evolve::Evolution;
use super::tables::Tables;
use crate::buffer::{Buffer, BufferConfig, BufferKind, FlushMode};
use crate::config::{ConfigError, Element, Section};
use crate::fluentd::template::TIME_SLICE;
use crate::metrics::SinkDetail;
use crate::output::Output;
use job::LoadSettings;
use ndjson::Encoding;
use sink::LoadSink;
use std::sync::Arc;
use std::time::Duration;

/// BigQuery's load jobs per table per day ("Quotas and limits", load jobs).
pub const JOBS_PER_TABLE_PER_DAY: u64 = 1_500;

/// fluent-plugin-bigquery parameters accepted with nothing to do: bqforward always derives
/// job ids from the chunk (`prevent_duplicate_load`) and never blocks a thread on a job
/// (`use_delayed_commit`); `email` and `private_key_passphrase` belong to the P12 keys it
/// does not take (auth_method says so).
const ACCEPTED: &[&str] = &[
    "prevent_duplicate_load",
    "use_delayed_commit",
    "email",
    "private_key_passphrase",
];

/// Reads a `bigquery_load` `<match>` section into a running output. `secondary` is the
/// already-built `<secondary>`. Must be called inside a tokio runtime.
pub fn from_config(
    id: String,
    s: &Section<'_>,
    secondary: Option<Arc<dyn Output>>,
) -> Result<(BigQueryOutput, Vec<String>, Vec<String>), ConfigError> {
    let at = |e: &str| ConfigError::at(s.location(), e);
    let mut deferred = Vec::new();
    let (encoding, buffer_section) = upload_encoding(s.section("buffer")?)?;
    let (buffer_config, buffer_warnings) = BufferConfig::from_config(
        buffer_section.as_ref(),
        BufferConfig::bigquery_load_defaults(),
    )
    .unwrap_or_else(|e| {
        deferred.push(e);
        (BufferConfig::bigquery_load_defaults(), Vec::new())
    });
    if matches!(&buffer_config.kind, BufferKind::File { path } if path.as_os_str().is_empty()) {
        deferred.push(at(
            "bigquery_load buffers chunks in files by default: give <buffer> a 'path' (a directory), or @type memory",
        ));
    }
    let common = Common::read(&id, "bigquery_load", s, &buffer_config)?;
    let evolving = common.allows_field_addition();
    let mut warnings = buffer_warnings;
    warnings.extend(common.warnings);
    // That note is about insertAll's buffer defaults (one request at a time, 1 GiB of memory).
    let insert_note = super::config::buffer_defaults_note(&id, s);
    let mut notes: Vec<String> = common
        .notes
        .into_iter()
        .filter(|n| Some(n) != insert_note.as_ref())
        .collect();
    if common.names.template_suffix.is_some() {
        deferred.push(at(
            "template_suffix is insertAll's (bigquery_insert); load jobs name their table in 'table'",
        ));
    }
    if let Some(format) = s.one_of("source_format", &["json", "csv", "avro"])?
        && format != "json"
    {
        deferred.push(at(&format!(
            "source_format {format}: bqforward loads newline-delimited JSON (source_format json) only"
        )));
    }
    if let Some(format) = s.section("format")? {
        let f = Section::new(format);
        if f.type_name().is_some_and(|t| t != "json") {
            deferred.push(ConfigError::at(
                &format.location,
                "bigquery_load only takes <format> @type json",
            ));
        }
        warnings.extend(f.finish(&[])?);
    }
    // `schema_update_options` and `schema_update_types` are read (and checked) by
    // `Common::read`, as for every BigQuery output.
    let ignore_unknown_values = s.bool("ignore_unknown_values")?.unwrap_or(false);
    if evolving && ignore_unknown_values {
        deferred.push(at(
            "schema_update_options ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together: BigQuery would drop the new fields instead of adding their columns, silently",
        ));
    }
    notes.push(match encoding {
        Encoding::Gzip => format!(
            "{}: {id}: <buffer> compress gzip: each load job's NDJSON is uploaded gzipped (level 1: about 5 times fewer bytes on log rows, and 0.3-0.5 µs more CPU per row; docs/bigquery-load.md); chunks stay uncompressed in the buffer",
            s.location()
        ),
        Encoding::Plain => format!(
            "{}: {id}: load jobs upload plain NDJSON, as fluent-plugin-bigquery does; <buffer> compress gzip uploads it gzipped (about 5 times fewer bytes to send, for more CPU; docs/bigquery-load.md)",
            s.location()
        ),
    });
    if evolving {
        notes.push(format!(
            "{}: {id}: new fields become NULLABLE columns of each load job's schema (the table's with them), which BigQuery adds when the job commits (docs/schema-evolution.md)",
            s.location()
        ));
    }
    let no_schema_updates = common.schema_update_options.is_empty();
    let settings = LoadSettings {
        max_bad_records: s.int("max_bad_records")?.unwrap_or(0),
        ignore_unknown_values,
        schema_update_options: common
            .schema_update_options
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect(),
        location: common.location.clone(),
    };
    let wait_job_interval = s
        .time("wait_job_interval")?
        .unwrap_or(Duration::from_secs(3))
        .max(Duration::from_millis(10));
    let time_slice = s.str("table").is_some_and(|t| t.contains(TIME_SLICE))
        || s.array("tables")?
            .is_some_and(|t| t.iter().any(|t| t.contains(TIME_SLICE)));
    if time_slice {
        notes.push(format!(
            "{}: {id}: %{{time_slice}} (fluentd v0.12) is read as %Y%m%d, the event's day",
            s.location()
        ));
    }
    let tables = common.names.tables.len() as u64;
    warnings.extend(quota_warning(&id, s, &buffer_config, tables));
    if secondary.is_none() {
        warnings.push(format!(
            "{}: {id} has no <secondary>: rows of a load job that fails for good will be logged, counted and dropped",
            s.location()
        ));
    }
    match s.finish(ACCEPTED) {
        Ok(w) => warnings.extend(w),
        Err(e) => deferred.push(e),
    }
    ConfigError::gather(deferred)?;

    let detail = Arc::new(SinkDetail::default());
    let slow_job_warning = sink::slow_job_warning().unwrap_or_else(|e| {
        warnings.push(format!("{id}: {e}"));
        sink::SLOW_JOB_WARNING
    });
    let mut sink = LoadSink::new(
        id.clone(),
        common.connection,
        Tables::new(
            id.clone(),
            common.schema,
            common.auto_create,
            common.auto_create_dataset,
            common.location,
            Arc::clone(&detail),
        ),
        DeadLetters {
            id: id.clone(),
            secondary,
            detail: Arc::clone(&detail),
        },
        common.inject,
        common.conversion,
        settings,
        wait_job_interval,
        Arc::clone(&detail),
        encoding,
        (!no_schema_updates)
            .then(|| Evolution::new(id.clone(), common.schema_update_types, Arc::clone(&detail))),
    );
    sink.slow_job_warning = slow_job_warning;
    let location = s.location().clone();
    let buffer = Buffer::start(id.clone(), buffer_config, Arc::new(sink))
        .map_err(|e| ConfigError::at(&location, e.to_string()))?;
    let output = BigQueryOutput::from_parts(
        id,
        "bigquery_load",
        super::destination::Destinations::new(common.names, common.timekey, common.zone),
        buffer,
        detail,
    );
    Ok((output, warnings, notes))
}

/// `<buffer> compress`: fluentd compresses its chunks with it; bqforward keeps chunks as they
/// are and gzips the load job's upload instead (`text`, the default, uploads plain NDJSON as
/// fluent-plugin-bigquery does). Returns the `<buffer>` without it for the buffer's reader,
/// which would call it ignored.
fn upload_encoding(buffer: Option<&Element>) -> Result<(Encoding, Option<Element>), ConfigError> {
    let Some(buffer) = buffer else {
        return Ok((Encoding::Plain, None));
    };
    let encoding = match Section::new(buffer).one_of("compress", &["text", "gzip"])? {
        Some("gzip") => Encoding::Gzip,
        _ => Encoding::Plain,
    };
    let mut rest = buffer.clone();
    rest.params.retain(|p| p.key != "compress");
    Ok((encoding, Some(rest)))
}

/// Load jobs a day per table the flush settings make at most (`None`: no bound), counting
/// what flushes by time: a chunk per destination each `flush_interval`, or per timekey
/// period with lazy flushing; sharded `tables` share it. Full chunks add to it.
pub fn jobs_per_table_per_day(buffer: &BufferConfig, tables: u64) -> Option<u64> {
    let period = match buffer.flush_mode {
        FlushMode::Immediate => return None,
        FlushMode::Interval => buffer.flush_interval,
        FlushMode::Lazy => Duration::from_secs(buffer.timekey.map(|t| t.period)?.max(1) as u64),
    };
    let per_day = 86_400_000 / period.as_millis().max(1) as u64;
    Some(per_day.div_ceil(tables.max(1)))
}

fn quota_warning(id: &str, s: &Section<'_>, buffer: &BufferConfig, tables: u64) -> Option<String> {
    let limit = JOBS_PER_TABLE_PER_DAY;
    let what = match jobs_per_table_per_day(buffer, tables) {
        Some(n) if n > limit => format!("make up to {n} load jobs per table per day"),
        Some(_) => return None,
        None => "make a load job per emit".to_owned(),
    };
    Some(format!(
        "{}: {id}: the flush settings (flush_mode, flush_interval, timekey) {what}; BigQuery allows {limit}, and jobs beyond fail with quotaExceeded until the next day (they are retried). Flush less often (the plugin's default flush_interval is 3600s)",
        s.location()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_per_day_follow_the_flush_settings() {
        let mut b = BufferConfig::bigquery_load_defaults();
        assert_eq!(jobs_per_table_per_day(&b, 1), Some(24));
        b.flush_interval = Duration::from_secs(30);
        assert_eq!(jobs_per_table_per_day(&b, 1), Some(2880));
        assert_eq!(jobs_per_table_per_day(&b, 2), Some(1440));
        b.flush_mode = FlushMode::Immediate;
        assert_eq!(jobs_per_table_per_day(&b, 1), None);
    }
}
