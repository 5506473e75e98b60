//! Schema evolution (`schema_update_options ALLOW_FIELD_ADDITION`) as a user meets it: the real
//! bqforward binary, the PyPI fluent-logger client sending records that gain fields, the repo's
//! bigquery-emulator (tables.patch with etags, and insertAll that keeps answering "no such
//! field" for `--schema-update-delay-ms` after a change), rows and schemas read back over the
//! REST API, and the metrics endpoint.

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

fn base_schema() -> Value {
    json!([
        {"name": "seq", "type": "INTEGER"},
        {"name": "msg", "type": "STRING"},
    ])
}

/// A forward source, a prometheus source and a bigquery_insert output with schema evolution
/// to the emulator; `extra` goes inside `<match>`.
fn config(emulator: &Emulator, table: &str, extra: &str) -> String {
    format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<source>
  @type prometheus
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_insert
  auth_method none
  endpoint {endpoint}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  schema_update_options ALLOW_FIELD_ADDITION
  {extra}
  <buffer>
    flush_interval 0.1s
    flush_thread_count 2
    retry_wait 0.1s
    retry_max_interval 0.5s
  </buffer>
  <secondary>
    @type file
    path {{dir}}/dead/rejected
    append true
    <format>
      @type json
    </format>
  </secondary>
</match>
"#,
        endpoint = emulator.endpoint()
    )
}

fn dead_letters(server: &Server) -> Vec<Value> {
    let dir = server.path("dead");
    if !dir.exists() {
        return Vec::new();
    }
    read_json_lines(&dir, ".log")
}

/// Sends `records` (tag `app`) with fluent-logger, in order.
fn send(server: &Server, records: &[Value]) {
    let events: Vec<Value> = records.iter().map(|r| json!(["", r])).collect();
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "app",
            "--events",
            &Value::Array(events).to_string(),
        ],
    );
}

/// The table's columns as `name → (type, mode)`, nested ones dotted.
fn columns(emulator: &Emulator, table: &str) -> Vec<(String, String, String)> {
    fn walk(fields: &Value, prefix: &str, out: &mut Vec<(String, String, String)>) {
        for f in fields.as_array().cloned().unwrap_or_default() {
            let name = format!("{prefix}{}", f["name"].as_str().unwrap_or_default());
            out.push((
                name.clone(),
                f["type"].as_str().unwrap_or_default().to_owned(),
                f["mode"].as_str().unwrap_or("NULLABLE").to_owned(),
            ));
            walk(&f["fields"], &format!("{name}."), out);
        }
    }
    let path = format!("/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/{table}");
    let (status, resource) = emulator.call("GET", &path, None);
    assert_eq!(status, 200, "{resource}");
    let mut out = Vec::new();
    walk(&resource["schema"]["fields"], "", &mut out);
    out
}

fn column(cols: &[(String, String, String)], name: &str) -> (String, String) {
    cols.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, t, m)| (t.clone(), m.clone()))
        .unwrap_or_else(|| panic!("no column {name} in {cols:?}"))
}

fn by_seq(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| r["seq"].as_str().and_then(|s| s.parse::<u64>().ok()));
    rows
}

