// Owns table schemas: parsing TableFieldSchema JSON, checking a schema is well formed, the
// additive-only rule for patches, and validating/normalizing one insertAll row. Pure: no I/O, no HTTP.

use std::collections::HashMap;

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One `TableFieldSchema` as sent by clients; unknown attributes (description, policyTags…) are kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldJson {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldJson>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Integer,
    Float,
    Numeric,
    BigNumeric,
    Boolean,
    String,
    Bytes,
    Timestamp,
    Date,
    Datetime,
    Time,
    Json,
    Geography,
    Record,
}

impl FieldType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "INTEGER" | "INT64" => Self::Integer,
            "FLOAT" | "FLOAT64" => Self::Float,
            "NUMERIC" | "DECIMAL" => Self::Numeric,
            "BIGNUMERIC" | "BIGDECIMAL" => Self::BigNumeric,
            "BOOLEAN" | "BOOL" => Self::Boolean,
            "STRING" => Self::String,
            "BYTES" => Self::Bytes,
            "TIMESTAMP" => Self::Timestamp,
            "DATE" => Self::Date,
            "DATETIME" => Self::Datetime,
            "TIME" => Self::Time,
            "JSON" => Self::Json,
            "GEOGRAPHY" => Self::Geography,
            "RECORD" | "STRUCT" => Self::Record,
            _ => return None,
        })
    }

    /// The name BigQuery uses in conversion error messages.
    pub fn error_name(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Float => "floating point",
            Self::Numeric => "numeric",
            Self::BigNumeric => "bignumeric",
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Bytes => "bytes",
            Self::Timestamp => "timestamp",
            Self::Date => "date",
            Self::Datetime => "datetime",
            Self::Time => "time",
            Self::Json => "json",
            Self::Geography => "geography",
            Self::Record => "record",
        }
    }

    /// The GoogleSQL name (`column_type` in load errors).
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Integer => "INT64",
            Self::Float => "FLOAT64",
            Self::Numeric => "NUMERIC",
            Self::BigNumeric => "BIGNUMERIC",
            Self::Boolean => "BOOL",
            Self::String => "STRING",
            Self::Bytes => "BYTES",
            Self::Timestamp => "TIMESTAMP",
            Self::Date => "DATE",
            Self::Datetime => "DATETIME",
            Self::Time => "TIME",
            Self::Json => "JSON",
            Self::Geography => "GEOGRAPHY",
            Self::Record => "STRUCT",
        }
    }

    /// Canonical name used to compare types in patches (INT64 and INTEGER are the same type).
    pub fn canonical(self) -> &'static str {
        match self {
            Self::Integer => "INTEGER",
            Self::Float => "FLOAT",
            Self::Numeric => "NUMERIC",
            Self::BigNumeric => "BIGNUMERIC",
            Self::Boolean => "BOOLEAN",
            Self::String => "STRING",
            Self::Bytes => "BYTES",
            Self::Timestamp => "TIMESTAMP",
            Self::Date => "DATE",
            Self::Datetime => "DATETIME",
            Self::Time => "TIME",
            Self::Json => "JSON",
            Self::Geography => "GEOGRAPHY",
            Self::Record => "RECORD",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nullable,
    Required,
    Repeated,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nullable => "NULLABLE",
            Self::Required => "REQUIRED",
            Self::Repeated => "REPEATED",
        }
    }
}

/// A checked field: the form the validator and the row renderer work with.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub mode: Mode,
    pub sub: Option<Schema>,
    /// `maxLength` of a STRING or BYTES column (checked by Storage Write appends).
    pub max_length: Option<u64>,
}

/// A checked schema. Column names are case-insensitive in BigQuery, so lookups go through `index`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub fields: Vec<Field>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

impl Schema {
    /// Parses and checks `schema.fields`, as tables.insert does.
    pub fn from_json(fields: &[FieldJson]) -> Result<Self, SchemaError> {
        let mut out = Schema::default();
        for f in fields {
            let field = Field::from_json(f)?;
            let key = field.name.to_ascii_lowercase();
            if out.index.contains_key(&key) {
                return Err(SchemaError(format!(
                    "Field {} already exists in schema",
                    field.name
                )));
            }
            out.index.insert(key, out.fields.len());
            out.fields.push(field);
        }
        Ok(out)
    }

