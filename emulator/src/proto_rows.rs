// Owns the Storage Write row format: binding a writer schema (a self-contained DescriptorProto)
// to a table's schema, and decoding serialized rows into the normalized rows insertAll stores.
// Pure: no store, no I/O, no gRPC status; callers turn `BindError` and row errors into answers.
//
// The type mapping is BigQuery's "Supported protocol buffer data types"
// (<https://cloud.google.com/bigquery/docs/supported-data-types>); rows use proto2 semantics (an
// unset field is NULL), as the Write API documents for `ProtoData.rows`.

use std::collections::HashSet;

use base64::Engine;
use chrono::{NaiveDate, NaiveTime};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    Value as Proto,
};
use prost_types::{DescriptorProto, FileDescriptorProto};
use serde_json::{Map, Value};

use crate::schema::{
    Field, FieldType, Mode, Schema, convert_timestamp, format_civil, format_float, parse_date,
    parse_datetime, parse_time,
};

/// File name the writer schema is placed in (it has no package, so type names are its own).
const FILE: &str = "bigquery_emulator_writer_schema.proto";
/// Well-known types BigQuery accepts in a writer schema, and the files that define them.
const WELL_KNOWN: [(&str, &str); 10] = [
    (
        "google.protobuf.Timestamp",
        "google/protobuf/timestamp.proto",
    ),
    (
        "google.protobuf.DoubleValue",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.FloatValue",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.Int64Value",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.UInt64Value",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.Int32Value",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.UInt32Value",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.BoolValue",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.StringValue",
        "google/protobuf/wrappers.proto",
    ),
    (
        "google.protobuf.BytesValue",
        "google/protobuf/wrappers.proto",
    ),
];

/// Why a writer schema cannot be used with a table; the texts are BigQuery's where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The descriptor does not build (unknown type, duplicate field numbers, ...).
    #[error("Invalid proto schema: {0}")]
    Invalid(String),
    /// Fields with no column (StorageError SCHEMA_MISMATCH_EXTRA_FIELDS).
    #[error("Input schema has more fields than BigQuery schema, extra fields: '{0}'")]
    ExtraFields(String),
    /// A field whose type or repetition the column cannot take.
    #[error(
        "The proto field mismatched with BigQuery field at {message}.{field}, the proto field type {proto}, BigQuery field type {bigquery}"
    )]
    Mismatch {
        message: String,
        field: String,
        proto: String,
        bigquery: &'static str,
    },
}

/// A writer schema checked against a table schema, ready to decode rows.
#[derive(Debug, Clone)]
pub struct WriterSchema {
    message: MessageDescriptor,
    root: BoundMessage,
}

#[derive(Debug, Clone)]
struct BoundMessage {
    fields: Vec<BoundField>,
    /// REQUIRED columns (names within this record) the descriptor has no field for: every row
    /// that has this record misses them.
    required_absent: Vec<String>,
}

#[derive(Debug, Clone)]
struct BoundField {
    proto: FieldDescriptor,
    column: Field,
    sub: Option<BoundMessage>,
}

impl WriterSchema {
    /// Builds the descriptor and binds its fields to the table's columns by name
    /// (case-insensitively, as BigQuery column names are).
    pub fn bind(descriptor: &DescriptorProto, table: &Schema) -> Result<Self, BindError> {
        let message = build(descriptor)?;
        let mut extra = Vec::new();
        let root = bind_message(&message, table, "", &mut extra)?;
        if !extra.is_empty() {
            return Err(BindError::ExtraFields(extra.join(",")));
        }
        Ok(Self { message, root })
    }

    /// Decodes one serialized row into a normalized row (the form `schema::validate_row`
    /// produces), or the row's error message.
    pub fn decode(&self, bytes: &[u8]) -> Result<Map<String, Value>, String> {
        let message = DynamicMessage::decode(self.message.clone(), bytes)
            .map_err(|e| format!("Could not parse the serialized row: {e}"))?;
        record(&self.root, &message, "")
    }
}

