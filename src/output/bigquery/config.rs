//! fluent-plugin-bigquery's parameters its outputs share (`bigquery_insert` today; the Storage
//! Write and load-job outputs read the same): destination names with placeholders,
//! credentials and endpoint, the schema and what creates tables and datasets, `<inject>`,
//! type conversion. Read once at start-up into typed settings; each output reads its own
//! parameters beside them and finishes the section.

use super::convert::Conversion;
use super::credentials::{AuthMethod, Credentials, GOOGLE_P12_PASSWORD};
use super::destination::Names;
use super::evolve::{SchemaUpdateOption, TypeRules};
use super::schema::Schema;
use super::service::Connection;
use super::tables::{AutoCreate, SchemaSource};
use crate::buffer::BufferConfig;
use crate::config::{ConfigError, Section};
use crate::fluentd::template::Template;
use crate::format::Inject;
use crate::format::time::Zone;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every BigQuery output reads the same way.
pub struct Common {
    pub names: Names,
    /// Names' strftime parts: the event time cut to this period (seconds), in `zone`.
    pub timekey: Option<i64>,
    pub zone: Zone,
    pub connection: Connection,
    pub schema: SchemaSource,
    pub auto_create: Option<AutoCreate>,
    /// `auto_create_dataset`: create a missing dataset (in `location`, when set).
    pub auto_create_dataset: bool,
    pub location: Option<String>,
    pub conversion: Conversion,
    pub inject: Inject,
    /// `schema_update_options`: as the plugin's load output names them; each output says
    /// which it supports (`bigquery_insert`: ALLOW_FIELD_ADDITION, see `evolve`).
    pub schema_update_options: Vec<SchemaUpdateOption>,
    /// `schema_update_types`: the column types of new fields by path pattern.
    pub schema_update_types: TypeRules,
    pub warnings: Vec<String>,
    /// Worth saying at start-up (`check`), not a problem.
    pub notes: Vec<String>,
}

impl Common {
    /// Reads the shared parameters of `<match>` section `s` for output `id` of type `plugin`,
    /// whose buffer settings are `buffer` (chunk keys, timekey and zone shape the names).
    pub fn read(
        id: &str,
        plugin: &str,
        s: &Section<'_>,
        buffer: &BufferConfig,
    ) -> Result<Self, ConfigError> {
        let at = |e: String| ConfigError::at(s.location(), e);
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        let timekey = buffer.timekey.map(|t| t.period);
        let zone = buffer.time_zone;
        let name = |key: &str, text: &str| -> Result<Template, ConfigError> {
            Template::parse(text, zone).map_err(|e| at(format!("{key}: {e}")))
        };
        let required = |key: &str| -> Result<Template, ConfigError> {
            let text = s.str(key).ok_or_else(|| s.missing(key, plugin))?;
            name(key, text)
        };
        let project = required("project")?;
        let dataset = required("dataset")?;
        let tables = match (s.str("table"), s.array("tables")?) {
            (Some(_), Some(_)) => {
                return Err(at(format!(
                    "{plugin} needs exactly one of 'table' and 'tables'"
                )));
            }
            (None, None) => return Err(s.missing("table", plugin)),
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
        notes.extend(placeholder_notes(&names, buffer, s));
        notes.extend(buffer_defaults_note(id, s));

        let credentials =
            Credentials::new(&auth_method(s)?).map_err(|e| at(format!("credentials: {e}")))?;
        notes.push(format!(
            "{}: {id}: credentials: {}",
            s.location(),
            credentials.description()
        ));
        let connection = Connection {
            credentials: Arc::new(credentials),
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
        let (inject, w) = Inject::from_config(s.section("inject")?)?;
        warnings.extend(w);
        let (schema_update_options, schema_update_types) = schema_updates(s)?;
        if !schema_update_options.is_empty() && names.template_suffix.is_some() {
            return Err(at(
                "schema_update_options does not work with template_suffix: BigQuery gives a template table's schema to the tables it creates from it only when it creates them".into(),
            ));
        }
        Ok(Self {
            names,
            timekey,
            zone,
            connection,
            schema: schema_source,
            auto_create,
            auto_create_dataset,
            location,
            conversion,
            inject,
            schema_update_options,
            schema_update_types,
            warnings,
            notes,
        })
    }

    /// Whether the output adds columns for new fields (`ALLOW_FIELD_ADDITION`).
    pub fn allows_field_addition(&self) -> bool {
        self.schema_update_options
            .contains(&SchemaUpdateOption::AllowFieldAddition)
    }
}

/// `schema_update_options` (an array of the plugin's names) and `schema_update_types` (a
/// hash of field path patterns to column types, which needs ALLOW_FIELD_ADDITION).
fn schema_updates(s: &Section<'_>) -> Result<(Vec<SchemaUpdateOption>, TypeRules), ConfigError> {
    let at = |e: String| ConfigError::at(s.location(), e);
    let mut options = Vec::new();
    for name in s.array("schema_update_options")?.unwrap_or_default() {
        let option = SchemaUpdateOption::from_name(name.trim()).ok_or_else(|| {
            at(format!(
                "schema_update_options: unknown option '{name}'; allowed: {}",
                SchemaUpdateOption::NAMES.join(", ")
            ))
        })?;
        if !options.contains(&option) {
            options.push(option);
        }
    }
    let types = match s.hash("schema_update_types")? {
        Some(pairs) => TypeRules::parse(&pairs).map_err(at)?,
        None => TypeRules::default(),
    };
    if !types.is_empty() && !options.contains(&SchemaUpdateOption::AllowFieldAddition) {
        return Err(at(
            "schema_update_types needs schema_update_options ALLOW_FIELD_ADDITION".into(),
        ));
    }
    Ok((options, types))
}

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

fn auth_method(s: &Section<'_>) -> Result<AuthMethod, ConfigError> {
    let at = |e: &str| ConfigError::at(s.location(), e);
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
    // Empty when the variable it comes from is unset: the same as not set.
    let json_key = s.str("json_key").filter(|k| !k.trim().is_empty());
    let email = s.str("email");
    let private_key_path = s.str("private_key_path");
    let passphrase = s.str("private_key_passphrase");
    Ok(match method {
        Some("none") => AuthMethod::None,
        Some("json_key") => AuthMethod::JsonKey(json_key.map(str::to_owned).ok_or_else(|| {
            at("auth_method json_key needs 'json_key' (a credential file path or its JSON; empty here: is the variable it reads set?)")
        })?),
        Some("application_default") => AuthMethod::ApplicationDefault,
        Some("compute_engine") => AuthMethod::ComputeEngine,
        chosen => {
            let why = if chosen.is_none() {
                "auth_method is not set, so the plugin's default private_key applies"
            } else {
                "auth_method private_key"
            };
            let (Some(email), Some(path)) = (email, private_key_path) else {
                return Err(at(&format!(
                    "{why}: it needs 'email' and 'private_key_path' (a P12 key); or set auth_method application_default (GOOGLE_APPLICATION_CREDENTIALS, workload identity federation), json_key, compute_engine or none (docs/security.md)"
                )));
            };
            AuthMethod::PrivateKey {
                email: email.to_owned(),
                path: path.to_owned(),
                passphrase: passphrase.unwrap_or(GOOGLE_P12_PASSWORD).to_owned(),
            }
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