    pub fn lookup(&self, name: &str) -> Option<&Field> {
        let i = self.index.get(&name.to_ascii_lowercase())?;
        self.fields.get(*i)
    }

    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.index.get(&name.to_ascii_lowercase()).copied()
    }
}

fn valid_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && name.len() <= 300 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Field {
    fn from_json(f: &FieldJson) -> Result<Self, SchemaError> {
        if !valid_field_name(&f.name) {
            return Err(SchemaError(format!(
                "Invalid field name \"{}\". Fields must contain only letters, numbers, and underscores, start with a letter or underscore, and be at most 300 characters long.",
                f.name
            )));
        }
        let ty = FieldType::parse(&f.field_type).ok_or_else(|| {
            SchemaError(format!(
                "Invalid value for type: {} is not a valid value",
                f.field_type
            ))
        })?;
        let mode = match f.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("NULLABLE") => Mode::Nullable,
            Some("REQUIRED") => Mode::Required,
            Some("REPEATED") => Mode::Repeated,
            Some(other) => {
                return Err(SchemaError(format!(
                    "Invalid value for mode: {other} is not a valid value"
                )));
            }
        };
        let sub = match (ty, &f.fields) {
            (FieldType::Record, Some(fields)) if !fields.is_empty() => {
                Some(Schema::from_json(fields)?)
            }
            (FieldType::Record, _) => {
                return Err(SchemaError(format!(
                    "Field {} is type RECORD but has no schema",
                    f.name
                )));
            }
            (_, Some(fields)) if !fields.is_empty() => {
                return Err(SchemaError(format!(
                    "Field {} is type {} but has subfields",
                    f.name, f.field_type
                )));
            }
            _ => None,
        };
        // maxLength is an int64 in the REST API, so clients send it as a string or a number.
        let max_length = f.extra.get("maxLength").and_then(|v| match v {
            Value::String(s) => s.parse().ok(),
            other => other.as_u64(),
        });
        Ok(Field {
            name: f.name.clone(),
            ty,
            mode,
            sub,
            max_length,
        })
    }
}

/// Checks that `new` only adds columns to `old` (or relaxes REQUIRED to NULLABLE), as BigQuery
/// allows on tables.patch / tables.update:
/// <https://cloud.google.com/bigquery/docs/managing-table-schemas>.
pub fn check_additive(old: &Schema, new: &Schema, table: &str) -> Result<(), SchemaError> {
    check_additive_at(old, new, table, "")
}

fn check_additive_at(
    old: &Schema,
    new: &Schema,
    table: &str,
    prefix: &str,
) -> Result<(), SchemaError> {
    let mismatch = |what: String| {
        SchemaError(format!(
            "Provided Schema does not match Table {table}. {what}"
        ))
    };
    for o in &old.fields {
        let path = format!("{prefix}{}", o.name);
        let Some(n) = new.lookup(&o.name) else {
            return Err(mismatch(format!("Field {path} is missing in new schema")));
        };
        if n.ty.canonical() != o.ty.canonical() {
            return Err(mismatch(format!(
                "Field {path} has changed type from {} to {}",
                o.ty.canonical(),
                n.ty.canonical()
            )));
        }
        let mode_ok = n.mode == o.mode || (o.mode == Mode::Required && n.mode == Mode::Nullable);
        if !mode_ok {
            return Err(mismatch(format!(
                "Field {path} has changed mode from {} to {}",
                o.mode.name(),
                n.mode.name()
            )));
        }
        if let (Some(os), Some(ns)) = (&o.sub, &n.sub) {
            check_additive_at(os, ns, table, &format!("{path}."))?;
        }
    }
    for n in &new.fields {
        if old.lookup(&n.name).is_none() && n.mode == Mode::Required {
            // Observed without the "Provided Schema does not match" preamble
            // (mozilla/mozilla-schema-generator#63).
            return Err(SchemaError(format!(
                "Cannot add required fields to an existing schema. (field: {prefix}{})",
                n.name
            )));
        }
    }
    Ok(())
}

