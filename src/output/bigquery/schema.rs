//! BigQuery table schemas: parsed once from the JSON users write (schema files, the plugin's
//! `schema` parameter, `tables.get` answers) into plain typed data; never touches rows or I/O.

use serde_json::{Map, Value, json};

/// A column type. Aliases are folded into one variant when parsing; `as_str` gives the name
/// `tables.insert` documents (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Bytes,
    Integer,
    Float,
    Numeric,
    BigNumeric,
    Boolean,
    Timestamp,
    Date,
    Time,
    DateTime,
    Geography,
    Json,
    Record,
}

impl FieldType {
    /// Case-insensitive. Besides the legacy names and the standard-SQL names the REST API
    /// accepts (INT64, FLOAT64, BOOL, STRUCT), the GoogleSQL parameterized-type aliases
    /// (INT, BIGINT, DECIMAL, BIGDECIMAL, ...) are accepted, since users copy them from DDL.
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        Some(match upper.as_str() {
            "STRING" => Self::String,
            "BYTES" => Self::Bytes,
            "INTEGER" | "INT64" | "INT" | "SMALLINT" | "BIGINT" | "TINYINT" | "BYTEINT" => {
                Self::Integer
            }
            "FLOAT" | "FLOAT64" => Self::Float,
            "NUMERIC" | "DECIMAL" => Self::Numeric,
            "BIGNUMERIC" | "BIGDECIMAL" => Self::BigNumeric,
            "BOOLEAN" | "BOOL" => Self::Boolean,
            "TIMESTAMP" => Self::Timestamp,
            "DATE" => Self::Date,
            "TIME" => Self::Time,
            "DATETIME" => Self::DateTime,
            "GEOGRAPHY" => Self::Geography,
            "JSON" => Self::Json,
            "RECORD" | "STRUCT" => Self::Record,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Bytes => "BYTES",
            Self::Integer => "INTEGER",
            Self::Float => "FLOAT",
            Self::Numeric => "NUMERIC",
            Self::BigNumeric => "BIGNUMERIC",
            Self::Boolean => "BOOLEAN",
            Self::Timestamp => "TIMESTAMP",
            Self::Date => "DATE",
            Self::Time => "TIME",
            Self::DateTime => "DATETIME",
            Self::Geography => "GEOGRAPHY",
            Self::Json => "JSON",
            Self::Record => "RECORD",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldMode {
    Nullable,
    Required,
    Repeated,
}

impl FieldMode {
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        Some(match upper.as_str() {
            "NULLABLE" => Self::Nullable,
            "REQUIRED" => Self::Required,
            "REPEATED" => Self::Repeated,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nullable => "NULLABLE",
            Self::Required => "REQUIRED",
            Self::Repeated => "REPEATED",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub field_type: FieldType,
    pub mode: FieldMode,
    /// Sub-fields of a RECORD; empty for every other type.
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub fields: Vec<Field>,
}

/// BigQuery's limit on column name length (flexible column names allow up to 300 characters).
const MAX_NAME_LEN: usize = 300;

impl Schema {
    /// BigQuery JSON schema: either the array form `[{"name","type","mode","fields"}]` (as in
    /// schema files and fluent-plugin-bigquery's `schema` parameter) or the table resource form
    /// `{"fields":[...]}` (a whole `tables.get` answer, `{"schema":{"fields":[...]}}`, also
    /// works). Type names as BigQuery accepts them incl. legacy/standard aliases,
    /// case-insensitive; mode default NULLABLE. Other keys (description, policyTags...) are
    /// ignored. Errors name the field path.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let list = match value {
            Value::Array(list) => list,
            Value::Object(obj) => match (obj.get("fields"), obj.get("schema")) {
                (Some(Value::Array(list)), _) => list,
                (Some(_), _) => return Err("schema: \"fields\" must be an array".into()),
                (None, Some(inner @ Value::Object(_))) => return Self::from_json(inner),
                (None, _) => return Err("schema: object has no \"fields\" array".into()),
            },
            _ => return Err("schema: expected an array of fields or {\"fields\": [...]}".into()),
        };
        Ok(Self {
            fields: parse_fields(list, "")?,
        })
    }

    /// A schema file (`schema_path`), with the path in every error.
    pub fn from_file(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("schema_path {path}: {e}"))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("schema_path {path} is not JSON: {e}"))?;
        Self::from_json(&json).map_err(|e| format!("schema_path {path}: {e}"))
    }

    /// The `{"fields":[...]}` form for `tables.insert`, with canonical type and mode names.
    pub fn to_json(&self) -> Value {
        json!({ "fields": fields_to_json(&self.fields) })
    }

    /// The top-level field called `name`; BigQuery column names are case-insensitive.
    pub fn field(&self, name: &str) -> Option<&Field> {
        find_field(&self.fields, name.as_bytes())
    }
}

/// The index of the field called `name` (ASCII case ignored).
pub(crate) fn field_index(fields: &[Field], name: &[u8]) -> Option<usize> {
    fields
        .iter()
        .position(|f| f.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Looks a field up by name, ignoring ASCII case as BigQuery does for column names.
pub(crate) fn find_field<'s>(fields: &'s [Field], name: &[u8]) -> Option<&'s Field> {
    fields
        .iter()
        .find(|f| f.name.as_bytes().eq_ignore_ascii_case(name))
}

fn parse_fields(list: &[Value], parent: &str) -> Result<Vec<Field>, String> {
    let mut fields: Vec<Field> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let field = parse_field(item, parent, i)?;
        if find_field(&fields, field.name.as_bytes()).is_some() {
            return Err(format!(
                "schema field '{}': duplicate name (BigQuery column names are case-insensitive)",
                join(parent, &field.name)
            ));
        }
        fields.push(field);
    }
    Ok(fields)
}

