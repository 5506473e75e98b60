//! `bigquery_storage_write` end to end: the real bqforward binary, real fluent clients, and the
//! repo's bigquery-emulator serving the Storage Write API over gRPC (plaintext h2c), with rows
//! read back over tabledata.list and compared field by field.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

/// A forward source and a bigquery_storage_write output to the emulator; `extra` goes inside
/// `<match>`, `buffer` inside `<buffer>`.
fn config(emulator: &Emulator, table: &str, extra: &str, buffer: &str) -> String {
    format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_storage_write
  auth_method none
  endpoint {endpoint}
  storage_endpoint {grpc}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  {extra}
  <buffer>
    flush_interval 0.2s
    retry_wait 0.2s
    retry_max_interval 1s
    retry_forever true
    {buffer}
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
        endpoint = emulator.endpoint(),
        grpc = emulator.grpc_endpoint(),
    )
}

fn dead_letters(server: &Server) -> Vec<Value> {
    let dir = server.path("dead");
    if !dir.exists() {
        return Vec::new();
    }
    read_json_lines(&dir, ".log")
}

fn load_table(emulator: &Emulator, table: &str) {
    emulator.create_table(
        PROJECT,
        DATASET,
        table,
        json!([
            {"name": "conn", "type": "INTEGER"}, {"name": "seq", "type": "INTEGER"},
            {"name": "msg", "type": "STRING"}, {"name": "level", "type": "STRING"},
        ]),
    );
}

fn wait_count(emulator: &Emulator, table: &str, n: u64, secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let count = emulator.count(PROJECT, DATASET, table);
        if count >= n || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times each (conn, seq) landed.
fn landed(emulator: &Emulator, table: &str) -> HashMap<(u64, u64), u32> {
    let mut seen = HashMap::new();
    for row in emulator.rows(PROJECT, DATASET, table) {
        let n = |k: &str| row[k].as_str().unwrap().parse::<u64>().unwrap();
        *seen.entry((n("conn"), n("seq"))).or_default() += 1;
    }
    seen
}

fn acked(summary: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(summary.trim()).unwrap();
    v["acked_per_connection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

fn send_packed(
    server: &Server,
    tag: &str,
    connections: u32,
    events: u32,
    extra: &[&str],
) -> String {
    let port = server.port.to_string();
    let connections = connections.to_string();
    let events = events.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--mode",
        "packed",
        "--tag",
        tag,
        "--connections",
        &connections,
        "--events",
        &events,
        "--chunk",
        "250",
        "--ack",
    ];
    args.extend_from_slice(extra);
    run_client("forward_send.py", &args)
}

#[test]
fn every_column_type_lands_through_the_default_stream() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "types",
        json!([
            {"name": "s", "type": "STRING", "mode": "REQUIRED"},
            {"name": "i", "type": "INTEGER"},
            {"name": "f", "type": "FLOAT"},
            {"name": "b", "type": "BOOLEAN"},
            {"name": "n", "type": "NUMERIC"},
            {"name": "bn", "type": "BIGNUMERIC"},
            {"name": "ts", "type": "TIMESTAMP"},
            {"name": "d", "type": "DATE"},
            {"name": "t", "type": "TIME"},
            {"name": "dt", "type": "DATETIME"},
            {"name": "g", "type": "GEOGRAPHY"},
            {"name": "j", "type": "JSON"},
            {"name": "by", "type": "BYTES"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "r", "type": "RECORD", "fields": [
                {"name": "k", "type": "INTEGER"},
                {"name": "deep", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "v", "type": "STRING"}]}
            ]},
            {"name": "time", "type": "TIMESTAMP"},
            {"name": "tag", "type": "STRING"},
        ]),
    );
    let server = Server::start(&config(
        &emulator,
        "types",
        "<inject>\n    time_key time\n    tag_key tag\n  </inject>",
        "",
    ));
    let record = json!({
        "s": "café 😀", "i": -42, "f": 1.5, "b": true, "n": "123.456789", "bn": "-0.5",
        "ts": "2024-02-29 12:34:56.123456+01:00", "d": "2024-02-29", "t": "1:02:03.5",
        "dt": "2024-02-29T23:59:59", "g": "POINT(1 2)", "j": {"a": [1, null]}, "by": "aGk=",
        "tags": ["x", null, "y"], "r": {"k": 7, "deep": [{"v": "z"}, {"v": "w"}]}
    });
    let events = json!([["types", record, 1_700_000_000]]);
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "app",
            "--events",
            &events.to_string(),
        ],
    );
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "types"));
    assert_eq!(
        rows.len(),
        1,
        "{:?}\n{}",
        dead_letters(&server),
        server.log()
    );
    let row = &rows[0];
    assert_eq!(row["s"], "café 😀");
    assert_eq!(row["i"], "-42");
    assert_eq!(row["f"], "1.5");
    assert_eq!(row["b"], "true");
    assert_eq!(row["n"], "123.456789");
    assert_eq!(row["bn"], "-0.5");
    // 11:34:56.123456 UTC, in microseconds: the emulator lists TIMESTAMP as BigQuery does.
    let ts: f64 = row["ts"].as_str().unwrap().parse().unwrap();
    assert!((ts - 1_709_206_496.123_456).abs() < 1e-6, "{row}");
    assert_eq!(row["d"], "2024-02-29");
    assert_eq!(row["t"], "01:02:03.500000");
    assert_eq!(row["dt"], "2024-02-29T23:59:59");
    assert_eq!(row["g"], "POINT(1 2)");
    assert_eq!(row["j"], r#"{"a":[1,null]}"#);
    assert_eq!(row["by"], "aGk=");
    assert_eq!(row["tags"], json!(["x", "y"]));
    // (tabledata.list's cell form inside a REPEATED RECORD, which the test helper leaves)
    assert_eq!(
        row["r"],
        json!({"k": "7", "deep": [{"f": [{"v": "z"}]}, {"f": [{"v": "w"}]}]})
    );
    let time: f64 = row["time"].as_str().unwrap().parse().unwrap();
    assert_eq!(time, 1_700_000_000.0);
    assert_eq!(row["tag"], "app.types");
    assert!(dead_letters(&server).is_empty());
}