/// Checks a load job's schema against the table's for WRITE_APPEND, as BigQuery does: the rules
/// of `check_additive`, and additions or relaxations only when the job allows them
/// (`schemaUpdateOptions` ALLOW_FIELD_ADDITION / ALLOW_FIELD_RELAXATION). Messages as BigQuery's
/// ("Provided Schema does not match Table p:d.t. Cannot add fields (field: x)").
pub fn check_load_schema(
    old: &Schema,
    new: &Schema,
    table: &str,
    allow_addition: bool,
    allow_relaxation: bool,
) -> Result<(), SchemaError> {
    fn walk(
        old: &Schema,
        new: &Schema,
        table: &str,
        prefix: &str,
        allow: (bool, bool),
    ) -> Result<(), SchemaError> {
        for n in &new.fields {
            let path = format!("{prefix}{}", n.name);
            let Some(o) = old.lookup(&n.name) else {
                if allow.0 {
                    continue;
                }
                return Err(SchemaError(format!(
                    "Provided Schema does not match Table {table}. Cannot add fields (field: {path})"
                )));
            };
            if o.mode == Mode::Required && n.mode == Mode::Nullable && !allow.1 {
                return Err(SchemaError(format!(
                    "Provided Schema does not match Table {table}. Field {path} has changed mode from REQUIRED to NULLABLE"
                )));
            }
            if let (Some(os), Some(ns)) = (&o.sub, &n.sub) {
                walk(os, ns, table, &format!("{path}."), allow)?;
            }
        }
        Ok(())
    }
    check_additive(old, new, table)?;
    walk(old, new, table, "", (allow_addition, allow_relaxation))
}

/// BigQuery's per-table schema limits (<https://cloud.google.com/bigquery/quotas#table_limits>:
/// 10,000 columns; <https://cloud.google.com/bigquery/docs/nested-repeated#limitations>: 15
/// levels of nested RECORDs).
pub const MAX_LEAF_FIELDS: usize = 10_000;
pub const MAX_RECORD_DEPTH: usize = 15;

/// Checks a schema against BigQuery's column and nesting limits, as tables.insert and
/// tables.patch do. The column count is of leaf fields (a RECORD counts as its subfields), the
/// wording BigQuery uses ("Too many total leaf fields", snowplow-bigquery-loader#376).
pub fn check_limits(schema: &Schema) -> Result<(), SchemaError> {
    fn walk(
        schema: &Schema,
        prefix: &str,
        depth: usize,
        leaves: &mut usize,
    ) -> Result<(), SchemaError> {
        for f in &schema.fields {
            let Some(sub) = &f.sub else {
                *leaves += 1;
                continue;
            };
            let path = format!("{prefix}{}", f.name);
            if depth + 1 > MAX_RECORD_DEPTH {
                return Err(SchemaError(format!(
                    "Field {path}: the schema nests RECORD fields {} levels deep; at most {MAX_RECORD_DEPTH} levels are allowed.",
                    depth + 1
                )));
            }
            walk(sub, &format!("{path}."), depth + 1, leaves)?;
        }
        Ok(())
    }
    let mut leaves = 0;
    walk(schema, "", 0, &mut leaves)?;
    if leaves > MAX_LEAF_FIELDS {
        return Err(SchemaError(format!(
            "Too many total leaf fields: {leaves}, max allowed field count: {MAX_LEAF_FIELDS}"
        )));
    }
    Ok(())
}

/// A `selectedFields` list ("a,e.d.f"): names map to what is kept below them (`None`: all).
/// Names match case-insensitively, as column names do.
#[derive(Debug, Default, PartialEq)]
pub struct Selection(HashMap<String, Option<Selection>>);