/// Builds the descriptor in a file of its own, with type references made relative to it.
fn build(descriptor: &DescriptorProto) -> Result<MessageDescriptor, BindError> {
    let root = descriptor
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| BindError::Invalid("the descriptor has no name".into()))?;
    let mut descriptor = descriptor.clone();
    let mut known = HashSet::new();
    collect_names(&descriptor, &root, &mut known);
    let mut dependencies = Vec::new();
    qualify(&mut descriptor, &root, &known, &mut dependencies)?;
    let file = FileDescriptorProto {
        name: Some(FILE.to_string()),
        syntax: Some("proto2".to_string()),
        dependency: dependencies,
        message_type: vec![descriptor],
        ..FileDescriptorProto::default()
    };
    // The global pool holds the well-known types; this copy of it gets the writer schema.
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file)
        .map_err(|e| BindError::Invalid(e.to_string()))?;
    pool.get_message_by_name(&root)
        .ok_or_else(|| BindError::Invalid(format!("message {root} not found")))
}

/// Full names ("Root", "Root.Nested", ...) of the messages and enums inside the descriptor.
fn collect_names(message: &DescriptorProto, name: &str, known: &mut HashSet<String>) {
    known.insert(name.to_string());
    for nested in &message.nested_type {
        let nested_name = format!("{name}.{}", nested.name());
        collect_names(nested, &nested_name, known);
    }
    for e in &message.enum_type {
        known.insert(format!("{name}.{}", e.name()));
    }
}

/// Rewrites every field's `type_name` to a fully qualified name in the writer schema's file.
/// Clients send the names their own package gave (".pkg.Row.Nested"), or relative ones; either
/// resolves to the nested type whose path is the longest suffix of the name.
fn qualify(
    message: &mut DescriptorProto,
    scope: &str,
    known: &HashSet<String>,
    dependencies: &mut Vec<String>,
) -> Result<(), BindError> {
    for field in &mut message.field {
        // Proto3 `optional` means presence, which proto2 fields have anyway.
        field.proto3_optional = None;
        let Some(name) = field.type_name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        let trimmed = name.trim_start_matches('.');
        if let Some((_, file)) = WELL_KNOWN.iter().find(|(wk, _)| *wk == trimmed) {
            if !dependencies.iter().any(|d| d == file) {
                dependencies.push((*file).to_string());
            }
            field.type_name = Some(format!(".{trimmed}"));
            continue;
        }
        let resolved = resolve(trimmed, !name.starts_with('.'), scope, known).ok_or_else(|| {
            BindError::Invalid(format!("type {name} is not defined in the descriptor"))
        })?;
        field.type_name = Some(format!(".{resolved}"));
    }
    for nested in &mut message.nested_type {
        let nested_scope = format!("{scope}.{}", nested.name());
        qualify(nested, &nested_scope, known, dependencies)?;
    }
    Ok(())
}

fn resolve(name: &str, relative: bool, scope: &str, known: &HashSet<String>) -> Option<String> {
    if relative {
        // Protobuf scoping: innermost scope first.
        let mut prefix = Some(scope);
        while let Some(p) = prefix {
            let candidate = format!("{p}.{name}");
            if known.contains(&candidate) {
                return Some(candidate);
            }
            prefix = p.rsplit_once('.').map(|(parent, _)| parent);
        }
    }
    let parts: Vec<&str> = name.split('.').collect();
    (0..parts.len())
        .map(|i| parts[i..].join("."))
        .find(|candidate| known.contains(candidate))
}

fn bind_message(
    message: &MessageDescriptor,
    table: &Schema,
    path: &str,
    extra: &mut Vec<String>,
) -> Result<BoundMessage, BindError> {
    let mut fields = Vec::new();
    let mut bound_columns = HashSet::new();
    for proto in message.fields() {
        let Some(column) = table.lookup(proto.name()) else {
            extra.push(format!("{path}{}", proto.name()));
            continue;
        };
        let repeated = column.mode == Mode::Repeated;
        if proto.is_map() || proto.is_list() != repeated || !accepts(column.ty, &proto) {
            return Err(BindError::Mismatch {
                message: message.name().to_string(),
                field: proto.name().to_string(),
                proto: proto_type_name(&proto),
                bigquery: column.ty.canonical(),
            });
        }
        let sub = match (&column.sub, proto.kind()) {
            (Some(sub), Kind::Message(m)) => Some(bind_message(
                &m,
                sub,
                &format!("{path}{}.", column.name),
                extra,
            )?),
            _ => None,
        };
        bound_columns.insert(column.name.clone());
        fields.push(BoundField {
            proto,
            column: column.clone(),
            sub,
        });
    }
    let required_absent = table
        .fields
        .iter()
        .filter(|f| f.mode == Mode::Required && !bound_columns.contains(&f.name))
        .map(|f| f.name.clone())
        .collect();
    Ok(BoundMessage {
        fields,
        required_absent,
    })
}

