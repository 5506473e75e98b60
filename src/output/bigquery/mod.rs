//! `@type bigquery_insert`: fluent-plugin-bigquery's streaming output, configured the same
//! way. Events are keyed by destination table at emit, buffered, and delivered by the sink.

pub mod classify;
pub mod client;
pub mod gzip;
pub mod request;
pub mod rows;
pub mod schema;
pub mod sink;

use crate::buffer::{Buffer, BufferConfig, BufferError, Entry};
use crate::config::{ConfigError, Section};
use crate::format::Inject;
use crate::format::time::Zone;
use crate::output::{Batch, BoxFuture, Output, OutputError};
use crate::router::template::{CachedTemplate, Template};
use client::AuthMethod;
use request::{MAX_BODY_BYTES, MAX_ROWS, RequestOptions, parse_record_accessor};
use rows::Conversion;
use schema::Schema;
use sink::{AutoCreate, BigQuerySink, Connection, SchemaSource, SinkStats};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where rows go: one buffer key per destination table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableKey {
    pub project: String,
    pub dataset: String,
    /// May carry a partition decorator (`logs$20261125`).
    pub table: String,
}

impl TableKey {
    /// The table without a partition decorator.
    pub fn base_table(&self) -> &str {
        self.table.split('$').next().unwrap_or(&self.table)
    }
}

impl fmt::Display for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.project, self.dataset, self.table)
    }
}

/// Renders the destination of each event (cached per tag and second).
struct Destinations {
    project: CachedTemplate,
    dataset: CachedTemplate,
    tables: Vec<CachedTemplate>,
    next_table: usize,
    keys: HashMap<(String, String, String), Arc<TableKey>>,
    /// The last key handed out and what it was rendered from: (table template, tag, second;
    /// templates resolve no finer than the second). Events of one message nearly always
    /// share it.
    last: Option<(usize, Arc<str>, i64, Arc<TableKey>)>,
}

impl Destinations {
    fn key(
        &mut self,
        table: usize,
        tag: &Arc<str>,
        time: crate::codec::EventTime,
    ) -> &Arc<TableKey> {
        let secs = time.secs;
        let last = match self.last.take() {
            Some(last)
                if last.0 == table
                    && last.2 == secs
                    && (Arc::ptr_eq(&last.1, tag) || *last.1 == **tag) =>
            {
                last
            }
            _ => (
                table,
                Arc::clone(tag),
                secs,
                self.render_key(table, tag, time),
            ),
        };
        &self.last.insert(last).3
    }

    fn render_key(
        &mut self,
        table: usize,
        tag: &str,
        time: crate::codec::EventTime,
    ) -> Arc<TableKey> {
        let project = self.project.render(tag, time);
        let dataset = self.dataset.render(tag, time);
        let table = self.tables[table].render(tag, time);
        let lookup = (project.to_owned(), dataset.to_owned(), table.to_owned());
        if self.keys.len() > 4096 {
            self.keys.clear();
        }
        let key = self.keys.entry(lookup).or_insert_with_key(|(p, d, t)| {
            Arc::new(TableKey {
                project: p.clone(),
                dataset: d.clone(),
                table: t.clone(),
            })
        });
        Arc::clone(key)
    }
}

pub struct BigQueryOutput {
    id: String,
    destinations: Mutex<Destinations>,
    buffer: Arc<Buffer<TableKey>>,
    pub stats: Arc<SinkStats>,
}

/// fluent-plugin-bigquery parameters accepted and ignored (with a warning).
const IGNORED: &[&str] = &[
    "location",
    "allow_retry_insert_errors",
    "email",
    "private_key_passphrase",
];