impl Selection {
    /// Parses a comma-separated list of dotted paths; `None` for an empty list (everything).
    pub fn parse(spec: &str) -> Result<Option<Self>, SchemaError> {
        let mut sel = Selection::default();
        for path in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let names: Vec<&str> = path.split('.').collect();
            if names.iter().any(|n| n.is_empty()) {
                return Err(SchemaError(format!("Invalid selected field: {path}")));
            }
            sel.add(&names);
        }
        Ok((!sel.0.is_empty()).then_some(sel))
    }

    fn add(&mut self, names: &[&str]) {
        let Some((first, rest)) = names.split_first() else {
            return;
        };
        let key = first.to_ascii_lowercase();
        if rest.is_empty() {
            self.0.insert(key, None);
            return;
        }
        if let Some(sub) = self
            .0
            .entry(key)
            .or_insert_with(|| Some(Selection::default()))
        {
            sub.add(rest);
        }
    }

    /// The schema restricted to the selection, in table order (BigQuery returns selected columns
    /// in schema order, not in the order they were asked for).
    pub fn project(&self, schema: &Schema) -> Result<Schema, SchemaError> {
        self.check_names(schema, "")?;
        Ok(self.project_unchecked(schema))
    }

    fn check_names(&self, schema: &Schema, prefix: &str) -> Result<(), SchemaError> {
        for (name, below) in &self.0 {
            let path = format!("{prefix}{name}");
            let field = schema.lookup(name).ok_or_else(|| {
                SchemaError(format!(
                    "Selected field not found in the table schema: {path}"
                ))
            })?;
            match (below, &field.sub) {
                (None, _) => {}
                (Some(sub), Some(sub_schema)) => {
                    sub.check_names(sub_schema, &format!("{path}."))?
                }
                (Some(_), None) => {
                    return Err(SchemaError(format!(
                        "Selected field {path} is not a RECORD and has no subfields"
                    )));
                }
            }
        }
        Ok(())
    }

    fn project_unchecked(&self, schema: &Schema) -> Schema {
        let mut out = Schema::default();
        for f in &schema.fields {
            let Some(below) = self.0.get(&f.name.to_ascii_lowercase()) else {
                continue;
            };
            let mut field = f.clone();
            if let (Some(sel), Some(sub)) = (below, &f.sub) {
                field.sub = Some(sel.project_unchecked(sub));
            }
            out.index
                .insert(field.name.to_ascii_lowercase(), out.fields.len());
            out.fields.push(field);
        }
        out
    }

    /// The same projection over `schema.fields` JSON, keeping every attribute of a kept field.
    pub fn project_json(&self, fields: &[FieldJson]) -> Vec<FieldJson> {
        fields
            .iter()
            .filter_map(|f| {
                let below = self.0.get(&f.name.to_ascii_lowercase())?;
                let mut field = f.clone();
                if let (Some(sel), Some(sub)) = (below, &f.fields) {
                    field.fields = Some(sel.project_json(sub));
                }
                Some(field)
            })
            .collect()
    }
}

/// One entry of a row's `errors[]` in an insertAll answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub location: String,
    pub message: String,
    /// What is wrong, for callers that word errors their own way (load jobs).
    pub problem: Problem,
}

/// The kind of a row error, with what a caller needs to word it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A member that names no column.
    UnknownField,
    /// A REQUIRED column without a value.
    MissingRequired,
    /// A scalar that does not convert to the column's type.
    BadValue { ty: FieldType, value: Value },
    /// Anything else: an array or a record where it does not belong, a null in a repeated
    /// field, a row that is not an object or is too large.
    Shape,
}

/// How a row is checked; mirrors the insertAll request flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateOptions {
    pub ignore_unknown_values: bool,
}