/// The proto type as BigQuery names it in mismatch errors.
fn proto_type_name(field: &FieldDescriptor) -> String {
    match field.kind() {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64".into(),
        Kind::Uint32 | Kind::Fixed32 => "uint32".into(),
        Kind::Uint64 | Kind::Fixed64 => "uint64".into(),
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Enum(_) => "enum".into(),
        Kind::Message(m) if is_well_known(&m) => m.full_name().to_string(),
        Kind::Message(_) => "message".into(),
    }
}

fn is_well_known(m: &MessageDescriptor) -> bool {
    WELL_KNOWN.iter().any(|(name, _)| *name == m.full_name())
}

/// The "Supported protocol buffer data types" table, plus `string` for TIMESTAMP (parsed as
/// insertAll parses it).
fn accepts(ty: FieldType, field: &FieldDescriptor) -> bool {
    let proto = proto_type_name(field);
    let allowed: &[&str] = match ty {
        FieldType::Boolean => &[
            "bool",
            "int32",
            "int64",
            "uint32",
            "uint64",
            "google.protobuf.BoolValue",
        ],
        FieldType::Bytes => &["bytes", "string", "google.protobuf.BytesValue"],
        FieldType::Date => &["int32", "int64", "string"],
        FieldType::Datetime | FieldType::Time => &["string", "int64"],
        FieldType::Float => &[
            "double",
            "float",
            "google.protobuf.DoubleValue",
            "google.protobuf.FloatValue",
        ],
        FieldType::Geography | FieldType::Json => &["string"],
        FieldType::Integer => &[
            "int32",
            "int64",
            "uint32",
            "enum",
            "google.protobuf.Int32Value",
            "google.protobuf.Int64Value",
            "google.protobuf.UInt32Value",
        ],
        FieldType::Numeric | FieldType::BigNumeric => &[
            "int32",
            "int64",
            "uint32",
            "uint64",
            "double",
            "float",
            "string",
            "bytes",
            "google.protobuf.BytesValue",
        ],
        FieldType::String => &["string", "enum", "google.protobuf.StringValue"],
        FieldType::Timestamp => &[
            "int64",
            "int32",
            "uint32",
            "google.protobuf.Timestamp",
            "string",
        ],
        FieldType::Record => &["message"],
    };
    allowed.contains(&proto.as_str())
}

fn record(
    bound: &BoundMessage,
    message: &DynamicMessage,
    path: &str,
) -> Result<Map<String, Value>, String> {
    if let Some(missing) = bound.required_absent.first() {
        return Err(missing_required(&format!("{path}{missing}")));
    }
    let mut out = Map::new();
    for field in &bound.fields {
        let field_path = format!("{path}{}", field.column.name);
        let value = if field.proto.is_list() {
            let items = match &*message.get_field(&field.proto) {
                Proto::List(items) if !items.is_empty() => items.clone(),
                _ => continue,
            };
            let converted = items
                .iter()
                .map(|item| convert(field, item, &field_path))
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(converted)
        } else if message.has_field(&field.proto) {
            convert(field, &message.get_field(&field.proto), &field_path)?
        } else if field.column.mode == Mode::Required {
            return Err(missing_required(&field_path));
        } else {
            continue;
        };
        out.insert(field.column.name.clone(), value);
    }
    Ok(out)
}

fn missing_required(path: &str) -> String {
    format!("Missing required field: {path}.")
}

