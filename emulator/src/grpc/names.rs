// Owns Storage Write resource names (`projects/{p}/datasets/{d}/tables/{t}[/streams/{id}]`),
// timestamps and the table schema as the Write API returns it. Pure: no store, no answers.

use bq_storage_proto::prost_types::Timestamp;
use bq_storage_proto::v1::{TableFieldSchema, TableSchema, table_field_schema};
use serde_json::Value;

use crate::schema::{Field, FieldJson, FieldType, Mode, Schema};
use crate::store::table_key;

/// The id of every table's built-in stream.
pub const DEFAULT_STREAM: &str = "_default";

/// A table named the Write API's way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub project: String,
    pub dataset: String,
    pub table: String,
}

impl TableName {
    /// `projects/{project}/datasets/{dataset}/tables/{table}`
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('/');
        let mut next = |label: &str| match (parts.next(), parts.next()) {
            (Some(l), Some(v)) if l == label && !v.is_empty() => Some(v.to_string()),
            _ => None,
        };
        let table = Self {
            project: next("projects")?,
            dataset: next("datasets")?,
            table: next("tables")?,
        };
        parts.next().is_none().then_some(table)
    }

    /// The store's key for the table.
    pub fn key(&self) -> String {
        table_key(&self.project, &self.dataset, &self.table)
    }

    pub fn path(&self) -> String {
        format!(
            "projects/{}/datasets/{}/tables/{}",
            self.project, self.dataset, self.table
        )
    }

    /// The canonical name of one of the table's streams.
    pub fn stream(&self, id: &str) -> String {
        format!("{}/streams/{id}", self.path())
    }
}

/// A stream name: a table's `_default` stream or a created one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamName {
    pub table: TableName,
    pub id: String,
}

impl StreamName {
    /// `{table}/streams/{id}`; the default stream may also be written `{table}/_default`, as
    /// Google's client libraries accept it.
    pub fn parse(name: &str) -> Option<Self> {
        let (table, id) = match name.rsplit_once("/streams/") {
            Some((table, id)) if !id.is_empty() && !id.contains('/') => (table, id),
            _ => (name.strip_suffix("/_default")?, DEFAULT_STREAM),
        };
        Some(Self {
            table: TableName::parse(table)?,
            id: id.to_string(),
        })
    }

    pub fn is_default(&self) -> bool {
        self.id == DEFAULT_STREAM
    }

    /// The canonical form (the store's key for created streams).
    pub fn canonical(&self) -> String {
        self.table.stream(&self.id)
    }
}

/// A new stream id: random, URL-safe, in the spirit of BigQuery's opaque ids.
pub fn new_stream_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `resource.schema.fields` as stored (the JSON BigQuery's REST API uses).
pub fn schema_fields(resource: &Value) -> Value {
    resource
        .pointer("/schema/fields")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()))
}

/// The table schema in the Write API's form (`google.cloud.bigquery.storage.v1.TableSchema`).
pub fn table_schema(fields: &Value) -> TableSchema {
    let fields: Vec<FieldJson> = serde_json::from_value(fields.clone()).unwrap_or_default();
    TableSchema {
        fields: fields.iter().map(field_schema).collect(),
    }
}

/// A checked schema in the Write API's form (for a schema known only in checked form, such as
/// one still propagating): names, types, modes, nesting and `maxLength`.
pub fn checked_table_schema(schema: &Schema) -> TableSchema {
    TableSchema {
        fields: schema.fields.iter().map(checked_field).collect(),
    }
}

