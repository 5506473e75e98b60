//! Monitoring as a user sees it: the real binary with `<source> @type prometheus`, real
//! clients sending, the bigquery-emulator receiving, and a scrape whose counters must equal
//! what was sent and what landed; the health endpoints and `bqforward health`.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

/// A sample expected on a scrape: name, labels it must carry, value.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

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

fn get(port: u16, path: &str) -> (u16, String) {
    let (status, body) = http(port, "GET", path, None);
    match body {
        serde_json::Value::String(text) => (status, text),
        other => (status, other.to_string()),
    }
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

/// Scrapes until `name{labels}` equals `want` (counters settle after acks), then returns
/// the last scrape.
fn scrape_until(port: u16, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get(port, "/metrics");
        assert_eq!(status, 200, "{text}");
        if value(&text, name, labels) == Some(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health(url: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["health", "--url", url, "--timeout", "5"])
        .output()
        .unwrap()
}

fn config(endpoint: &str, table: &str, buffer: &str) -> String {
    format!(
        r#"
<source>
  @type forward
  @id in
  bind 127.0.0.1
  port 0
</source>
<source>
  @type prometheus
  bind 127.0.0.1
  port 0
</source>
<source>
  @type prometheus_output_monitor
  interval 10
</source>
<match app.**>
  @type bigquery_insert
  @id bq
  auth_method none
  endpoint {endpoint}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  fetch_schema true
  <buffer>
    flush_interval 0.1s
    retry_wait 1s
    {buffer}
  </buffer>
</match>
"#
    )
}

fn forward_send(server: &Server, args: &[&str]) {
    let port = server.port.to_string();
    let mut all = vec!["--port", port.as_str()];
    all.extend_from_slice(args);
    run_client("forward_send.py", &all);
}

#[test]
fn a_scrape_counts_what_was_sent_and_what_landed() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "web",
        serde_json::json!([
            {"name": "conn", "type": "INTEGER"},
            {"name": "seq", "type": "INTEGER"},
            {"name": "msg", "type": "STRING"},
            {"name": "level", "type": "STRING"},
        ]),
    );
    let server = Server::start(&config(&emulator.endpoint(), "web", ""));
    let port = metrics_port(&server);

    // 2 connections × 300 events in messages of 50, each acked; 7 events nothing matches;
    // one connection that sends JSON instead of msgpack.
    forward_send(
        &server,
        &[
            "--mode",
            "packed",
            "--connections",
            "2",
            "--events",
            "300",
            "--chunk",
            "50",
            "--ack",
            "--tag",
            "app.web",
        ],
    );
    forward_send(
        &server,
        &[
            "--mode",
            "message",
            "--events",
            "7",
            "--chunk",
            "1",
            "--ack",
            "--tag",
            "nobody.home",
        ],
    );
    let mut bad = server.connect();
    send(&mut bad, br#"{"tag": "json"}"#);
    assert!(closed_by_server(&mut bad));

    wait_for(1, || {
        if emulator.count(PROJECT, DATASET, "web") == 600 {
            vec![()]
        } else {
            vec![]
        }
    });
    assert_eq!(
        emulator.count(PROJECT, DATASET, "web"),
        600,
        "{}",
        server.log()
    );

    let table = [("plugin_id", "bq"), ("table", "proj.logs.web")];
    let text = scrape_until(
        port,
        "bqforward_bigquery_rows_inserted_total",
        &table,
        600.0,
    );
    let input = [("input", "in")];
    let output = [("plugin_id", "bq"), ("type", "bigquery_insert")];
    let checks: &[Expected<'_>] = &[
        ("bqforward_bigquery_rows_inserted_total", &table, 600.0),
        ("bqforward_input_events_total", &input, 607.0),
        ("bqforward_input_acks_total", &input, 12.0 + 7.0),
        ("bqforward_input_connections_total", &input, 4.0),
        (
            "fluentd_input_status_num_records_total",
            &[("tag", "app.web")],
            600.0,
        ),
        (
            "fluentd_input_status_num_records_total",
            &[("tag", "nobody.home")],
            7.0,
        ),
        ("fluentd_output_status_emit_records", &output, 600.0),
        ("fluentd_output_status_retry_count", &output, 0.0),
        ("fluentd_output_status_buffer_total_bytes", &output, 0.0),
        (
            "fluentd_output_status_buffer_available_space_ratio",
            &output,
            100.0,
        ),
        ("bqforward_router_unmatched_events_total", &[], 7.0),
        (
            "bqforward_input_decode_errors_total",
            &[("input", "in"), ("kind", "json_stream")],
            1.0,
        ),
        ("bqforward_ready", &[], 1.0),
    ];
    for (name, labels, want) in checks {
        assert_eq!(
            value(&text, name, labels),
            Some(*want),
            "{name}{labels:?} in\n{text}"
        );
    }
    assert!(text.contains("# TYPE fluentd_output_status_emit_records gauge"));
    assert!(text.contains("# TYPE bqforward_bigquery_request_duration_seconds histogram"));
    let requests = value(
        &text,
        "bqforward_bigquery_request_duration_seconds_count",
        &[("plugin_id", "bq"), ("outcome", "ok")],
    );
    assert!(requests.is_some_and(|n| n >= 1.0), "{text}");
    // The bytes read include the rejected JSON: more than nothing, not checked to the byte.
    assert!(value(&text, "bqforward_input_bytes_total", &input).is_some_and(|b| b > 0.0));
    let open = scrape_until(port, "bqforward_input_connections_open", &input, 0.0);
    assert_eq!(
        value(&open, "bqforward_input_connections_open", &input),
        Some(0.0)
    );

    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz"), (200, "ready\n".to_owned()));
    let (status, plugins) = http(port, "GET", "/api/plugins.json", None);
    assert_eq!(status, 200);
    let bq = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin_id"] == "bq")
        .cloned()
        .unwrap_or_else(|| panic!("{plugins}"));
    assert_eq!(bq["emit_records"], 600);
    assert_eq!(bq["plugin_category"], "output");

    let ok = health(&format!("http://127.0.0.1:{port}/readyz"));
    assert!(ok.status.success(), "{ok:?}");
}

#[test]
fn readiness_fails_while_a_buffer_is_above_its_high_water_mark() {
    // Nothing listens on the BigQuery endpoint: every insert fails and is retried, so what
    // was accepted stays in the buffer.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let server = Server::start(&config(&endpoint, "web", "total_limit_size 10000"));
    let port = metrics_port(&server);
    let url = format!("http://127.0.0.1:{port}/readyz");
    assert!(health(&url).status.success());

    // 36 events of ~300 bytes in one acked message: over 90 % of the 10000-byte limit.
    forward_send(
        &server,
        &[
            "--mode", "packed", "--events", "36", "--chunk", "36", "--pad", "230", "--ack",
            "--tag", "app.web",
        ],
    );
    let (status, body) = get(port, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("bq"), "{body}");
    let unhealthy = health(&url);
    assert!(!unhealthy.status.success());
    assert!(
        String::from_utf8_lossy(&unhealthy.stderr).contains("503"),
        "{unhealthy:?}"
    );
    let output = [("plugin_id", "bq"), ("type", "bigquery_insert")];
    let text = scrape_until(port, "bqforward_ready", &[], 0.0);
    assert_eq!(value(&text, "bqforward_ready", &[]), Some(0.0));
    let ratio = value(
        &text,
        "fluentd_output_status_buffer_available_space_ratio",
        &output,
    );
    assert!(ratio.is_some_and(|r| r < 10.0), "{text}");
    assert_eq!(
        value(&text, "fluentd_output_status_emit_records", &output),
        Some(36.0)
    );
    // Deliveries are failing and being retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = get(port, "/metrics");
        let retries = value(&text, "fluentd_output_status_retry_count", &output);
        if retries.is_some_and(|n| n >= 1.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        value(&text, "fluentd_output_status_retry_count", &output).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(&text, "bqforward_buffer_oldest_chunk_age_seconds", &output)
            .is_some_and(|age| age > 0.0),
        "{text}"
    );
}

#[test]
fn health_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = health(&format!("http://127.0.0.1:{port}/readyz"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unhealthy"),
        "{out:?}"
    );
    let bad = health("https://127.0.0.1/readyz");
    assert!(!bad.status.success());
}

#[test]
fn check_shows_the_metrics_endpoint_and_accepts_the_monitor_sources() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fluent.conf");
    std::fs::write(
        &path,
        r#"
<source>
  @type forward
  port 0
</source>
<source>
  @type prometheus
  port 24299
  metrics_path /prom
</source>
<source>
  @type prometheus_monitor
  <labels>
    host ${hostname}
  </labels>
</source>
<source>
  @type prometheus_output_monitor
</source>
<match **>
  @type null
</match>
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("metrics: prometheus http 0.0.0.0:24299/prom"),
        "{stdout}"
    );
}