impl BigQueryOutput {
    /// Reads the `<match>` section. `secondary` is the already-built `<secondary>` output.
    /// Must be called inside a tokio runtime (it starts the buffer's flush workers).
    pub fn from_config(
        id: String,
        s: &Section<'_>,
        secondary: Option<Arc<dyn Output>>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let at = |e: String| ConfigError::at(s.location(), e);
        let mut warnings = Vec::new();
        let (buffer_config, w) = BufferConfig::from_config(
            s.section("buffer")?,
            BufferConfig::bigquery_insert_defaults(),
        )?;
        warnings.extend(w);
        let zone = if buffer_config.timekey_use_utc {
            Zone::Utc
        } else {
            Zone::Local
        };
        let template = |key: &str| -> Result<CachedTemplate, ConfigError> {
            let text = s.str(key).ok_or_else(|| {
                ConfigError::at(s.location(), format!("bigquery_insert needs '{key}'"))
            })?;
            Template::parse(text, zone)
                .map(CachedTemplate::new)
                .map_err(at)
        };
        let project = template("project")?;
        let dataset = template("dataset")?;
        let tables = match (s.str("table"), s.array("tables")?) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(at(
                    "bigquery_insert needs exactly one of 'table' and 'tables'".into(),
                ));
            }
            (Some(table), None) => vec![table.to_owned()],
            (None, Some(tables)) if !tables.is_empty() => tables,
            (None, Some(_)) => return Err(at("'tables' is empty".into())),
        };
        let tables = tables
            .iter()
            .map(|t| {
                Template::parse(t, zone)
                    .map(CachedTemplate::new)
                    .map_err(at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let template_suffix = s.str("template_suffix").map(str::to_owned);
        if template_suffix
            .as_deref()
            .is_some_and(|t| t.contains("${") || t.contains('%'))
        {
            return Err(at(
                "template_suffix with placeholders is not supported yet; use a fixed suffix".into(),
            ));
        }

        let connection = Connection {
            auth: auth_method(s)?,
            endpoint: s
                .str("endpoint")
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
            request_timeout: s.time("request_timeout_sec")?,
            open_timeout: s
                .time("request_open_timeout_sec")?
                .unwrap_or(Duration::from_secs(60)),
        };
        let schema = read_schema(s)?;
        let fetch = s.bool("fetch_schema")?.unwrap_or(false);
        let schema_source = match (&schema, fetch) {
            (Some(_), true) => {
                return Err(at("use one of schema / schema_path and fetch_schema".into()));
            }
            (Some(schema), false) => SchemaSource::Static(Arc::clone(schema)),
            (None, true) => SchemaSource::Fetch {
                table: s.str("fetch_schema_table").map(str::to_owned),
                expire: s
                    .time("schema_cache_expire")?
                    .unwrap_or(Duration::from_secs(600)),
                cache: tokio::sync::Mutex::new(HashMap::new()),
            },
            (None, false) => SchemaSource::None,
        };
        let auto_create = if s.bool("auto_create_table")?.unwrap_or(false) {
            let Some(schema) = schema.clone() else {
                return Err(at("auto_create_table needs schema or schema_path".into()));
            };
            Some(AutoCreate {
                schema,
                extra: table_options(s)?,
            })
        } else {
            let _ = table_options(s)?;
            None
        };
        let conversion = match s.one_of("type_conversion", &["strict", "compat"])? {
            Some("compat") => Conversion::Compat,
            _ => Conversion::Strict,
        };
        let insert_id_field = s
            .str("insert_id_field")
            .map(parse_record_accessor)
            .transpose()
            .map_err(at)?;
        let options = RequestOptions {
            skip_invalid_rows: s.bool("skip_invalid_rows")?.unwrap_or(false),
            ignore_unknown_values: s.bool("ignore_unknown_values")?.unwrap_or(false),
            template_suffix,
            max_rows: MAX_ROWS,
            max_body_bytes: s.size("max_request_size")?.map_or(MAX_BODY_BYTES, |v| {
                usize::try_from(v).unwrap_or(MAX_BODY_BYTES)
            }),
            insert_id_field,
            conversion,
            add_insert_timestamp: s.str("add_insert_timestamp").map(str::to_owned),
        };
        let (inject, w) = Inject::from_config(s.section("inject")?)?;
        warnings.extend(w);
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
        warnings.extend(s.finish(IGNORED)?);

        let stats = Arc::new(SinkStats::default());
        let sink = BigQuerySink {
            id: id.clone(),
            connection,
            client: tokio::sync::OnceCell::new(),
            schema: schema_source,
            inject,
            options,
            auto_create,
            created: Mutex::new(HashMap::new()),
            secondary,
            stats: Arc::clone(&stats),
        };
        let location = s.location().clone();
        let buffer = Buffer::start(id.clone(), buffer_config, Arc::new(sink))
            .map_err(|e| ConfigError::at(&location, e))?;
        let output = Self {
            id,
            destinations: Mutex::new(Destinations {
                project,
                dataset,
                tables,
                next_table: 0,
                keys: HashMap::new(),
                last: None,
            }),
            buffer,
            stats,
        };
        Ok((output, warnings))
    }

    pub fn buffer(&self) -> &Arc<Buffer<TableKey>> {
        &self.buffer
    }

    /// Groups a batch's events by destination table, in order.
    fn group(&self, batch: Batch) -> Vec<(Arc<TableKey>, Vec<Entry>)> {
        let mut groups: Vec<(Arc<TableKey>, Vec<Entry>)> = Vec::new();
        let Ok(mut dest) = self.destinations.lock() else {
            return groups;
        };
        // With `tables`, batches take the tables in turn (the plugin rotates per chunk).
        let table = dest.next_table % dest.tables.len();
        dest.next_table = dest.next_table.wrapping_add(1);
        let mut events = batch.events.into_iter();
        while let Some(event) = events.next() {
            let key = dest.key(table, &batch.tag, event.time);
            let entry = Entry {
                tag: Arc::clone(&batch.tag),
                event,
            };
            match groups.last_mut() {
                Some((last, entries)) if Arc::ptr_eq(last, key) => entries.push(entry),
                _ => {
                    // Room for the rest of the batch: usually all of it goes to one table.
                    let mut entries = Vec::with_capacity(events.len() + 1);
                    entries.push(entry);
                    groups.push((Arc::clone(key), entries));
                }
            }
        }
        groups
    }
}

fn auth_method(s: &Section<'_>) -> Result<AuthMethod, ConfigError> {
    let method = s.one_of(
        "auth_method",
        &[
            "private_key",
            "compute_engine",
            "json_key",
            "application_default",
            "none",
        ],
    )?;
    Ok(match method.unwrap_or("private_key") {
        "none" => AuthMethod::None,
        "json_key" => {
            AuthMethod::JsonKey(s.str("json_key").map(str::to_owned).ok_or_else(|| {
                ConfigError::at(
                    s.location(),
                    "auth_method json_key needs 'json_key' (a key file path or the key JSON)",
                )
            })?)
        }
        "application_default" => AuthMethod::ApplicationDefault,
        "compute_engine" => AuthMethod::ComputeEngine,
        _ => {
            let _ = s.str("private_key_path");
            return Err(ConfigError::at(
                s.location(),
                "auth_method private_key (P12 keys, the plugin's default) is not supported: use json_key, application_default or compute_engine",
            ));
        }
    })
}

fn read_schema(s: &Section<'_>) -> Result<Option<Arc<Schema>>, ConfigError> {
    let at = |e: String| ConfigError::at(s.location(), e);
    let json = match (s.str("schema"), s.str("schema_path")) {
        (Some(_), Some(_)) => return Err(at("use one of schema and schema_path".into())),
        (Some(inline), None) => {
            serde_json::from_str(inline).map_err(|e| at(format!("schema is not JSON: {e}")))?
        }
        (None, Some(path)) => {
            if path.contains("${") {
                return Err(at(
                    "schema_path with placeholders is not supported yet".into()
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| at(format!("schema_path {path}: {e}")))?;
            serde_json::from_str(&text)
                .map_err(|e| at(format!("schema_path {path} is not JSON: {e}")))?
        }
        (None, None) => return Ok(None),
    };
    Schema::from_json(&json)
        .map(|schema| Some(Arc::new(schema)))
        .map_err(at)
}

/// Partitioning and clustering for tables.insert, as the plugin sends them.
fn table_options(
    s: &Section<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let mut extra = serde_json::Map::new();
    if let Some(kind) = s.one_of("time_partitioning_type", &["day", "hour"])? {
        let mut partitioning = serde_json::json!({"type": kind.to_uppercase()});
        if let Some(field) = s.str("time_partitioning_field") {
            partitioning["field"] = field.into();
        }
        if let Some(expiration) = s.time("time_partitioning_expiration")? {
            partitioning["expirationMs"] = expiration.as_millis().to_string().into();
        }
        extra.insert("timePartitioning".into(), partitioning);
    }
    if let Some(true) = s.bool("require_partition_filter")? {
        extra.insert("requirePartitionFilter".into(), true.into());
    }
    if let Some(fields) = s.array("clustering_fields")? {
        extra.insert("clustering".into(), serde_json::json!({ "fields": fields }));
    }
    Ok(extra)
}

impl Output for BigQueryOutput {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        "bigquery_insert"
    }

    fn emit(&self, batch: Batch) -> BoxFuture<'_, Result<(), OutputError>> {
        Box::pin(async move {
            let groups = self.group(batch);
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
