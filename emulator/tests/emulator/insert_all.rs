//! tabledata.insertAll: answers, validation, flags, template tables, decorators, dedup, limits.
//! Expected shapes: <https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>
//! and <https://cloud.google.com/bigquery/docs/error-messages#streaming-success>.

use serde_json::{Value, json};

use crate::common::{Emulator, error_body, gzip, ok_insert, rows};

fn invalid(location: &str, message: &str) -> Value {
    json!({"reason": "invalid", "location": location, "debugInfo": "", "message": message})
}

fn stopped() -> Value {
    json!({"reason": "stopped", "location": "", "debugInfo": "", "message": ""})
}

fn simple_table(emu: &Emulator) {
    emu.with_table(json!([
        {"name": "name", "type": "STRING", "mode": "REQUIRED"},
        {"name": "n", "type": "INTEGER"}
    ]));
}

#[test]
fn good_rows_get_the_bare_success_answer() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let (status, body) = emu.insert_all(
        "t",
        rows(&[json!({"name": "a", "n": 1}), json!({"name": "b"})]),
    );
    assert_eq!((status, body), (200, ok_insert()));
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn gzip_bodies_are_accepted() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let body = serde_json::to_vec(&rows(&[json!({"name": "a"}), json!({"name": "b"})])).unwrap();
    let (status, answer) = emu.post_raw(
        &emu.api("/datasets/d/tables/t/insertAll"),
        gzip(&body),
        true,
    );
    assert_eq!((status, answer), (200, ok_insert()));
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn one_bad_row_fails_the_request_bad_rows_invalid_others_stopped_nothing_inserted() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let (status, body) = emu.insert_all(
        "t",
        rows(&[
            json!({"name": "ok"}),
            json!({"name": "x", "extra": 1}),
            json!({"n": 1}),
            json!({"name": "y", "n": "abc"}),
            json!({"name": "ok2"}),
        ]),
    );
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [
            {"index": 0, "errors": [stopped()]},
            {"index": 1, "errors": [invalid("extra", "no such field: extra.")]},
            {"index": 2, "errors": [invalid("name", "Missing required field: name.")]},
            {"index": 3, "errors": [invalid("n", "Cannot convert value to integer (bad value): abc")]},
            {"index": 4, "errors": [stopped()]},
        ]})
    );
    assert_eq!(emu.count("t"), 0);
}

#[test]
fn skip_invalid_rows_inserts_the_good_rows_and_lists_only_the_bad() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let mut body = rows(&[
        json!({"name": "ok"}),
        json!({"n": 2}),
        json!({"name": "ok2"}),
    ]);
    body["skipInvalidRows"] = json!(true);
    let (status, answer) = emu.insert_all("t", body);
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [
            {"index": 1, "errors": [invalid("name", "Missing required field: name.")]},
        ]})
    );
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn unknown_fields_are_invalid_unless_ignore_unknown_values() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let (_, answer) = emu.insert_all("t", rows(&[json!({"name": "a", "zzz": true})]));
    assert_eq!(
        answer["insertErrors"][0]["errors"][0],
        invalid("zzz", "no such field: zzz.")
    );
    let mut body = rows(&[json!({"name": "a", "zzz": true, "rec": {"deep": 1}})]);
    body["ignoreUnknownValues"] = json!(true);
    let (status, answer) = emu.insert_all("t", body);
    assert_eq!((status, answer), (200, ok_insert()));
    let (_, listed) = emu.list("t", "");
    assert_eq!(listed["rows"][0], json!({"f": [{"v": "a"}, {"v": null}]}));
}

