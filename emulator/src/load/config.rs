// Owns `configuration.load` of a load job: parsing it into typed settings and refusing what is
// malformed or not implemented, once, at jobs.insert. Must not read data or touch tables.
//
// Reference: JobConfigurationLoad,
// <https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#JobConfigurationLoad>.

use serde_json::{Map, Value};

use crate::schema::{FieldJson, Schema, check_limits};

/// A load setting that is malformed or that the emulator does not implement: jobs.insert answers
/// 400 `invalid` with this message and creates no job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Json,
    Csv,
}

impl SourceFormat {
    /// The word BigQuery's data errors use ("JSON table encountered too many errors").
    pub fn word(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Csv => "CSV",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateDisposition {
    IfNeeded,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDisposition {
    Append,
    /// Replaces the rows and, when the job gives a schema (or detects one), the schema.
    Truncate,
    /// Replaces the rows and keeps the table's schema.
    TruncateData,
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Latin1,
}

/// CSV settings (`fieldDelimiter`, `quote`, …) with BigQuery's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    /// `None` when `quote` is the empty string: no quoting at all.
    pub quote: Option<u8>,
    /// `None` when not given (autodetect then looks for a header in the first row).
    pub skip_leading_rows: Option<u64>,
    pub allow_quoted_newlines: bool,
    pub allow_jagged_rows: bool,
    /// `None`: the empty string means NULL (BigQuery's default).
    pub null_marker: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: Some(b'"'),
            skip_leading_rows: None,
            allow_quoted_newlines: false,
            allow_jagged_rows: false,
            null_marker: None,
        }
    }
}

/// `destinationTable`, with a partition decorator (`t$20261125`) split off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub project: String,
    pub dataset: String,
    pub table: String,
    pub partition: Option<String>,
}

/// The schema a job gives: the fields as sent (kept in the table resource) and checked.
#[derive(Debug, Clone)]
pub struct GivenSchema {
    pub fields: Vec<FieldJson>,
    pub schema: Schema,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub destination: TableRef,
    pub format: SourceFormat,
    pub schema: Option<GivenSchema>,
    pub autodetect: bool,
    pub create: CreateDisposition,
    pub write: WriteDisposition,
    pub max_bad_records: u64,
    pub ignore_unknown_values: bool,
    pub allow_field_addition: bool,
    pub allow_field_relaxation: bool,
    pub time_partitioning: Option<Value>,
    pub clustering: Option<Value>,
    /// `destinationTableProperties` (description, friendlyName, labels) for a table the job
    /// creates.
    pub table_properties: Option<Value>,
    pub csv: CsvOptions,
    pub encoding: Encoding,
}

/// Members the emulator acts on.
const IMPLEMENTED: &[&str] = &[
    "destinationTable",
    "sourceFormat",
    "schema",
    "autodetect",
    "createDisposition",
    "writeDisposition",
    "maxBadRecords",
    "ignoreUnknownValues",
    "schemaUpdateOptions",
    "timePartitioning",
    "clustering",
    "fieldDelimiter",
    "skipLeadingRows",
    "quote",
    "allowQuotedNewlines",
    "allowJaggedRows",
    "nullMarker",
    "encoding",
    "destinationTableProperties",
    // Control characters are always kept, which is what `true` asks for; `false` (BigQuery's
    // default) differs only for data that carries them.
    "preserveAsciiControlCharacters",
];

/// Parses `configuration.load` of a job whose data is uploaded with it. `project` fills in a
/// `destinationTable` without `projectId`.
pub fn parse(load: &Value, project: &str) -> Result<LoadConfig, ConfigError> {
    let Some(obj) = load.as_object() else {
        return err("configuration.load must be an object");
    };
    for (name, value) in obj {
        if value.is_null() || IMPLEMENTED.contains(&name.as_str()) {
            continue;
        }
        if name == "sourceUris" {
            return err(
                "sourceUris cannot be combined with uploaded data; bigquery-emulator loads only the data uploaded with the job",
            );
        }
        return err(format!(
            "configuration.load.{name} is not implemented by bigquery-emulator"
        ));
    }
    let format = source_format(obj)?;
    let write = write_disposition(obj)?;
    let (allow_field_addition, allow_field_relaxation) = schema_update_options(obj)?;
    let destination = destination(obj, project)?;
    if (allow_field_addition || allow_field_relaxation)
        && !(write == WriteDisposition::Append
            || (write == WriteDisposition::Truncate && destination.partition.is_some()))
    {
        // "Schema update options are supported in two cases: when writeDisposition is
        // WRITE_APPEND; when writeDisposition is WRITE_TRUNCATE and the destination table is a
        // partition of a table" (JobConfigurationLoad.schemaUpdateOptions).
        return err(
            "Schema update options should only be specified with WRITE_APPEND disposition, or with WRITE_TRUNCATE disposition on a table partition.",
        );
    }
    Ok(LoadConfig {
        destination,
        format,
        schema: given_schema(obj)?,
        autodetect: boolean(obj, "autodetect")?.unwrap_or(false),
        create: create_disposition(obj)?,
        write,
        max_bad_records: integer(obj, "maxBadRecords")?.unwrap_or(0),
        ignore_unknown_values: boolean(obj, "ignoreUnknownValues")?.unwrap_or(false),
        allow_field_addition,
        allow_field_relaxation,
        time_partitioning: object(obj, "timePartitioning")?,
        clustering: object(obj, "clustering")?,
        table_properties: object(obj, "destinationTableProperties")?,
        csv: csv_options(obj)?,
        encoding: encoding(obj)?,
    })
}