/// One value of a field, converted for its column.
fn convert(field: &BoundField, value: &Proto, path: &str) -> Result<Value, String> {
    if let (Some(sub), Proto::Message(m)) = (&field.sub, value) {
        return record(sub, m, &format!("{path}.")).map(Value::Object);
    }
    let value = unwrap_wrapper(value);
    let column = &field.column;
    let text = match column.ty {
        FieldType::Integer => as_i128(&value).map(|i| i.to_string()),
        FieldType::Float => match value {
            Proto::F64(f) => Some(float_text(f)),
            Proto::F32(f) => Some(float_text(f64::from(f))),
            _ => None,
        },
        FieldType::Boolean => match value {
            Proto::Bool(b) => Some(b.to_string()),
            ref other => as_i128(other).map(|i| (i != 0).to_string()),
        },
        FieldType::String => match value {
            Proto::String(ref s) => Some(s.clone()),
            Proto::EnumNumber(n) => Some(enum_name(&field.proto, n, path)?),
            _ => None,
        },
        FieldType::Bytes => match value {
            Proto::Bytes(ref b) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
            Proto::String(ref s) => Some(base64::engine::general_purpose::STANDARD.encode(s)),
            _ => None,
        },
        FieldType::Geography => match value {
            Proto::String(ref s) => Some(s.clone()),
            _ => None,
        },
        FieldType::Json => match value {
            Proto::String(ref s) => Some(
                serde_json::from_str::<Value>(s)
                    .map_err(|e| format!("Invalid JSON string '{s}': {e} on field {path}."))?
                    .to_string(),
            ),
            _ => None,
        },
        FieldType::Timestamp => Some(timestamp(&value, path)?),
        FieldType::Date => Some(date(&value, path)?),
        FieldType::Datetime => Some(datetime(&value, path)?),
        FieldType::Time => Some(time(&value, path)?),
        FieldType::Numeric => Some(decimal(&value, Decimal::NUMERIC, path)?),
        FieldType::BigNumeric => Some(decimal(&value, Decimal::BIGNUMERIC, path)?),
        FieldType::Record => None,
    };
    let text = text.ok_or_else(|| {
        format!(
            "Value of type {} cannot be written to {} field {path}.",
            proto_type_name(&field.proto),
            column.ty.canonical()
        )
    })?;
    check_length(column, &value, &text, path)?;
    Ok(Value::String(text))
}

/// `google.protobuf.*Value` wrappers stand for their `value` field (its default when unset).
fn unwrap_wrapper(value: &Proto) -> Proto {
    match value {
        Proto::Message(m) if m.descriptor().full_name() != "google.protobuf.Timestamp" => m
            .get_field_by_name("value")
            .map_or_else(|| value.clone(), |v| v.into_owned()),
        other => other.clone(),
    }
}

fn as_i128(value: &Proto) -> Option<i128> {
    match value {
        Proto::I32(i) => Some(i128::from(*i)),
        Proto::I64(i) => Some(i128::from(*i)),
        Proto::U32(u) => Some(i128::from(*u)),
        Proto::U64(u) => Some(i128::from(*u)),
        Proto::EnumNumber(n) => Some(i128::from(*n)),
        _ => None,
    }
}

fn enum_name(proto: &FieldDescriptor, number: i32, path: &str) -> Result<String, String> {
    let Kind::Enum(e) = proto.kind() else {
        return Ok(number.to_string());
    };
    e.get_value(number)
        .map(|v| v.name().to_string())
        .ok_or_else(|| format!("Invalid enum value {number} on field {path}."))
}

/// FLOAT as tabledata.list shows it (insertAll's normalization), with IEEE specials spelled out.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format_float(f)
    }
}

/// STRING(L) and BYTES(L) limits; the message is BigQuery's (observed in googleapis'
/// java-bigquerystorage integration test `testRowErrors`).
fn check_length(column: &Field, value: &Proto, text: &str, path: &str) -> Result<(), String> {
    let Some(max) = column.max_length else {
        return Ok(());
    };
    let (label, len) = match (column.ty, value) {
        (FieldType::String, _) => ("STRING", text.chars().count() as u64),
        (FieldType::Bytes, Proto::Bytes(b)) => ("BYTES", b.len() as u64),
        (FieldType::Bytes, Proto::String(s)) => ("BYTES", s.len() as u64),
        _ => return Ok(()),
    };
    if len > max {
        return Err(format!(
            "Field {path}: {label}({max}) has maximum length {max} but got a value with length {len} on field {path}."
        ));
    }
    Ok(())
}