/// The metrics endpoint's port, from its start-up line (`http_addr=IP:PORT`).
fn metrics_port(server: &Server) -> u16 {
    let line = server.wait_log("http_addr=");
    line.split("http_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// The sample of `name` whose labels include all of `labels`, from a fresh scrape.
fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, body) = http(port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn records_gaining_fields_mid_stream_land_with_every_field() {
    let emulator = Emulator::start(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "web", base_schema());
    let server = Server::start(&config(
        &emulator,
        "web",
        "schema_update_types {\"*_at\": \"TIMESTAMP\"}\n  <inject>\n    time_key logged\n  </inject>",
    ));
    let metrics = metrics_port(&server);
    let mut records: Vec<Value> = (0..20)
        .map(|i| json!({"seq": i, "msg": format!("plain {i}")}))
        .collect();
    records.extend((20..40).map(|i| {
        json!({
            "seq": i, "msg": format!("rich {i}"),
            "user": {"id": i, "name": format!("u{i}"), "geo": {"lat": 1.5}},
            "tags": ["a", "b"],
            "latency": 0.25,
            "ok": i % 2 == 0,
            "retries": 3,
            "created_at": "2026-12-01T10:00:00Z",
            "maybe": null,
        })
    }));
    // A field that arrives as an integer, then as a float: a FLOAT column takes both.
    records.extend((40..50).map(
        |i| json!({"seq": i, "msg": "late", "ratio": if i < 45 { json!(2) } else { json!(2.5) }}),
    ));
    send(&server, &records);

    let rows = by_seq(wait_for(50, || emulator.rows(PROJECT, DATASET, "web")));
    assert_eq!(rows.len(), 50, "dead letters: {:?}", dead_letters(&server));
    assert!(
        dead_letters(&server).is_empty(),
        "{:?}",
        dead_letters(&server)
    );
    let cols = columns(&emulator, "web");
    for (name, ty, mode) in [
        ("user", "RECORD", "NULLABLE"),
        ("user.id", "INTEGER", "NULLABLE"),
        ("user.name", "STRING", "NULLABLE"),
        ("user.geo", "RECORD", "NULLABLE"),
        ("user.geo.lat", "FLOAT", "NULLABLE"),
        ("tags", "STRING", "REPEATED"),
        ("latency", "FLOAT", "NULLABLE"),
        ("ok", "BOOLEAN", "NULLABLE"),
        ("retries", "INTEGER", "NULLABLE"),
        ("created_at", "TIMESTAMP", "NULLABLE"),
        ("ratio", "FLOAT", "NULLABLE"),
        // <inject>'s event time.
        ("logged", "TIMESTAMP", "NULLABLE"),
    ] {
        assert_eq!(column(&cols, name), (ty.into(), mode.into()), "{name}");
    }
    assert!(
        !cols.iter().any(|(n, _, _)| n == "maybe"),
        "a null makes no column: {cols:?}"
    );
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["seq"], i.to_string());
        let logged: f64 = row["logged"].as_str().unwrap_or("0").parse().unwrap();
        assert!(logged > 1.7e9, "{row}");
        if i < 20 {
            assert_eq!(row["msg"], format!("plain {i}"));
            assert!(row["user"].is_null(), "{row}");
        } else if i < 40 {
            assert_eq!(row["user"]["id"], i.to_string(), "{row}");
            assert_eq!(row["user"]["name"], format!("u{i}"));
            assert_eq!(row["user"]["geo"]["lat"], "1.5");
            assert_eq!(row["tags"], json!(["a", "b"]));
            assert_eq!(row["latency"], "0.25");
            assert_eq!(row["ok"], (i % 2 == 0).to_string());
            assert_eq!(row["retries"], "3");
            let created: f64 = row["created_at"].as_str().unwrap().parse().unwrap();
            assert_eq!(created, 1_796_119_200.0, "{row}");
        } else {
            let ratio: f64 = row["ratio"].as_str().unwrap().parse().unwrap();
            assert_eq!(ratio, if i < 45 { 2.0 } else { 2.5 });
        }
    }
    let added = metric(
        metrics,
        "bqforward_bigquery_columns_added_total",
        &[("table", "proj.logs.web")],
    );
    // logged, user (with user.id, user.name, user.geo, user.geo.lat), tags, latency, ok,
    // retries, created_at, ratio: counted as columns added by a patch (a RECORD counts once).
    assert_eq!(added, Some(8.0), "added columns metric");
}

