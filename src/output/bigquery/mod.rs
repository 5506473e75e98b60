//! `@type bigquery_insert`: fluent-plugin-bigquery's streaming output, configured the same
//! way. Events are keyed by destination table at emit, buffered, and delivered by the sink.

pub mod classify;
pub mod client;
pub mod convert;
pub mod gzip;
pub mod request;
pub mod rows;
pub mod schema;
pub mod sink;

use crate::buffer::{Buffer, BufferConfig, BufferError, Entry};
use crate::config::{ConfigError, Section};
use crate::event::{Batch, BoxFuture};
use crate::fluentd::accessor::KeyPath;
use crate::fluentd::template::Template;
use crate::format::Inject;
use crate::format::time::Zone;
use crate::metrics::SinkDetail;
use crate::output::{Output, OutputError};
use client::AuthMethod;
use request::{MAX_BODY_BYTES, MAX_ROWS, RequestOptions};
use rows::Conversion;
use schema::Schema;
use sink::{AutoCreate, BigQuerySink, Connection, SchemaSource};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where rows go: one buffer key per destination. Besides the table, what placeholders
/// render per event and the delivery needs (a `template_suffix`, a `schema_path` or
/// `fetch_schema_table` with placeholders) is part of the key, so a chunk's rows share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableKey {
    pub project: String,
    pub dataset: String,
    /// May carry a partition decorator (`logs$20261125`).
    pub table: String,
    /// insertAll's `templateSuffix`: rows land in `table` + suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_suffix: Option<String>,
    /// `schema_path` with placeholders, rendered (a fixed path is read at start-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_path: Option<String>,
    /// `fetch_schema_table`, rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_table: Option<String>,
}

impl TableKey {
    /// The table without a partition decorator.
    pub fn base_table(&self) -> &str {
        self.table.split('$').next().unwrap_or(&self.table)
    }

    /// Why BigQuery cannot take rows for this destination, when a name rendered from a tag
    /// or a record is not a valid one (such rows are dead-lettered, never retried).
    pub fn invalid(&self) -> Option<String> {
        let (table, decorator) = match self.table.split_once('$') {
            Some((t, d)) => (t, Some(d)),
            None => (self.table.as_str(), None),
        };
        let suffixed = format!("{table}{}", self.template_suffix.as_deref().unwrap_or(""));
        // BigQuery's rules ("Table naming", "Dataset naming"); non-ASCII letters are left to
        // BigQuery to judge.
        let name_ok = |name: &str, extra: &[u8]| {
            !name.is_empty()
                && name.len() <= 1024
                && name.chars().all(|c| {
                    !c.is_control()
                        && (!c.is_ascii()
                            || c.is_ascii_alphanumeric()
                            || extra.contains(&(c as u8)))
                })
        };
        if !name_ok(&self.project, b"-_.:") {
            return Some(format!("invalid project id '{}'", self.project));
        }
        if !name_ok(&self.dataset, b"_") {
            return Some(format!(
                "invalid dataset id '{}' (letters, digits and underscores)",
                self.dataset
            ));
        }
        if !name_ok(&suffixed, b"_- ") {
            return Some(format!(
                "invalid table id '{suffixed}' (letters, digits, underscores, dashes, spaces)"
            ));
        }
        if let Some(d) = decorator.filter(|d| !name_ok(d, b"_")) {
            return Some(format!("invalid partition decorator '${d}'"));
        }
        if let Some(path) = &self.schema_path
            && std::path::Path::new(path)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Some(format!("schema_path '{path}' leaves its directory ('..')"));
        }
        None
    }
}

impl fmt::Display for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.project, self.dataset, self.table)
    }
}

/// The configured names, each a template (fluentd's placeholders).
struct Names {
    project: Template,
    dataset: Template,
    tables: Vec<Template>,
    template_suffix: Option<Template>,
    /// Only when the path has placeholders.
    schema_path: Option<Template>,
    schema_table: Option<Template>,
}

impl Names {
    fn all(&self) -> impl Iterator<Item = &Template> {
        [&self.project, &self.dataset]
            .into_iter()
            .chain(&self.tables)
            .chain(&self.template_suffix)
            .chain(&self.schema_path)
            .chain(&self.schema_table)
    }
}

/// The last destination handed out and what it was rendered from.
struct Last {
    table: usize,
    tag: Arc<str>,
    secs: i64,
    values: Vec<u8>,
    key: Arc<TableKey>,
}