fn text<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => err(format!("Invalid value for {name}: {other}")),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => err(format!("Invalid value for {name}: {other}")),
    }
}

/// A non-negative integer, as a JSON number or (int64 style) a numeric string.
fn integer(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, ConfigError> {
    let bad = |v: &Value| ConfigError(format!("Invalid value for {name}: {v}"));
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(v)),
        Some(other) => Err(bad(other)),
    }
}

fn object(obj: &Map<String, Value>, name: &str) -> Result<Option<Value>, ConfigError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(other) => err(format!("Invalid value for {name}: {other}")),
    }
}

fn source_format(obj: &Map<String, Value>) -> Result<SourceFormat, ConfigError> {
    // BigQuery's default source format is CSV.
    match text(obj, "sourceFormat")?.unwrap_or("CSV") {
        "CSV" => Ok(SourceFormat::Csv),
        "NEWLINE_DELIMITED_JSON" => Ok(SourceFormat::Json),
        other @ ("AVRO" | "PARQUET" | "ORC" | "DATASTORE_BACKUP" | "ICEBERG" | "GOOGLE_SHEETS") => {
            err(format!(
                "bigquery-emulator does not load {other} data: sourceFormat must be NEWLINE_DELIMITED_JSON or CSV"
            ))
        }
        other => err(format!("Invalid source format {other}")),
    }
}

fn create_disposition(obj: &Map<String, Value>) -> Result<CreateDisposition, ConfigError> {
    match text(obj, "createDisposition")?.unwrap_or("CREATE_IF_NEEDED") {
        "CREATE_IF_NEEDED" => Ok(CreateDisposition::IfNeeded),
        "CREATE_NEVER" => Ok(CreateDisposition::Never),
        other => err(format!("Invalid value for createDisposition: {other}")),
    }
}

fn write_disposition(obj: &Map<String, Value>) -> Result<WriteDisposition, ConfigError> {
    // Load jobs append by default (WRITE_EMPTY is the default of query jobs only).
    match text(obj, "writeDisposition")?.unwrap_or("WRITE_APPEND") {
        "WRITE_APPEND" => Ok(WriteDisposition::Append),
        "WRITE_TRUNCATE" => Ok(WriteDisposition::Truncate),
        "WRITE_TRUNCATE_DATA" => Ok(WriteDisposition::TruncateData),
        "WRITE_EMPTY" => Ok(WriteDisposition::Empty),
        other => err(format!("Invalid value for writeDisposition: {other}")),
    }
}

fn schema_update_options(obj: &Map<String, Value>) -> Result<(bool, bool), ConfigError> {
    let mut addition = false;
    let mut relaxation = false;
    let options = match obj.get("schemaUpdateOptions") {
        None | Some(Value::Null) => return Ok((false, false)),
        Some(Value::Array(items)) => items,
        Some(other) => return err(format!("Invalid value for schemaUpdateOptions: {other}")),
    };
    for option in options {
        match option.as_str() {
            Some("ALLOW_FIELD_ADDITION") => addition = true,
            Some("ALLOW_FIELD_RELAXATION") => relaxation = true,
            _ => return err(format!("Invalid schema update option: {option}")),
        }
    }
    Ok((addition, relaxation))
}

fn destination(obj: &Map<String, Value>, project: &str) -> Result<TableRef, ConfigError> {
    let Some(dest) = obj.get("destinationTable").and_then(Value::as_object) else {
        return err("Required parameter is missing: destinationTable");
    };
    let part = |k: &str| {
        dest.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(dataset), Some(table)) = (part("datasetId"), part("tableId")) else {
        return err("Required parameter is missing: destinationTable.datasetId or tableId");
    };
    let (table, partition) = match table.split_once('$') {
        Some((base, p)) => (base, Some(p.to_string())),
        None => (table, None),
    };
    Ok(TableRef {
        project: part("projectId").unwrap_or(project).to_string(),
        dataset: dataset.to_string(),
        table: table.to_string(),
        partition,
    })
}

