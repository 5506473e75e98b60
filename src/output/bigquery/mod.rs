//! The BigQuery outputs, laid out by role as Vector's GCP sinks are: `config` (the plugin's
//! shared parameters), `destination` (names per event, the buffer key), `convert` (record →
//! row decisions) and its encoders (`rows`: JSON), `request_builder` (insertAll bodies),
//! `service` (the REST API), `classify` (answers → verdicts), `tables` (schemas, creating
//! tables and datasets), `dead_letter`, and `sink` (one chunk's delivery). `load/` is
//! `@type bigquery_load`: the same destinations, buffer and conversion, a chunk per load job.
//!
//! `@type bigquery_insert`: fluent-plugin-bigquery's streaming output, configured the same
//! way. Events are keyed by destination at emit, buffered, and delivered by the sink.
//! `@type bigquery_storage_write` (`storage_write/`) is the same output with the Storage
//! Write API's sink.

pub mod classify;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod dead_letter;
pub mod destination;
pub mod evolve;
pub mod gzip;
pub mod load;
pub mod request_builder;
pub mod rows;
pub mod schema;
pub mod service;
pub mod sink;
pub mod storage_write;
pub mod tables;

use crate::buffer::{Buffer, BufferConfig, BufferError};
use crate::config::{ConfigError, Section};
use crate::event::{Batch, BoxFuture};
use crate::fluentd::accessor::KeyPath;
use crate::metrics::SinkDetail;
use crate::output::{Output, OutputError};
use config::Common;
use dead_letter::DeadLetters;
use destination::Destinations;
pub use destination::TableKey;
use request_builder::{MAX_BODY_BYTES, MAX_ROWS, RequestOptions};
use sink::BigQuerySink;
use std::sync::{Arc, Mutex};
use tables::Tables;

pub struct BigQueryOutput {
    id: String,
    /// `bigquery_insert`, `bigquery_storage_write` or `bigquery_load`: the same buffer and destinations, another sink.
    type_name: &'static str,
    destinations: Mutex<Destinations>,
    buffer: Arc<Buffer<TableKey>>,
    pub detail: Arc<SinkDetail>,
}

/// fluent-plugin-bigquery parameters accepted and ignored (with a warning).
const IGNORED: &[&str] = &["allow_retry_insert_errors"];

impl BigQueryOutput {
    /// Reads the `<match>` section. `secondary` is the already-built `<secondary>` output.
    /// Must be called inside a tokio runtime (it starts the buffer's flush workers).
    pub fn from_config(
        id: String,
        s: &Section<'_>,
        secondary: Option<Arc<dyn Output>>,
    ) -> Result<(Self, Vec<String>, Vec<String>), ConfigError> {
        let at = |e: String| ConfigError::at(s.location(), e);
        // A bad <buffer> is reported together with this section's own unknown parameters.
        let mut deferred = Vec::new();
        let (buffer_config, buffer_warnings) = BufferConfig::from_config(
            s.section("buffer")?,
            BufferConfig::bigquery_insert_defaults(),
        )
        .unwrap_or_else(|e| {
            deferred.push(e);
            (BufferConfig::bigquery_insert_defaults(), Vec::new())
        });
        let mut common = Common::read(&id, "bigquery_insert", s, &buffer_config)?;
        let mut warnings = buffer_warnings;
        let evolving = common.allows_field_addition();
        warnings.extend(std::mem::take(&mut common.warnings));
        if common
            .schema_update_options
            .contains(&evolve::SchemaUpdateOption::AllowFieldRelaxation)
        {
            return Err(at(
                "schema_update_options ALLOW_FIELD_RELAXATION is a load-job option (bigquery_load); bigquery_insert adds columns (ALLOW_FIELD_ADDITION)".into(),
            ));
        }
        let ignore_unknown_values = s.bool("ignore_unknown_values")?.unwrap_or(false);
        if evolving && ignore_unknown_values {
            return Err(at(
                "schema_update_options ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together: BigQuery would drop the new fields of rows sent before it sees their columns, silently".into(),
            ));
        }
        let mut notes = common.notes;
        if evolving {
            notes.push(format!(
                "{}: {id}: new fields become NULLABLE columns (tables.get and tables.patch: the credentials need bigquery.tables.update); rows carrying a new column wait until insertAll sees it (docs/schema-evolution.md)",
                s.location()
            ));
        }
        let insert_id_field = s
            .str("insert_id_field")
            .map(KeyPath::parse)
            .transpose()
            .map_err(at)?;
        let options = RequestOptions {
            skip_invalid_rows: s.bool("skip_invalid_rows")?.unwrap_or(false),
            ignore_unknown_values,
            max_rows: MAX_ROWS,
            max_body_bytes: s.size("max_request_size")?.map_or(MAX_BODY_BYTES, |v| {
                usize::try_from(v).unwrap_or(MAX_BODY_BYTES)
            }),
            insert_id_field,
            conversion: common.conversion,
            add_insert_timestamp: s.str("add_insert_timestamp").map(str::to_owned),
            drop_untyped_unknown: evolving,
        };
        if let Some(format) = s.section("format")? {
            let f = Section::new(format);
            if f.type_name().is_some_and(|t| t != "json") {
                return Err(ConfigError::at(
                    &format.location,
                    "bigquery_insert only takes <format> @type json",
                ));
            }
            warnings.extend(f.finish(&[])?);
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
        let sink = BigQuerySink {
            id: id.clone(),
            connection: common.connection,
            client: tokio::sync::OnceCell::new(),
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
            evolution: evolving.then(|| {
                evolve::Evolution::new(id.clone(), common.schema_update_types, Arc::clone(&detail))
            }),
            options,
            detail: Arc::clone(&detail),
        };
        let location = s.location().clone();
        let buffer = Buffer::start(id.clone(), buffer_config, Arc::new(sink))
            .map_err(|e| ConfigError::at(&location, e.to_string()))?;
        let output = Self::from_parts(
            id,
            "bigquery_insert",
            Destinations::new(common.names, common.timekey, common.zone),
            buffer,
            detail,
        );
        Ok((output, warnings, notes))
    }

    /// An output of `type_name` whose buffer delivers through its own sink.
    pub fn from_parts(
        id: String,
        type_name: &'static str,
        destinations: Destinations,
        buffer: Arc<Buffer<TableKey>>,
        detail: Arc<SinkDetail>,
    ) -> Self {
        Self {
            id,
            type_name,
            destinations: Mutex::new(destinations),
            buffer,
            detail,
        }
    }

    pub fn buffer(&self) -> &Arc<Buffer<TableKey>> {
        &self.buffer
    }
}

impl Output for BigQueryOutput {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(async move {
            let groups = match self.destinations.lock() {
                Ok(mut destinations) => destinations.group(batch),
                Err(_) => Vec::new(),
            };
            self.buffer.append(groups).await.map_err(|err| match err {
                BufferError::Overflow(_) => OutputError::Refused {
                    output: self.id.clone(),
                    detail: err.to_string(),
                },
                BufferError::Closed => OutputError::Closed(self.id.clone()),
                BufferError::Store(_) => OutputError::Refused {
                    output: self.id.clone(),
                    detail: err.to_string(),
                },
            })
        })
    }

    fn shutdown(&self, deadline: std::time::Instant) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(async move {
            let undelivered = self.buffer.shutdown(deadline).await;
            if undelivered > 0 {
                tracing::error!(output = %self.id, rows = undelivered, "rows neither delivered nor kept on disk at shutdown (dead-lettered where a <secondary> exists)");
            }
            Ok(())
        })
    }
}
