use std::io::Write;

use serde_json::json;

use super::*;

fn config(load: Value) -> LoadConfig {
    let mut load = load;
    load["destinationTable"] = json!({"projectId": "p", "datasetId": "d", "tableId": "t"});
    config::parse(&load, "p").unwrap()
}

fn fields(v: Value) -> Vec<FieldJson> {
    serde_json::from_value(v).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn values(rows: &[Map<String, Value>]) -> Vec<Value> {
    rows.iter().cloned().map(Value::Object).collect()
}

const LIMITS: LoadLimits = LoadLimits {
    max_bytes: 1 << 20,
    max_row_bytes: 1 << 16,
};

#[test]
fn json_rows_load_with_bad_ones_skipped_within_max_bad_records() {
    let c = config(json!({
        "sourceFormat": "NEWLINE_DELIMITED_JSON", "maxBadRecords": 1,
        "schema": {"fields": [{"name": "a", "type": "INTEGER"}]}
    }));
    let data = b"{\"a\": 1}\n{\"a\": \"x\"}\n{\"a\": \"3\"}\n";
    let loaded = read(&gzip(data), &c, None, &LIMITS).unwrap();
    assert_eq!(values(&loaded.rows), [json!({"a": "1"}), json!({"a": "3"})]);
    assert_eq!(loaded.bad_records, 1);
    assert_eq!(
        loaded.errors,
        [ErrorProto::invalid(
            "Error while reading data, error message: JSON parsing error in row starting at position 9: Could not convert value 'string_value: \"x\"' to integer. Field: a; Value: x"
        )
        .at("file-00000000")]
    );
    assert!(loaded.schema_changed);
}

#[test]
fn json_load_gives_up_beyond_max_bad_records_with_bigquerys_summaries() {
    let c = config(json!({
        "sourceFormat": "NEWLINE_DELIMITED_JSON",
        "schema": {"fields": [{"name": "a", "type": "STRING"}]}
    }));
    let data = b"{\"a\": \"ok\"}\n{\"b\": 1}\n{\"a\": \"never read\"}\n";
    let failed = read(data, &c, None, &LIMITS).unwrap_err();
    let prefix = "Error while reading data, error message: ";
    assert_eq!(
        failed.error_result,
        ErrorProto::invalid(format!(
            "{prefix}JSON table encountered too many errors, giving up. Rows: 2; errors: 1. Please look into the errors[] collection for more details."
        ))
    );
    let messages: Vec<&str> = failed.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            failed.error_result.message.clone(),
            format!(
                "{prefix}JSON processing encountered too many errors, giving up. Rows: 2; errors: 1; max bad: 0; error percent: 0"
            ),
            format!("{prefix}JSON parsing error in row starting at position 12: No such field: b."),
        ]
    );
}

#[test]
fn ignore_unknown_values_drops_extra_members_and_csv_columns() {
    let c = config(json!({
        "sourceFormat": "NEWLINE_DELIMITED_JSON", "ignoreUnknownValues": true,
        "schema": {"fields": [{"name": "a", "type": "STRING"}]}
    }));
    let loaded = read(b"{\"a\": \"x\", \"extra\": 1}", &c, None, &LIMITS).unwrap();
    assert_eq!(values(&loaded.rows), [json!({"a": "x"})]);
    let c = config(json!({
        "ignoreUnknownValues": true,
        "schema": {"fields": [{"name": "a", "type": "STRING"}]}
    }));
    let loaded = read(b"x,extra\n", &c, None, &LIMITS).unwrap();
    assert_eq!(values(&loaded.rows), [json!({"a": "x"})]);
}

#[test]
fn csv_values_nulls_booleans_and_errors_with_line_details() {
    let c = config(json!({
        "skipLeadingRows": 1, "maxBadRecords": 5,
        "schema": {"fields": [
            {"name": "s", "type": "STRING"}, {"name": "b", "type": "BOOLEAN"},
            {"name": "ts", "type": "TIMESTAMP"}]}
    }));
    let data = "s,b,ts\nx,yes,2026-11-25 10:00:00\n,0,\ny,maybe,\nz,t,never\nshort,t\n";
    let loaded = read(data.as_bytes(), &c, None, &LIMITS).unwrap();
    assert_eq!(
        values(&loaded.rows),
        [
            json!({"s": "x", "b": "true", "ts": "1795600800000000"}),
            json!({"b": "false"})
        ]
    );
    let messages: Vec<&str> = loaded.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "Error while reading data, error message: Unable to parse; line_number: 4 byte_offset_to_start_of_line: 37 column_index: 1 column_name: \"b\" column_type: BOOL value: \"maybe\"",
            "Error while reading data, error message: Could not parse 'never' as a timestamp. Required format is YYYY-MM-DD HH:MM[:SS[.SSSSSS]] or YYYY/MM/DD HH:MM[:SS[.SSSSSS]]; line_number: 5 byte_offset_to_start_of_line: 46 column_index: 2 column_name: \"ts\" column_type: TIMESTAMP value: \"never\"",
            "Error while reading data, error message: CSV table references column position 2, but line contains only 2 columns.; line_number: 6 byte_offset_to_start_of_line: 56 column_index: 2 column_name: \"ts\" column_type: TIMESTAMP",
        ]
    );
    let jagged = config(json!({
        "allowJaggedRows": true, "nullMarker": "\\N",
        "schema": {"fields": [{"name": "s", "type": "STRING"}, {"name": "n", "type": "INTEGER"}]}
    }));
    let loaded = read(b"\\N\n,5\n", &jagged, None, &LIMITS).unwrap();
    assert_eq!(
        values(&loaded.rows),
        [json!({}), json!({"s": "", "n": "5"})]
    );
}