fn given_schema(obj: &Map<String, Value>) -> Result<Option<GivenSchema>, ConfigError> {
    let Some(fields) = obj.get("schema").and_then(|s| s.get("fields")) else {
        return Ok(None);
    };
    let fields: Vec<FieldJson> = serde_json::from_value(fields.clone())
        .map_err(|e| ConfigError(format!("Invalid schema: {e}")))?;
    if fields.is_empty() {
        return Ok(None);
    }
    let schema = Schema::from_json(&fields).map_err(|e| ConfigError(e.0))?;
    check_limits(&schema).map_err(|e| ConfigError(e.0))?;
    Ok(Some(GivenSchema { fields, schema }))
}

fn single_byte(name: &str, value: &str) -> Result<u8, ConfigError> {
    match value.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => err(format!(
            "{name} {value:?}: bigquery-emulator supports single ASCII characters (and \"\\t\" or \"tab\" for the field delimiter) only"
        )),
    }
}

fn csv_options(obj: &Map<String, Value>) -> Result<CsvOptions, ConfigError> {
    let mut csv = CsvOptions::default();
    if let Some(d) = text(obj, "fieldDelimiter")? {
        csv.delimiter = match d {
            "\\t" | "tab" | "\t" => b'\t',
            other => single_byte("fieldDelimiter", other)?,
        };
    }
    if let Some(q) = text(obj, "quote")? {
        csv.quote = match q {
            "" => None,
            other => Some(single_byte("quote", other)?),
        };
    }
    csv.skip_leading_rows = integer(obj, "skipLeadingRows")?;
    csv.allow_quoted_newlines = boolean(obj, "allowQuotedNewlines")?.unwrap_or(false);
    csv.allow_jagged_rows = boolean(obj, "allowJaggedRows")?.unwrap_or(false);
    csv.null_marker = text(obj, "nullMarker")?.map(str::to_string);
    Ok(csv)
}

fn encoding(obj: &Map<String, Value>) -> Result<Encoding, ConfigError> {
    match text(obj, "encoding")?.unwrap_or("UTF-8") {
        "UTF-8" => Ok(Encoding::Utf8),
        "ISO-8859-1" => Ok(Encoding::Latin1),
        other @ ("UTF-16BE" | "UTF-16LE" | "UTF-32BE" | "UTF-32LE") => err(format!(
            "bigquery-emulator does not read {other} data: encoding must be UTF-8 or ISO-8859-1"
        )),
        other => err(format!("Invalid value for encoding: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dest() -> Value {
        json!({"projectId": "p", "datasetId": "d", "tableId": "t"})
    }

    #[test]
    fn defaults_are_bigquerys() {
        let c = parse(&json!({"destinationTable": dest()}), "p").unwrap();
        assert_eq!(c.format, SourceFormat::Csv);
        assert_eq!(c.create, CreateDisposition::IfNeeded);
        assert_eq!(c.write, WriteDisposition::Append);
        assert_eq!(c.max_bad_records, 0);
        assert_eq!(c.csv, CsvOptions::default());
        assert_eq!(c.encoding, Encoding::Utf8);
    }

    #[test]
    fn settings_are_typed_and_decorators_split() {
        let c = parse(
            &json!({
                "destinationTable": {"datasetId": "d", "tableId": "t$20261125"},
                "sourceFormat": "NEWLINE_DELIMITED_JSON", "maxBadRecords": 3,
                "fieldDelimiter": "tab", "quote": "", "skipLeadingRows": "1",
                "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"], "writeDisposition": "WRITE_APPEND",
                "schema": {"fields": [{"name": "a", "type": "STRING"}]}
            }),
            "home",
        )
        .unwrap();
        assert_eq!(c.destination.project, "home");
        assert_eq!(c.destination.table, "t");
        assert_eq!(c.destination.partition.as_deref(), Some("20261125"));
        assert_eq!(c.max_bad_records, 3);
        assert_eq!(c.csv.delimiter, b'\t');
        assert_eq!(c.csv.quote, None);
        assert_eq!(c.csv.skip_leading_rows, Some(1));
        assert!(c.allow_field_addition && !c.allow_field_relaxation);
        assert_eq!(c.schema.unwrap().schema.fields.len(), 1);
    }

    #[test]
    fn unknown_unimplemented_and_malformed_settings_are_refused() {
        for bad in [
            json!({"destinationTable": dest(), "sourceFormat": "AVRO"}),
            json!({"destinationTable": dest(), "sourceFormat": "XML"}),
            json!({"destinationTable": dest(), "hivePartitioningOptions": {}}),
            json!({"destinationTable": dest(), "sourceUris": ["gs://b/o"]}),
            json!({"destinationTable": dest(), "writeDisposition": "WRITE_SOMETIMES"}),
            json!({"destinationTable": dest(), "maxBadRecords": -1}),
            json!({"destinationTable": dest(), "fieldDelimiter": "||"}),
            json!({"destinationTable": dest(), "encoding": "UTF-16LE"}),
            json!({"destinationTable": dest(), "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
                   "writeDisposition": "WRITE_TRUNCATE"}),
            json!({"sourceFormat": "CSV"}),
        ] {
            assert!(parse(&bad, "p").is_err(), "{bad}");
        }
    }
}