#[test]
fn rows_carrying_a_new_column_wait_for_insert_all_and_the_others_do_not() {
    // insertAll answers "no such field" for 4 s after the patch, as BigQuery does for minutes.
    let emulator = Emulator::start(&["--schema-update-delay-ms", "4000"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "api", base_schema());
    let server = Server::start(&config(&emulator, "api", ""));
    let metrics = metrics_port(&server);
    // New-field rows first, in the same chunk as plain ones after them.
    let mut records: Vec<Value> = (0..10)
        .map(|i| json!({"seq": i, "msg": "new", "region": format!("eu-{i}")}))
        .collect();
    records.extend((10..30).map(|i| json!({"seq": i, "msg": "plain"})));
    send(&server, &records);

    // The plain rows land while the new column is still unseen by insertAll.
    let first = wait_for(20, || emulator.rows(PROJECT, DATASET, "api"));
    assert!(
        first.iter().all(|r| r["msg"] == "plain"),
        "rows with the new field landed before insertAll could see it: {first:?}"
    );
    let rows = by_seq(wait_for(30, || emulator.rows(PROJECT, DATASET, "api")));
    assert_eq!(rows.len(), 30, "dead letters: {:?}", dead_letters(&server));
    for (i, row) in rows.iter().enumerate() {
        if i < 10 {
            assert_eq!(row["region"], format!("eu-{i}"), "{row}");
        } else {
            assert!(row["region"].is_null(), "{row}");
        }
    }
    assert!(
        dead_letters(&server).is_empty(),
        "{:?}",
        dead_letters(&server)
    );
    let stats = emulator.stats();
    assert!(
        stats["rows_invalid"].as_u64().unwrap_or(0) >= 10,
        "the emulator refused the rows while the column was unseen: {stats}"
    );
    let held = metric(
        metrics,
        "bqforward_bigquery_schema_rows_held_total",
        &[("table", "proj.logs.api")],
    )
    .unwrap_or(0.0);
    assert!(held >= 10.0, "rows held metric: {held}");
}

#[test]
fn two_instances_add_the_same_and_different_columns_without_losing_one() {
    let emulator = Emulator::start(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "shared", base_schema());
    let a = Server::start(&config(&emulator, "shared", ""));
    let b = Server::start(&config(&emulator, "shared", ""));
    // Both read the table (and its etag) first.
    send(&a, &[json!({"seq": 0, "msg": "a"})]);
    send(&b, &[json!({"seq": 1, "msg": "b"})]);
    wait_for(2, || emulator.rows(PROJECT, DATASET, "shared"));
    // b adds a column: a's etag is now stale, so a's patch is refused (412) and a reads the
    // table again and keeps b's column.
    send(
        &b,
        &[json!({"seq": 2, "msg": "b", "only_b": true, "both": 1})],
    );
    wait_for(3, || emulator.rows(PROJECT, DATASET, "shared"));
    send(
        &a,
        &[json!({"seq": 3, "msg": "a", "only_a": "x", "both": 2})],
    );
    wait_for(4, || emulator.rows(PROJECT, DATASET, "shared"));
    // Then both at once, each with a column of its own and one they share.
    let records = |who: &str, from: u64| -> Vec<Value> {
        (from..from + 50)
            .map(|i| json!({"seq": i, "msg": who, format!("late_{who}"): i, "late_both": "s"}))
            .collect()
    };
    let spawn = |server: &Server, records: Vec<Value>| {
        let events: Vec<Value> = records.iter().map(|r| json!(["", r])).collect();
        spawn_client(
            "fluent_logger_records.py",
            &[
                "--port",
                &server.port.to_string(),
                "--tag",
                "app",
                "--events",
                &Value::Array(events).to_string(),
            ],
        )
    };
    let ca = spawn(&a, records("a", 100));
    let cb = spawn(&b, records("b", 200));
    finish_client(ca);
    finish_client(cb);
    let rows = by_seq(wait_for(104, || emulator.rows(PROJECT, DATASET, "shared")));
    let (dead_a, dead_b) = (dead_letters(&a), dead_letters(&b));
    assert_eq!(
        rows.len(),
        104,
        "dead letters: a {} (first {:?}), b {} (first {:?})",
        dead_a.len(),
        dead_a.first(),
        dead_b.len(),
        dead_b.first()
    );
    // a's first patch carried a stale etag: refused, then made again beside b's columns.
    assert!(
        a.log().contains("another writer changed the table"),
        "{}",
        a.log()
    );
    let cols = columns(&emulator, "shared");
    for (name, ty) in [
        ("only_b", "BOOLEAN"),
        ("only_a", "STRING"),
        ("both", "INTEGER"),
        ("late_a", "INTEGER"),
        ("late_b", "INTEGER"),
        ("late_both", "STRING"),
    ] {
        assert_eq!(column(&cols, name).0, ty, "{name} in {cols:?}");
    }
    assert_eq!(cols.len(), 8, "each column once: {cols:?}");
    assert_eq!(rows[2]["only_b"], "true");
    assert_eq!(rows[3]["only_a"], "x");
    assert_eq!(rows[3]["both"], "2");
    for row in &rows[4..] {
        let seq: u64 = row["seq"].as_str().unwrap().parse().unwrap();
        let who = if seq < 200 { "a" } else { "b" };
        assert_eq!(row[format!("late_{who}")], seq.to_string(), "{row}");
        assert_eq!(row["late_both"], "s");
    }
    assert!(dead_a.is_empty() && dead_b.is_empty());
}

#[test]
fn values_a_column_cannot_take_go_to_secondary_with_the_reason() {
    let emulator = Emulator::start(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "conflicts", base_schema());
    let server = Server::start(&config(&emulator, "conflicts", ""));
    let metrics = metrics_port(&server);
    let mut deep = json!({"leaf": 1});
    for _ in 0..16 {
        deep = json!({ "d": deep });
    }
    let records = vec![
        json!({"seq": 0, "msg": "ok", "level": 3}),
        // The same new field as a string: INTEGER cannot take "high".
        json!({"seq": 1, "msg": "conflict", "level": "high"}),
        // An existing column with a value it cannot take.
        json!({"seq": "abc", "msg": "bad seq"}),
        // Nested past BigQuery's 15 levels.
        json!({"seq": 3, "msg": "deep", "deep": deep}),
        json!({"seq": 4, "msg": "ok", "level": 5}),
    ];
    send(&server, &records);
    let rows = by_seq(wait_for(2, || emulator.rows(PROJECT, DATASET, "conflicts")));
    let dead = wait_for(3, || dead_letters(&server));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["level"], "3");
    assert_eq!(rows[1]["level"], "5");
    assert_eq!(dead.len(), 3, "{dead:?}");
    let find = |msg: &str| {
        dead.iter()
            .find(|d| d["record"]["msg"] == msg)
            .unwrap_or_else(|| panic!("no dead letter for {msg}: {dead:?}"))
            .clone()
    };
    let conflict = find("conflict");
    assert_eq!(conflict["reason"], "schema_conflict", "{conflict}");
    assert_eq!(conflict["location"], "level", "{conflict}");
    assert_eq!(find("bad seq")["reason"], "schema_conflict");
    let deep = find("deep");
    assert_eq!(deep["reason"], "schema_limit", "{deep}");
    assert!(
        deep["message"]
            .as_str()
            .unwrap_or_default()
            .contains("15 levels"),
        "{deep}"
    );
    assert_eq!(
        column(&columns(&emulator, "conflicts"), "level").0,
        "INTEGER"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conflicts = metric(
            metrics,
            "bqforward_bigquery_schema_conflicts_total",
            &[
                ("table", "proj.logs.conflicts"),
                ("reason", "schema_conflict"),
            ],
        );
        if conflicts == Some(2.0) || Instant::now() > deadline {
            assert_eq!(conflicts, Some(2.0));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn check_names_bad_schema_update_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "schema_update_options ALLOW_EVERYTHING",
            "schema_update_options: unknown option 'ALLOW_EVERYTHING'; allowed: ALLOW_FIELD_ADDITION, ALLOW_FIELD_RELAXATION",
        ),
        (
            "schema_update_options ALLOW_FIELD_RELAXATION",
            "ALLOW_FIELD_RELAXATION is a load-job option (bigquery_load)",
        ),
        (
            "schema_update_options ALLOW_FIELD_ADDITION\n  ignore_unknown_values true",
            "ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together",
        ),
        (
            "schema_update_options ALLOW_FIELD_ADDITION\n  schema_update_types {\"*_at\": \"TIMESTMP\"}",
            "schema_update_types: '*_at': unknown type 'TIMESTMP'",
        ),
        (
            "schema_update_types {\"*_at\": \"TIMESTAMP\"}",
            "schema_update_types needs schema_update_options ALLOW_FIELD_ADDITION",
        ),
        (
            "schema_update_options ALLOW_FIELD_ADDITION\n  template_suffix _x",
            "schema_update_options does not work with template_suffix",
        ),
    ];
    for (extra, want) in cases {
        let text = format!(
            "<match app.**>\n  @type bigquery_insert\n  auth_method none\n  endpoint http://127.0.0.1:9\n  project p\n  dataset d\n  table t\n  {extra}\n</match>\n"
        );
        let path = dir.path().join("bad.conf");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(want), "{text}\nwant {want:?}\ngot {err}");
    }
    let good = "<match app.**>\n  @type bigquery_insert\n  auth_method none\n  endpoint http://127.0.0.1:9\n  project p\n  dataset d\n  table t\n  schema_update_options [\"ALLOW_FIELD_ADDITION\"]\n  schema_update_types created_at:TIMESTAMP,*.ip:STRING\n</match>\n";
    let path = dir.path().join("good.conf");
    std::fs::write(&path, good).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("new fields become NULLABLE columns"), "{all}");
}