/// One column per type; each value is accepted (and read back as shown) or rejected.
#[test]
fn every_type_accepts_its_documented_json_forms() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    let accepted: &[(&str, Value, &str)] = &[
        ("INTEGER", json!(42), "42"),
        ("INTEGER", json!("-7"), "-7"),
        ("INT64", json!(3.0), "3"),
        ("FLOAT", json!(1.5), "1.5"),
        ("FLOAT", json!("2.25"), "2.25"),
        ("FLOAT64", json!(3), "3.0"),
        ("NUMERIC", json!("123.456"), "123.456"),
        ("BIGNUMERIC", json!(5), "5"),
        ("BOOLEAN", json!(true), "true"),
        ("BOOL", json!("false"), "false"),
        ("STRING", json!("héllo"), "héllo"),
        ("BYTES", json!("aGVsbG8="), "aGVsbG8="),
        ("TIMESTAMP", json!(1_795_600_800), "1.7956008E9"),
        ("TIMESTAMP", json!("2026-11-25 10:00:00"), "1.7956008E9"),
        (
            "TIMESTAMP",
            json!("2026-11-25 10:00:00.5 UTC"),
            "1.7956008005E9",
        ),
        (
            "TIMESTAMP",
            json!("2026-11-25 11:00:00+01:00"),
            "1.7956008E9",
        ),
        ("TIMESTAMP", json!("2026-11-25T10:00:00Z"), "1.7956008E9"),
        ("DATE", json!("2026-11-25"), "2026-11-25"),
        (
            "DATETIME",
            json!("2026-11-25 10:00:00"),
            "2026-11-25T10:00:00",
        ),
        (
            "DATETIME",
            json!("2026-11-25T10:00:00.123456"),
            "2026-11-25T10:00:00.123456",
        ),
        ("TIME", json!("10:00:00"), "10:00:00"),
        ("JSON", json!({"a": [1, 2]}), r#"{"a":[1,2]}"#),
        ("JSON", json!(r#"{"b":true}"#), r#"{"b":true}"#),
        ("GEOGRAPHY", json!("POINT(1 2)"), "POINT(1 2)"),
    ];
    for (i, (ty, value, shown)) in accepted.iter().enumerate() {
        let table = format!("ok{i}");
        emu.create_table(
            "d",
            &table,
            json!({"schema": {"fields": [{"name": "c", "type": ty}]}}),
        );
        let (status, answer) = emu.insert_all(&table, rows(&[json!({"c": value})]));
        assert_eq!((status, &answer), (200, &ok_insert()), "{ty} {value}");
        let (_, listed) = emu.list(&table, "");
        assert_eq!(listed["rows"][0]["f"][0]["v"], json!(shown), "{ty} {value}");
    }
    let rejected: &[(&str, Value)] = &[
        ("INTEGER", json!("abc")),
        ("INTEGER", json!(1.5)),
        ("INTEGER", json!(true)),
        ("FLOAT", json!("x")),
        ("NUMERIC", json!("1.2.3")),
        ("BOOLEAN", json!("yes")),
        ("BOOLEAN", json!(1)),
        ("BYTES", json!("not base64!")),
        ("TIMESTAMP", json!("yesterday")),
        ("DATE", json!("2026-13-01")),
        ("DATETIME", json!("noon")),
        ("TIME", json!("25:00:00")),
        ("JSON", json!("{not json")),
        ("STRING", json!({"a": 1})),
    ];
    for (i, (ty, value)) in rejected.iter().enumerate() {
        let table = format!("bad{i}");
        emu.create_table(
            "d",
            &table,
            json!({"schema": {"fields": [{"name": "c", "type": ty}]}}),
        );
        let (status, answer) = emu.insert_all(&table, rows(&[json!({"c": value})]));
        assert_eq!(status, 200);
        let err = &answer["insertErrors"][0]["errors"][0];
        assert_eq!(err["reason"], "invalid", "{ty} {value}: {answer}");
        assert_eq!(err["location"], "c", "{ty} {value}: {answer}");
    }
}

#[test]
fn integer_errors_use_bigquerys_message() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let (_, answer) = emu.insert_all("t", rows(&[json!({"name": "a", "n": "abc"})]));
    assert_eq!(
        answer["insertErrors"][0]["errors"][0],
        invalid("n", "Cannot convert value to integer (bad value): abc")
    );
}

#[test]
fn repeated_and_nested_records_are_checked_with_paths() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "single", "type": "STRING"},
        {"name": "req", "type": "RECORD", "fields": [
            {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "items", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "v", "type": "INTEGER"}]}
        ]}
    ]));
    let (_, answer) = emu.insert_all(
        "t",
        rows(&[
            json!({"tags": ["a", "b"], "req": {"id": 1, "items": [{"v": 1}, {"v": 2}]}}),
            json!({"single": ["x"]}),
            json!({"req": {"items": [{"v": 1}, {"v": "no"}]}}),
            json!({"req": "flat"}),
            json!({"tags": null}),
        ]),
    );
    assert_eq!(
        answer["insertErrors"],
        json!([
            {"index": 0, "errors": [stopped()]},
            {"index": 1, "errors": [invalid("single", "Array specified for non-repeated field: single.")]},
            {"index": 2, "errors": [
                invalid("req.id", "Missing required field: id."),
                invalid("req.items[1].v", "Cannot convert value to integer (bad value): no"),
            ]},
            {"index": 3, "errors": [invalid("req", "This field: req is not a record.")]},
            {"index": 4, "errors": [stopped()]},
        ])
    );
}