fn checked_field(f: &Field) -> TableFieldSchema {
    use table_field_schema::{Mode as M, Type as T};
    let ty = match f.ty {
        FieldType::String => T::String,
        FieldType::Integer => T::Int64,
        FieldType::Float => T::Double,
        FieldType::Record => T::Struct,
        FieldType::Bytes => T::Bytes,
        FieldType::Boolean => T::Bool,
        FieldType::Timestamp => T::Timestamp,
        FieldType::Date => T::Date,
        FieldType::Time => T::Time,
        FieldType::Datetime => T::Datetime,
        FieldType::Geography => T::Geography,
        FieldType::Numeric => T::Numeric,
        FieldType::BigNumeric => T::Bignumeric,
        FieldType::Json => T::Json,
    };
    let mode = match f.mode {
        Mode::Nullable => M::Nullable,
        Mode::Required => M::Required,
        Mode::Repeated => M::Repeated,
    };
    TableFieldSchema {
        name: f.name.clone(),
        r#type: ty as i32,
        mode: mode as i32,
        fields: f
            .sub
            .iter()
            .flat_map(|s| s.fields.iter().map(checked_field))
            .collect(),
        max_length: f
            .max_length
            .and_then(|l| i64::try_from(l).ok())
            .unwrap_or(0),
        ..TableFieldSchema::default()
    }
}

fn field_schema(f: &FieldJson) -> TableFieldSchema {
    use table_field_schema::{Mode, Type};
    let ty = match f.field_type.to_ascii_uppercase().as_str() {
        "STRING" => Type::String,
        "INTEGER" | "INT64" => Type::Int64,
        "FLOAT" | "FLOAT64" => Type::Double,
        "RECORD" | "STRUCT" => Type::Struct,
        "BYTES" => Type::Bytes,
        "BOOLEAN" | "BOOL" => Type::Bool,
        "TIMESTAMP" => Type::Timestamp,
        "DATE" => Type::Date,
        "TIME" => Type::Time,
        "DATETIME" => Type::Datetime,
        "GEOGRAPHY" => Type::Geography,
        "NUMERIC" | "DECIMAL" => Type::Numeric,
        "BIGNUMERIC" | "BIGDECIMAL" => Type::Bignumeric,
        "JSON" => Type::Json,
        _ => Type::Unspecified,
    };
    let mode = match f.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("REQUIRED") => Mode::Required,
        Some("REPEATED") => Mode::Repeated,
        _ => Mode::Nullable,
    };
    // int64 attributes arrive as strings or numbers in REST JSON.
    let int = |key: &str| {
        f.extra
            .get(key)
            .and_then(|v| match v {
                Value::String(s) => s.parse().ok(),
                other => other.as_i64(),
            })
            .unwrap_or(0)
    };
    let text = |key: &str| {
        f.extra
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    TableFieldSchema {
        name: f.name.clone(),
        r#type: ty as i32,
        mode: mode as i32,
        fields: f.fields.iter().flatten().map(field_schema).collect(),
        description: text("description"),
        max_length: int("maxLength"),
        precision: int("precision"),
        scale: int("scale"),
        default_value_expression: text("defaultValueExpression"),
        ..TableFieldSchema::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_parse_both_default_spellings() {
        let long = StreamName::parse("projects/p/datasets/d/tables/t/streams/_default").unwrap();
        let short = StreamName::parse("projects/p/datasets/d/tables/t/_default").unwrap();
        assert_eq!(long, short);
        assert!(long.is_default());
        assert_eq!(long.table.key(), "p/d/t");
        let named = StreamName::parse("projects/p/datasets/d/tables/t/streams/abc").unwrap();
        assert_eq!(
            named.canonical(),
            "projects/p/datasets/d/tables/t/streams/abc"
        );
        for bad in [
            "projects/p/datasets/d/tables/t",
            "projects/p/datasets/d/tables/t/streams/",
            "projects/p/datasets/d/streams/x",
            "projects/p/datasets/d/tables/t/streams/a/b",
        ] {
            assert_eq!(StreamName::parse(bad), None, "{bad}");
        }
        assert_eq!(
            TableName::parse("projects/p/datasets/d/tables/t/x"),
            None,
            "trailing parts"
        );
    }

    #[test]
    fn timestamps_split_micros_into_seconds_and_nanos() {
        let ts = timestamp(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_000));
    }
}
