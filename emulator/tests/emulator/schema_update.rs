//! tables.patch / tables.update for schema evolution: the etag and `If-Match` (412 when it does
//! not match), patch versus update semantics, the schema changes BigQuery allows, its column and
//! nesting limits, and the delay before insertAll accepts a new column
//! (<https://cloud.google.com/bigquery/docs/managing-table-schemas>,
//! <https://cloud.google.com/bigquery/docs/troubleshoot-schemas>,
//! "Metadata errors for streaming inserts" in
//! <https://cloud.google.com/bigquery/docs/troubleshoot-storage-api>).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Emulator, error_body, ok_insert, rows};

fn etag(emu: &Emulator) -> String {
    let (status, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(status, 200, "{table}");
    table["etag"].as_str().expect("etag").to_string()
}

fn fields(list: &[(&str, &str)]) -> Value {
    json!({"schema": {"fields": list.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>()}})
}

fn patch_with(emu: &Emulator, if_match: &str, body: &Value) -> (u16, Value) {
    emu.send(
        "PATCH",
        &emu.api("/datasets/d/tables/t"),
        &[("If-Match", if_match)],
        body,
    )
}

fn no_delay() -> Emulator {
    Emulator::start(&["--schema-update-delay-ms", "0"])
}

#[test]
fn etag_changes_with_every_modification_and_not_with_rows() {
    let emu = no_delay();
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let created = etag(&emu);
    assert_eq!(created.len(), 24, "16 bytes in base64: {created}");
    assert_eq!(emu.insert_all("t", rows(&[json!({"a": "x"})])).0, 200);
    assert_eq!(etag(&emu), created);
    let (status, patched) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"description": "d"}),
    );
    assert_eq!(status, 200, "{patched}");
    assert_ne!(patched["etag"], created.as_str());
    assert_eq!(patched["etag"], etag(&emu).as_str());
    let (_, again) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"description": "d"}),
    );
    assert_ne!(
        again["etag"], patched["etag"],
        "an identical patch is still a modification"
    );
}

