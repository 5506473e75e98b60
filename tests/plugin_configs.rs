//! fluent-plugin-bigquery's own configs, as its README and its tests write them, run by the
//! real bqforward against the repo's bigquery-emulator: chunk keys (`<buffer time>`,
//! `<buffer KEY>`), placeholders in names, sharded `tables`, `template_suffix` and
//! `schema_path` with placeholders, and what a missing dataset or table does.
//!
//! The configs are the plugin's text. The one change: the plugin's default `auth_method
//! private_key` (a P12 key for real Google) becomes `auth_method none` with `endpoint`
//! pointing at the emulator; `...` in the README's snippets is filled with a source and a
//! schema.

mod common;

use common::*;
use serde_json::{Value, json};

const PROJECT: &str = "yourproject_id";
const DATASET: &str = "yourdataset_id";

/// The plugin's README schema (its "Examples" section).
const README_SCHEMA: &str = r#"[
    {"name": "time", "type": "INTEGER"},
    {"name": "status", "type": "INTEGER"},
    {"name": "bytes", "type": "INTEGER"},
    {"name": "vhost", "type": "STRING"},
    {"name": "path", "type": "STRING"},
    {"name": "method", "type": "STRING"},
    {"name": "protocol", "type": "STRING"},
    {"name": "agent", "type": "STRING"},
    {"name": "referer", "type": "STRING"},
    {"name": "remote", "type": "RECORD", "fields": [
      {"name": "host", "type": "STRING"},
      {"name": "ip", "type": "STRING"},
      {"name": "user", "type": "STRING"}
    ]},
    {"name": "requesttime", "type": "FLOAT"},
    {"name": "bot_access", "type": "BOOLEAN"},
    {"name": "loginsession", "type": "BOOLEAN"}
  ]"#;

/// A forward source, then the plugin's `<match>` with its credentials pointed at `emulator`.
fn config(emulator: &Emulator, plugin_match: &str) -> String {
    let credentials = format!("auth_method none\n  endpoint {}\n", emulator.endpoint());
    let plugin_match = plugin_match
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("auth_method private_key")
                || l.starts_with("auth_method json_key")
                || l.starts_with("json_key ")
                || l.starts_with("email ")
                || l.starts_with("private_key_path ")
                || l.starts_with("# private_key_passphrase"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "@type bigquery_insert\n",
            &format!("@type bigquery_insert\n  {credentials}"),
        )
        .replace(
            "@type bigquery_load\n",
            &format!("@type bigquery_load\n  {credentials}"),
        );
    format!("<source>\n  @type forward\n  bind 127.0.0.1\n  port 0\n</source>\n{plugin_match}\n")
}

fn emulator() -> Emulator {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    emulator
}

fn readme_schema() -> Value {
    serde_json::from_str(README_SCHEMA).unwrap()
}

/// Sends `[label, record, unix_time?]` events tagged `dummy.<label>` with fluent-logger.
fn send(server: &Server, events: &Value) {
    run_client(
        "fluent_logger_records.py",
        &[
            "--port",
            &server.port.to_string(),
            "--tag",
            "dummy",
            "--events",
            &events.to_string(),
        ],
    );
}

fn access(i: u64, status: u64) -> Value {
    json!({"time": 1_700_000_000u64 + i, "status": status, "bytes": 100 + i, "vhost": "www",
        "path": format!("/p/{i}"), "method": "GET", "protocol": "HTTP/1.1",
        "remote": {"host": "h", "ip": "192.0.2.1", "user": "u"}, "requesttime": 0.25,
        "bot_access": false, "loginsession": true})
}

fn check_ok(config_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fluent.conf");
    std::fs::write(&path, config_text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "check failed:\n{stderr}");
    stderr
}

#[test]
fn readme_minimum_config_streams_rows() {
    let emulator = emulator();
    emulator.create_table(PROJECT, DATASET, "tablename", readme_schema());
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert

  auth_method private_key   # default
  email xxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxx@developer.gserviceaccount.com
  private_key_path /home/username/.keys/00000000000000000000000000000000-privatekey.p12
  # private_key_passphrase notasecret # default

  project yourproject_id
  dataset yourdataset_id
  table   tablename

  schema {README_SCHEMA}
</match>"#
        ),
    );
    check_ok(&text);
    let server = Server::start(&text);
    let events: Vec<Value> = (0..20).map(|i| json!(["web", access(i, 200)])).collect();
    send(&server, &json!(events));
    let rows = wait_for(20, || emulator.rows(PROJECT, DATASET, "tablename"));
    assert_eq!(rows.len(), 20, "{}", server.log());
    let row = rows.iter().find(|r| r["path"] == "/p/3").unwrap();
    assert_eq!(row["remote"]["ip"], "192.0.2.1");
    assert_eq!(row["requesttime"], "0.25");
    assert_eq!(row["loginsession"], "true");
}

