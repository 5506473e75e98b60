//! `@type bigquery_storage_write`: the BigQuery Storage Write API (gRPC), configured as
//! `bigquery_insert` is (`config::Common`), plus `storage_endpoint` and `exactly_once`. Laid out
//! by role: `descriptor` (the writer schema from the table's), `encoder` (msgpack → protobuf
//! rows through `convert`), `client` (gRPC), `classify` (answers → verdicts), `tickets`
//! (exactly-once offsets kept with the chunk), `sink` (one chunk's delivery).

pub mod classify;
pub mod client;
pub mod descriptor;
pub mod encoder;
pub mod sink;
pub mod tickets;

use super::BigQueryOutput;
use super::config::Common;
use super::dead_letter::DeadLetters;
use super::destination::Destinations;
use super::evolve::{Evolution, SchemaUpdateOption};
use super::tables::{SchemaSource, Tables};
use crate::buffer::{Buffer, BufferConfig, BufferKind};
use crate::config::{ConfigError, Section};
use crate::metrics::SinkDetail;
use crate::output::Output;
use sink::{MAX_REQUEST_BYTES, RowBuffers, StorageWriteSink};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tickets::ExactlyOnce;

pub const TYPE: &str = "bigquery_storage_write";

/// fluent-plugin-bigquery parameters accepted and ignored (with a warning).
const IGNORED: &[&str] = &[
    "allow_retry_insert_errors",
    "email",
    "private_key_passphrase",
];

/// The buffer's defaults: fluent-plugin-bigquery's insert defaults, with chunks as large as
/// one AppendRows request takes comfortably (bigger requests cost less per row).
fn buffer_defaults() -> BufferConfig {
    BufferConfig {
        chunk_limit_size: 8 * 1024 * 1024,
        chunk_limit_records: None,
        ..BufferConfig::bigquery_insert_defaults()
    }
}