/// Validates one row's `json` against the schema and returns it normalized: every scalar becomes
/// the string tabledata.list shows (TIMESTAMP as microseconds since the epoch), records become
/// objects, repeated fields arrays, and absent/NULL values are dropped.
pub fn validate_row(
    schema: &Schema,
    row: &Value,
    opts: ValidateOptions,
) -> Result<Map<String, Value>, Vec<RowError>> {
    let mut errors = Vec::new();
    let out = match row {
        Value::Object(obj) => validate_record(schema, obj, "", opts, &mut errors),
        _ => {
            errors.push(RowError {
                location: String::new(),
                message: "Row must be a JSON object.".to_string(),
                problem: Problem::Shape,
            });
            Map::new()
        }
    };
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn validate_record(
    schema: &Schema,
    obj: &Map<String, Value>,
    prefix: &str,
    opts: ValidateOptions,
    errors: &mut Vec<RowError>,
) -> Map<String, Value> {
    let mut present: Vec<Option<&Value>> = vec![None; schema.fields.len()];
    for (key, value) in obj {
        match schema.field_index(key) {
            Some(i) => present[i] = Some(value),
            None if opts.ignore_unknown_values => {}
            None => errors.push(RowError {
                location: format!("{prefix}{key}"),
                message: format!("no such field: {key}."),
                problem: Problem::UnknownField,
            }),
        }
    }
    let mut out = Map::new();
    for (field, value) in schema.fields.iter().zip(present) {
        let path = format!("{prefix}{}", field.name);
        if let Some(v) = validate_field(field, value, &path, opts, errors) {
            out.insert(field.name.clone(), v);
        }
    }
    out
}

fn validate_field(
    field: &Field,
    value: Option<&Value>,
    path: &str,
    opts: ValidateOptions,
    errors: &mut Vec<RowError>,
) -> Option<Value> {
    let value = value.filter(|v| !v.is_null());
    match (field.mode, value) {
        (Mode::Required, None) => {
            errors.push(RowError {
                location: path.to_string(),
                message: format!("Missing required field: {}.", field.name),
                problem: Problem::MissingRequired,
            });
            None
        }
        (_, None) => None,
        (Mode::Repeated, Some(Value::Array(items))) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                if item.is_null() {
                    errors.push(RowError {
                        location: item_path,
                        message: format!("Null value in repeated field: {}.", field.name),
                        problem: Problem::Shape,
                    });
                } else if let Some(v) = validate_value(field, item, &item_path, opts, errors) {
                    out.push(v);
                }
            }
            Some(Value::Array(out))
        }
        (Mode::Repeated, Some(_)) => {
            errors.push(RowError {
                location: path.to_string(),
                message: format!(
                    "Non-array value specified for repeated field: {}.",
                    field.name
                ),
                problem: Problem::Shape,
            });
            None
        }
        (_, Some(Value::Array(_))) => {
            errors.push(RowError {
                location: path.to_string(),
                message: format!("Array specified for non-repeated field: {}.", field.name),
                problem: Problem::Shape,
            });
            None
        }
        (_, Some(v)) => validate_value(field, v, path, opts, errors),
    }
}

fn validate_value(
    field: &Field,
    v: &Value,
    path: &str,
    opts: ValidateOptions,
    errors: &mut Vec<RowError>,
) -> Option<Value> {
    if field.ty == FieldType::Record {
        return match (v, &field.sub) {
            (Value::Object(obj), Some(sub)) => Some(Value::Object(validate_record(
                sub,
                obj,
                &format!("{path}."),
                opts,
                errors,
            ))),
            _ => {
                errors.push(RowError {
                    location: path.to_string(),
                    message: format!("This field: {} is not a record.", field.name),
                    problem: Problem::Shape,
                });
                None
            }
        };
    }
    match convert_scalar(field.ty, v) {
        Ok(s) => Some(Value::String(s)),
        Err(message) => {
            errors.push(RowError {
                location: path.to_string(),
                message,
                problem: Problem::BadValue {
                    ty: field.ty,
                    value: v.clone(),
                },
            });
            None
        }
    }
}

fn bad_value(ty: FieldType, v: &Value) -> String {
    let shown = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "Cannot convert value to {} (bad value): {shown}",
        ty.error_name()
    )
}