#[test]
fn readme_high_rate_config_shards_rows_over_its_tables() {
    let emulator = emulator();
    for table in ["accesslog1", "accesslog2", "accesslog3"] {
        emulator.create_table(PROJECT, DATASET, table, readme_schema());
    }
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert

  <buffer>
    flush_interval 0.1  # flush as frequent as possible

    total_limit_size 10g

    flush_thread_count 16
  </buffer>

  auth_method private_key   # default
  email xxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxx@developer.gserviceaccount.com
  private_key_path /home/username/.keys/00000000000000000000000000000000-privatekey.p12
  # private_key_passphrase notasecret # default

  project yourproject_id
  dataset yourdataset_id
  tables  accesslog1,accesslog2,accesslog3

  schema {README_SCHEMA}
</match>"#
        ),
    );
    let server = Server::start(&text);
    // Several sends, so batches (which take the tables in turn) reach each table.
    for round in 0..6 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!(["web", access(round * 10 + i, 200)]))
            .collect();
        send(&server, &json!(events));
    }
    let total = || -> u64 {
        ["accesslog1", "accesslog2", "accesslog3"]
            .iter()
            .map(|t| emulator.count(PROJECT, DATASET, t))
            .sum()
    };
    wait_for(60, || vec![(); total() as usize]);
    assert_eq!(total(), 60, "{}", server.log());
    let used = ["accesslog1", "accesslog2", "accesslog3"]
        .iter()
        .filter(|t| emulator.count(PROJECT, DATASET, t) > 0)
        .count();
    assert!(used >= 2, "rows did not spread over the tables");
}

/// The README's "strftime formatting": `<buffer time>` with `timekey 1d`, names from the
/// event time cut to its day in local time (the process's zone; the test computes the
/// expected names in the same zone).
#[test]
fn readme_strftime_tables_take_the_event_day() {
    let emulator = emulator();
    // 2026-11-30T12:00:00Z and 2026-12-01T12:00:00Z: different days in any zone within ±11h.
    let days = [1_796_040_000i64, 1_796_126_400];
    let names: Vec<String> = days
        .iter()
        .map(|t| {
            let local = chrono::DateTime::from_timestamp(*t, 0)
                .unwrap()
                .with_timezone(&chrono::Local);
            local.format("accesslog_%Y_%m_%d").to_string()
        })
        .collect();
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table   accesslog_%Y_%m_%d
  auto_create_table true
  schema {README_SCHEMA}

  <buffer time>
    timekey 1d
  </buffer>
</match>"#
        ),
    );
    let stderr = check_ok(&text);
    assert!(
        stderr.contains("<buffer time>: chunks are keyed by destination")
            && stderr.contains("timekey 86400s"),
        "{stderr}"
    );
    let server = Server::start(&text);
    let events: Vec<Value> = (0..10u64)
        .map(|i| json!(["web", access(i, 200), days[(i % 2) as usize] + i as i64]))
        .collect();
    send(&server, &json!(events));
    for name in &names {
        let rows = wait_for(5, || emulator.rows(PROJECT, DATASET, name));
        assert_eq!(rows.len(), 5, "{name}: {}", server.log());
    }
}

/// `timekey_zone`: periods start at midnight in that zone. 14:59:59Z and 15:00:01Z are
/// the 30th and the 1st in Tokyo.
#[test]
fn timekey_zone_sets_where_a_day_starts() {
    let emulator = emulator();
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table   accesslog_%Y_%m_%d_%H%M
  auto_create_table true
  schema {README_SCHEMA}
  <buffer time>
    timekey 1d
    timekey_zone Asia/Tokyo
    timekey_wait 0s
  </buffer>
</match>"#
        ),
    );
    let server = Server::start(&text);
    let before = 1_796_050_799i64; // 2026-11-30T14:59:59Z = 23:59:59 in Tokyo
    send(
        &server,
        &json!([
            ["web", access(1, 200), before],
            ["web", access(2, 200), before + 2]
        ]),
    );
    // The minutes come from the start of the day (00:00 in Tokyo), not the event.
    for table in ["accesslog_2026_11_30_0000", "accesslog_2026_12_01_0000"] {
        let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, table));
        assert_eq!(rows.len(), 1, "{table}: {}", server.log());
    }
}