// ---- bigquery_storage_write and bigquery_load ---------------------------------------------

/// A forward source, a prometheus source and `output` (`bigquery_storage_write` or
/// `bigquery_load`) with schema evolution to the emulator; `extra` goes inside `<match>`,
/// `buffer` inside `<buffer>`.
fn output_config(
    emulator: &Emulator,
    output: &str,
    table: &str,
    extra: &str,
    buffer: &str,
) -> String {
    let api = match output {
        "bigquery_storage_write" => format!("storage_endpoint {}", emulator.grpc_endpoint()),
        _ => "wait_job_interval 0.1".to_owned(),
    };
    format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<source>
  @type prometheus
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type {output}
  auth_method none
  endpoint {endpoint}
  {api}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  schema_update_options ALLOW_FIELD_ADDITION
  {extra}
  <buffer>
    {buffer}
    flush_interval 0.2s
    retry_wait 0.2s
    retry_max_interval 1s
    retry_forever true
  </buffer>
  <secondary>
    @type file
    path {{dir}}/dead/rejected
    append true
    <format>
      @type json
    </format>
  </secondary>
</match>
"#,
        endpoint = emulator.endpoint()
    )
}

/// At least `n` rows of `table`, read again once there are: `Emulator::rows` reads the schema,
/// then the rows, and a load job commits its new columns and its rows at once, so a read
/// that straddles the commit decodes the new rows with the old columns.
fn landed_rows(emulator: &Emulator, table: &str, n: usize) -> Vec<Value> {
    wait_for(n, || emulator.rows(PROJECT, DATASET, table));
    by_seq(emulator.rows(PROJECT, DATASET, table))
}

