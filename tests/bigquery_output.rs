//! `bigquery_insert` end to end: the real bqforward binary, real fluent clients, and the
//! repo's bigquery-emulator (a separate process speaking BigQuery's REST API), with rows read
//! back over tabledata.list and compared field by field.

mod common;

use common::*;
use serde_json::{Value, json};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

fn schema() -> Value {
    json!([
        {"name": "seq", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "msg", "type": "STRING"},
        {"name": "pi", "type": "FLOAT"},
        {"name": "ok", "type": "BOOLEAN"},
        {"name": "unicode", "type": "STRING"},
        {"name": "list", "type": "STRING", "mode": "REPEATED"},
        {"name": "nested", "type": "RECORD", "fields": [{"name": "k", "type": "INTEGER"}]},
        {"name": "time", "type": "TIMESTAMP"},
        {"name": "tag", "type": "STRING"},
    ])
}

/// A forward source and a bigquery_insert output to the emulator; `extra` goes inside
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
  @type bigquery_insert
  auth_method none
  endpoint {endpoint}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  {extra}
  <inject>
    time_key time
    tag_key tag
  </inject>
  <buffer>
    flush_interval 0.1s
    retry_wait 0.1s
    retry_max_interval 0.5s
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

#[test]
fn fluent_logger_events_land_with_their_types() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "web", schema());
    let server = Server::start(&config(&emulator, "web", "fetch_schema true", ""));
    run_client(
        "fluent_logger_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "app",
            "--label",
            "web",
            "--count",
            "100",
            "--nanosecond",
        ],
    );
    let rows = wait_for(100, || emulator.rows(PROJECT, DATASET, "web"));
    assert_eq!(rows.len(), 100, "{:?}", dead_letters(&server).first());
    let mut rows = rows;
    rows.sort_by_key(|r| r["seq"].as_str().unwrap().parse::<u64>().unwrap());
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["seq"], i.to_string());
        assert_eq!(row["msg"], format!("event {i}"));
        assert_eq!(row["pi"], "3.25");
        assert_eq!(row["ok"], "true");
        assert_eq!(row["unicode"], "café 😀");
        // nil elements are dropped from REPEATED columns, numbers become strings in STRING.
        assert_eq!(row["list"], json!(["1", "a"]));
        assert_eq!(row["nested"], json!({"k": i.to_string()}));
        assert_eq!(row["tag"], "app.web");
        let time: f64 = row["time"].as_str().unwrap().parse().unwrap();
        assert!(time > 1.7e9, "{row}");
    }
    assert!(dead_letters(&server).is_empty());
}

#[test]
fn templates_and_partition_decorators_route_to_their_tables() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    let server = Server::start(&config(
        &emulator,
        "${tag[1]}_events$%Y%m%d",
        &format!(
            "auto_create_table true\n  time_partitioning_type day\n  schema {}",
            schema()
        ),
        "timekey_use_utc true",
    ));
    let port = server.port.to_string();
    for (label, count) in [("web", "30"), ("api", "20")] {
        run_client(
            "fluent_logger_send.py",
            &[
                "--port", &port, "--tag", "app", "--label", label, "--count", count,
            ],
        );
    }
    wait_for(1, || {
        let n = emulator.count(PROJECT, DATASET, "web_events")
            + emulator.count(PROJECT, DATASET, "api_events");
        if n == 50 { vec![()] } else { vec![] }
    });
    assert_eq!(
        emulator.count(PROJECT, DATASET, "web_events"),
        30,
        "{}",
        server.log()
    );
    assert_eq!(emulator.count(PROJECT, DATASET, "api_events"), 20);
    // The rows went to today's partition.
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    let partition = emulator.rows(PROJECT, DATASET, &format!("web_events${today}"));
    assert_eq!(partition.len(), 30);
}