/// The README's "record attribute formatting": `table accesslog_${status_code}` with
/// `<buffer status_code>`. A record without the key gets "" as fluentd's nil chunk key.
#[test]
fn readme_record_attribute_tables_take_the_record_value() {
    let emulator = emulator();
    let schema = README_SCHEMA.replacen('[', r#"[{"name": "status_code", "type": "INTEGER"},"#, 1);
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  auto_create_table true
  schema {schema}
  table   accesslog_${{status_code}}

  <buffer status_code>
  </buffer>
</match>"#
        ),
    );
    let server = Server::start(&text);
    let mut events = Vec::new();
    for i in 0..9u64 {
        let mut record = access(i, 0);
        record["status_code"] = json!([200, 404, 503][(i % 3) as usize]);
        events.push(json!(["web", record]));
    }
    events.push(json!(["web", access(99, 1)]));
    send(&server, &json!(events));
    for table in ["accesslog_200", "accesslog_404", "accesslog_503"] {
        let rows = wait_for(3, || emulator.rows(PROJECT, DATASET, table));
        assert_eq!(rows.len(), 3, "{table}: {}", server.log());
    }
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "accesslog_"));
    assert_eq!(rows.len(), 1, "{}", server.log());
}

/// test_out_bigquery_insert.rb `test_write_with_row_based_table_id_formatting`, its config
/// as written: the rows go to `foo_2014_08_20`.
#[test]
fn plugin_test_row_based_table_id_formatting() {
    let emulator = emulator();
    emulator.create_table(
        PROJECT,
        DATASET,
        "foo_2014_08_20",
        json!([
            {"name": "time", "type": "INTEGER"},
            {"name": "a", "type": "STRING"},
            {"name": "created_at", "type": "STRING"},
        ]),
    );
    let text = config(
        &emulator,
        r#"<match dummy.**>
      @type bigquery_insert
      <buffer created_at>
      </buffer>
      table foo_${created_at}
      email foo@bar.example
      private_key_path /path/to/key
      project yourproject_id
      dataset yourdataset_id

      schema [
        {"name": "time", "type": "INTEGER"}
      ]
</match>"#,
    );
    let server = Server::start(&text);
    send(
        &server,
        &json!([["x", {"a": "b", "created_at": "2014_08_20"}]]),
    );
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "foo_2014_08_20"));
    assert_eq!(rows.len(), 1, "{}", server.log());
    assert_eq!(rows[0]["a"], "b");
}

/// `template_suffix` and `schema_path` with placeholders, resolved per event: each tag's
/// rows land in `base` + its suffix, and each auto-created table takes its own schema file.
#[test]
fn template_suffix_and_schema_path_take_placeholders() {
    let emulator = emulator();
    emulator.create_table(
        PROJECT,
        DATASET,
        "base",
        json!([
            {"name": "msg", "type": "STRING"},
            {"name": "web_only", "type": "STRING"},
            {"name": "api_only", "type": "INTEGER"},
        ]),
    );
    let schemas = tempfile::tempdir().unwrap();
    std::fs::write(
        schemas.path().join("web.json"),
        r#"[{"name": "msg", "type": "STRING"}, {"name": "web_only", "type": "STRING"}]"#,
    )
    .unwrap();
    std::fs::write(
        schemas.path().join("api.json"),
        r#"[{"name": "msg", "type": "STRING"}, {"name": "api_only", "type": "INTEGER"}]"#,
    )
    .unwrap();
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type copy
  <store>
    @type bigquery_insert
    project yourproject_id
    dataset yourdataset_id
    table base
    template_suffix _${{tag[1]}}_%Y
    <buffer tag,time>
      timekey 1h
      timekey_use_utc true
    </buffer>
  </store>
  <store>
    @type bigquery_insert
    project yourproject_id
    dataset yourdataset_id
    table by_schema_${{tag[1]}}
    auto_create_table true
    schema_path {}/${{tag[1]}}.json
    <buffer tag>
    </buffer>
  </store>
</match>"#,
            schemas.path().display()
        ),
    );
    let server = Server::start(&text);
    let year = chrono::Utc::now().format("%Y").to_string();
    send(
        &server,
        &json!([
            ["web", {"msg": "w", "web_only": "x"}],
            ["api", {"msg": "a", "api_only": 7}],
            ["web", {"msg": "w2", "web_only": "y"}],
        ]),
    );
    let web = wait_for(2, || {
        emulator.rows(PROJECT, DATASET, &format!("base_web_{year}"))
    });
    assert_eq!(web.len(), 2, "{}", server.log());
    let api = wait_for(1, || {
        emulator.rows(PROJECT, DATASET, &format!("base_api_{year}"))
    });
    assert_eq!(api.len(), 1, "{}", server.log());
    let web = wait_for(2, || emulator.rows(PROJECT, DATASET, "by_schema_web"));
    assert_eq!(web.len(), 2, "{}", server.log());
    assert!(web.iter().any(|r| r["web_only"] == "y"), "{web:?}");
    let api = wait_for(1, || emulator.rows(PROJECT, DATASET, "by_schema_api"));
    assert_eq!(api[0]["api_only"], "7");
}

