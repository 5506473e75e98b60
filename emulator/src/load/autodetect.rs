// Owns schema auto-detection for load jobs (`autodetect: true`): column types from JSON values or
// CSV cells, and whether a CSV file's first row is a header. Pure: no I/O.
//
// <https://cloud.google.com/bigquery/docs/schema-detect>: BigQuery samples the data (up to 500
// rows here), gives every column NULLABLE (REPEATED for arrays), widens INTEGER and FLOAT to
// FLOAT, and falls back to STRING when values disagree. Columns of CSV data without a header are
// named `string_field_0`, `int64_field_1`, … by type and position.

use serde_json::{Map, Value};

use crate::schema::{FieldJson, convert_timestamp};

/// Rows looked at to detect a schema.
pub const SAMPLE_ROWS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Only nulls (or empty arrays) so far.
    Unknown,
    Boolean,
    Integer,
    Float,
    Timestamp,
    Date,
    Time,
    String,
    Record(Vec<(String, Column)>),
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    kind: Kind,
    repeated: bool,
}

impl Kind {
    fn merge(self, other: Kind) -> Kind {
        match (self, other) {
            (Kind::Unknown, k) | (k, Kind::Unknown) => k,
            (a, b) if a == b => a,
            (Kind::Integer, Kind::Float) | (Kind::Float, Kind::Integer) => Kind::Float,
            (Kind::Record(mut a), Kind::Record(b)) => {
                for (name, col) in b {
                    merge_column(&mut a, name, col);
                }
                Kind::Record(a)
            }
            _ => Kind::String,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Kind::Unknown | Kind::String => "STRING",
            Kind::Boolean => "BOOLEAN",
            Kind::Integer => "INTEGER",
            Kind::Float => "FLOAT",
            Kind::Timestamp => "TIMESTAMP",
            Kind::Date => "DATE",
            Kind::Time => "TIME",
            Kind::Record(_) => "RECORD",
        }
    }

    /// The prefix of a generated CSV column name.
    fn csv_prefix(&self) -> &'static str {
        match self {
            Kind::Unknown | Kind::String | Kind::Record(_) => "string",
            Kind::Boolean => "bool",
            Kind::Integer => "int64",
            Kind::Float => "double",
            Kind::Timestamp => "timestamp",
            Kind::Date => "date",
            Kind::Time => "time",
        }
    }
}

fn merge_column(columns: &mut Vec<(String, Column)>, name: String, col: Column) {
    match columns
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
    {
        Some((_, existing)) => {
            let kind = std::mem::replace(&mut existing.kind, Kind::Unknown);
            existing.kind = kind.merge(col.kind);
            existing.repeated |= col.repeated;
        }
        None => columns.push((name, col)),
    }
}

/// The type a text value looks like (CSV cells and JSON strings).
fn text_kind(s: &str, booleans: bool) -> Kind {
    let t = s.trim();
    if t.is_empty() {
        return Kind::Unknown;
    }
    if booleans && (t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false")) {
        return Kind::Boolean;
    }
    if booleans && t.parse::<i64>().is_ok() {
        return Kind::Integer;
    }
    if booleans && t.parse::<f64>().is_ok_and(f64::is_finite) {
        return Kind::Float;
    }
    if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
        return Kind::Date;
    }
    if chrono::NaiveTime::parse_from_str(t, "%H:%M:%S%.f").is_ok() {
        return Kind::Time;
    }
    // A civil date and time (with or without a zone): what TIMESTAMP columns accept.
    let has_time = t.len() > 10
        && t.as_bytes()
            .get(10)
            .is_some_and(|b| *b == b' ' || *b == b'T');
    if has_time
        && t.parse::<f64>().is_err()
        && convert_timestamp(&Value::String(t.into())).is_some()
    {
        return Kind::Timestamp;
    }
    Kind::String
}

fn json_column(v: &Value) -> Column {
    match v {
        Value::Array(items) => {
            let kind = items
                .iter()
                .map(|item| json_column(item).kind)
                .fold(Kind::Unknown, Kind::merge);
            Column {
                kind,
                repeated: true,
            }
        }
        other => Column {
            kind: json_kind(other),
            repeated: false,
        },
    }
}

fn json_kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Unknown,
        Value::Bool(_) => Kind::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
        Value::Number(_) => Kind::Float,
        // JSON strings keep quoted numbers and booleans as STRING; dates and times are detected.
        Value::String(s) => text_kind(s, false),
        Value::Object(obj) => Kind::Record(record_columns(obj)),
        // Arrays of arrays are not a BigQuery type: STRING makes the rows fail validation.
        Value::Array(_) => Kind::String,
    }
}

fn record_columns(obj: &Map<String, Value>) -> Vec<(String, Column)> {
    let mut columns = Vec::new();
    for (k, v) in obj {
        merge_column(&mut columns, k.clone(), json_column(v));
    }
    columns
}

fn field(name: String, col: Column) -> FieldJson {
    let fields = match &col.kind {
        Kind::Record(sub) if !sub.is_empty() => Some(
            sub.iter()
                .map(|(n, c)| field(n.clone(), c.clone()))
                .collect(),
        ),
        _ => None,
    };
    // A record seen only empty has no subfields to describe: it becomes a STRING column.
    let type_name = match (&col.kind, &fields) {
        (Kind::Record(_), None) => "STRING",
        (kind, _) => kind.type_name(),
    };
    FieldJson {
        name,
        field_type: type_name.to_string(),
        mode: Some(if col.repeated { "REPEATED" } else { "NULLABLE" }.to_string()),
        fields,
        extra: Map::new(),
    }
}