/// 0001-01-01 00:00:00 and 9999-12-31 23:59:59.999999 UTC in microseconds.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// TIMESTAMP: microseconds since the epoch, a google.protobuf.Timestamp, or text. The range
/// message is BigQuery's (observed: "Timestamp field value is out of range: -9223372036854775808
/// on field bar." for a Timestamp whose seconds were i64::MIN).
fn timestamp(value: &Proto, path: &str) -> Result<String, String> {
    let out_of_range = |shown: &dyn std::fmt::Display| {
        format!("Timestamp field value is out of range: {shown} on field {path}.")
    };
    let micros = match value {
        Proto::Message(m) => {
            let seconds = match m.get_field_by_name("seconds").as_deref() {
                Some(Proto::I64(s)) => *s,
                _ => 0,
            };
            let nanos = match m.get_field_by_name("nanos").as_deref() {
                Some(Proto::I32(n)) => *n,
                _ => 0,
            };
            seconds
                .checked_mul(1_000_000)
                .and_then(|m| m.checked_add(i64::from(nanos / 1_000)))
                .filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m))
                .ok_or_else(|| out_of_range(&seconds))?
        }
        Proto::String(s) => convert_timestamp(&Value::String(s.clone()))
            .filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m))
            .ok_or_else(|| format!("Could not parse '{s}' as a timestamp on field {path}."))?,
        other => {
            let micros = as_i128(other).unwrap_or_default();
            i64::try_from(micros)
                .ok()
                .filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m))
                .ok_or_else(|| out_of_range(&micros))?
        }
    };
    Ok(micros.to_string())
}

/// DATE: days since 1970-01-01 in -719162 (0001-01-01) ..= 2932896 (9999-12-31), or text.
fn date(value: &Proto, path: &str) -> Result<String, String> {
    if let Proto::String(s) = value {
        return parse_date(s)
            .ok_or_else(|| format!("Could not parse '{s}' as a date on field {path}."));
    }
    let days = as_i128(value).unwrap_or_default();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    i64::try_from(days)
        .ok()
        .filter(|d| (-719_162..=2_932_896).contains(d))
        .and_then(|d| epoch.checked_add_signed(chrono::Duration::days(d)))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .ok_or_else(|| format!("Date field value is out of range: {days} on field {path}."))
}

/// DATETIME: text, or Google's CivilTimeEncoder packed int64 (year 14 bits, month 4, day 5,
/// hour 5, minute 6, second 6, then 20 bits of microseconds).
fn datetime(value: &Proto, path: &str) -> Result<String, String> {
    let invalid =
        |shown: &dyn std::fmt::Display| format!("Invalid datetime value {shown} on field {path}.");
    let packed = match value {
        Proto::String(s) => return parse_datetime(s).ok_or_else(|| invalid(&format!("'{s}'"))),
        other => as_i128(other).unwrap_or_default(),
    };
    let bits = u64::try_from(packed).map_err(|_| invalid(&packed))?;
    let seconds_part = bits >> 20;
    let field = |shift: u32, width: u32| ((seconds_part >> shift) & ((1 << width) - 1)) as u32;
    let (year, month, day) = (field(26, 14), field(22, 4), field(17, 5));
    if seconds_part >> 40 != 0 || year == 0 {
        return Err(invalid(&packed));
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| invalid(&packed))?;
    let t = civil_time(seconds_part & 0x1_FFFF, bits & 0xF_FFFF).ok_or_else(|| invalid(&packed))?;
    Ok(format_civil(
        format!("{}T{}", date.format("%Y-%m-%d"), t.format("%H:%M:%S")),
        t,
    ))
}

/// TIME: text, or CivilTimeEncoder's packed int64 (hour 5 bits, minute 6, second 6, then 20 bits
/// of microseconds).
fn time(value: &Proto, path: &str) -> Result<String, String> {
    let invalid =
        |shown: &dyn std::fmt::Display| format!("Invalid time value {shown} on field {path}.");
    let packed = match value {
        Proto::String(s) => return parse_time(s).ok_or_else(|| invalid(&format!("'{s}'"))),
        other => as_i128(other).unwrap_or_default(),
    };
    let bits = u64::try_from(packed).map_err(|_| invalid(&packed))?;
    if bits >> 37 != 0 {
        return Err(invalid(&packed));
    }
    let t = civil_time(bits >> 20, bits & 0xF_FFFF).ok_or_else(|| invalid(&packed))?;
    Ok(format_civil(t.format("%H:%M:%S").to_string(), t))
}

/// hour << 12 | minute << 6 | second, and microseconds.
fn civil_time(seconds_part: u64, micros: u64) -> Option<NaiveTime> {
    let (hour, minute, second) = (
        (seconds_part >> 12) & 0x1F,
        (seconds_part >> 6) & 0x3F,
        seconds_part & 0x3F,
    );
    NaiveTime::from_hms_micro_opt(hour as u32, minute as u32, second as u32, micros as u32)
}