/// The README's auto_create_table example: the table is created once, its rows land, and
/// creating it is not logged as a failure.
#[test]
fn auto_create_table_logs_created_once_and_no_404_warning() {
    let emulator = emulator();
    let text = config(
        &emulator,
        &format!(
            r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  auto_create_table true
  table accesslog_%Y_%m
  schema {README_SCHEMA}
  <buffer>
    flush_interval 0.1
    flush_thread_count 4
    chunk_limit_records 5
  </buffer>
</match>"#
        ),
    );
    let server = Server::start(&text);
    let table = chrono::Local::now().format("accesslog_%Y_%m").to_string();
    let events: Vec<Value> = (0..40).map(|i| json!(["web", access(i, 200)])).collect();
    send(&server, &json!(events));
    let rows = wait_for(40, || emulator.rows(PROJECT, DATASET, &table));
    assert_eq!(rows.len(), 40, "{}", server.log());
    let log = server.log();
    assert_eq!(log.matches("created table").count(), 1, "{log}");
    assert!(
        !log.lines().any(|l| l.contains("WARN") && l.contains("404")),
        "{log}"
    );
}

/// A missing dataset is a deployment problem: rows wait (never dead-lettered), `/readyz`
/// and a metric say why, and they land once the dataset exists.
#[test]
fn a_missing_dataset_holds_rows_until_it_exists() {
    let emulator = Emulator::start(&[]);
    let text = config(
        &emulator,
        r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table t
  <buffer>
    flush_interval 0.1
    retry_wait 0.2
    retry_max_interval 0.5
  </buffer>
  <secondary>
    @type secondary_file
    directory {dir}/dead
  </secondary>
</match>
<source>
  @type prometheus
  bind 127.0.0.1
  port 0
</source>"#,
    );
    let server = Server::start(&text);
    let metrics_port: u16 = server
        .wait_log("http_addr=")
        .split("http_addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    send(
        &server,
        &json!([["web", {"msg": "waits"}], ["web", {"msg": "too"}]]),
    );
    server.wait_log("dataset not found");
    let text = |path: &str| match http(metrics_port, "GET", path, None) {
        (status, Value::String(body)) => (status, body),
        (status, other) => (status, other.to_string()),
    };
    let (status, body) = text("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("bigquery_insert.2: dataset yourproject_id.yourdataset_id not found"),
        "{body}"
    );
    let (_, metrics) = text("/metrics");
    assert!(
        metrics.contains(
            r#"bqforward_bigquery_dataset_missing{plugin_id="bigquery_insert.2",dataset="yourproject_id.yourdataset_id"} 1"#
        ),
        "{metrics}"
    );
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(
        PROJECT,
        DATASET,
        "t",
        json!([{"name": "msg", "type": "STRING"}]),
    );
    let rows = wait_for(2, || emulator.rows(PROJECT, DATASET, "t"));
    assert_eq!(rows.len(), 2, "{}", server.log());
    assert!(!server.path("dead").exists(), "nothing was dead-lettered");
    assert_eq!(text("/readyz").0, 200);
}

#[test]
fn auto_create_dataset_creates_it() {
    let emulator = Emulator::start(&[]);
    let text = config(
        &emulator,
        r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table t
  auto_create_dataset true
  auto_create_table true
  schema [{"name": "msg", "type": "STRING"}]
  <buffer>
    flush_interval 0.1
  </buffer>
</match>"#,
    );
    let server = Server::start(&text);
    send(&server, &json!([["web", {"msg": "one"}]]));
    let rows = wait_for(1, || emulator.rows(PROJECT, DATASET, "t"));
    assert_eq!(rows.len(), 1, "{}", server.log());
    assert_eq!(server.log().matches("created dataset").count(), 1);
}