fn parse_field(item: &Value, parent: &str, index: usize) -> Result<Field, String> {
    let unnamed = || {
        if parent.is_empty() {
            format!("#{index}")
        } else {
            format!("{parent}.#{index}")
        }
    };
    let Value::Object(obj) = item else {
        return Err(format!("schema field {}: expected an object", unnamed()));
    };
    let name = match obj.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => return Err(format!("schema field {}: missing \"name\"", unnamed())),
    };
    let path = join(parent, &name);
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "schema field '{path}': name longer than {MAX_NAME_LEN} characters"
        ));
    }
    let field_type = match str_key(obj, "type", &path)? {
        Some(t) => FieldType::from_name(t)
            .ok_or_else(|| format!("schema field '{path}': unknown type '{t}'"))?,
        None => return Err(format!("schema field '{path}': missing \"type\"")),
    };
    let mode = match str_key(obj, "mode", &path)? {
        Some(m) => FieldMode::from_name(m)
            .ok_or_else(|| format!("schema field '{path}': unknown mode '{m}'"))?,
        None => FieldMode::Nullable,
    };
    let fields = match obj.get("fields") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => parse_fields(list, &path)?,
        Some(_) => {
            return Err(format!(
                "schema field '{path}': \"fields\" must be an array"
            ));
        }
    };
    match (field_type, fields.is_empty()) {
        (FieldType::Record, true) => Err(format!(
            "schema field '{path}': RECORD needs at least one sub-field"
        )),
        (t, false) if t != FieldType::Record => Err(format!(
            "schema field '{path}': only RECORD fields may have sub-fields, not {}",
            t.as_str()
        )),
        _ => Ok(Field {
            name,
            field_type,
            mode,
            fields,
        }),
    }
}