#[test]
fn rows_bigquery_rejects_go_to_the_secondary_and_the_rest_of_the_batch_lands() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "strict",
        json!([
            {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "msg", "type": "STRING"},
        ]),
    );
    // compat leaves REQUIRED to BigQuery, so the missing id is BigQuery's row error; the
    // unknown key and the bad integer are bqforward's own (strict conversion).
    let server = Server::start(&config(&emulator, "strict", "type_conversion compat", ""));
    let events = json!([
        ["x", {"id": 1, "msg": "a"}],
        ["x", {"msg": "no id"}],
        ["x", {"id": 3, "msg": "c"}],
        ["x", {"id": 4, "msg": "d", "extra": true}],
    ]);
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "app",
            "--events",
            &events.to_string(),
        ],
    );
    let dead = wait_for(2, || dead_letters(&server));
    let rows = wait_for(2, || emulator.rows(PROJECT, DATASET, "strict"));
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "3"], "{}", server.log());
    assert_eq!(dead.len(), 2, "{dead:?}");
    let missing = dead.iter().find(|d| d["record"]["msg"] == "no id").unwrap();
    assert_eq!(missing["reason"], "invalid");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("Missing required field: id"),
        "{missing}"
    );
    let extra = dead.iter().find(|d| d["record"]["id"] == 4).unwrap();
    assert_eq!(extra["reason"], "conversion_error");
    assert_eq!(extra["location"], "extra");
}