#[test]
fn autodetect_reads_csv_headers_and_json_types() {
    let c = config(json!({"autodetect": true}));
    let loaded = read(b"name,count\na,1\nb,2\n", &c, None, &LIMITS).unwrap();
    let names: Vec<_> = loaded.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["name", "count"]);
    assert_eq!(loaded.rows.len(), 2);
    let c = config(json!({"autodetect": true, "sourceFormat": "NEWLINE_DELIMITED_JSON"}));
    let loaded = read(b"{\"n\": 1, \"r\": {\"x\": true}}", &c, None, &LIMITS).unwrap();
    assert_eq!(loaded.schema.lookup("r").unwrap().ty, FieldType::Record);
    assert_eq!(
        values(&loaded.rows),
        [json!({"n": "1", "r": {"x": "true"}})]
    );
    // Nothing to detect and no table: BigQuery's answer.
    let failed = read(b"", &c, None, &LIMITS).unwrap_err();
    assert_eq!(
        failed.error_result.message,
        "No schema specified on job or table."
    );
}

#[test]
fn schema_update_options_gate_additions_and_relaxations() {
    let table_fields = fields(json!([{"name": "a", "type": "STRING", "mode": "REQUIRED"}]));
    let table_schema = Schema::from_json(&table_fields).unwrap();
    let dest = || Destination {
        fields: table_fields.clone(),
        schema: &table_schema,
    };
    let wider = json!({"fields": [
        {"name": "a", "type": "STRING", "mode": "REQUIRED"}, {"name": "b", "type": "STRING"}]});
    let c = config(json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "schema": wider}));
    let failed = read(b"{\"a\": \"x\"}", &c, Some(dest()), &LIMITS).unwrap_err();
    assert_eq!(
        failed.error_result.message,
        "Provided Schema does not match Table p:d.t. Cannot add fields (field: b)"
    );
    let c = config(
        json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "schema": wider,
                          "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"]}),
    );
    let loaded = read(b"{\"a\": \"x\", \"b\": \"y\"}", &c, Some(dest()), &LIMITS).unwrap();
    assert!(loaded.schema_changed);
    assert_eq!(loaded.schema.fields.len(), 2);
    let relaxed = json!({"fields": [{"name": "a", "type": "STRING"}]});
    let c = config(json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "schema": relaxed}));
    let failed = read(b"{}", &c, Some(dest()), &LIMITS).unwrap_err();
    assert!(
        failed
            .error_result
            .message
            .ends_with("Field a has changed mode from REQUIRED to NULLABLE"),
        "{failed:?}"
    );
    let c = config(
        json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "schema": relaxed,
                          "schemaUpdateOptions": ["ALLOW_FIELD_RELAXATION"]}),
    );
    assert!(read(b"{}", &c, Some(dest()), &LIMITS).is_ok());
    // WRITE_TRUNCATE replaces the schema whatever it was.
    let c = config(
        json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "writeDisposition": "WRITE_TRUNCATE",
                          "schema": {"fields": [{"name": "z", "type": "INTEGER"}]}}),
    );
    let loaded = read(b"{\"z\": 1}", &c, Some(dest()), &LIMITS).unwrap();
    assert_eq!(loaded.schema.fields[0].name, "z");
}

#[test]
fn gzip_bombs_and_latin1_data() {
    let c = config(json!({"schema": {"fields": [{"name": "s", "type": "STRING"}]}}));
    let big = gzip(&vec![b'a'; 4096]);
    let small = LoadLimits {
        max_bytes: 1000,
        max_row_bytes: 1000,
    };
    let failed = read(&big, &c, None, &small).unwrap_err();
    assert!(
        failed.error_result.message.contains("--max-load-bytes"),
        "{failed:?}"
    );
    let latin1 = config(json!({"encoding": "ISO-8859-1",
                               "schema": {"fields": [{"name": "s", "type": "STRING"}]}}));
    let loaded = read(b"caf\xe9\n", &latin1, None, &LIMITS).unwrap();
    assert_eq!(values(&loaded.rows), [json!({"s": "café"})]);
}