#[test]
fn null_repeated_field_is_read_back_as_empty() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "n", "type": "INTEGER"}
    ]));
    let (status, answer) =
        emu.insert_all("t", rows(&[json!({"tags": null, "n": 1}), json!({"n": 2})]));
    assert_eq!((status, answer), (200, ok_insert()));
    let (_, listed) = emu.list("t", "");
    assert_eq!(listed["rows"][0], json!({"f": [{"v": []}, {"v": "1"}]}));
    assert_eq!(listed["rows"][1], json!({"f": [{"v": []}, {"v": "2"}]}));
}

#[test]
fn template_suffix_creates_the_instance_table_from_the_base_schema() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let mut body = rows(&[json!({"name": "a", "n": 1})]);
    body["templateSuffix"] = json!("_20261124");
    let (status, answer) = emu.insert_all("t", body.clone());
    assert_eq!((status, answer), (200, ok_insert()));
    let (status, table) = emu.get(&emu.api("/datasets/d/tables/t_20261124"));
    assert_eq!(status, 200);
    assert_eq!(table["schema"]["fields"][0]["name"], "name");
    assert_eq!(table["numRows"], "1");
    assert_eq!(emu.count("t"), 0);
    // The second insert reuses the instance table.
    let (status, _) = emu.insert_all("t", body);
    assert_eq!(status, 200);
    assert_eq!(emu.count("t_20261124"), 2);
}

#[test]
fn template_suffix_rows_are_validated_against_the_base_schema() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let mut body = rows(&[json!({"nope": 1})]);
    body["templateSuffix"] = json!("_x");
    let (_, answer) = emu.insert_all("t", body);
    assert_eq!(answer["insertErrors"][0]["errors"][0]["reason"], "invalid");
}

#[test]
fn partition_decorator_inserts_into_the_base_table_and_reads_back_by_partition() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    emu.create_table(
        "d",
        "t",
        json!({"schema": {"fields": [{"name": "msg", "type": "STRING"}]},
               "timePartitioning": {"type": "DAY"}}),
    );
    let (status, answer) = emu.insert_all(
        "t$20261124",
        rows(&[json!({"msg": "a"}), json!({"msg": "b"})]),
    );
    assert_eq!((status, answer), (200, ok_insert()));
    let (status, answer) = emu.insert_all("t$20261125", rows(&[json!({"msg": "c"})]));
    assert_eq!((status, answer), (200, ok_insert()));
    assert_eq!(emu.count("t"), 3);
    let (_, listed) = emu.list("t$20261124", "");
    assert_eq!(listed["totalRows"], "2");
    assert_eq!(
        listed["rows"],
        json!([{"f": [{"v": "a"}]}, {"f": [{"v": "b"}]}])
    );
    let (_, listed) = emu.list("t%2420261125", "");
    assert_eq!(listed["rows"], json!([{"f": [{"v": "c"}]}]));
}

#[test]
fn same_insert_id_is_inserted_once_rows_without_id_always() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let body = json!({"rows": [
        {"insertId": "id-1", "json": {"name": "a"}},
        {"insertId": "id-1", "json": {"name": "a"}},
        {"json": {"name": "b"}},
        {"json": {"name": "b"}},
    ]});
    let (status, answer) = emu.insert_all("t", body.clone());
    assert_eq!((status, answer), (200, ok_insert()));
    assert_eq!(emu.count("t"), 3);
    // A retry of the whole request: the id is known, the id-less rows are new again.
    let (status, answer) = emu.insert_all("t", body);
    assert_eq!((status, answer), (200, ok_insert()));
    assert_eq!(emu.count("t"), 5);
    // One duplicate in the first request, two in the retry.
    assert_eq!(emu.stats()["rows_deduplicated"], 3);
}