/// The schema of newline-delimited JSON rows, from the first `SAMPLE_ROWS`.
pub fn detect_json<'a>(rows: impl Iterator<Item = &'a Map<String, Value>>) -> Vec<FieldJson> {
    let mut columns = Vec::new();
    for row in rows.take(SAMPLE_ROWS) {
        for (name, col) in record_columns(row) {
            merge_column(&mut columns, name, col);
        }
    }
    columns.into_iter().map(|(n, c)| field(n, c)).collect()
}

fn cell_kinds<'a>(rows: impl Iterator<Item = &'a [String]>, width: usize) -> Vec<Kind> {
    let mut kinds = vec![Kind::Unknown; width];
    for row in rows.take(SAMPLE_ROWS) {
        for (kind, cell) in kinds.iter_mut().zip(row) {
            let k = std::mem::replace(kind, Kind::Unknown);
            *kind = k.merge(text_kind(cell, true));
        }
    }
    kinds
}

/// Whether `first` is a header for `rest`: every cell a non-empty text that is not a number, a
/// boolean or a date, and some column whose data is of another type than STRING (otherwise a
/// header cannot be told from data, and the row is read as data, as BigQuery does).
pub fn looks_like_header(first: &[String], rest: &[&[String]]) -> bool {
    let all_text = !first.is_empty()
        && first
            .iter()
            .all(|c| matches!(text_kind(c, true), Kind::String));
    if !all_text {
        return false;
    }
    cell_kinds(rest.iter().copied(), first.len())
        .iter()
        .any(|k| !matches!(k, Kind::String | Kind::Unknown))
}

/// A column name made from a header cell: characters that column names cannot hold become `_`.
fn column_name(header: &str, index: usize) -> String {
    let mut name: String = header
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        name = format!("string_field_{index}");
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.truncate(300);
    name
}

/// The schema of CSV rows: names from `header` when there is one, else by type and position.
pub fn detect_csv(header: Option<&[String]>, rows: &[&[String]]) -> Vec<FieldJson> {
    let width = header
        .map(<[String]>::len)
        .into_iter()
        .chain(rows.iter().take(SAMPLE_ROWS).map(|r| r.len()))
        .max()
        .unwrap_or(0);
    cell_kinds(rows.iter().copied(), width)
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let name = match header.and_then(|h| h.get(i)) {
                Some(h) => column_name(h, i),
                None => format!("{}_field_{i}", kind.csv_prefix()),
            };
            field(
                name,
                Column {
                    kind,
                    repeated: false,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types(fields: &[FieldJson]) -> Vec<(String, String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.field_type.clone(),
                    f.mode.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn json_types_widen_and_fall_back_to_string() {
        let rows = [
            json!({"i": 1, "f": 1, "s": "x", "ts": "2026-11-25 10:00:00", "d": "2026-11-25",
                   "tags": ["a"], "r": {"x": 1}, "n": null, "mixed": 1}),
            json!({"f": 1.5, "ts": "2026-11-25T10:00:00Z", "r": {"y": true}, "mixed": "m"}),
        ];
        let maps: Vec<&Map<String, Value>> = rows.iter().filter_map(Value::as_object).collect();
        let fields = detect_json(maps.into_iter());
        let t = |n: &str| {
            types(&fields)
                .into_iter()
                .find(|(name, _, _)| name == n)
                .unwrap()
        };
        assert_eq!(t("i").1, "INTEGER");
        assert_eq!(t("f").1, "FLOAT");
        assert_eq!(t("s").1, "STRING");
        assert_eq!(t("ts").1, "TIMESTAMP");
        assert_eq!(t("d").1, "DATE");
        assert_eq!(
            (t("tags").1, t("tags").2),
            ("STRING".into(), "REPEATED".into())
        );
        assert_eq!(t("n").1, "STRING");
        assert_eq!(t("mixed").1, "STRING");
        let r = fields.iter().find(|f| f.name == "r").unwrap();
        assert_eq!(r.field_type, "RECORD");
        assert_eq!(r.fields.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn csv_headers_are_told_from_data() {
        let row = |cells: &[&str]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let header = row(&["name", "count", "when"]);
        let data = [
            row(&["a", "1", "2026-11-25 10:00:00"]),
            row(&["b", "2", ""]),
        ];
        let rest: Vec<&[String]> = data.iter().map(Vec::as_slice).collect();
        assert!(looks_like_header(&header, &rest));
        assert!(!looks_like_header(&data[0], &rest[1..]));
        let fields = detect_csv(Some(&header), &rest);
        assert_eq!(
            types(&fields),
            [
                ("name".into(), "STRING".into(), "NULLABLE".into()),
                ("count".into(), "INTEGER".into(), "NULLABLE".into()),
                ("when".into(), "TIMESTAMP".into(), "NULLABLE".into()),
            ]
        );
        let unnamed = detect_csv(None, &rest);
        let names: Vec<_> = unnamed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["string_field_0", "int64_field_1", "timestamp_field_2"]
        );
    }
}