/// Plain records, then (once they landed) records with new fields of every kind, then a
/// field that arrives as an integer and then as a float; checks every row's every value and
/// the columns' types.
fn records_gain_fields_and_land_with_every_value(
    emulator: &Emulator,
    server: &Server,
    table: &str,
) {
    let metrics = metrics_port(server);
    let plain: Vec<Value> = (0..20)
        .map(|i| json!({"seq": i, "msg": format!("plain {i}")}))
        .collect();
    send(server, &plain);
    let first = wait_for(20, || emulator.rows(PROJECT, DATASET, table));
    assert_eq!(first.len(), 20, "dead letters: {:?}", dead_letters(server));
    let mut rich: Vec<Value> = (20..40)
        .map(|i| {
            json!({
                "seq": i, "msg": format!("rich {i}"),
                "user": {"id": i, "name": format!("u{i}"), "geo": {"lat": 1.5}},
                "tags": ["a", "b"],
                "latency": 0.25,
                "ok": i % 2 == 0,
                "created_at": "2026-12-01T10:00:00Z",
                "maybe": null,
            })
        })
        .collect();
    rich.extend((40..50).map(
        |i| json!({"seq": i, "msg": "late", "ratio": if i < 45 { json!(2) } else { json!(2.5) }}),
    ));
    send(server, &rich);
    let rows = landed_rows(emulator, table, 50);
    assert_eq!(rows.len(), 50, "dead letters: {:?}", dead_letters(server));
    assert!(
        dead_letters(server).is_empty(),
        "{:?}",
        dead_letters(server)
    );
    let cols = columns(emulator, table);
    for (name, ty, mode) in [
        ("user", "RECORD", "NULLABLE"),
        ("user.id", "INTEGER", "NULLABLE"),
        ("user.name", "STRING", "NULLABLE"),
        ("user.geo", "RECORD", "NULLABLE"),
        ("user.geo.lat", "FLOAT", "NULLABLE"),
        ("tags", "STRING", "REPEATED"),
        ("latency", "FLOAT", "NULLABLE"),
        ("ok", "BOOLEAN", "NULLABLE"),
        ("created_at", "TIMESTAMP", "NULLABLE"),
        ("ratio", "FLOAT", "NULLABLE"),
        ("logged", "TIMESTAMP", "NULLABLE"),
    ] {
        assert_eq!(column(&cols, name), (ty.into(), mode.into()), "{name}");
    }
    assert!(
        !cols.iter().any(|(n, _, _)| n == "maybe"),
        "a null makes no column: {cols:?}"
    );
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["seq"], i.to_string(), "{row}");
        let logged: f64 = row["logged"].as_str().unwrap_or("0").parse().unwrap();
        assert!(logged > 1.7e9, "{row}");
        if i < 20 {
            assert_eq!(row["msg"], format!("plain {i}"));
            assert!(row["user"].is_null() && row["ratio"].is_null(), "{row}");
        } else if i < 40 {
            assert_eq!(row["msg"], format!("rich {i}"));
            assert_eq!(row["user"]["id"], i.to_string(), "{row}");
            assert_eq!(row["user"]["name"], format!("u{i}"), "{row}");
            assert_eq!(row["user"]["geo"]["lat"], "1.5", "{row}");
            assert_eq!(row["tags"], json!(["a", "b"]), "{row}");
            assert_eq!(row["latency"], "0.25", "{row}");
            assert_eq!(row["ok"], (i % 2 == 0).to_string(), "{row}");
            let created: f64 = row["created_at"].as_str().unwrap().parse().unwrap();
            assert_eq!(created, 1_796_119_200.0, "{row}");
        } else {
            let ratio: f64 = row["ratio"].as_str().unwrap().parse().unwrap();
            assert_eq!(ratio, if i < 45 { 2.0 } else { 2.5 }, "{row}");
        }
    }
    // logged, user (a RECORD counts once), tags, latency, ok, created_at, ratio. (A load
    // job's columns count once bqforward saw the job done, which may be after its rows show.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let added = metric(
            metrics,
            "bqforward_bigquery_columns_added_total",
            &[("table", &format!("{PROJECT}.{DATASET}.{table}"))],
        );
        if added == Some(7.0) || Instant::now() > deadline {
            assert_eq!(added, Some(7.0), "added columns metric");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const TYPES_AND_INJECT: &str =
    "schema_update_types {\"*_at\": \"TIMESTAMP\"}\n  <inject>\n    time_key logged\n  </inject>";

#[test]
fn storage_write_default_stream_lands_records_gaining_fields_with_every_field() {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "sw", base_schema());
    let server = Server::start(&output_config(
        &emulator,
        "bigquery_storage_write",
        "sw",
        TYPES_AND_INJECT,
        "",
    ));
    records_gain_fields_and_land_with_every_value(&emulator, &server, "sw");
}

#[test]
fn storage_write_exactly_once_lands_records_gaining_fields_with_every_field() {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "swx", base_schema());
    let server = Server::start(&output_config(
        &emulator,
        "bigquery_storage_write",
        "swx",
        &format!("exactly_once true\n  {TYPES_AND_INJECT}"),
        "@type file\n    path {dir}/buffer",
    ));
    records_gain_fields_and_land_with_every_value(&emulator, &server, "swx");
}

#[test]
fn load_jobs_land_records_gaining_fields_with_every_field() {
    let emulator = Emulator::start(&["--job-delay-ms", "50"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "ld", base_schema());
    let server = Server::start(&output_config(
        &emulator,
        "bigquery_load",
        "ld",
        TYPES_AND_INJECT,
        "@type memory\n    flush_thread_interval 0.1s",
    ));
    records_gain_fields_and_land_with_every_value(&emulator, &server, "ld");
    // The columns came with the jobs' schemas (schemaUpdateOptions), not from autodetect.
    let (status, answer) = emulator.call(
        "GET",
        &format!("/bigquery/v2/projects/{PROJECT}/jobs"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
    let grew: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["configuration"]["load"]["schema"].is_object())
        .collect();
    assert!(!grew.is_empty(), "no job carried a schema: {answer}");
    for job in &grew {
        let load = &job["configuration"]["load"];
        assert_eq!(
            load["schemaUpdateOptions"],
            json!(["ALLOW_FIELD_ADDITION"]),
            "{load}"
        );
        assert!(load.get("autodetect").is_none_or(|a| a == false), "{load}");
    }
}

/// With `--schema-update-delay-ms`, the Storage Write API refuses a writer schema naming the
/// new column ("Input schema has more fields than BigQuery schema") until the change reaches
/// its write path, as BigQuery does for minutes: those rows are held, the chunk's others land.
fn storage_write_holds_rows_carrying_a_new_column(exactly_once: bool) {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "3000"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "held", base_schema());
    let (extra, buffer) = if exactly_once {
        ("exactly_once true", "@type file\n    path {dir}/buffer")
    } else {
        ("", "")
    };
    let server = Server::start(&output_config(
        &emulator,
        "bigquery_storage_write",
        "held",
        extra,
        buffer,
    ));
    let metrics = metrics_port(&server);
    let mut records: Vec<Value> = (0..10)
        .map(|i| json!({"seq": i, "msg": "new", "region": format!("eu-{i}")}))
        .collect();
    records.extend((10..30).map(|i| json!({"seq": i, "msg": "plain"})));
    send(&server, &records);

    let first = wait_for(20, || emulator.rows(PROJECT, DATASET, "held"));
    assert!(
        first.len() >= 20 && first.iter().all(|r| r["msg"] == "plain"),
        "rows with the new field landed before the write path could see it, or the plain ones did not land: {first:?}"
    );
    let rows = by_seq(wait_for(30, || emulator.rows(PROJECT, DATASET, "held")));
    assert_eq!(
        rows.len(),
        30,
        "dead letters: {:?}\n{}",
        dead_letters(&server),
        server.log()
    );
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["seq"], i.to_string(), "{row}");
        if i < 10 {
            assert_eq!(row["region"], format!("eu-{i}"), "{row}");
        } else {
            assert!(row["region"].is_null(), "{row}");
        }
    }
    assert!(
        dead_letters(&server).is_empty(),
        "{:?}",
        dead_letters(&server)
    );
    let held = metric(
        metrics,
        "bqforward_bigquery_schema_rows_held_total",
        &[("table", "proj.logs.held")],
    )
    .unwrap_or(0.0);
    assert!(held >= 10.0, "rows held metric: {held}");
}