#[test]
fn a_repeated_bad_event_is_logged_once_and_counted_every_time() {
    let server = Server::start(
        r#"
<source>
  @type forward
  @id in
  bind 127.0.0.1
  port 0
</source>
<source>
  @type prometheus
  bind 127.0.0.1
  port 0
</source>
<match **>
  @type null
</match>
"#,
    );
    let port = metrics_port(&server);
    let mut stream = server.connect();
    for i in 0..5 {
        let chunk = format!("c{i}");
        let bad = rmp_serde::to_vec(&(
            "x",
            true,
            serde_json::json!({"a": 1}),
            serde_json::json!({"chunk": chunk}),
        ))
        .unwrap();
        send(&mut stream, &bad);
        assert_eq!(read_ack(&mut stream).unwrap(), chunk);
    }
    let kind = [("input", "in"), ("kind", "invalid_event_time")];
    let text = scrape_until(port, "bqforward_input_decode_errors_total", &kind, 5.0);
    assert_eq!(
        value(&text, "bqforward_input_decode_errors_total", &kind),
        Some(5.0)
    );
    let warnings = server
        .log()
        .lines()
        .filter(|l| l.contains("got invalid event"))
        .count();
    assert_eq!(warnings, 1, "{}", server.log());
}

/// fluentd's output counters for every output (null, file, each copy store, the routing
/// outputs, bigquery_insert and its `<secondary>`), and what filters drop or cannot process,
/// with exact counts after a known load.
#[test]
fn every_output_and_filter_is_counted() {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "t",
        serde_json::json!([{"name": "n", "type": "INTEGER", "mode": "REQUIRED"}]),
    );
    let endpoint = emulator.endpoint();
    let server = Server::start(&format!(
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
<filter **>
  @type grep
  @id no_debug
  <exclude>
    key level
    pattern /debug/
  </exclude>
</filter>
<filter x.bad>
  @type record_transformer
  @id retime
  renew_time_key t
</filter>
<match x.drop>
  @type null
  @id nothing
</match>
<match x.bad>
  @type null
  @id unreachable
</match>
<match x.both>
  @type copy
  @id both
  <store>
    @type file
    @id archive
    path {{dir}}/archive/out
    <format>
      @type json
    </format>
  </store>
  <store>
    @type relabel
    @id to_bq
    @label @BQ
  </store>
</match>
<label @BQ>
  <match **>
    @type bigquery_insert
    @id bq
    auth_method none
    endpoint {endpoint}
    project {PROJECT}
    dataset {DATASET}
    table t
    fetch_schema true
    <buffer>
      flush_interval 0.1s
    </buffer>
    <secondary>
      @type secondary_file
      @id dead
      directory {{dir}}/dead
    </secondary>
  </match>
</label>
<label @ERROR>
  <match **>
    @type null
    @id errors
  </match>
</label>
"#
    ));
    let port = metrics_port(&server);
    let mut events = Vec::new();
    // drop: 5 kept, 2 debug dropped by grep.
    for i in 0..7 {
        let level = if i < 2 { "debug" } else { "info" };
        events.push(serde_json::json!(["drop", {"n": i, "level": level}]));
    }
    // both: 4 land in BigQuery, 1 cannot convert and is dead-lettered, 1 debug dropped.
    for i in 0..4 {
        events.push(serde_json::json!(["both", {"n": i}]));
    }
    events.push(serde_json::json!(["both", {"n": "not a number"}]));
    events.push(serde_json::json!(["both", {"n": 9, "level": "debug"}]));
    // bad: renew_time_key that is not a number -> @ERROR (3 events).
    for _ in 0..3 {
        events.push(serde_json::json!(["bad", {"t": "soon"}]));
    }
    // unmatched: 2 events.
    events.push(serde_json::json!(["nowhere", {"n": 1}]));
    events.push(serde_json::json!(["nowhere", {"n": 2}]));
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "x",
            "--events",
            &serde_json::Value::Array(events).to_string(),
        ],
    );
    let text = scrape_until(
        port,
        "fluentd_output_status_emit_records",
        &[("plugin_id", "dead")],
        1.0,
    );
    let out = |id: &str, name: &str| {
        value(
            &text,
            &format!("fluentd_output_status_{name}"),
            &[("plugin_id", id)],
        )
    };
    // null: one emit per message (fluent-logger sends each event as its own message).
    assert_eq!(out("nothing", "emit_records"), Some(5.0), "{text}");
    assert_eq!(out("nothing", "write_count"), Some(0.0), "{text}");
    assert_eq!(out("archive", "emit_records"), Some(5.0), "{text}");
    assert_eq!(out("archive", "write_count"), out("archive", "emit_count"));
    assert_eq!(out("to_bq", "emit_records"), Some(5.0), "{text}");
    assert_eq!(out("both", "emit_records"), Some(5.0), "{text}");
    assert_eq!(out("bq", "emit_records"), Some(5.0), "{text}");
    assert_eq!(out("dead", "emit_records"), Some(1.0), "{text}");
    assert_eq!(out("errors", "emit_records"), Some(3.0), "{text}");
    assert_eq!(out("unreachable", "emit_records"), Some(0.0), "{text}");
    for id in ["nothing", "archive", "to_bq", "both", "dead", "errors"] {
        assert_eq!(out(id, "num_errors"), Some(0.0), "{id}\n{text}");
        assert_eq!(out(id, "retry_count"), Some(0.0), "{id}\n{text}");
        assert_eq!(out(id, "rollback_count"), Some(0.0), "{id}\n{text}");
    }
    assert_eq!(
        value(
            &text,
            "bqforward_filter_dropped_events_total",
            &[("plugin_id", "no_debug"), ("type", "grep")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "bqforward_error_events_total",
            &[("plugin_id", "retime"), ("routed_to", "@ERROR")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "bqforward_router_unmatched_events_total", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "bqforward_bigquery_rows_inserted_total",
            &[("plugin_id", "bq")]
        ),
        Some(4.0),
        "{text}"
    );
    // Only buffered outputs have buffer gauges.
    assert!(
        value(
            &text,
            "fluentd_output_status_buffer_total_bytes",
            &[("plugin_id", "bq")]
        )
        .is_some()
    );
    assert!(
        value(
            &text,
            "fluentd_output_status_buffer_total_bytes",
            &[("plugin_id", "archive")]
        )
        .is_none()
    );
    assert_eq!(emulator.count(PROJECT, DATASET, "t"), 4);
}
