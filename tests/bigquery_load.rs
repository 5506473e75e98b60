//! `@type bigquery_load` against the repo's bigquery-emulator, driven by real senders: chunks
//! loaded as jobs and read back, a job that fails for good dead-lettered with its reason,
//! kill -9 while a job is uploaded or polled (every acked event loaded exactly once), and
//! `bqforward replay` of the dead letters after the table is fixed.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

fn fields() -> Value {
    json!([
        {"name": "conn", "type": "INTEGER"}, {"name": "seq", "type": "INTEGER"},
        {"name": "msg", "type": "STRING"}, {"name": "level", "type": "STRING"},
    ])
}

fn emulator_with_table(args: &[&str], table: &str) -> Emulator {
    let emulator = Emulator::start(args);
    emulator.create_dataset(PROJECT, DATASET);
    emulator.create_table(PROJECT, DATASET, table, fields());
    emulator
}

fn config(emulator: &Emulator, table: &str, extra: &str, buffer: &str) -> String {
    format!(
        r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
<match app.**>
  @type bigquery_load
  auth_method none
  endpoint {endpoint}
  project {PROJECT}
  dataset {DATASET}
  table {table}
  wait_job_interval 0.2
  {extra}
  <buffer>
    path {{dir}}/buffer
    flush_interval 1s
    retry_wait 0.5s
    retry_max_interval 2s
    retry_forever true
    {buffer}
  </buffer>
</match>
"#,
        endpoint = emulator.endpoint()
    )
}

/// Rows as (conn, seq), checking that no row is there twice.
fn landed(emulator: &Emulator, table: &str) -> HashSet<(u64, u64)> {
    let rows = emulator.rows(PROJECT, DATASET, table);
    let keys: HashSet<(u64, u64)> = rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_str().unwrap().parse::<u64>().unwrap();
            (n("conn"), n("seq"))
        })
        .collect();
    assert_eq!(keys.len(), rows.len(), "duplicate rows in BigQuery");
    keys
}

fn wait_rows(emulator: &Emulator, table: &str, n: u64, secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let count = emulator.count(PROJECT, DATASET, table);
        if count >= n || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_stat(emulator: &Emulator, stat: &str, n: u64, secs: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let value = emulator.stats()[stat].as_u64().unwrap_or(0);
        if value >= n || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(server: &Server, tag: &str, events: u64, extra: &[&str]) -> String {
    let port = server.port.to_string();
    let events = events.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--mode",
        "packed",
        "--tag",
        tag,
        "--events",
        &events,
        "--chunk",
        "500",
        "--ack",
        "--tolerate-disconnect",
        "--pad",
        "20",
    ];
    args.extend_from_slice(extra);
    run_client("forward_send.py", &args)
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

fn assert_all_acked_landed_once(emulator: &Emulator, table: &str, acked_per_connection: &[u64]) {
    let keys = landed(emulator, table);
    let total: u64 = acked_per_connection.iter().sum();
    for (conn, &acked) in acked_per_connection.iter().enumerate() {
        for seq in 0..acked {
            assert!(
                keys.contains(&(conn as u64, seq)),
                "acked event {conn}/{seq} lost"
            );
        }
    }
    assert!(keys.len() as u64 >= total);
}

fn jobs(emulator: &Emulator) -> Vec<Value> {
    let (status, list) = emulator.call(
        "GET",
        &format!("/bigquery/v2/projects/{PROJECT}/jobs"),
        None,
    );
    assert_eq!(status, 200, "{list}");
    list["jobs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn chunks_become_load_jobs_with_ids_derived_from_the_chunk() {
    let emulator = emulator_with_table(&["--job-delay-ms", "300"], "events");
    let text = config(&emulator, "events", "", "chunk_limit_records 2000");
    let server = Server::start(&text);
    let summary = send(&server, "app.load", 5000, &["--connections", "2"]);
    let acked = acked(&summary);
    assert_eq!(acked.iter().sum::<u64>(), 10_000, "{summary}");
    let count = wait_rows(&emulator, "events", 10_000, 60);
    assert_eq!(count, 10_000, "{}", server.log());
    assert_all_acked_landed_once(&emulator, "events", &acked);

    let jobs = jobs(&emulator);
    assert!(
        jobs.len() >= 5,
        "chunk_limit_records 2000 makes at least 5 jobs: {jobs:?}"
    );
    for job in &jobs {
        let id = job["jobReference"]["jobId"].as_str().unwrap();
        assert!(id.starts_with("bqforward_") && id.ends_with("_0"), "{id}");
        assert_eq!(job["status"]["state"], "DONE");
        assert!(job["status"].get("errorResult").is_none(), "{job}");
        assert_eq!(
            job["configuration"]["load"]["sourceFormat"],
            "NEWLINE_DELIMITED_JSON"
        );
        assert_eq!(
            job["configuration"]["load"]["createDisposition"],
            "CREATE_NEVER"
        );
    }
    let stats = emulator.stats();
    assert_eq!(stats["jobs_duplicate"], 0, "{stats}");
    assert_eq!(stats["rows_loaded"], 10_000, "{stats}");
}