#[test]
fn insert_id_is_forgotten_after_the_window() {
    let emu = Emulator::start(&["--dedup-window-secs", "1"]);
    simple_table(&emu);
    let body = json!({"rows": [{"insertId": "id-1", "json": {"name": "a"}}]});
    emu.insert_all("t", body.clone());
    emu.insert_all("t", body.clone());
    assert_eq!(emu.count("t"), 1);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    emu.insert_all("t", body);
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn too_many_rows_is_400_invalid() {
    let emu = Emulator::start(&["--max-rows-per-request", "3"]);
    simple_table(&emu);
    let many: Vec<Value> = (0..4).map(|i| json!({"name": format!("r{i}")})).collect();
    let (status, body) = emu.insert_all("t", rows(&many));
    assert_eq!(status, 400);
    let message = "too many rows present in the request, limit: 3 row count: 4.";
    assert_eq!(
        body,
        error_body(400, "invalid", message, "INVALID_ARGUMENT")
    );
    let (status, _) = emu.insert_all("t", rows(&many[..3]));
    assert_eq!(status, 200);
}

/// Observed answer quoted in googleapis/google-cloud-go#2855.
#[test]
fn oversized_request_is_400_payload_size_exceeds_the_limit() {
    let emu = Emulator::start(&["--max-request-bytes", "2000"]);
    simple_table(&emu);
    let big: Vec<Value> = (0..100)
        .map(|i| json!({"name": format!("row-{i:04}")}))
        .collect();
    let body = serde_json::to_vec(&rows(&big)).unwrap();
    assert!(body.len() > 2000);
    let expected = error_body(
        400,
        "badRequest",
        "Request payload size exceeds the limit: 2000 bytes.",
        "INVALID_ARGUMENT",
    );
    let url = emu.api("/datasets/d/tables/t/insertAll");
    assert_eq!(
        emu.post_raw(&url, body.clone(), false),
        (400, expected.clone())
    );
    // Measured uncompressed: the gzipped body is small but still too large.
    let gz = gzip(&body);
    assert!(gz.len() < 2000);
    assert_eq!(emu.post_raw(&url, gz, true), (400, expected));
    assert_eq!(emu.count("t"), 0);
}

/// Observed answer quoted in googleapis/google-cloud-go#2855.
#[test]
fn oversized_row_is_that_rows_invalid() {
    let emu = Emulator::start(&["--max-row-bytes", "100"]);
    simple_table(&emu);
    let long = "x".repeat(200);
    let (_, answer) = emu.insert_all("t", rows(&[json!({"name": "a"}), json!({"name": long})]));
    let row_size = serde_json::to_vec(&json!({"name": long})).unwrap().len();
    assert_eq!(
        answer["insertErrors"],
        json!([
            {"index": 0, "errors": [stopped()]},
            {"index": 1, "errors": [invalid("", &format!(
                "Maximum allowed row size exceeded. Allowed: 100 Row size: {row_size}"))]},
        ])
    );
}

#[test]
fn missing_table_or_dataset_is_404_not_found() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    let (status, body) = emu.insert_all("nope", rows(&[json!({"a": 1})]));
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Table proj:d.nope", "NOT_FOUND")
    );
    let (status, body) = emu.post(
        &emu.api("/datasets/nods/tables/t/insertAll"),
        &rows(&[json!({"a": 1})]),
    );
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Dataset proj:nods", "NOT_FOUND")
    );
}

#[test]
fn malformed_bodies_are_400_never_a_crash() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let url = emu.api("/datasets/d/tables/t/insertAll");
    for body in [
        &b"{not json"[..],
        b"[]",
        b"{\"rows\": 5}",
        b"\x1f\x8b garbage",
    ] {
        let (status, answer) = emu.post_raw(&url, body.to_vec(), false);
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], 400);
    }
    let (status, answer) = emu.insert_all("t", json!({"rows": []}));
    assert_eq!(
        (status, answer),
        (
            400,
            error_body(
                400,
                "invalid",
                "No rows present in the request.",
                "INVALID_ARGUMENT"
            )
        )
    );
    let (status, answer) = emu.insert_all("t", json!({"rows": [{"json": [1, 2]}]}));
    assert_eq!(status, 200);
    assert_eq!(answer["insertErrors"][0]["errors"][0]["reason"], "invalid");
    // Still serving.
    assert_eq!(emu.insert_all("t", rows(&[json!({"name": "a"})])).0, 200);
}

#[test]
fn any_authorization_header_is_accepted() {
    let emu = Emulator::start(&[]);
    simple_table(&emu);
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(emu.api("/datasets/d/tables/t/insertAll"))
        .bearer_auth("whatever-token")
        .json(&rows(&[json!({"name": "a"})]))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