#[test]
fn unavailable_and_quota_answers_are_retried_with_nothing_lost_or_doubled() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    load_table(&emulator, "flaky");
    emulator
        .set_faults(json!({"grpc_unavailable_rate": 0.34, "grpc_resource_exhausted_rate": 0.2}));
    let server = Server::start(&config(
        &emulator,
        "flaky",
        "",
        "chunk_limit_records 100\n    flush_thread_count 2",
    ));
    let out = send_packed(&server, "app.flaky", 2, 1500, &[]);
    assert!(out.contains("\"acked\": 3000"), "{out}");
    assert_eq!(
        wait_count(&emulator, "flaky", 3000, 60),
        3000,
        "{}",
        server.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = landed(&emulator, "flaky");
    assert_eq!(seen.len(), 3000);
    assert!(seen.values().all(|n| *n == 1));
    assert!(
        emulator.stats()["faults_unavailable"].as_u64().unwrap_or(0) > 0,
        "{}",
        emulator.stats()
    );
}

/// Answers lost after the rows landed (`grpc_drop_rate`): the default stream can only send
/// again, and rows land twice; exactly once sends again at the recorded offsets, and
/// BigQuery answers ALREADY_EXISTS for what landed.
fn lost_answers(exactly_once: bool) -> (usize, u64) {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    load_table(&emulator, "lost");
    emulator.set_faults(json!({"grpc_drop_rate": 0.3}));
    let server = Server::start(&config(
        &emulator,
        "lost",
        if exactly_once {
            "exactly_once true"
        } else {
            ""
        },
        "@type file\n    path {dir}/buffer\n    chunk_limit_records 100\n    flush_thread_count 2",
    ));
    let out = send_packed(&server, "app.lost", 2, 1000, &[]);
    assert!(out.contains("\"acked\": 2000"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while landed(&emulator, "lost").len() < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let any resend still under way finish.
    std::thread::sleep(Duration::from_secs(2));
    let seen = landed(&emulator, "lost");
    assert_eq!(seen.len(), 2000, "{}", server.log());
    let doubled = seen.values().filter(|n| **n > 1).count();
    let dropped = emulator.stats()["faults_grpc_dropped"]
        .as_u64()
        .unwrap_or(0);
    (doubled, dropped)
}

#[test]
fn exactly_once_lands_each_row_once_when_answers_are_lost() {
    let (doubled, dropped) = lost_answers(true);
    assert!(dropped > 0);
    assert_eq!(doubled, 0, "{dropped} answers lost");
}

#[test]
fn the_default_stream_is_at_least_once_when_answers_are_lost() {
    // The control for the test above: the same faults without exactly_once double rows.
    let (doubled, dropped) = lost_answers(false);
    assert!(dropped > 0);
    assert!(doubled > 0, "{dropped} answers lost, nothing doubled");
}

#[test]
fn kill_9_with_exactly_once_lands_every_acked_event_once() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    load_table(&emulator, "crash");
    let server = Server::start(&config(
        &emulator,
        "crash",
        "exactly_once true",
        // A small buffer that blocks: once answers are lost, the sender is held mid-stream.
        "@type file\n    path {dir}/buffer\n    chunk_limit_records 1000\n    flush_thread_count 2\n    total_limit_size 4m\n    overflow_action block",
    ));
    let sender = spawn_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            "app.crash",
            "--connections",
            "2",
            "--events",
            "150000",
            "--chunk",
            "1000",
            "--ack",
            "--tolerate-disconnect",
            "--pad",
            "20",
        ],
    );
    assert!(
        wait_count(&emulator, "crash", 10_000, 60) >= 10_000,
        "{}",
        server.log()
    );
    // Appends land and their answers are lost: chunks whose rows are in BigQuery stay in the
    // buffer with their tickets, then the process dies.
    emulator.set_faults(json!({"grpc_drop_rate": 1.0}));
    std::thread::sleep(Duration::from_millis(1500));
    let mut server = server;
    server.kill();
    let summary = finish_client(sender);
    let acked = acked(&summary);
    let total: u64 = acked.iter().sum();
    assert!(
        total > 20_000,
        "too little was acked before the crash: {summary}"
    );
    let sent = serde_json::from_str::<Value>(summary.trim()).unwrap()["sent"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        total < 300_000,
        "the crash should come in the middle of the stream: {summary}"
    );
    let before = emulator.count(PROJECT, DATASET, "crash");

    emulator.set_faults(json!({}));
    let server = server.restart(&[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = landed(&emulator, "crash");
    while acked
        .iter()
        .enumerate()
        .any(|(c, &n)| (0..n).any(|s| !seen.contains_key(&(c as u64, s))))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
        seen = landed(&emulator, "crash");
    }
    std::thread::sleep(Duration::from_secs(2));
    let seen = landed(&emulator, "crash");
    for (conn, &n) in acked.iter().enumerate() {
        for seq in 0..n {
            assert!(
                seen.contains_key(&(conn as u64, seq)),
                "acked event {conn}/{seq} lost\n{}",
                server.log()
            );
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} rows landed twice, e.g. {:?}",
        doubled.len(),
        doubled.first()
    );
    assert!(
        server
            .log()
            .contains("recovered buffered chunks from a previous run")
    );
    let dropped = emulator.stats()["faults_grpc_dropped"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "kill -9 with exactly_once: sent {sent}, acked {total}, in BigQuery before the crash {before} ({dropped} answers lost), landed {} distinct, 0 lost, 0 twice",
        seen.len()
    );
}