/// `<secondary> @type secondary_file` (fluentd's usual dead-letter output): a row BigQuery
/// rejects is written to `directory/basename.0` as a JSON line with its reason.
#[test]
fn secondary_file_takes_dead_letters() {
    let emulator = emulator();
    emulator.create_table(
        PROJECT,
        DATASET,
        "t",
        json!([{"name": "n", "type": "INTEGER", "mode": "REQUIRED"}]),
    );
    let text = config(
        &emulator,
        r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table t
  fetch_schema true
  <buffer>
    flush_interval 0.1
  </buffer>
  <secondary>
    @type secondary_file
    directory {dir}/error
    basename ${tag}_dump
  </secondary>
</match>"#,
    );
    let server = Server::start(&text);
    send(
        &server,
        &json!([["web", {"n": 1}], ["web", {"n": "not a number"}]]),
    );
    let dead = wait_for(1, || {
        read_json_lines(&server.path("error"), "dummy.web_dump.0")
    });
    assert_eq!(dead.len(), 1, "{}", server.log());
    assert_eq!(dead[0]["reason"], "conversion_error");
    assert_eq!(dead[0]["record"]["n"], "not a number");
    assert_eq!(dead[0]["tag"], "dummy.web");
    assert_eq!(
        wait_for(1, || emulator.rows(PROJECT, DATASET, "t")).len(),
        1
    );
}

/// Names rendered from records that BigQuery cannot take cost only their rows: they are
/// dead-lettered with the reason, the rest of the stream lands.
#[test]
fn invalid_rendered_names_dead_letter_only_their_rows() {
    let emulator = emulator();
    let text = config(
        &emulator,
        r#"<match dummy.**>
  @type bigquery_insert
  project yourproject_id
  dataset yourdataset_id
  table t_${kind}
  auto_create_table true
  schema [{"name": "kind", "type": "STRING"}]
  <buffer kind>
    flush_interval 0.1
  </buffer>
  <secondary>
    @type secondary_file
    directory {dir}/error
  </secondary>
</match>"#,
    );
    let server = Server::start(&text);
    send(
        &server,
        &json!([["web", {"kind": "ok"}], ["web", {"kind": "../etc"}], ["web", {"kind": "ok"}]]),
    );
    let rows = wait_for(2, || emulator.rows(PROJECT, DATASET, "t_ok"));
    assert_eq!(rows.len(), 2, "{}", server.log());
    let dead = wait_for(1, || read_json_lines(&server.path("error"), "dump.bin"));
    assert_eq!(dead.len(), 1, "{}", server.log());
    assert_eq!(dead[0]["reason"], "invalid_destination");
    assert!(
        dead[0]["message"].as_str().unwrap().contains("t_../etc"),
        "{dead:?}"
    );
}

/// The README's "Load" example. Besides the credentials, its relative paths (the buffer's
/// `bigquery.*.buffer` and `bq_schema.json`) are put in a temporary directory. The table
/// `yourtable%{time_slice}` (fluentd v0.12's placeholder) is read as `yourtable%Y%m%d`, and
/// `flush_at_shutdown true` loads the buffered events at SIGTERM.
#[test]
fn readme_load_config_loads_into_a_table_it_creates() {
    let emulator = emulator();
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("bq_schema.json");
    std::fs::write(&schema_path, README_SCHEMA).unwrap();
    let readme = r#"<match dummy.**>
  @type bigquery_load

  <buffer>
    path bigquery.*.buffer
    flush_at_shutdown true
    timekey_use_utc
  </buffer>

  auth_method json_key
  json_key json_key_path.json

  project yourproject_id
  dataset yourdataset_id
  auto_create_table true
  table yourtable%{time_slice}
  schema_path bq_schema.json
</match>"#;
    let text = config(&emulator, readme)
        .replace(
            "path bigquery.*.buffer",
            &format!("path {}/bigquery.*.buffer", dir.path().display()),
        )
        .replace(
            "schema_path bq_schema.json",
            &format!("schema_path {}", schema_path.display()),
        );
    let checked = check_ok(&text);
    assert!(checked.contains("%{time_slice}"), "{checked}");
    let mut server = Server::start(&text);
    let events: Vec<Value> = (0..20).map(|i| json!(["web", access(i, 200)])).collect();
    send(&server, &json!(events));
    let table = format!("yourtable{}", chrono::Utc::now().format("%Y%m%d"));
    assert!(server.terminate().success(), "{}", server.log());
    let rows = emulator.rows(PROJECT, DATASET, &table);
    assert_eq!(rows.len(), 20, "{table}: {}", server.log());
    let row = rows.iter().find(|r| r["path"] == "/p/3").unwrap();
    assert_eq!(row["remote"]["ip"], "192.0.2.1");
    let (_, jobs) = emulator.call(
        "GET",
        &format!("/bigquery/v2/projects/{PROJECT}/jobs"),
        None,
    );
    let load = &jobs["jobs"][0]["configuration"]["load"];
    assert_eq!(load["createDisposition"], "CREATE_IF_NEEDED", "{jobs}");
    assert_eq!(load["schema"]["fields"][9]["name"], "remote", "{jobs}");
}