/// Reads the `<match>` section; must be called inside a tokio runtime (it starts the buffer).
pub fn from_config(
    id: String,
    s: &Section<'_>,
    secondary: Option<Arc<dyn Output>>,
) -> Result<(BigQueryOutput, Vec<String>, Vec<String>), ConfigError> {
    let at = |e: String| ConfigError::at(s.location(), e);
    let mut deferred = Vec::new();
    let (buffer_config, buffer_warnings) =
        BufferConfig::from_config(s.section("buffer")?, buffer_defaults()).unwrap_or_else(|e| {
            deferred.push(e);
            (buffer_defaults(), Vec::new())
        });
    let mut common = Common::read(&id, TYPE, s, &buffer_config)?;
    let evolving = common.allows_field_addition();
    if common
        .schema_update_options
        .contains(&SchemaUpdateOption::AllowFieldRelaxation)
    {
        return Err(at(format!(
            "schema_update_options ALLOW_FIELD_RELAXATION is a load-job option (bigquery_load); {TYPE} adds columns (ALLOW_FIELD_ADDITION)"
        )));
    }
    let mut warnings = buffer_warnings;
    warnings.extend(std::mem::take(&mut common.warnings));
    let mut notes = std::mem::take(&mut common.notes);
    if s.str("insert_id_field").is_some() {
        return Err(at(format!(
            "insert_id_field is meaningless with {TYPE}: the Storage Write API has no insertId de-duplication (use exactly_once true for rows that land once, or bigquery_insert)"
        )));
    }
    for key in ["add_insert_timestamp", "skip_invalid_rows"] {
        if s.str(key).is_some() {
            return Err(at(format!(
                "{key} is an insertAll parameter; {TYPE} has none"
            )));
        }
    }
    if common.names.template_suffix.is_some() {
        return Err(at(
            "template_suffix (insertAll's templateSuffix) has no Storage Write API equivalent: write to the full table name, with auto_create_table".into(),
        ));
    }
    let decorated = s.str("table").is_some_and(|t| t.contains('$'))
        || s.array("tables")?
            .is_some_and(|t| t.iter().any(|t| t.contains('$')));
    if decorated {
        notes.push(format!(
            "{}: {id}: partition decorators ($...) are dropped: the Storage Write API writes to the table, and rows land in the partition their partitioning column (or their arrival time, for ingestion-time partitioning) gives",
            s.location()
        ));
    }
    let ignore_unknown = s.bool("ignore_unknown_values")?.unwrap_or(false);
    if evolving && ignore_unknown {
        return Err(at(
            "schema_update_options ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together: the new fields of rows written before their columns exist would be dropped, silently".into(),
        ));
    }
    if evolving {
        notes.push(format!(
            "{}: {id}: new fields become NULLABLE columns (tables.get and tables.patch: the credentials need bigquery.tables.update), and the writer schema is rebuilt from the patched table; rows carrying a new column wait until the Storage Write API sees it (docs/schema-evolution.md)",
            s.location()
        ));
    }
    let exactly_once = s.bool("exactly_once")?.unwrap_or(false);
    let storage_endpoint = s
        .str("storage_endpoint")
        .filter(|e| !e.is_empty())
        .unwrap_or(client::DEFAULT_ENDPOINT)
        .trim_end_matches('/')
        .to_owned();
    if !(storage_endpoint.starts_with("http://") || storage_endpoint.starts_with("https://")) {
        return Err(at(format!(
            "storage_endpoint {storage_endpoint}: needs http:// (plaintext h2c) or https://"
        )));
    }
    let max_request_bytes = s.size("max_request_size")?.map_or(MAX_REQUEST_BYTES, |v| {
        usize::try_from(v)
            .unwrap_or(MAX_REQUEST_BYTES)
            .clamp(1024, MAX_REQUEST_BYTES)
    });
    let exactly_once = if exactly_once {
        match &buffer_config.kind {
            BufferKind::File { path } => Some(ExactlyOnce::new(path.clone(), buffer_config.fsync)),
            _ => {
                return Err(at(
                    "exactly_once true needs <buffer> @type file (the offset of each chunk's append is kept beside the chunk on disk)".into(),
                ));
            }
        }
    } else {
        None
    };
    // The writer schema is built from the table's schema: without `schema` / `schema_path`
    // it is read from the table (`fetch_schema`).
    if matches!(common.schema, SchemaSource::None) {
        common.schema = SchemaSource::Fetch {
            expire: s
                .time("schema_cache_expire")?
                .unwrap_or(Duration::from_secs(600)),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        };
        notes.push(format!(
            "{}: {id}: no schema given: the writer schema comes from each table's schema (tables.get, as fetch_schema true)",
            s.location()
        ));
    }
    if let Some(format) = s.section("format")? {
        return Err(ConfigError::at(
            &format.location,
            format!("{TYPE} writes protobuf rows and takes no <format>"),
        ));
    }
    if secondary.is_none() {
        warnings.push(format!(
            "{}: {id} has no <secondary>: rows BigQuery rejects will be logged, counted and dropped",
            s.location()
        ));
    }
    match s.finish(IGNORED) {
        Ok(w) => warnings.extend(w),
        Err(e) => deferred.push(e),
    }
    ConfigError::gather(deferred)?;

    let detail = Arc::new(SinkDetail::default());
    let sink = StorageWriteSink {
        id: id.clone(),
        connection: common.connection,
        rest: tokio::sync::OnceCell::new(),
        storage_endpoint,
        grpc: tokio::sync::OnceCell::new(),
        tables: Tables::new(
            id.clone(),
            common.schema,
            common.auto_create,
            common.auto_create_dataset,
            common.location,
            Arc::clone(&detail),
        ),
        dead_letters: DeadLetters {
            id: id.clone(),
            secondary,
            detail: Arc::clone(&detail),
        },
        inject: common.inject,
        conversion: common.conversion,
        ignore_unknown,
        max_request_bytes,
        exactly_once,
        detail: Arc::clone(&detail),
        refreshed: Mutex::new(HashMap::new()),
        evolution: evolving
            .then(|| Evolution::new(id.clone(), common.schema_update_types, Arc::clone(&detail))),
        buffers: RowBuffers::default(),
    };
    let location = s.location().clone();
    let buffer = Buffer::start(id.clone(), buffer_config, Arc::new(sink))
        .map_err(|e| ConfigError::at(&location, e.to_string()))?;
    let output = BigQueryOutput::from_parts(
        id,
        TYPE,
        Destinations::new(common.names, common.timekey, common.zone),
        buffer,
        detail,
    );
    Ok((output, warnings, notes))
}