#[test]
fn injected_failures_lose_nothing_and_duplicate_nothing() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "load",
        json!([
            {"name": "conn", "type": "INTEGER"}, {"name": "seq", "type": "INTEGER"},
            {"name": "msg", "type": "STRING"}, {"name": "level", "type": "STRING"},
            {"name": "time", "type": "TIMESTAMP"}, {"name": "tag", "type": "STRING"},
        ]),
    );
    // Every 3rd request 503, every 5th 429, every 7th 500, every 4th dropped after reading
    // (BigQuery may have stored the rows: only insertIds prevent duplicates then).
    emulator.set_faults(json!({
        "error_503_rate": 0.34, "error_429_rate": 0.2, "error_500_rate": 0.15, "drop_rate": 0.25,
    }));
    let server = Server::start(&config(&emulator, "load", "", "chunk_limit_records 100"));
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            "app.load",
            "--connections",
            "2",
            "--events",
            "1500",
            "--chunk",
            "250",
            "--ack",
        ],
    );
    assert!(out.contains("\"acked\": 3000"), "{out}");
    wait_for(1, || {
        if emulator.count(PROJECT, DATASET, "load") >= 3000 {
            vec![()]
        } else {
            vec![]
        }
    });
    // Settle: nothing more may arrive.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rows = emulator.rows(PROJECT, DATASET, "load");
    let mut keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["conn"].as_str().unwrap().to_owned(),
                r["seq"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3000, "lost rows");
    assert_eq!(rows.len(), 3000, "duplicated rows");
    let stats = emulator.stats();
    assert!(stats["faults_injected"].as_u64().unwrap() > 5, "{stats}");
    assert!(stats["faults_dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(server.log().contains("chunk will be retried"));
    assert!(dead_letters(&server).is_empty());
}

#[test]
fn rejected_rows_go_to_dead_letters_and_the_rest_of_the_request_lands() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "strict",
        json!([{"name": "n", "type": "INTEGER"}, {"name": "tag", "type": "STRING"}, {"name": "time", "type": "TIMESTAMP"}]),
    );
    // No schema in bqforward: BigQuery (the emulator) rejects the row with an unknown
    // field, and marks the others in the same request "stopped".
    let server = Server::start(&config(&emulator, "strict", "", "flush_interval 0.5s"));
    let mut stream = server.connect();
    let records = [
        json!({"n": 1}),
        json!({"n": 2, "surprise": true}),
        json!({"n": 3}),
    ];
    for (i, record) in records.iter().enumerate() {
        send(
            &mut stream,
            &message_with_ack("app.strict", record, &format!("c{i}")),
        );
        assert_eq!(read_ack(&mut stream).unwrap(), format!("c{i}"));
    }
    let dead = wait_for(1, || dead_letters(&server));
    assert_eq!(dead.len(), 1, "{}", server.log());
    let d = &dead[0];
    assert_eq!(d["reason"], "invalid");
    assert_eq!(d["location"], "surprise");
    assert_eq!(d["table"], format!("{PROJECT}.{DATASET}.strict"));
    assert_eq!(d["tag"], "app.strict");
    assert_eq!(d["record"], json!({"n": 2, "surprise": true}));
    let rows = wait_for(2, || emulator.rows(PROJECT, DATASET, "strict"));
    let mut ns: Vec<&str> = rows.iter().map(|r| r["n"].as_str().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, ["1", "3"]);
}

#[test]
fn values_that_cannot_convert_are_dead_lettered_by_field() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    let server = Server::start(&config(
        &emulator,
        "typed",
        &format!("auto_create_table true\n  schema {}", schema()),
        "",
    ));
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("app.t", &json!({"seq": "abc"}), "a"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "a");
    send(
        &mut stream,
        &message_with_ack("app.t", &json!({"seq": 7}), "b"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "b");
    let dead = wait_for(1, || dead_letters(&server));
    assert_eq!(dead[0]["reason"], "conversion_error");
    assert_eq!(dead[0]["location"], "seq");
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "typed"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["seq"], "7");
}

#[test]
fn missing_table_without_auto_create_is_dead_lettered() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    let server = Server::start(&config(&emulator, "nowhere", "", ""));
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("app.x", &json!({"a": 1}), "a"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "a");
    let dead = wait_for(1, || dead_letters(&server));
    assert_eq!(dead[0]["reason"], "not_found");
    assert!(
        dead[0]["message"]
            .as_str()
            .unwrap()
            .contains("Not found: Table"),
        "{}",
        dead[0]
    );
}

#[test]
fn oversized_requests_are_split_until_they_fit() {
    // The emulator takes at most 20 kB per request; bqforward does not know that.
    let emulator = Emulator::start(&["--max-request-bytes", "20000"]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "split",
        json!([
            {"name": "conn", "type": "INTEGER"}, {"name": "seq", "type": "INTEGER"},
            {"name": "msg", "type": "STRING"}, {"name": "level", "type": "STRING"},
            {"name": "time", "type": "TIMESTAMP"}, {"name": "tag", "type": "STRING"},
        ]),
    );
    let server = Server::start(&config(&emulator, "split", "", ""));
    run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "forward",
            "--tag",
            "app.split",
            "--events",
            "400",
            "--chunk",
            "400",
            "--ack",
            "--pad",
            "200",
        ],
    );
    wait_for(1, || {
        if emulator.count(PROJECT, DATASET, "split") >= 400 {
            vec![()]
        } else {
            vec![]
        }
    });
    assert_eq!(
        emulator.count(PROJECT, DATASET, "split"),
        400,
        "{}",
        server.log()
    );
    assert!(server.log().contains("request too large; split in two"));
}

/// A Forward Message-mode event with an EventTime (seconds and nanoseconds) and an ack.
fn event_time_message(tag: &str, secs: u32, nanos: u32, record: &Value, chunk: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_array_len(&mut out, 4).unwrap();
    rmp::encode::write_str(&mut out, tag).unwrap();
    rmp::encode::write_ext_meta(&mut out, 8, 0).unwrap();
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    out.extend(rmp_serde::to_vec(record).unwrap());
    out.extend(rmp_serde::to_vec(&json!({ "chunk": chunk })).unwrap());
    out
}