fn str_key<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'v str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("schema field '{path}': \"{key}\" must be a string")),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn fields_to_json(fields: &[Field]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| {
                let mut obj = Map::new();
                obj.insert("name".into(), f.name.clone().into());
                obj.insert("type".into(), f.field_type.as_str().into());
                obj.insert("mode".into(), f.mode.as_str().into());
                if !f.fields.is_empty() {
                    obj.insert("fields".into(), fields_to_json(&f.fields));
                }
                Value::Object(obj)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, field_type: FieldType, mode: FieldMode) -> Field {
        Field {
            name: name.into(),
            field_type,
            mode,
            fields: Vec::new(),
        }
    }

    #[test]
    fn every_type_name_and_alias_parses_case_insensitively() {
        use FieldType::*;
        let cases = [
            ("STRING", String),
            ("string", String),
            ("BYTES", Bytes),
            ("INTEGER", Integer),
            ("INT64", Integer),
            ("int", Integer),
            ("SMALLINT", Integer),
            ("BIGINT", Integer),
            ("TINYINT", Integer),
            ("BYTEINT", Integer),
            ("FLOAT", Float),
            ("Float64", Float),
            ("NUMERIC", Numeric),
            ("DECIMAL", Numeric),
            ("BIGNUMERIC", BigNumeric),
            ("BigDecimal", BigNumeric),
            ("BOOLEAN", Boolean),
            ("bool", Boolean),
            ("TIMESTAMP", Timestamp),
            ("DATE", Date),
            ("TIME", Time),
            ("DATETIME", DateTime),
            ("GEOGRAPHY", Geography),
            ("json", Json),
            ("RECORD", Record),
            ("struct", Record),
        ];
        for (name, want) in cases {
            assert_eq!(FieldType::from_name(name), Some(want), "{name}");
            let fields = if want == Record {
                json!([{"name": "x", "type": "STRING"}])
            } else {
                Value::Null
            };
            let schema =
                Schema::from_json(&json!([{"name": "f", "type": name, "fields": fields}])).unwrap();
            assert_eq!(schema.fields[0].field_type, want, "{name}");
            // The canonical name parses back to the same type.
            assert_eq!(FieldType::from_name(want.as_str()), Some(want));
        }
        assert_eq!(FieldType::from_name("RANGE"), None);
    }

    #[test]
    fn array_and_table_resource_forms_parse_alike() {
        let list = json!([
            {"name": "msg", "type": "STRING", "mode": "required", "description": "ignored"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "http", "type": "RECORD", "fields": [
                {"name": "status", "type": "INT64"},
                {"name": "headers", "type": "STRUCT", "mode": "REPEATED", "fields": [
                    {"name": "k", "type": "STRING"}, {"name": "v", "type": "STRING"}]}
            ]}
        ]);
        let a = Schema::from_json(&list).unwrap();
        let b = Schema::from_json(&json!({ "fields": list })).unwrap();
        let c = Schema::from_json(&json!({"kind": "bigquery#table", "schema": { "fields": list }}))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.fields[0].mode, FieldMode::Required);
        assert_eq!(a.fields[1].mode, FieldMode::Repeated);
        assert_eq!(a.fields[2].mode, FieldMode::Nullable);
        let http = a.field("HTTP").unwrap();
        assert_eq!(
            http.fields[1].fields[1],
            field("v", FieldType::String, FieldMode::Nullable)
        );
        assert!(a.field("nope").is_none());
    }

    #[test]
    fn to_json_gives_canonical_names_and_parses_back() {
        let schema = Schema::from_json(&json!([
            {"name": "n", "type": "int64"},
            {"name": "r", "type": "struct", "mode": "repeated", "fields": [{"name": "b", "type": "bool"}]}
        ]))
        .unwrap();
        let value = schema.to_json();
        assert_eq!(
            value,
            json!({"fields": [
                {"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
                {"name": "r", "type": "RECORD", "mode": "REPEATED", "fields": [
                    {"name": "b", "type": "BOOLEAN", "mode": "NULLABLE"}]}
            ]})
        );
        assert_eq!(Schema::from_json(&value).unwrap(), schema);
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases = [
            (json!("x"), "expected an array"),
            (json!({"nofields": 1}), "no \"fields\""),
            (json!([1]), "field #0: expected an object"),
            (json!([{"type": "STRING"}]), "field #0: missing \"name\""),
            (json!([{"name": "a"}]), "'a': missing \"type\""),
            (
                json!([{"name": "a", "type": "VARCHAR"}]),
                "'a': unknown type 'VARCHAR'",
            ),
            (
                json!([{"name": "a", "type": "STRING", "mode": "OPTIONAL"}]),
                "'a': unknown mode",
            ),
            (
                json!([{"name": "a", "type": 3}]),
                "'a': \"type\" must be a string",
            ),
            (
                json!([{"name": "a", "type": "RECORD"}]),
                "'a': RECORD needs",
            ),
            (
                json!([{"name": "a", "type": "STRING", "fields": [{"name": "b", "type": "STRING"}]}]),
                "'a': only RECORD",
            ),
            (
                json!([{"name": "a", "type": "RECORD", "fields": [{"name": "b", "type": "NOPE"}]}]),
                "'a.b': unknown type",
            ),
            (
                json!([{"name": "a", "type": "RECORD", "fields": [{"name": "b", "type": "INT64"}, {"name": "B", "type": "INT64"}]}]),
                "'a.B': duplicate name",
            ),
            (
                json!([{"name": "x".repeat(301), "type": "STRING"}]),
                "longer than 300",
            ),
        ];
        for (input, want) in cases {
            let err = Schema::from_json(&input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
