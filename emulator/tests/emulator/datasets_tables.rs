//! datasets.insert/get/delete and tables.insert/get/patch/delete.

use serde_json::json;

use crate::common::{Emulator, PROJECT, error_body};

#[test]
fn dataset_can_be_created_read_and_deleted() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("logs");
    let (status, body) = emu.get(&emu.api("/datasets/logs"));
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "bigquery#dataset");
    assert_eq!(body["id"], format!("{PROJECT}:logs"));
    assert_eq!(
        body["datasetReference"],
        json!({"projectId": PROJECT, "datasetId": "logs"})
    );
    let (status, _) = emu.delete(&emu.api("/datasets/logs"));
    assert_eq!(status, 204);
    let (status, body) = emu.get(&emu.api("/datasets/logs"));
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Dataset proj:logs", "NOT_FOUND")
    );
}

#[test]
fn creating_an_existing_dataset_is_409_duplicate() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("logs");
    let (status, body) = emu.post(
        &emu.api("/datasets"),
        &json!({"datasetReference": {"projectId": PROJECT, "datasetId": "logs"}}),
    );
    assert_eq!(status, 409);
    assert_eq!(
        body,
        error_body(
            409,
            "duplicate",
            "Already Exists: Dataset proj:logs",
            "ALREADY_EXISTS"
        )
    );
}

#[test]
fn deleting_a_dataset_with_tables_needs_delete_contents() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let (status, body) = emu.delete(&emu.api("/datasets/d"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["errors"][0]["reason"], "resourceInUse");
    let (status, _) = emu.delete(&emu.api("/datasets/d?deleteContents=true"));
    assert_eq!(status, 204);
    let (status, _) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 404);
}

#[test]
fn table_keeps_modes_nested_records_partitioning_and_clustering() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    let schema = json!({"fields": [
        {"name": "ts", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "host", "type": "STRING", "mode": "NULLABLE"},
        {"name": "http", "type": "RECORD", "fields": [
            {"name": "status", "type": "INTEGER"},
            {"name": "headers", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "k", "type": "STRING"}, {"name": "v", "type": "STRING"}]}
        ]}
    ]});
    emu.create_table(
        "d",
        "t",
        json!({
            "schema": schema,
            "timePartitioning": {"type": "DAY", "field": "ts"},
            "clustering": {"fields": ["host"]}
        }),
    );
    let (status, body) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "bigquery#table");
    assert_eq!(body["id"], "proj:d.t");
    assert_eq!(body["schema"], schema);
    assert_eq!(
        body["timePartitioning"],
        json!({"type": "DAY", "field": "ts"})
    );
    assert_eq!(body["clustering"], json!({"fields": ["host"]}));
    assert_eq!(body["numRows"], "0");
}

#[test]
fn creating_an_existing_table_is_409_duplicate() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let (status, body) = emu.post(
        &emu.api("/datasets/d/tables"),
        &json!({"tableReference": {"projectId": PROJECT, "datasetId": "d", "tableId": "t"}}),
    );
    assert_eq!(status, 409);
    assert_eq!(
        body,
        error_body(
            409,
            "duplicate",
            "Already Exists: Table proj:d.t",
            "ALREADY_EXISTS"
        )
    );
}

#[test]
fn creating_a_table_in_a_missing_dataset_is_404() {
    let emu = Emulator::start(&[]);
    let (status, body) = emu.post(
        &emu.api("/datasets/nope/tables"),
        &json!({"tableReference": {"projectId": PROJECT, "datasetId": "nope", "tableId": "t"}}),
    );
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Dataset proj:nope", "NOT_FOUND")
    );
}

#[test]
fn malformed_schemas_are_400_invalid() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    for fields in [
        json!([{"name": "a", "type": "NOT_A_TYPE"}]),
        json!([{"name": "bad-name", "type": "STRING"}]),
        json!([{"name": "r", "type": "RECORD"}]),
        json!([{"name": "a", "type": "STRING"}, {"name": "A", "type": "STRING"}]),
    ] {
        let (status, body) = emu.post(
            &emu.api("/datasets/d/tables"),
            &json!({"tableReference": {"tableId": "t"}, "schema": {"fields": fields}}),
        );
        assert_eq!(status, 400, "{fields}: {body}");
        assert_eq!(body["error"]["errors"][0]["reason"], "invalid");
    }
    let (status, body) = emu.post(
        &emu.api("/datasets/d/tables"),
        &json!({"tableReference": {"tableId": "t"},
                "schema": {"fields": [{"name": "a", "type": "STRING"}]},
                "timePartitioning": {"type": "DAY", "field": "a"}}),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn patch_adds_columns_that_rows_can_then_use() {
    // No propagation delay: rows may use the new column at once.
    let emu = Emulator::start(&["--schema-update-delay-ms", "0"]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let (status, body) = emu.insert_all("t", crate::common::rows(&[json!({"a": "x", "b": 1})]));
    assert_eq!(status, 200);
    assert_eq!(
        body["insertErrors"][0]["errors"][0]["message"],
        "no such field: b."
    );

    let new_schema = json!({"fields": [
        {"name": "a", "type": "STRING"},
        {"name": "b", "type": "INTEGER", "mode": "NULLABLE"}
    ]});
    let (status, body) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"schema": new_schema}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"], new_schema);

    let (status, body) = emu.insert_all("t", crate::common::rows(&[json!({"a": "x", "b": 1})]));
    assert_eq!((status, body), (200, crate::common::ok_insert()));
}

#[test]
fn patch_that_removes_or_retypes_a_column_is_400_invalid() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING"}]));
    // Messages of https://cloud.google.com/bigquery/docs/troubleshoot-schemas, and the one
    // observed in mozilla/mozilla-schema-generator#63.
    let cases = [
        (
            json!([{"name": "a", "type": "STRING"}]),
            "Provided Schema does not match Table proj:d.t. Field b is missing in new schema",
        ),
        (
            json!([{"name": "a", "type": "STRING"}, {"name": "b", "type": "INTEGER"}]),
            "Provided Schema does not match Table proj:d.t. Field b has changed type from STRING to INTEGER",
        ),
        (
            json!([{"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING", "mode": "REQUIRED"}]),
            "Provided Schema does not match Table proj:d.t. Field b has changed mode from NULLABLE to REQUIRED",
        ),
        (
            json!([{"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING"},
                   {"name": "c", "type": "STRING", "mode": "REQUIRED"}]),
            "Cannot add required fields to an existing schema. (field: c)",
        ),
    ];
    for (fields, message) in cases {
        let (status, body) = emu.patch(
            &emu.api("/datasets/d/tables/t"),
            &json!({"schema": {"fields": fields}}),
        );
        assert_eq!(status, 400, "{fields}: {body}");
        assert_eq!(
            body,
            error_body(400, "invalid", message, "INVALID_ARGUMENT"),
            "{fields}"
        );
    }
    let (_, body) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(body["schema"]["fields"].as_array().map(Vec::len), Some(2));
}

#[test]
fn deleted_table_is_404_afterwards() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let (status, _) = emu.delete(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 204);
    let (status, body) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Table proj:d.t", "NOT_FOUND")
    );
    let (status, _) = emu.delete(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 404);
}