/// NUMERIC and BIGNUMERIC: their scale, largest magnitude and the name errors use.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    scale: usize,
    /// Largest positive value's integer and fraction digits (the negative limit is the same
    /// magnitude, or one unit more for BIGNUMERIC, which is a two's complement 256-bit integer).
    max_int: &'static str,
    max_frac: &'static str,
    name: &'static str,
}

impl Decimal {
    const NUMERIC: Self = Self {
        scale: 9,
        max_int: "99999999999999999999999999999",
        max_frac: "999999999",
        name: "Numeric",
    };
    const BIGNUMERIC: Self = Self {
        scale: 38,
        max_int: "578960446186580977117854925043439539266",
        max_frac: "34992332820282019728792003956564819967",
        name: "BigNumeric",
    };
}

/// A decimal from any accepted proto type, as BigQuery renders it: plain notation, no
/// insignificant zeros ("123.4", "-9000000").
fn decimal(value: &Proto, kind: Decimal, path: &str) -> Result<String, String> {
    let out_of_range = |shown: &str| {
        format!(
            "{} field value is out of range: {shown} on field {path}.",
            kind.name
        )
    };
    let text = match value {
        Proto::String(s) => s.trim().to_string(),
        Proto::F64(f) if f.is_finite() => f.to_string(),
        Proto::F32(f) if f.is_finite() => f.to_string(),
        Proto::F64(f) => return Err(out_of_range(&f.to_string())),
        Proto::F32(f) => return Err(out_of_range(&f.to_string())),
        // Google's BigDecimalByteStringEncoder: the value times 10^scale as a little-endian
        // two's complement integer. Anything wider than 256 bits is out of range for both types
        // (and is refused before a quadratic conversion to decimal text).
        Proto::Bytes(b) => {
            let b = without_sign_extension(b);
            if b.len() > 32 {
                return Err(out_of_range(&format!("a {}-byte value", b.len())));
            }
            scaled(
                &num_bigint::BigInt::from_signed_bytes_le(b).to_string(),
                kind.scale,
            )
        }
        other => as_i128(other).unwrap_or_default().to_string(),
    };
    let (negative, int, frac) = split_decimal(&text)
        .ok_or_else(|| format!("Invalid {} value '{text}' on field {path}.", kind.name))?;
    if frac.len() > kind.scale || !within(&int, &frac, negative, kind) {
        return Err(out_of_range(&text));
    }
    let sign = if negative && (int != "0" || !frac.is_empty()) {
        "-"
    } else {
        ""
    };
    Ok(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// A little-endian two's complement integer without its redundant high bytes (0x00 above a
/// byte whose top bit is clear, 0xFF above one whose top bit is set).
fn without_sign_extension(bytes: &[u8]) -> &[u8] {
    let mut len = bytes.len();
    while len >= 2 {
        let (top, next) = (bytes[len - 1], bytes[len - 2]);
        let redundant = (top == 0x00 && next & 0x80 == 0) || (top == 0xFF && next & 0x80 != 0);
        if !redundant {
            break;
        }
        len -= 1;
    }
    &bytes[..len]
}

/// Inserts the decimal point `scale` digits from the right of an integer's text.
fn scaled(integer: &str, scale: usize) -> String {
    let (sign, digits) = integer
        .strip_prefix('-')
        .map_or(("", integer), |d| ("-", d));
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Splits decimal text (optionally signed, optionally with an exponent) into sign, integer
/// digits without leading zeros ("0" when none) and fraction digits without trailing zeros.
fn split_decimal(text: &str) -> Option<(bool, String, String)> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || exponent.unsigned_abs() > 1000
    {
        return None;
    }
    // Shift the point by the exponent over the digit string.
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + i64::from(exponent);
    let (int, frac) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        let (i, f) = digits.split_at(point as usize);
        (i.to_string(), f.to_string())
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    Some((
        negative,
        int.to_string(),
        frac.trim_end_matches('0').to_string(),
    ))
}

/// Whether |value| is within the type's range.
fn within(int: &str, frac: &str, negative: bool, kind: Decimal) -> bool {
    if int.len() != kind.max_int.len() {
        return int.len() < kind.max_int.len();
    }
    let padded = format!("{frac:0<width$}", width = kind.scale);
    let value = (int, padded.as_str());
    let max = (kind.max_int, kind.max_frac);
    // BIGNUMERIC's most negative value is one unit (10^-38) beyond the positive maximum.
    value <= max
        || (negative
            && kind.scale == 38
            && value == (kind.max_int, "34992332820282019728792003956564819968"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FieldJson;
    use prost::Message;
    use prost_types::{
        FieldDescriptorProto,
        field_descriptor_proto::{Label, Type},
    };
    use serde_json::json;

    fn table(fields: Value) -> Schema {
        let fields: Vec<FieldJson> = serde_json::from_value(fields).unwrap();
        Schema::from_json(&fields).unwrap()
    }

    fn field(name: &str, number: i32, ty: Type, label: Label) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            label: Some(label as i32),
            ..FieldDescriptorProto::default()
        }
    }

    fn message_field(
        name: &str,
        number: i32,
        type_name: &str,
        label: Label,
    ) -> FieldDescriptorProto {
        FieldDescriptorProto {
            type_name: Some(type_name.into()),
            ..field(name, number, Type::Message, label)
        }
    }

    /// Encodes a row with the descriptor's own pool, as a client library would.
    fn encode(schema: &WriterSchema, set: impl FnOnce(&mut DynamicMessage)) -> Vec<u8> {
        let mut m = DynamicMessage::new(schema.message.clone());
        set(&mut m);
        m.encode_to_vec()
    }

    #[test]
    fn nested_types_resolve_from_package_qualified_names() {
        let descriptor = DescriptorProto {
            name: Some("Row".into()),
            field: vec![
                field("name", 1, Type::String, Label::Optional),
                message_field("inner", 2, ".my.pkg.Row.Inner", Label::Repeated),
            ],
            nested_type: vec![DescriptorProto {
                name: Some("Inner".into()),
                field: vec![field("v", 1, Type::Int64, Label::Optional)],
                ..DescriptorProto::default()
            }],
            ..DescriptorProto::default()
        };
        let t = table(json!([
            {"name": "name", "type": "STRING", "mode": "REQUIRED"},
            {"name": "inner", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "V", "type": "INTEGER"}]}
        ]));
        let schema = WriterSchema::bind(&descriptor, &t).unwrap();
        let inner = schema.message.get_field_by_name("inner").unwrap();
        let Kind::Message(inner_desc) = inner.kind() else {
            panic!()
        };
        let row = encode(&schema, |m| {
            m.set_field_by_name("name", Proto::String("x".into()));
            let mut i = DynamicMessage::new(inner_desc.clone());
            i.set_field_by_name("v", Proto::I64(7));
            m.set_field_by_name("inner", Proto::List(vec![Proto::Message(i)]));
        });
        assert_eq!(
            Value::Object(schema.decode(&row).unwrap()),
            json!({"name": "x", "inner": [{"V": "7"}]})
        );
        let missing = encode(&schema, |_| {});
        assert_eq!(
            schema.decode(&missing).unwrap_err(),
            "Missing required field: name."
        );
    }

    #[test]
    fn required_columns_are_reported_with_their_path() {
        let descriptor = DescriptorProto {
            name: Some("Row".into()),
            field: vec![message_field("r", 1, "Row.Inner", Label::Optional)],
            nested_type: vec![DescriptorProto {
                name: Some("Inner".into()),
                field: vec![field("a", 1, Type::String, Label::Optional)],
                ..DescriptorProto::default()
            }],
            ..DescriptorProto::default()
        };
        let t = table(json!([{"name": "r", "type": "RECORD", "fields": [
            {"name": "a", "type": "STRING"},
            {"name": "b", "type": "STRING", "mode": "REQUIRED"}
        ]}]));
        let schema = WriterSchema::bind(&descriptor, &t).unwrap();
        // A NULL record needs none of its REQUIRED fields.
        assert_eq!(schema.decode(&encode(&schema, |_| {})).unwrap(), Map::new());
        let r = schema.message.get_field_by_name("r").unwrap();
        let Kind::Message(inner) = r.kind() else {
            panic!()
        };
        let row = encode(&schema, |m| {
            m.set_field_by_name("r", Proto::Message(DynamicMessage::new(inner.clone())));
        });
        assert_eq!(
            schema.decode(&row).unwrap_err(),
            "Missing required field: r.b."
        );
    }

    #[test]
    fn extra_fields_and_type_mismatches_are_refused() {
        let t = table(json!([{"name": "a", "type": "STRING"}]));
        let extra = DescriptorProto {
            name: Some("Row".into()),
            field: vec![
                field("a", 1, Type::String, Label::Optional),
                field("b", 2, Type::String, Label::Optional),
            ],
            ..DescriptorProto::default()
        };
        assert_eq!(
            WriterSchema::bind(&extra, &t).unwrap_err().to_string(),
            "Input schema has more fields than BigQuery schema, extra fields: 'b'"
        );
        let mismatch = DescriptorProto {
            name: Some("Row".into()),
            field: vec![field("a", 1, Type::Bool, Label::Optional)],
            ..DescriptorProto::default()
        };
        assert_eq!(
            WriterSchema::bind(&mismatch, &t).unwrap_err().to_string(),
            "The proto field mismatched with BigQuery field at Row.a, the proto field type bool, BigQuery field type STRING"
        );
    }

    #[test]
    fn civil_times_unpack_as_civil_time_encoder_packs_them() {
        // CivilTimeEncoder.encodePacked64DatetimeMicros(2020-10-01T12:00) and a time with micros.
        let packed_datetime: i64 = ((2020 << 26) | (10 << 22) | (1 << 17) | (12 << 12)) << 20;
        assert_eq!(
            datetime(&Proto::I64(packed_datetime), "f").unwrap(),
            "2020-10-01T12:00:00"
        );
        let packed_time: i64 = (((13 << 12) | (14 << 6) | 15) << 20) | 16;
        assert_eq!(
            time(&Proto::I64(packed_time), "f").unwrap(),
            "13:14:15.000016"
        );
        assert!(datetime(&Proto::I64(-1), "f").is_err());
        assert!(time(&Proto::I64(24 << 32), "f").is_err());
    }

    #[test]
    fn decimals_decode_from_every_encoding() {
        // BigDecimalByteStringEncoder.encodeToNumericByteString(-9000000): -9e15 little-endian.
        let bytes = (-9_000_000i128 * 1_000_000_000).to_le_bytes();
        let n = Decimal::NUMERIC;
        assert_eq!(
            decimal(&Proto::Bytes(bytes[..8].to_vec().into()), n, "f").unwrap(),
            "-9000000"
        );
        assert_eq!(
            decimal(&Proto::String("123.400".into()), n, "f").unwrap(),
            "123.4"
        );
        assert_eq!(decimal(&Proto::F64(1.5e-3), n, "f").unwrap(), "0.0015");
        assert_eq!(decimal(&Proto::I64(-42), n, "f").unwrap(), "-42");
        assert!(decimal(&Proto::String("1e29".into()), n, "f").is_err());
        // Sign-extension bytes do not count; a genuinely wider value is refused at once.
        let mut padded = bytes.to_vec();
        padded.resize(64, 0xFF);
        assert_eq!(
            decimal(&Proto::Bytes(padded.into()), n, "f").unwrap(),
            "-9000000"
        );
        let mut huge = vec![0x7F; 1 << 20];
        huge.push(0);
        assert!(decimal(&Proto::Bytes(huge.into()), n, "f").is_err());
        assert!(decimal(&Proto::String("0.0000000001".into()), n, "f").is_err());
        let big = Decimal::BIGNUMERIC;
        let max = "578960446186580977117854925043439539266.34992332820282019728792003956564819967";
        assert_eq!(decimal(&Proto::String(max.into()), big, "f").unwrap(), max);
        let min = format!("-{}8", &max[..max.len() - 1]);
        assert_eq!(decimal(&Proto::String(min.clone()), big, "f").unwrap(), min);
        assert!(
            decimal(
                &Proto::String(format!("{}8", &max[..max.len() - 1])),
                big,
                "f"
            )
            .is_err()
        );
    }

    #[test]
    fn timestamps_and_dates_check_bigquerys_range() {
        assert_eq!(
            timestamp(&Proto::I64(1_600_000_000_000_000), "t").unwrap(),
            "1600000000000000"
        );
        assert_eq!(
            timestamp(&Proto::I64(i64::MIN), "bar").unwrap_err(),
            "Timestamp field value is out of range: -9223372036854775808 on field bar."
        );
        assert_eq!(date(&Proto::I32(-719_162), "d").unwrap(), "0001-01-01");
        assert_eq!(date(&Proto::I32(2_932_896), "d").unwrap(), "9999-12-31");
        assert!(date(&Proto::I32(2_932_897), "d").is_err());
    }
}