#[test]
fn storage_write_holds_rows_carrying_a_new_column_until_the_default_stream_sees_it() {
    storage_write_holds_rows_carrying_a_new_column(false);
}

#[test]
fn storage_write_holds_rows_carrying_a_new_column_until_a_committed_stream_sees_it() {
    storage_write_holds_rows_carrying_a_new_column(true);
}

/// The conflict rule and the limits, as for bigquery_insert: a value its column cannot take
/// and a field BigQuery cannot have go to `<secondary>` with the reason; the rest lands.
fn conflicts_go_to_secondary_with_the_reason(output: &str, buffer: &str) {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "0", "--job-delay-ms", "50"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "conflicts", base_schema());
    let server = Server::start(&output_config(&emulator, output, "conflicts", "", buffer));
    let metrics = metrics_port(&server);
    let mut deep = json!({"leaf": 1});
    for _ in 0..16 {
        deep = json!({ "d": deep });
    }
    send(
        &server,
        &[
            json!({"seq": 0, "msg": "ok", "level": 3}),
            json!({"seq": 1, "msg": "conflict", "level": "high"}),
            json!({"seq": "abc", "msg": "bad seq"}),
            json!({"seq": 3, "msg": "deep", "deep": deep}),
            json!({"seq": 4, "msg": "ok", "level": 5}),
        ],
    );
    let rows = landed_rows(&emulator, "conflicts", 2);
    let dead = wait_for(3, || dead_letters(&server));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["level"], "3");
    assert_eq!(rows[1]["level"], "5");
    assert_eq!(dead.len(), 3, "{dead:?}");
    let find = |msg: &str| {
        dead.iter()
            .find(|d| d["record"]["msg"] == msg)
            .unwrap_or_else(|| panic!("no dead letter for {msg}: {dead:?}"))
            .clone()
    };
    let conflict = find("conflict");
    assert_eq!(conflict["reason"], "schema_conflict", "{conflict}");
    assert_eq!(conflict["location"], "level", "{conflict}");
    assert_eq!(find("bad seq")["reason"], "schema_conflict");
    let deep = find("deep");
    assert_eq!(deep["reason"], "schema_limit", "{deep}");
    assert_eq!(
        column(&columns(&emulator, "conflicts"), "level").0,
        "INTEGER"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conflicts = metric(
            metrics,
            "bqforward_bigquery_schema_conflicts_total",
            &[
                ("table", "proj.logs.conflicts"),
                ("reason", "schema_conflict"),
            ],
        );
        if conflicts == Some(2.0) || Instant::now() > deadline {
            assert_eq!(conflicts, Some(2.0));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn storage_write_conflicts_go_to_secondary_with_the_reason() {
    conflicts_go_to_secondary_with_the_reason("bigquery_storage_write", "");
}

#[test]
fn load_job_conflicts_go_to_secondary_with_the_reason() {
    conflicts_go_to_secondary_with_the_reason(
        "bigquery_load",
        "@type memory\n    flush_thread_interval 0.1s",
    );
}

#[test]
fn check_names_bad_schema_update_settings_of_the_other_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let head = |output: &str| {
        let api = if output == "bigquery_load" {
            "  <buffer>\n    @type memory\n  </buffer>\n"
        } else {
            ""
        };
        format!(
            "<match app.**>\n  @type {output}\n  auth_method none\n  endpoint http://127.0.0.1:9\n  project p\n  dataset d\n  table t\n{api}"
        )
    };
    let cases = [
        (
            "bigquery_storage_write",
            "schema_update_options ALLOW_FIELD_RELAXATION",
            "ALLOW_FIELD_RELAXATION is a load-job option (bigquery_load)",
        ),
        (
            "bigquery_storage_write",
            "schema_update_options ALLOW_FIELD_ADDITION\n  ignore_unknown_values true",
            "ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together",
        ),
        (
            "bigquery_load",
            "schema_update_options ALLOW_FIELD_ADDITION\n  ignore_unknown_values true",
            "ALLOW_FIELD_ADDITION and ignore_unknown_values true do not go together",
        ),
        (
            "bigquery_load",
            "schema_update_options ALLOW_EVERYTHING",
            "schema_update_options: unknown option 'ALLOW_EVERYTHING'; allowed: ALLOW_FIELD_ADDITION, ALLOW_FIELD_RELAXATION",
        ),
        (
            "bigquery_load",
            "schema_update_types {\"*_at\": \"TIMESTAMP\"}",
            "schema_update_types needs schema_update_options ALLOW_FIELD_ADDITION",
        ),
        (
            "bigquery_storage_write",
            "schema_update_options ALLOW_FIELD_ADDITION\n  schema_update_types {\"*_at\": \"TIMESTMP\"}",
            "schema_update_types: '*_at': unknown type 'TIMESTMP'",
        ),
    ];
    for (output, extra, want) in cases {
        let text = format!("{}  {extra}\n</match>\n", head(output));
        let path = dir.path().join("bad.conf");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(want), "{text}\nwant {want:?}\ngot {err}");
    }
    for (output, want) in [
        (
            "bigquery_storage_write",
            "the writer schema is rebuilt from the patched table",
        ),
        (
            "bigquery_load",
            "new fields become NULLABLE columns of each load job's schema",
        ),
    ] {
        let text = format!(
            "{}  schema_update_options [\"ALLOW_FIELD_ADDITION\"]\n  schema_update_types created_at:TIMESTAMP\n</match>\n",
            head(output)
        );
        let path = dir.path().join("good.conf");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}\n{all}");
        assert!(all.contains(want), "{text}\n{all}");
    }
}