#[test]
fn if_match_with_another_etag_is_412_and_changes_nothing() {
    let emu = no_delay();
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let old = etag(&emu);
    let (status, _) = patch_with(&emu, &old, &json!({"description": "first"}));
    assert_eq!(status, 200);
    let current = etag(&emu);
    let add_b = fields(&[("a", "STRING"), ("b", "STRING")]);
    for method in ["PATCH", "PUT"] {
        let (status, body) = emu.send(
            method,
            &emu.api("/datasets/d/tables/t"),
            &[("If-Match", &old)],
            &add_b,
        );
        assert_eq!(status, 412, "{method}: {body}");
        assert_eq!(
            body,
            error_body(
                412,
                "conditionNotMet",
                "Precondition check failed.",
                "FAILED_PRECONDITION"
            )
        );
    }
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["etag"], current.as_str());
    assert_eq!(table["schema"]["fields"].as_array().map(Vec::len), Some(1));
    // The current etag, quoted or not, or `*` matches.
    let (status, body) = patch_with(&emu, &format!("\"{current}\""), &add_b);
    assert_eq!(status, 200, "{body}");
    let (status, body) = patch_with(&emu, "*", &json!({"description": "any"}));
    assert_eq!(status, 200, "{body}");
    // The etag in the body is output-only: ignored, not a precondition.
    let (status, body) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"etag": "stale", "description": "body etag"}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn two_concurrent_patches_with_the_same_etag_one_wins_one_gets_412() {
    let emu = no_delay();
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    for round in 0..10 {
        let tag = etag(&emu);
        let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
        let base = table["schema"]["fields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let barrier = Barrier::new(2);
        let statuses: Vec<(String, u16)> = std::thread::scope(|s| {
            let handles: Vec<_> = ["x", "y"]
                .into_iter()
                .map(|who| {
                    let column = format!("{who}{round}");
                    let mut list = base.clone();
                    list.push(json!({"name": column, "type": "STRING"}));
                    let (barrier, tag, emu) = (&barrier, &tag, &emu);
                    s.spawn(move || {
                        let body = json!({"schema": {"fields": list}});
                        barrier.wait();
                        (column, patch_with(emu, tag, &body).0)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let mut codes: Vec<u16> = statuses.iter().map(|(_, c)| *c).collect();
        codes.sort_unstable();
        assert_eq!(codes, [200, 412], "round {round}: {statuses:?}");
        let winner = &statuses.iter().find(|(_, c)| *c == 200).expect("winner").0;
        let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
        let names: Vec<&str> = table["schema"]["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(names.last(), Some(&winner.as_str()), "{names:?}");
        assert_eq!(
            names.len(),
            round + 2,
            "the loser's column was not added: {names:?}"
        );
    }
}

#[test]
fn patch_merges_and_update_replaces() {
    let emu = no_delay();
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let url = emu.api("/datasets/d/tables/t");
    let (_, body) = emu.patch(
        &url,
        &json!({"description": "d", "labels": {"team": "x", "env": "dev"}}),
    );
    assert_eq!(body["labels"], json!({"team": "x", "env": "dev"}));
    // patch: given members replace, nested objects merge, null removes a label.
    let (_, body) = emu.patch(&url, &json!({"labels": {"env": null, "tier": "1"}}));
    assert_eq!(body["labels"], json!({"team": "x", "tier": "1"}));
    assert_eq!(body["description"], "d");
    // update: everything a caller may set is replaced; the schema stays when none is given.
    let (status, body) = emu.send("PUT", &url, &[], &json!({"friendlyName": "F"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["friendlyName"], "F");
    assert!(
        body.get("description").is_none() && body.get("labels").is_none(),
        "{body}"
    );
    assert_eq!(
        body["schema"],
        json!({"fields": [{"name": "a", "type": "STRING"}]})
    );
    assert_eq!(body["tableReference"]["tableId"], "t");
    let (status, body) = emu.send(
        "PUT",
        &url,
        &[],
        &fields(&[("a", "STRING"), ("b", "INTEGER")]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"]["fields"][1]["name"], "b");
    assert!(body.get("friendlyName").is_none(), "{body}");
}

#[test]
fn nested_columns_can_be_added_and_required_relaxed() {
    let emu = no_delay();
    emu.with_table(json!([
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "INTEGER", "mode": "REQUIRED"}]}
    ]));
    let evolved = json!({"schema": {"fields": [
        {"name": "id", "type": "STRING", "mode": "NULLABLE"},
        {"name": "r", "type": "RECORD", "fields": [
            {"name": "x", "type": "INTEGER", "mode": "NULLABLE"},
            {"name": "y", "type": "STRING"},
            {"name": "z", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "k", "type": "STRING"}]}
        ]},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"}
    ]}});
    let (status, body) = emu.patch(&emu.api("/datasets/d/tables/t"), &evolved);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schema"], evolved["schema"]);
    let row = json!({"r": {"y": "new", "z": [{"k": "v"}]}, "tags": ["t"]});
    assert_eq!(emu.insert_all("t", rows(&[row])), (200, ok_insert()));
    // Inside records the same rules hold, with dotted names.
    let cases = [
        (
            json!([{"name": "id", "type": "STRING"}, {"name": "r", "type": "RECORD", "fields": [
                {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "STRING"}]},
                {"name": "tags", "type": "STRING", "mode": "REPEATED"}]),
            "Provided Schema does not match Table proj:d.t. Field r.z is missing in new schema",
        ),
        (
            json!([{"name": "id", "type": "STRING"}, {"name": "r", "type": "RECORD", "fields": [
                {"name": "x", "type": "STRING"}, {"name": "y", "type": "STRING"},
                {"name": "z", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "k", "type": "STRING"}]}]},
                {"name": "tags", "type": "STRING", "mode": "REPEATED"}]),
            "Provided Schema does not match Table proj:d.t. Field r.x has changed type from INTEGER to STRING",
        ),
        (
            json!([{"name": "id", "type": "STRING"}, {"name": "r", "type": "RECORD", "fields": [
                {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "STRING"},
                {"name": "z", "type": "RECORD", "mode": "REPEATED", "fields": [
                    {"name": "k", "type": "STRING"}, {"name": "must", "type": "STRING", "mode": "REQUIRED"}]}]},
                {"name": "tags", "type": "STRING", "mode": "REPEATED"}]),
            "Cannot add required fields to an existing schema. (field: r.z.must)",
        ),
        (
            json!([{"name": "id", "type": "STRING"}, {"name": "r", "type": "RECORD", "fields": [
                {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "STRING"},
                {"name": "z", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "k", "type": "STRING"}]}]},
                {"name": "tags", "type": "STRING"}]),
            "Provided Schema does not match Table proj:d.t. Field tags has changed mode from REPEATED to NULLABLE",
        ),
    ];
    for (list, message) in cases {
        let (status, body) = emu.patch(
            &emu.api("/datasets/d/tables/t"),
            &json!({"schema": {"fields": list}}),
        );
        assert_eq!(
            body,
            error_body(400, "invalid", message, "INVALID_ARGUMENT"),
            "{status}"
        );
    }
}

fn wide(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("c{i}"), "type": "STRING"}))
            .collect(),
    )
}