/// Renders the destination of each event. Names change only with the tag, the second (cut
/// to `timekey` with a `time` chunk key) and the record values placeholders read, so the
/// last destination is reused while those stay the same (nearly always within a message)
/// and others are remembered by what they were rendered from.
struct Destinations {
    names: Names,
    /// Record keys any name reads (`${KEY}`, `${$.a.b}`).
    keys: Vec<KeyPath>,
    uses_time: bool,
    timekey: Option<i64>,
    zone: Zone,
    next_table: usize,
    /// The current event's values of `keys`, msgpack back to back (self-delimiting).
    values: Vec<u8>,
    /// The last second cut to its timekey: (second, start of its period).
    cut: (i64, i64),
    last: Option<Last>,
    seen: HashMap<Rendered, Arc<TableKey>>,
}

/// What a destination was rendered from: table index, tag, second, record values.
type Rendered = (usize, Arc<str>, i64, Box<[u8]>);

/// Marks a missing key among the values (a byte msgpack never uses).
const MISSING: u8 = 0xc1;
const MAX_SEEN: usize = 4096;

impl Destinations {
    fn new(names: Names, timekey: Option<i64>, zone: Zone) -> Self {
        let mut keys: Vec<KeyPath> = Vec::new();
        for key in names.all().flat_map(Template::keys) {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        let uses_time = names.all().any(Template::has_time);
        Self {
            names,
            keys,
            uses_time,
            timekey,
            zone,
            next_table: 0,
            values: Vec::new(),
            cut: (i64::MIN, 0),
            last: None,
            seen: HashMap::new(),
        }
    }

    /// The second names are rendered for: the event's, cut to its timekey period.
    fn second(&mut self, secs: i64) -> i64 {
        let Some(period) = self.timekey.filter(|_| self.uses_time) else {
            return if self.uses_time { secs } else { 0 };
        };
        if self.cut.0 != secs {
            self.cut = (secs, self.zone.timekey(secs, period));
        }
        self.cut.1
    }

    fn key(&mut self, table: usize, tag: &Arc<str>, event: &crate::event::Event) -> &Arc<TableKey> {
        let secs = self.second(event.time.secs);
        self.values.clear();
        for key in &self.keys {
            match key.get(&event.record) {
                Some(value) => self.values.extend_from_slice(value),
                None => self.values.push(MISSING),
            }
        }
        let last = match self.last.take() {
            Some(last)
                if last.table == table
                    && last.secs == secs
                    && (Arc::ptr_eq(&last.tag, tag) || *last.tag == **tag)
                    && last.values == self.values =>
            {
                last
            }
            other => {
                let key = self.lookup(table, tag, secs, &event.record);
                let mut values = other.map(|last| last.values).unwrap_or_default();
                values.clear();
                values.extend_from_slice(&self.values);
                Last {
                    table,
                    tag: Arc::clone(tag),
                    secs,
                    values,
                    key,
                }
            }
        };
        &self.last.insert(last).key
    }

    fn lookup(&mut self, table: usize, tag: &Arc<str>, secs: i64, record: &[u8]) -> Arc<TableKey> {
        let seen = (table, Arc::clone(tag), secs, Box::from(&self.values[..]));
        if let Some(key) = self.seen.get(&seen) {
            return Arc::clone(key);
        }
        let time = crate::event::EventTime::new(secs, 0);
        let render = |t: &Template| t.render(tag, time, record);
        let n = &self.names;
        let key = Arc::new(TableKey {
            project: render(&n.project),
            dataset: render(&n.dataset),
            table: render(&n.tables[table]),
            template_suffix: n.template_suffix.as_ref().map(render),
            schema_path: n.schema_path.as_ref().map(render),
            schema_table: n.schema_table.as_ref().map(render),
        });
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(seen, Arc::clone(&key));
        key
    }
}

pub struct BigQueryOutput {
    id: String,
    destinations: Mutex<Destinations>,
    buffer: Arc<Buffer<TableKey>>,
    pub detail: Arc<SinkDetail>,
}

/// fluent-plugin-bigquery parameters accepted and ignored (with a warning).
const IGNORED: &[&str] = &[
    "allow_retry_insert_errors",
    "email",
    "private_key_passphrase",
];

/// A note for `check` and the start-up log when `<buffer>` keeps fluent-plugin-bigquery's
/// defaults that bound throughput and let memory grow: one flush thread (one insertAll
/// request in flight) and `total_limit_size 1g` (docs/performance.md measures both).
pub fn buffer_defaults_note(id: &str, s: &Section<'_>) -> Option<String> {
    let buffer = s.section("buffer").ok().flatten();
    let given = |key: &str| buffer.is_some_and(|b| b.params.iter().any(|p| p.key == key));
    let defaults: Vec<&str> = [
        (
            "flush_thread_count",
            "flush_thread_count 1 (one insertAll request at a time)",
        ),
        (
            "total_limit_size",
            "total_limit_size 1g (a backlog may hold 1 GiB of memory)",
        ),
    ]
    .into_iter()
    .filter(|(key, _)| !given(key))
    .map(|(_, text)| text)
    .collect();
    if defaults.is_empty() {
        return None;
    }
    Some(format!(
        "{}: {id}: <buffer> keeps the plugin's default {}; for throughput and bounded memory set flush_thread_count 4 (or more), total_limit_size 64m (what the memory allows) and overflow_action block (docs/performance.md)",
        s.location(),
        defaults.join(" and ")
    ))
}

impl BigQueryOutput {
    /// Reads the `<match>` section. `secondary` is the already-built `<secondary>` output.
    /// Must be called inside a tokio runtime (it starts the buffer's flush workers).
    pub fn from_config(
        id: String,
        s: &Section<'_>,
        secondary: Option<Arc<dyn Output>>,
    ) -> Result<(Self, Vec<String>, Vec<String>), ConfigError> {
        let at = |e: String| ConfigError::at(s.location(), e);
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        // A bad <buffer> is reported together with this section's own unknown parameters.
        let mut deferred = Vec::new();
        let (buffer_config, w) = BufferConfig::from_config(
            s.section("buffer")?,
            BufferConfig::bigquery_insert_defaults(),
        )
        .unwrap_or_else(|e| {
            deferred.push(e);
            (BufferConfig::bigquery_insert_defaults(), Vec::new())
        });
        warnings.extend(w);
        let timekey = buffer_config.timekey.map(|t| t.period);
        let zone = buffer_config.time_zone;
        let name = |key: &str, text: &str| -> Result<Template, ConfigError> {
            Template::parse(text, zone).map_err(|e| at(format!("{key}: {e}")))
        };
        let required = |key: &str| -> Result<Template, ConfigError> {
            let text = s
                .str(key)
                .ok_or_else(|| s.missing(key, "bigquery_insert"))?;
            name(key, text)
        };
        let project = required("project")?;
        let dataset = required("dataset")?;
        let tables = match (s.str("table"), s.array("tables")?) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "bigquery_insert needs exactly one of 'table' and 'tables'".into(),
                ));
            }
            (None, None) => return Err(s.missing("table", "bigquery_insert")),
            (Some(table), None) => vec![table.to_owned()],
            (None, Some(tables)) if !tables.is_empty() => tables,
            (None, Some(_)) => return Err(at("'tables' is empty".into())),
        };
        let tables = tables
            .iter()
            .map(|t| name("table", t))
            .collect::<Result<Vec<_>, _>>()?;
        let optional = |key: &str| s.str(key).map(|text| name(key, text)).transpose();
        let template_suffix = optional("template_suffix")?;
        let schema_table = optional("fetch_schema_table")?;
        let schema_path = optional("schema_path")?.filter(|t| !t.is_constant());
        let names = Names {
            project,
            dataset,
            tables,
            template_suffix,
            schema_path,
            schema_table,
        };
        notes.extend(placeholder_notes(&names, &buffer_config, s));
        notes.extend(buffer_defaults_note(&id, s));

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
        let schema = read_schema(s, names.schema_path.is_some())?;
        let fetch = s.bool("fetch_schema")?.unwrap_or(false);
        let templated_path = names.schema_path.is_some();
        let schema_source = match (&schema, templated_path, fetch) {
            (Some(_), _, true) | (_, true, true) => {
                return Err(at("use one of schema / schema_path and fetch_schema".into()));
            }
            (Some(schema), _, false) => SchemaSource::Static(Arc::clone(schema)),
            (None, true, false) => SchemaSource::Files(Mutex::new(HashMap::new())),
            (None, false, true) => SchemaSource::Fetch {
                expire: s
                    .time("schema_cache_expire")?
                    .unwrap_or(Duration::from_secs(600)),
                cache: tokio::sync::Mutex::new(HashMap::new()),
            },
            (None, false, false) => SchemaSource::None,
        };
        let auto_create = if s.bool("auto_create_table")?.unwrap_or(false) {
            if schema.is_none() && !templated_path {
                return Err(at("auto_create_table needs schema or schema_path".into()));
            }
            Some(AutoCreate {
                extra: table_options(s)?,
            })
        } else {
            let _ = table_options(s)?;
            None
        };
        // bqforward's own: create a missing dataset (in `location`, the plugin's old
        // parameter, when set) instead of holding rows until someone does.
        let auto_create_dataset = s.bool("auto_create_dataset")?.unwrap_or(false);
        let location = s.str("location").map(str::to_owned);
        let conversion = match s.one_of("type_conversion", &["strict", "compat"])? {
            Some("compat") => Conversion::Compat,
            _ => Conversion::Strict,
        };
        let insert_id_field = s
            .str("insert_id_field")
            .map(KeyPath::parse)
            .transpose()
            .map_err(at)?;
        let options = RequestOptions {
            skip_invalid_rows: s.bool("skip_invalid_rows")?.unwrap_or(false),
            ignore_unknown_values: s.bool("ignore_unknown_values")?.unwrap_or(false),
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
        match s.finish(IGNORED) {
            Ok(w) => warnings.extend(w),
            Err(e) => deferred.push(e),
        }
        ConfigError::gather(deferred)?;

        let detail = Arc::new(SinkDetail::default());
        let sink = BigQuerySink {
            id: id.clone(),
            connection,
            client: tokio::sync::OnceCell::new(),
            schema: schema_source,
            inject,
            options,
            auto_create,
            auto_create_dataset,
            location,
            created: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            secondary,
            detail: Arc::clone(&detail),
        };
        let location = s.location().clone();
        let buffer = Buffer::start(id.clone(), buffer_config, Arc::new(sink))
            .map_err(|e| ConfigError::at(&location, e.to_string()))?;
        let output = Self {
            id,
            destinations: Mutex::new(Destinations::new(names, timekey, zone)),
            buffer,
            detail,
        };
        Ok((output, warnings, notes))
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
        let table = dest.next_table % dest.names.tables.len();
        dest.next_table = dest.next_table.wrapping_add(1);
        let mut events = batch.events.into_iter();
        while let Some(event) = events.next() {
            let key = dest.key(table, &batch.tag, &event);
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
    // The plugin declares the key parameters for every auth_method and reads only the chosen
    // method's, so a config may set json_key "#{ENV['BIGQUERY_JSON_KEY']}" and choose the
    // method by environment (the image's deploy/config/bqforward.conf does).
    let json_key = s.str("json_key");
    let _ = s.str("private_key_path");
    Ok(match method.unwrap_or("private_key") {
        "none" => AuthMethod::None,
        "json_key" => AuthMethod::JsonKey(json_key.map(str::to_owned).ok_or_else(|| {
            ConfigError::at(
                s.location(),
                "auth_method json_key needs 'json_key' (a key file path or the key JSON)",
            )
        })?),
        "application_default" => AuthMethod::ApplicationDefault,
        "compute_engine" => AuthMethod::ComputeEngine,
        _ => {
            return Err(ConfigError::at(
                s.location(),
                "auth_method private_key (P12 keys, the plugin's default) is not supported: use json_key, application_default or compute_engine",
            ));
        }
    })
}

/// `schema` or a fixed `schema_path`, read now; a `schema_path` with placeholders is read
/// per destination when rows go out (`templated`).
fn read_schema(s: &Section<'_>, templated: bool) -> Result<Option<Arc<Schema>>, ConfigError> {
    let at = |e: String| ConfigError::at(s.location(), e);
    let schema = match (s.str("schema"), s.str("schema_path")) {
        (Some(_), Some(_)) => return Err(at("use one of schema and schema_path".into())),
        (Some(inline), None) => {
            let json =
                serde_json::from_str(inline).map_err(|e| at(format!("schema is not JSON: {e}")))?;
            Schema::from_json(&json).map_err(at)?
        }
        (None, Some(_)) if templated => return Ok(None),
        (None, Some(path)) => Schema::from_file(path).map_err(at)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::new(schema)))
}

/// For `check`: how the chunk keys and placeholders are used, and where fluentd would have
/// asked for a chunk key that bqforward does without.
fn placeholder_notes(names: &Names, buffer: &BufferConfig, s: &Section<'_>) -> Vec<String> {
    let mut notes: Vec<String> = buffer
        .describe_chunk_keys()
        .map(|d| format!("{}: {d}", s.location()))
        .into_iter()
        .collect();
    let keys = &buffer.chunk_keys;
    let mut unkeyed: Vec<String> = Vec::new();
    for template in names.all() {
        if template.has_tag() && !keys.tag {
            unkeyed.push("tag".into());
        }
        if template.has_time() && !keys.time {
            unkeyed.push("time".into());
        }
        for key in template.keys() {
            let text = key.to_string();
            if !keys.record.contains(&text) {
                unkeyed.push(text);
            }
        }
    }
    unkeyed.dedup();
    if !unkeyed.is_empty() {
        unkeyed.sort();
        unkeyed.dedup();
        notes.push(format!(
            "{}: placeholders read {} without <buffer {}>: fluentd would refuse this config; bqforward renders them per event (strftime from the event time)",
            s.location(),
            unkeyed.join(", "),
            unkeyed.join(",")
        ));
    }
    notes
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