/// Converts one JSON scalar the way insertAll does; `Err` carries BigQuery's message.
fn convert_scalar(ty: FieldType, v: &Value) -> Result<String, String> {
    let bad = || bad_value(ty, v);
    match ty {
        FieldType::Integer => convert_integer(v).ok_or_else(bad),
        FieldType::Float => convert_float(v).ok_or_else(bad),
        FieldType::Numeric | FieldType::BigNumeric => convert_decimal(v).ok_or_else(bad),
        FieldType::Boolean => convert_bool(v).ok_or_else(bad),
        FieldType::String | FieldType::Geography => match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(bad()),
        },
        FieldType::Bytes => match v {
            Value::String(s) if decode_base64(s) => Ok(s.clone()),
            _ => Err(bad()),
        },
        FieldType::Timestamp => convert_timestamp(v)
            .map(|micros| micros.to_string())
            .ok_or_else(|| {
                format!(
                    "Couldn't convert value to timestamp: Could not parse '{}' as a timestamp. Required format is YYYY-MM-DD HH:MM[:SS[.SSSSSS]] or YYYY/MM/DD HH:MM[:SS[.SSSSSS]]",
                    scalar_text(v)
                )
            }),
        FieldType::Date => as_str(v).and_then(parse_date).ok_or_else(bad),
        FieldType::Datetime => as_str(v).and_then(parse_datetime).ok_or_else(bad),
        FieldType::Time => as_str(v).and_then(parse_time).ok_or_else(bad),
        FieldType::Json => match v {
            Value::String(s) => serde_json::from_str::<Value>(s)
                .map(|parsed| parsed.to_string())
                .map_err(|_| bad()),
            other => Ok(other.to_string()),
        },
        FieldType::Record => Err(bad()),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_str(v: &Value) -> Option<&str> {
    v.as_str()
}

fn convert_integer(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Some(i.to_string());
            }
            let f = n.as_f64()?;
            // Integral doubles such as 3.0 are accepted; anything with a fraction is not.
            let in_range = f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64;
            in_range.then(|| (f as i64).to_string())
        }
        Value::String(s) => s.trim().parse::<i64>().ok().map(|i| i.to_string()),
        _ => None,
    }
}

fn convert_float(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_f64().map(format_float),
        Value::String(s) => match s.trim() {
            "NaN" => Some("NaN".to_string()),
            "Infinity" | "inf" | "+inf" => Some("Infinity".to_string()),
            "-Infinity" | "-inf" => Some("-Infinity".to_string()),
            t => t
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(format_float),
        },
        _ => None,
    }
}

pub(crate) fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

fn convert_decimal(v: &Value) -> Option<String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let body = text.strip_prefix(['-', '+']).unwrap_or(&text);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = !(int_part.is_empty() && frac_part.is_empty())
        && int_part.chars().all(|c| c.is_ascii_digit())
        && frac_part.chars().all(|c| c.is_ascii_digit());
    let exp_ok = exponent.is_none_or(|e| e.trim_start_matches(['-', '+']).parse::<u32>().is_ok());
    (digits_ok && exp_ok).then_some(text)
}

fn convert_bool(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some("true".to_string()),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some("false".to_string()),
        _ => None,
    }
}

fn decode_base64(s: &str) -> bool {
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ];
    engines.iter().any(|e| e.decode(s).is_ok())
}

/// TIMESTAMP accepts a number (seconds since the epoch, fractions allowed), a numeric string, or
/// a civil time with an optional zone: "2026-11-25 10:00:00[.ffffff][ UTC|Z|+hh:mm]" or RFC 3339.
/// <https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types#timestamp_type>
pub fn convert_timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => seconds_to_micros(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<f64>() {
                return seconds_to_micros(secs);
            }
            parse_timestamp_text(s)
        }
        _ => None,
    }
}

fn seconds_to_micros(secs: f64) -> Option<i64> {
    let micros = (secs * 1_000_000.0).round();
    (micros.is_finite() && micros.abs() < 2.6e17).then_some(micros as i64)
}

fn parse_timestamp_text(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    let normalized = date_time_separator_to_space(&s.replace('/', "-"));
    let (civil, offset_secs) = split_zone(&normalized)?;
    let naive = parse_naive_datetime(civil)?;
    Some(naive.and_utc().timestamp_micros() - i64::from(offset_secs) * 1_000_000)
}