#[test]
fn check_refuses_what_the_storage_write_api_cannot_do() {
    let emulator = Emulator::start_grpc(&[]);
    let cases = [
        ("exactly_once true", "", "needs <buffer> @type file"),
        ("insert_id_field id", "", "insert_id_field is meaningless"),
        ("template_suffix _x", "", "template_suffix"),
        (
            "storage_endpoint localhost:1",
            "",
            "needs http:// (plaintext h2c) or https://",
        ),
    ];
    for (extra, buffer, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bqforward.conf");
        let mut text = config(&emulator, "t", extra, buffer);
        if extra.starts_with("storage_endpoint") {
            text = config(&emulator, "t", "", buffer).replace(
                &format!("storage_endpoint {}", emulator.grpc_endpoint()),
                extra,
            );
        }
        std::fs::write(
            &path,
            text.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bqforward"))
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(stderr.contains(want), "{extra}: {stderr}");
    }
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
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
fn metrics_show_what_each_api_bills_for_the_same_rows() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    load_table(&emulator, "via_storage");
    load_table(&emulator, "via_insert");
    let output = |id: &str, kind: &str, table: &str, extra: &str| {
        format!(
            "<match app.{id}.**>\n  @type {kind}\n  @id {id}\n  auth_method none\n  endpoint {}\n  {extra}\n  project {PROJECT}\n  dataset {DATASET}\n  table {table}\n  fetch_schema true\n  <buffer>\n    flush_interval 0.1s\n  </buffer>\n</match>\n",
            emulator.endpoint()
        )
    };
    let text = format!(
        "<source>\n  @type forward\n  bind 127.0.0.1\n  port 0\n</source>\n<source>\n  @type prometheus\n  bind 127.0.0.1\n  port 0\n</source>\n{}{}",
        output(
            "sw",
            "bigquery_storage_write",
            "via_storage",
            &format!("storage_endpoint {}", emulator.grpc_endpoint())
        ),
        output("ia", "bigquery_insert", "via_insert", ""),
    );
    let server = Server::start(&text);
    send_packed(&server, "app.sw.x", 1, 300, &[]);
    send_packed(&server, "app.ia.x", 1, 300, &[]);
    assert_eq!(
        wait_count(&emulator, "via_storage", 300, 30),
        300,
        "{}",
        server.log()
    );
    assert_eq!(
        wait_count(&emulator, "via_insert", 300, 30),
        300,
        "{}",
        server.log()
    );
    let line = server.wait_log("http_addr=");
    let port: u16 = line
        .split("http_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let (_, body) = http(port, "GET", "/metrics", None);
        let text = body.as_str().map(str::to_owned).unwrap_or_default();
        let done = sample(
            &text,
            "bqforward_bigquery_billed_bytes_total",
            &[("api", "insert_all")],
        )
        .is_some()
            && sample(
                &text,
                "bqforward_bigquery_billed_bytes_total",
                &[("api", "storage_write")],
            )
            .is_some();
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let billed = |api| {
        sample(
            &scrape,
            "bqforward_bigquery_billed_bytes_total",
            &[("api", api)],
        )
        .unwrap()
    };
    // Rows of well under 1 KB: insertAll bills each as 1 KB.
    assert_eq!(billed("insert_all"), 300.0 * 1024.0, "{scrape}");
    let storage = billed("storage_write");
    let appended = sample(
        &scrape,
        "bqforward_bigquery_appended_bytes_total",
        &[("api", "storage_write"), ("table", "proj.logs.via_storage")],
    )
    .unwrap_or_else(|| panic!("{scrape}"));
    assert_eq!(storage, appended);
    assert!(
        storage > 300.0 * 10.0 && storage < 300.0 * 200.0,
        "{storage}"
    );
    assert_eq!(
        sample(
            &scrape,
            "bqforward_bigquery_rows_inserted_total",
            &[("plugin_id", "sw")]
        ),
        Some(300.0)
    );
    eprintln!(
        "300 rows: insertAll billed {} bytes, Storage Write {storage}",
        billed("insert_all")
    );
}

#[test]
fn a_column_added_to_the_table_is_picked_up_without_dead_letters() {
    let emulator = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "evolve",
        json!([{"name": "a", "type": "STRING"}]),
    );
    // No schema given: it is read from the table, and cached.
    let server = Server::start(&config(&emulator, "evolve", "", ""));
    let send = |record: Value| {
        let events = json!([["x", record]]);
        run_client(
            "fluent_logger_records.py",
            &[
                "--port",
                &server.port.to_string(),
                "--tag",
                "app",
                "--events",
                &events.to_string(),
            ],
        );
    };
    send(json!({"a": "before"}));
    wait_for(1, || emulator.rows(PROJECT, DATASET, "evolve"));
    let (status, answer) = emulator.call(
        "PATCH",
        &format!("/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/evolve"),
        Some(&json!({"schema": {"fields": [
            {"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING"}
        ]}})),
    );
    assert_eq!(status, 200, "{answer}");
    // The next append's answer carries updated_schema: the cached schema is dropped.
    send(json!({"a": "between"}));
    wait_for(2, || emulator.rows(PROJECT, DATASET, "evolve"));
    server.wait_log("the table's schema changed (updated_schema)");
    send(json!({"a": "after", "b": "new column"}));
    let rows = wait_for(3, || emulator.rows(PROJECT, DATASET, "evolve"));
    let after = rows
        .iter()
        .find(|r| r["a"] == "after")
        .unwrap_or_else(|| panic!("{rows:?}\n{}", server.log()));
    assert_eq!(after["b"], "new column");
    assert!(
        dead_letters(&server).is_empty(),
        "{:?}",
        dead_letters(&server)
    );
}

#[test]
fn a_partition_decorator_writes_to_the_table() {
    let emulator = Emulator::start_grpc(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    load_table(&emulator, "daily");
    let server = Server::start(&config(
        &emulator,
        "daily$%Y%m%d",
        "",
        "timekey_use_utc true",
    ));
    let out = send_packed(&server, "app.daily", 1, 300, &[]);
    assert!(out.contains("\"acked\": 300"), "{out}");
    assert_eq!(
        wait_count(&emulator, "daily", 300, 30),
        300,
        "{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("partition decorators ($...) are dropped")
    );
}