#[test]
fn two_storage_write_instances_add_the_same_and_different_columns_without_losing_one() {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "shared", base_schema());
    let start = || {
        Server::start(&output_config(
            &emulator,
            "bigquery_storage_write",
            "shared",
            "",
            "",
        ))
    };
    let (a, b) = (start(), start());
    // Both read the table (and its etag) first.
    send(&a, &[json!({"seq": 0, "msg": "a"})]);
    send(&b, &[json!({"seq": 1, "msg": "b"})]);
    wait_for(2, || emulator.rows(PROJECT, DATASET, "shared"));
    // b adds columns; a's etag is stale, so its patch gets 412 and a keeps b's columns.
    send(
        &b,
        &[json!({"seq": 2, "msg": "b", "only_b": true, "both": 1})],
    );
    wait_for(3, || emulator.rows(PROJECT, DATASET, "shared"));
    send(
        &a,
        &[json!({"seq": 3, "msg": "a", "only_a": "x", "both": 2})],
    );
    wait_for(4, || emulator.rows(PROJECT, DATASET, "shared"));
    // Then both at once, each with a column of its own and one they share.
    let spawn = |server: &Server, who: &str, from: u64| {
        let events: Vec<Value> = (from..from + 50)
            .map(
                |i| json!(["", {"seq": i, "msg": who, format!("late_{who}"): i, "late_both": "s"}]),
            )
            .collect();
        spawn_client(
            "fluent_logger_records.py",
            &[
                "--port",
                &server.port.to_string(),
                "--tag",
                "app",
                "--events",
                &Value::Array(events).to_string(),
            ],
        )
    };
    let (ca, cb) = (spawn(&a, "a", 100), spawn(&b, "b", 200));
    finish_client(ca);
    finish_client(cb);
    let rows = by_seq(wait_for(104, || emulator.rows(PROJECT, DATASET, "shared")));
    let (dead_a, dead_b) = (dead_letters(&a), dead_letters(&b));
    assert_eq!(rows.len(), 104, "dead letters: a {dead_a:?}, b {dead_b:?}");
    assert!(
        a.log().contains("another writer changed the table"),
        "{}",
        a.log()
    );
    let cols = columns(&emulator, "shared");
    for (name, ty) in [
        ("only_b", "BOOLEAN"),
        ("only_a", "STRING"),
        ("both", "INTEGER"),
        ("late_a", "INTEGER"),
        ("late_b", "INTEGER"),
        ("late_both", "STRING"),
    ] {
        assert_eq!(column(&cols, name).0, ty, "{name} in {cols:?}");
    }
    assert_eq!(cols.len(), 8, "each column once: {cols:?}");
    assert_eq!(rows[2]["only_b"], "true");
    assert_eq!(rows[3]["only_a"], "x");
    assert_eq!(rows[3]["both"], "2");
    for row in &rows[4..] {
        let seq: u64 = row["seq"].as_str().unwrap().parse().unwrap();
        let who = if seq < 200 { "a" } else { "b" };
        assert_eq!(row[format!("late_{who}")], seq.to_string(), "{row}");
        assert_eq!(row["late_both"], "s", "{row}");
    }
    assert!(dead_a.is_empty() && dead_b.is_empty());
}