/// fluent-plugin-bigquery's README injects the time as a string: each row's text (with nine
/// fraction digits, the same but for them within a second) lands as its TIMESTAMP, cut to
/// microseconds.
#[test]
fn injected_string_times_land_as_their_timestamps() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "strtime",
        json!([{"name": "seq", "type": "INTEGER"}, {"name": "time", "type": "TIMESTAMP"}, {"name": "tag", "type": "STRING"}]),
    );
    let conf = config(&emulator, "strtime", "fetch_schema true", "").replace(
        "    time_key time\n",
        "    time_key time\n    time_type string\n    time_format %Y-%m-%dT%H:%M:%S.%NZ\n    utc true\n",
    );
    assert!(conf.contains("time_format"), "{conf}");
    let server = Server::start(&conf);
    let times: [(u32, u32); 6] = [
        (1_764_000_000, 123_456_789),
        (1_764_000_000, 987_654_321),
        (1_764_000_000, 5_000),
        (1_764_000_001, 1),
        (1_764_000_061, 999_999_999),
        (1_764_000_061, 0),
    ];
    let mut stream = server.connect();
    for (seq, (secs, nanos)) in times.iter().enumerate() {
        let chunk = format!("c{seq}");
        send(
            &mut stream,
            &event_time_message("app.s", *secs, *nanos, &json!({ "seq": seq }), &chunk),
        );
        assert_eq!(read_ack(&mut stream).unwrap(), chunk);
    }
    let mut rows = wait_for(times.len(), || emulator.rows(PROJECT, DATASET, "strtime"));
    assert_eq!(rows.len(), times.len(), "{:?}", dead_letters(&server));
    rows.sort_by_key(|r| r["seq"].as_str().unwrap().parse::<usize>().unwrap());
    for (row, (secs, nanos)) in rows.iter().zip(times) {
        let got: f64 = row["time"].as_str().unwrap().parse().unwrap();
        let want = f64::from(secs) + f64::from(nanos / 1_000) / 1e6;
        assert!((got - want).abs() < 5e-7, "{row} against {want}");
    }
    assert!(dead_letters(&server).is_empty());
}

#[test]
fn fetched_schema_drives_conversion() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "fetched",
        json!([{"name": "flag", "type": "BOOLEAN"}, {"name": "tag", "type": "STRING"}, {"name": "time", "type": "TIMESTAMP"}]),
    );
    let server = Server::start(&config(&emulator, "fetched", "fetch_schema true", ""));
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("app.f", &json!({"flag": "TRUE"}), "a"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "a");
    send(
        &mut stream,
        &message_with_ack("app.f", &json!({"flag": [1]}), "b"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "b");
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "fetched"));
    assert_eq!(rows[0]["flag"], "true");
    let dead = wait_for(1, || dead_letters(&server));
    assert_eq!(dead[0]["location"], "flag");
}

#[test]
fn sigterm_flushes_buffered_rows_before_exit() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "term", json!([{"name": "i", "type": "INTEGER"}, {"name": "tag", "type": "STRING"}, {"name": "time", "type": "TIMESTAMP"}]));
    // A long flush interval: only shutdown flushes.
    let mut server = Server::start(&config(
        &emulator,
        "term",
        "",
        "flush_interval 1h\n    chunk_limit_records 100000",
    ));
    let mut stream = server.connect();
    for i in 0..50 {
        send(
            &mut stream,
            &message_with_ack("app.term", &json!({"i": i}), &format!("k{i}")),
        );
        assert_eq!(read_ack(&mut stream).unwrap(), format!("k{i}"));
    }
    assert_eq!(emulator.count(PROJECT, DATASET, "term"), 0);
    drop(stream);
    assert!(server.terminate().success());
    assert_eq!(
        emulator.count(PROJECT, DATASET, "term"),
        50,
        "{}",
        server.log()
    );
}

#[test]
fn exhausted_retries_end_in_the_dead_letters() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, "down", schema());
    emulator.set_faults(json!({"error_503_rate": 1.0}));
    let server = Server::start(&config(&emulator, "down", "", "retry_max_times 2"));
    let mut stream = server.connect();
    send(
        &mut stream,
        &message_with_ack("app.down", &json!({"seq": 1}), "a"),
    );
    assert_eq!(read_ack(&mut stream).unwrap(), "a");
    let dead = wait_for(1, || dead_letters(&server));
    assert_eq!(dead.len(), 1, "{}", server.log());
    assert_eq!(dead[0]["reason"], "retries_exhausted");
    assert!(
        dead[0]["message"].as_str().unwrap().contains("HTTP 503"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["record"], json!({"seq": 1}));
    assert!(emulator.stats()["faults_503"].as_u64().unwrap() >= 3);
}