fn deep(levels: usize) -> Value {
    let mut field = json!({"name": "leaf", "type": "STRING"});
    for i in (0..levels).rev() {
        field = json!({"name": format!("r{i}"), "type": "RECORD", "fields": [field]});
    }
    json!([field])
}

#[test]
fn ten_thousand_columns_and_fifteen_levels_are_the_limits() {
    let emu = no_delay();
    emu.create_dataset("d");
    let create = |table: &str, list: Value| {
        emu.post(
            &emu.api("/datasets/d/tables"),
            &json!({"tableReference": {"tableId": table}, "schema": {"fields": list}}),
        )
    };
    assert_eq!(create("wide", wide(10_000)).0, 200);
    let too_wide = "Too many total leaf fields: 10001, max allowed field count: 10000";
    assert_eq!(
        create("wider", wide(10_001)).1,
        error_body(400, "invalid", too_wide, "INVALID_ARGUMENT")
    );
    let (_, body) = emu.patch(
        &emu.api("/datasets/d/tables/wide"),
        &json!({"schema": {"fields": wide(10_001)}}),
    );
    assert_eq!(
        body,
        error_body(400, "invalid", too_wide, "INVALID_ARGUMENT")
    );
    assert_eq!(create("deep", deep(15)).0, 200);
    let (status, body) = create("deeper", deep(16));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["errors"][0]["reason"], "invalid");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("r0.r1.r2.r3.r4.r5.r6.r7.r8.r9.r10.r11.r12.r13.r14.r15"),
        "{message}"
    );
}

#[test]
fn insert_all_rejects_a_new_column_until_the_delay_has_passed() {
    let delay = Duration::from_millis(2_000);
    let emu = Emulator::start(&["--schema-update-delay-ms", "2000"]);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    let (status, _) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &fields(&[("a", "STRING"), ("b", "INTEGER")]),
    );
    assert_eq!(status, 200);
    let patched = Instant::now();
    let row = rows(&[json!({"a": "x", "b": 1})]);
    let (status, body) = emu.insert_all("t", row.clone());
    assert_eq!(status, 200);
    assert_eq!(
        body["insertErrors"][0]["errors"][0]["message"], "no such field: b.",
        "{body}"
    );
    // tables.get and tabledata.list see the new column at once.
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["schema"]["fields"][1]["name"], "b");
    assert_eq!(
        emu.insert_all("t", rows(&[json!({"a": "old"})])),
        (200, ok_insert())
    );
    let (_, page) = emu.list("t", "");
    assert_eq!(page["rows"][0], json!({"f": [{"v": "old"}, {"v": null}]}));
    // Accepted only once the delay has passed, and then for good.
    let deadline = patched + Duration::from_secs(30);
    loop {
        let (_, body) = emu.insert_all("t", row.clone());
        if body == ok_insert() {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        patched.elapsed() >= delay,
        "accepted after {:?}",
        patched.elapsed()
    );
    let (_, page) = emu.list("t", "?startIndex=1");
    assert_eq!(page["rows"][0], json!({"f": [{"v": "x"}, {"v": "1"}]}));
}

#[test]
fn the_delay_defaults_to_two_minutes_and_tests_set_it_in_the_faults_json() {
    let emu = Emulator::start(&[]);
    let (_, faults) = emu.get(&emu.url("/_emulator/faults"));
    assert_eq!(faults["schema_update_delay_ms"], 120_000);
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &fields(&[("a", "STRING"), ("b", "STRING")]),
    );
    let (_, body) = emu.insert_all("t", rows(&[json!({"b": "x"})]));
    assert_eq!(
        body["insertErrors"][0]["errors"][0]["message"], "no such field: b.",
        "{body}"
    );
    // Tests set it through the faults JSON (left out of a body, it is 0); it applies to schema
    // changes from then on.
    let (status, faults) = emu.post(
        &emu.url("/_emulator/faults"),
        &json!({"schema_update_delay_ms": 0}),
    );
    assert_eq!(
        (status, &faults["schema_update_delay_ms"]),
        (200, &json!(0))
    );
    emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &fields(&[("a", "STRING"), ("b", "STRING"), ("c", "STRING")]),
    );
    assert_eq!(
        emu.insert_all("t", rows(&[json!({"b": "x", "c": "y"})])),
        (200, ok_insert())
    );
}