#[test]
fn load_jobs_relax_a_required_column_rows_lack_with_allow_field_relaxation() {
    let emulator = Emulator::start(&["--job-delay-ms", "50"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "strict",
        json!([
            {"name": "seq", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "msg", "type": "STRING", "mode": "REQUIRED"},
        ]),
    );
    let text = output_config(
        &emulator,
        "bigquery_load",
        "strict",
        "",
        "@type memory\n    flush_thread_interval 0.1s",
    )
    .replace(
        "schema_update_options ALLOW_FIELD_ADDITION",
        "schema_update_options [\"ALLOW_FIELD_ADDITION\", \"ALLOW_FIELD_RELAXATION\"]",
    );
    let server = Server::start(&text);
    send(
        &server,
        &[
            json!({"seq": 0, "msg": "has it"}),
            json!({"seq": 1, "region": "eu"}),
        ],
    );
    let rows = landed_rows(&emulator, "strict", 2);
    assert_eq!(rows.len(), 2, "dead letters: {:?}", dead_letters(&server));
    assert_eq!(rows[0]["msg"], "has it");
    assert!(rows[1]["msg"].is_null(), "{}", rows[1]);
    assert_eq!(rows[1]["region"], "eu");
    let cols = columns(&emulator, "strict");
    assert_eq!(column(&cols, "msg"), ("STRING".into(), "NULLABLE".into()));
    assert_eq!(column(&cols, "seq"), ("INTEGER".into(), "REQUIRED".into()));
    assert_eq!(
        column(&cols, "region"),
        ("STRING".into(), "NULLABLE".into())
    );
    assert!(dead_letters(&server).is_empty());
}

#[test]
fn two_load_instances_adding_different_columns_at_once_both_land() {
    // Jobs run 3 s after they are made, against the table as it is then: both instances
    // read the table before either job commits, so the second job's schema lacks the first's
    // column and BigQuery fails it ("Field only_a is missing in new schema").
    let emulator = Emulator::start(&["--job-delay-ms", "3000"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "both", base_schema());
    let start = || {
        Server::start(&output_config(
            &emulator,
            "bigquery_load",
            "both",
            "",
            "@type memory\n    flush_thread_interval 0.1s",
        ))
    };
    let (a, b) = (start(), start());
    let spawn = |server: &Server, who: &str| {
        let events: Vec<Value> = (0..20)
            .map(|i| json!(["", {"seq": i, "msg": who, format!("only_{who}"): format!("{who}{i}"), "shared": i}]))
            .collect();
        spawn_client(
            "fluent_logger_records.py",
            &[
                "--port",
                &server.port.to_string(),
                "--tag",
                "app",
                "--events",
                &Value::Array(events).to_string(),
            ],
        )
    };
    let (ca, cb) = (spawn(&a, "a"), spawn(&b, "b"));
    finish_client(ca);
    finish_client(cb);
    let rows = landed_rows(&emulator, "both", 40);
    let (dead_a, dead_b) = (dead_letters(&a), dead_letters(&b));
    assert_eq!(rows.len(), 40, "dead letters: a {dead_a:?}, b {dead_b:?}");
    assert!(dead_a.is_empty() && dead_b.is_empty());
    let raced = "another writer changed the table while the job ran";
    assert!(
        a.log().contains(raced) || b.log().contains(raced),
        "neither job met the other's column:\n{}\n{}",
        a.log(),
        b.log()
    );
    let cols = columns(&emulator, "both");
    for (name, ty) in [
        ("only_a", "STRING"),
        ("only_b", "STRING"),
        ("shared", "INTEGER"),
    ] {
        assert_eq!(column(&cols, name).0, ty, "{name} in {cols:?}");
    }
    assert_eq!(cols.len(), 5, "each column once: {cols:?}");
    for row in &rows {
        let who = row["msg"].as_str().unwrap();
        let seq = row["seq"].as_str().unwrap();
        assert_eq!(row[format!("only_{who}")], format!("{who}{seq}"), "{row}");
        assert_eq!(row["shared"], seq, "{row}");
    }
}

#[test]
fn storage_write_rows_without_another_writers_unseen_column_are_not_held_for_it() {
    // The write path sees a new column 6 s after it is added.
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "6000"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "late", base_schema());
    let config = output_config(&emulator, "bigquery_storage_write", "late", "", "");
    let a = Server::start(&config);
    send(&a, &[json!({"seq": 0, "msg": "a", "x": "from a"})]);
    a.wait_log("added columns for new fields");
    // b first reads the table with x in it: for b, x is not a column it just added, and its
    // first writer schema names it; the Storage Write API refuses that ("extra fields: 'x'").
    let b = Server::start(&config);
    let mut records: Vec<Value> = (1..6)
        .map(|i| json!({"seq": i, "msg": "b", "x": format!("x{i}")}))
        .collect();
    records.extend((6..16).map(|i| json!({"seq": i, "msg": "plain"})));
    send(&b, &records);
    let first = wait_for(10, || emulator.rows(PROJECT, DATASET, "late"));
    assert!(
        first.len() >= 10 && first.iter().all(|r| r["msg"] == "plain"),
        "b's plain rows waited for a column they do not carry: {first:?}\n{}",
        b.log()
    );
    let rows = by_seq(wait_for(16, || emulator.rows(PROJECT, DATASET, "late")));
    assert_eq!(
        rows.len(),
        16,
        "dead letters: a {:?}, b {:?}",
        dead_letters(&a),
        dead_letters(&b)
    );
    assert_eq!(rows[0]["x"], "from a");
    for (i, row) in rows.iter().enumerate().skip(1) {
        assert_eq!(row["seq"], i.to_string(), "{row}");
        if i < 6 {
            assert_eq!(row["x"], format!("x{i}"), "{row}");
        } else {
            assert!(row["x"].is_null(), "{row}");
        }
    }
    assert!(dead_letters(&a).is_empty() && dead_letters(&b).is_empty());
}