/// "2026-11-25T10:00" → "2026-11-25 10:00" (only the separator after the date, never a zone's T).
fn date_time_separator_to_space(s: &str) -> String {
    match s.get(10..11) {
        Some("T") | Some("t") => format!("{} {}", &s[..10], &s[11..]),
        _ => s.to_string(),
    }
}

/// Splits "civil[ ]zone" into the civil part and the zone offset in seconds (UTC when absent).
fn split_zone(s: &str) -> Option<(&str, i32)> {
    let s = s.trim();
    for suffix in [" UTC", "UTC", "Z", " Z"] {
        if let Some(civil) = s.strip_suffix(suffix) {
            return Some((civil.trim_end(), 0));
        }
    }
    // An offset such as +05:30, -08, +0530 after the time part (the date uses '-' too, so only
    // look past the space that separates date and time).
    let time_start = s.find(' ').map_or(0, |i| i + 1);
    let rest = &s[time_start..];
    if let Some(pos) = rest.rfind(['+', '-']) {
        let (civil, zone) = s.split_at(time_start + pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (h, m) = match digits.len() {
            2 => (digits.parse::<i32>().ok()?, 0),
            4 => (
                digits[..2].parse::<i32>().ok()?,
                digits[2..].parse::<i32>().ok()?,
            ),
            _ => return None,
        };
        return Some((civil.trim_end(), sign * (h * 3600 + m * 60)));
    }
    Some((s, 0))
}

fn parse_naive_datetime(s: &str) -> Option<NaiveDateTime> {
    const FORMATS: [&str; 3] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ];
    if let Some(dt) = FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    {
        return Some(dt);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

pub(crate) fn parse_date(s: &str) -> Option<String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .map(|d| d.format("%Y-%m-%d").to_string())
}

pub(crate) fn parse_datetime(s: &str) -> Option<String> {
    let dt = parse_naive_datetime(&date_time_separator_to_space(s.trim()))?;
    Some(format_civil(
        dt.format("%Y-%m-%dT%H:%M:%S").to_string(),
        dt.time(),
    ))
}

pub(crate) fn parse_time(s: &str) -> Option<String> {
    let s = s.trim();
    let t = ["%H:%M:%S%.f", "%H:%M"]
        .iter()
        .find_map(|f| NaiveTime::parse_from_str(s, f).ok())?;
    Some(format_civil(t.format("%H:%M:%S").to_string(), t))
}

/// Appends microseconds only when present, as tabledata.list shows civil times.
pub(crate) fn format_civil(base: String, t: NaiveTime) -> String {
    use chrono::Timelike;
    let micros = t.nanosecond() / 1_000;
    if micros == 0 {
        base
    } else {
        format!("{base}.{micros:06}")
    }
}

/// The partition id a normalized value of the partitioning column falls in, for a
/// timePartitioning type of DAY (YYYYMMDD), HOUR (YYYYMMDDHH), MONTH (YYYYMM) or YEAR (YYYY).
/// <https://cloud.google.com/bigquery/docs/partitioned-tables#date_timestamp_partitioned_tables>
pub fn partition_id(ty: FieldType, normalized: &str, unit: &str) -> Option<String> {
    let hourly = match ty {
        FieldType::Timestamp => {
            let micros = normalized.parse::<i64>().ok()?;
            let dt = DateTime::<Utc>::from_timestamp_micros(micros)?;
            dt.format("%Y%m%d%H").to_string()
        }
        FieldType::Date => format!("{}00", normalized.get(..10)?.replace('-', "")),
        FieldType::Datetime => {
            let day = normalized.get(..10)?.replace('-', "");
            format!("{day}{}", normalized.get(11..13).unwrap_or("00"))
        }
        _ => return None,
    };
    let len = match unit {
        "HOUR" => 10,
        "MONTH" => 6,
        "YEAR" => 4,
        _ => 8,
    };
    hourly.get(..len).map(str::to_string)
}

/// Renders microseconds the way tabledata.list shows TIMESTAMP by default: seconds as a
/// floating-point string in scientific notation (e.g. "1.7642304E9").
pub fn format_timestamp_seconds(micros: i64) -> String {
    let negative = micros < 0;
    let digits = micros.unsigned_abs().to_string();
    // value = digits * 10^-6; scientific exponent = (number of digits - 1) - 6.
    let exponent = digits.len() as i64 - 1 - 6;
    let (head, tail) = digits.split_at(1);
    let tail = tail.trim_end_matches('0');
    let tail = if tail.is_empty() { "0" } else { tail };
    let sign = if negative { "-" } else { "" };
    if micros == 0 {
        return "0.0".to_string();
    }
    format!("{sign}{head}.{tail}E{exponent}")
}

/// Renders microseconds as tabledata.list's `ISO8601_STRING` timestamp output format,
/// documented as "YYYY-MM-DDTHH:MM:SS.FFFFFFFFFFFFZ" (twelve fraction digits: picoseconds, so a
/// microsecond value ends in six zeros).
pub fn format_timestamp_iso(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(dt) => format!(
            "{}.{:06}000000Z",
            dt.format("%Y-%m-%dT%H:%M:%S"),
            micros.rem_euclid(1_000_000)
        ),
        None => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        let fields: Vec<FieldJson> = serde_json::from_value(v).unwrap();
        Schema::from_json(&fields).unwrap()
    }

    #[test]
    fn timestamps_parse_in_every_documented_form() {
        let expected = 1_795_600_800_000_000; // 2026-11-25 10:00:00 UTC
        for text in [
            "2026-11-25 10:00:00",
            "2026-11-25 10:00:00 UTC",
            "2026-11-25T10:00:00Z",
            "2026-11-25 12:00:00+02:00",
            "2026-11-25 10:00",
            "2026/11/25 10:00:00",
        ] {
            assert_eq!(convert_timestamp(&json!(text)), Some(expected), "{text}");
        }
        assert_eq!(convert_timestamp(&json!(1_795_600_800)), Some(expected));
        assert_eq!(
            convert_timestamp(&json!("2026-11-25 10:00:00.123456")),
            Some(expected + 123_456)
        );
        assert_eq!(convert_timestamp(&json!("yesterday")), None);
        // Non-ASCII junk where an offset would be must be refused, not sliced.
        assert_eq!(convert_timestamp(&json!("2026-11-25 10:00:00+€1")), None);
        assert_eq!(convert_timestamp(&json!("2026-11-25T€")), None);
    }

    #[test]
    fn timestamp_renders_as_scientific_seconds() {
        assert_eq!(
            format_timestamp_seconds(1_795_600_800_000_000),
            "1.7956008E9"
        );
        assert_eq!(format_timestamp_seconds(1_500_000), "1.5E0");
    }

    #[test]
    fn nested_errors_carry_dotted_locations() {
        let s = schema(
            json!([{"name":"r","type":"RECORD","mode":"REPEATED","fields":[
            {"name":"x","type":"INTEGER","mode":"REQUIRED"}]}]),
        );
        let errs = validate_row(
            &s,
            &json!({"r":[{"x":1},{"y":2}]}),
            ValidateOptions::default(),
        )
        .unwrap_err();
        let locations: Vec<_> = errs.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(locations, ["r[1].y", "r[1].x"]);
    }

    #[test]
    fn patch_rejects_type_change_and_removal() {
        let old = schema(json!([{"name":"a","type":"STRING"}]));
        let retyped = schema(json!([{"name":"a","type":"INTEGER"}]));
        let removed = schema(json!([{"name":"b","type":"STRING"}]));
        let added = schema(json!([{"name":"a","type":"STRING"},{"name":"b","type":"STRING"}]));
        assert!(check_additive(&old, &retyped, "p:d.t").is_err());
        assert!(check_additive(&old, &removed, "p:d.t").is_err());
        assert!(check_additive(&old, &added, "p:d.t").is_ok());
    }
}
