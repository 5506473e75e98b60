//! `@type bigquery_load` against the repo's bigquery-emulator, driven by real senders: chunks
//! loaded as jobs and read back, a job that fails for good dead-lettered with its reason,
//! kill -9 while a job is uploaded or polled (every acked event loaded exactly once), and
//! `bqforward replay` of the dead letters after the table is fixed.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
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
<source>
  @type prometheus
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

    // Metrics: jobs per table, rows and bytes loaded, job latency.
    let port = metrics_port(&server);
    let (status, body) = http(port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    let table = [("table", "proj.logs.events")];
    let sample = |name: &str, labels: &[(&str, &str)]| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let done = sample(
        "bqforward_bigquery_load_jobs_total",
        &[table[0], ("event", "done")],
    );
    let started = sample(
        "bqforward_bigquery_load_jobs_total",
        &[table[0], ("event", "started")],
    );
    assert_eq!((done, started), (jobs.len() as f64, jobs.len() as f64));
    assert_eq!(
        sample("bqforward_bigquery_rows_inserted_total", &table),
        10_000.0
    );
    assert!(sample("bqforward_bigquery_load_bytes_total", &table) > 10_000.0 * 40.0);
    // The default upload is the NDJSON as written (fluent-plugin-bigquery's): as many bytes
    // went up as were loaded.
    assert_eq!(
        sample("bqforward_bigquery_load_bytes_total", &table),
        uploaded_bytes(&emulator) as f64
    );
    assert_eq!(
        sample("bqforward_bigquery_load_job_duration_seconds_count", &[]),
        jobs.len() as f64
    );
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

#[test]
fn a_job_left_pending_or_running_is_warned_about_while_it_is_polled() {
    // Jobs take 6 s (PENDING for 3, then RUNNING); warnings every second instead of every
    // minute: the log names the job, the table, its state and how long it has been polled,
    // and the `slow` count says how many jobs were slow. The job still loads, once.
    let emulator = emulator_with_table(&["--job-delay-ms", "6000"], "sluggish");
    let text = config(&emulator, "sluggish", "", "");
    let server = Server::start_env(&text, &[], &[("BQFORWARD_LOAD_JOB_WARN_AFTER", "1")]);
    let summary = send(&server, "app.sluggish", 1000, &[]);
    assert_eq!(acked(&summary), [1000], "{summary}");
    assert_eq!(
        wait_rows(&emulator, "sluggish", 1000, 60),
        1000,
        "{}",
        server.log()
    );
    let log = server.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("load job not done yet"))
        .collect();
    let jobs = jobs(&emulator);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let id = jobs[0]["jobReference"]["jobId"].as_str().unwrap();
    assert!(warnings.len() >= 2, "a warning a second for 6 s:\n{log}");
    for line in &warnings {
        assert!(
            line.contains("WARN")
                && line.contains(&format!("job={id}"))
                && line.contains("table=proj.logs.sluggish")
                && line.contains("waited_s="),
            "{line}"
        );
    }
    assert!(
        warnings.iter().any(|l| l.contains("state=PENDING"))
            && warnings.iter().any(|l| l.contains("state=RUNNING")),
        "{warnings:?}"
    );
    let (status, body) = http(metrics_port(&server), "GET", "/metrics", None);
    assert_eq!(status, 200);
    let metrics = body.as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bqforward_bigquery_load_jobs_total")
                && l.contains("event=\"slow\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert_all_acked_landed_once(&emulator, "sluggish", &[1000]);
}

#[test]
fn a_chunk_larger_than_a_multipart_request_is_uploaded_resumably_in_pieces() {
    let emulator = emulator_with_table(&["--job-delay-ms", "100"], "big");
    resumable_upload(&emulator);
    // The session, then two PUTs of data.
    let stats = emulator.stats();
    assert!(stats["upload_requests"].as_u64().unwrap() >= 3, "{stats}");
}

#[test]
fn a_resumable_upload_whose_answers_are_lost_resumes_and_loads_once() {
    let emulator = emulator_with_table(&[], "big");
    // Every third upload request is carried out but its answer lost: the session's answer,
    // a piece's (the upload asks how far it got and goes on) or the last piece's (the job
    // exists; the status query returns it).
    emulator
        .set_faults(json!({"drop_response_rate": 0.34, "scope": "upload", "job_delay_ms": 100}));
    resumable_upload(&emulator);
    let stats = emulator.stats();
    assert!(
        stats["faults_response_dropped"].as_u64().unwrap() >= 1,
        "{stats}"
    );
}

/// 14,000 events of 1 KiB of random text (about 11 MiB once gzipped, so two 8 MiB pieces) in
/// one chunk: one job, every row once.
fn resumable_upload(emulator: &Emulator) {
    let text = config(emulator, "big", "", "chunk_limit_size 64m");
    let server = Server::start(&text);
    let summary = send(
        &server,
        "app.big",
        14_000,
        &["--pad", "1024", "--random-pad"],
    );
    assert_eq!(acked(&summary), [14_000], "{summary}");
    let count = wait_rows(emulator, "big", 14_000, 60);
    assert_eq!(count, 14_000, "{}", server.log());
    assert_all_acked_landed_once(emulator, "big", &[14_000]);
    let stats = emulator.stats();
    assert_eq!(stats["jobs_inserted"], 1, "{stats}");
}

/// The bytes each job was uploaded with (its `statistics.load.inputFileBytes`).
fn uploaded_bytes(emulator: &Emulator) -> u64 {
    jobs(emulator)
        .iter()
        .map(|j| {
            j["statistics"]["load"]["inputFileBytes"]
                .as_str()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no inputFileBytes in {j}"))
        })
        .sum()
}

#[test]
fn compress_gzip_uploads_the_data_gzipped_and_check_says_so() {
    let emulator = emulator_with_table(&[], "gz");
    let text = config(&emulator, "gz", "", "compress gzip");
    let (ok, stderr) = check(&text);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("<buffer> compress gzip: each load job's NDJSON is uploaded gzipped"),
        "{stderr}"
    );
    assert!(!stderr.contains("'compress'"), "{stderr}");
    let (ok, stderr) = check(&config(&emulator, "gz", "", "compress zstd"));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("compress"), "{stderr}");

    let server = Server::start(&text);
    let summary = send(&server, "app.gz", 5000, &["--pad", "500"]);
    assert_eq!(acked(&summary), [5000], "{summary}");
    assert_eq!(
        wait_rows(&emulator, "gz", 5000, 60),
        5000,
        "{}",
        server.log()
    );
    assert_all_acked_landed_once(&emulator, "gz", &[5000]);
    // Each row holds 500 bytes of padding: 2.5 MB of NDJSON, far less once gzipped.
    let uploaded = uploaded_bytes(&emulator);
    assert!(uploaded < 500_000, "{uploaded} bytes uploaded");
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fluent.conf");
    std::fs::write(&path, text.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_warns_of_the_load_job_quota_and_refuses_what_is_not_implemented() {
    let emulator = emulator_with_table(&[], "t");
    // flush_interval 1s: 86,400 jobs a day, far over BigQuery's 1,500.
    let (ok, stderr) = check(&config(&emulator, "t", "", ""));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("make up to 86400 load jobs per table per day; BigQuery allows 1500"),
        "{stderr}"
    );
    let (ok, stderr) =
        check(&config(&emulator, "t", "", "flush_interval 60s").replace("flush_interval 1s\n", ""));
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("load jobs per table per day"), "{stderr}");

    let (ok, stderr) = check(&config(&emulator, "t", "source_format csv", ""));
    assert!(!ok);
    assert!(
        stderr.contains("source_format csv: bqforward loads newline-delimited JSON"),
        "{stderr}"
    );
    let (ok, stderr) = check(&config(
        &emulator,
        "t",
        "schema_update_options [\"ALLOW_EVERYTHING\"]",
        "",
    ));
    assert!(!ok);
    assert!(
        stderr.contains("unknown option 'ALLOW_EVERYTHING'"),
        "{stderr}"
    );
    let (ok, stderr) = check(&config(&emulator, "t", "", "").replace("path {dir}/buffer", ""));
    assert!(!ok);
    assert!(stderr.contains("give <buffer> a 'path'"), "{stderr}");
}

/// Sends `events` acked events, waits for `stage` of the first load job, kills the process
/// (SIGKILL), restarts it on the same buffer directory, and checks every acked event was
/// loaded exactly once, by jobs that all kept their first id.
fn kill_9_then_restart(emulator: &Emulator, table: &str, stat: &str) {
    let text = config(emulator, table, "", "");
    let mut server = Server::start(&text);
    let summary = send(&server, "app.crash", 3000, &["--connections", "2"]);
    let acked = acked(&summary);
    let total: u64 = acked.iter().sum();
    assert_eq!(total, 6000, "{summary}");
    assert!(
        wait_stat(emulator, stat, 1, 30) >= 1,
        "no {stat}:\n{}",
        server.log()
    );
    server.kill();
    let before = emulator.count(PROJECT, DATASET, table);
    assert!(
        before < total,
        "the job should not be done at the kill ({before})"
    );

    emulator.set_faults(json!({"job_delay_ms": 300}));
    let server = server.restart(&[]);
    let count = wait_rows(emulator, table, total, 60);
    // A job the first process made finishes on its own schedule: give a duplicate (the bug
    // this test is for) the time to land.
    std::thread::sleep(Duration::from_secs(2));
    let count_after = emulator.count(PROJECT, DATASET, table);
    assert_eq!(
        (count, count_after),
        (total, total),
        "after restart:\n{}",
        server.log()
    );
    assert_all_acked_landed_once(emulator, table, &acked);
    let jobs = jobs(emulator);
    for job in &jobs {
        let id = job["jobReference"]["jobId"].as_str().unwrap();
        assert!(id.ends_with("_0"), "{id}: {job}");
    }
    let stats = emulator.stats();
    eprintln!(
        "kill -9 at {stat}: acked {total}, loaded before the kill {before}, after restart {count_after}; jobs {}, jobs.insert answered 409 {}",
        jobs.len(),
        stats["jobs_duplicate"]
    );
}

#[test]
fn kill_9_while_a_job_is_polled_loads_every_acked_event_once() {
    // Jobs take 5 s: the process is killed while it polls the first one.
    let emulator = emulator_with_table(&["--job-delay-ms", "5000"], "polled");
    kill_9_then_restart(&emulator, "polled", "jobs_inserted");
}

#[test]
fn kill_9_while_a_job_is_uploaded_loads_every_acked_event_once() {
    // Uploads take 3 s to be answered: the process is killed while it waits for the answer.
    let emulator = emulator_with_table(&[], "uploaded");
    emulator.set_faults(json!({"latency_ms": 3000, "scope": "upload", "job_delay_ms": 300}));
    kill_9_then_restart(&emulator, "uploaded", "upload_requests");
}

#[test]
fn an_upload_whose_answer_does_not_come_times_out_is_retried_and_loads_once() {
    // Uploads are answered after 4 s; the request may take 1 s: each upload times out (the
    // emulator, as BigQuery, still carries out the ones it received whole) and is retried
    // with backoff, logged; jobs.get then finds the job an attempt made, so nothing is loaded
    // twice.
    let emulator = emulator_with_table(&[], "slow");
    emulator.set_faults(json!({"latency_ms": 4000, "scope": "upload", "job_delay_ms": 200}));
    let text = config(&emulator, "slow", "request_timeout_sec 1", "");
    let server = Server::start(&text);
    let summary = send(&server, "app.slow", 2000, &[]);
    assert_eq!(acked(&summary), [2000], "{summary}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("request timed out") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.log().contains("chunk will be retried")
            && server.log().contains("request timed out"),
        "{}",
        server.log()
    );
    emulator.set_faults(json!({"job_delay_ms": 200}));
    assert_eq!(
        wait_rows(&emulator, "slow", 2000, 60),
        2000,
        "{}",
        server.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(emulator.count(PROJECT, DATASET, "slow"), 2000);
    assert_all_acked_landed_once(&emulator, "slow", &[2000]);
}

const SECONDARY: &str =
    "<secondary>\n    @type secondary_file\n    directory {dir}/dead\n  </secondary>";

fn replay(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .arg("replay")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failed_job_is_dead_lettered_with_its_reason_and_replay_loads_it_after_the_fix() {
    let emulator = Emulator::start(&["--job-delay-ms", "200"]);
    emulator.create_dataset(PROJECT, DATASET);
    // The table lacks the records' `level`: the job fails ("no such field").
    let without_level: Vec<Value> = fields().as_array().unwrap()[..3].to_vec();
    emulator.create_table(PROJECT, DATASET, "fixme", json!(without_level));
    let text = config(&emulator, "fixme", SECONDARY, "");
    let server = Server::start(&text);
    let summary = send(&server, "app.fix", 2000, &[]);
    assert_eq!(acked(&summary), [2000], "{summary}");

    let dead = wait_for(2000, || read_json_lines(&server.path("dead"), "dump"));
    assert_eq!(dead.len(), 2000, "{}", server.log());
    for letter in &dead {
        assert_eq!(letter["reason"], "invalid", "{letter}");
        assert!(
            letter["message"].as_str().unwrap().contains("level"),
            "{letter}"
        );
        assert_eq!(letter["tag"], "app.fix");
        assert!(letter["record"]["seq"].is_u64());
    }
    assert_eq!(emulator.count(PROJECT, DATASET, "fixme"), 0);
    let failed = jobs(&emulator);
    assert_eq!(failed[0]["status"]["errorResult"]["reason"], "invalid");

    // The fix: the table gets the column. Then one command loads the dead letters, beside
    // the running daemon (replay buffers in memory, so the daemon's buffer lock is no issue).
    let (status, answer) = emulator.call(
        "PATCH",
        &format!("/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/fixme"),
        Some(&json!({"schema": {"fields": fields()}})),
    );
    assert_eq!(status, 200, "{answer}");
    let conf = server.path("fluent.conf");
    let dead_dir = server.path("dead");
    let (ok, stderr) = replay(&conf, &[dead_dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("2000 events read from 1 files; 2000 sent through the pipeline, 2000 delivered to BigQuery; 0 failed"),
        "{stderr}"
    );
    assert_eq!(emulator.count(PROJECT, DATASET, "fixme"), 2000);
    assert_all_acked_landed_once(&emulator, "fixme", &[2000]);

    // A file with a line that is not an event: the rest is sent, the exit says it failed.
    let broken = server.path("broken.log");
    std::fs::write(
        &broken,
        "{\"conn\": 9, \"seq\": 1, \"msg\": \"m\", \"level\": \"info\"}\nnot an event\n",
    )
    .unwrap();
    let (ok, stderr) = replay(&conf, &["--match", "app.fix", broken.to_str().unwrap()]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("broken.log:2"), "{stderr}");
    assert!(stderr.contains("1 failed (1 unreadable lines"), "{stderr}");
    assert_eq!(emulator.count(PROJECT, DATASET, "fixme"), 2001);

    // The file output's default out_file format (time<TAB>tag<TAB>record), gzipped as
    // `compress gzip` writes it: each line keeps its tag and time.
    let archive = server.path("archive.log.gz");
    let lines: String = (0..3)
        .map(|i| {
            format!(
                "2026-12-02T10:00:0{i}+0000\tapp.fix\t{{\"conn\":7,\"seq\":{i},\"msg\":\"m\",\"level\":\"warn\"}}\n"
            )
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, lines.as_bytes()).unwrap();
    std::fs::write(&archive, gz.finish().unwrap()).unwrap();
    let (ok, stderr) = replay(&conf, &[archive.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 events read from 1 files"), "{stderr}");
    let keys = landed(&emulator, "fixme");
    assert!((0..3).all(|i| keys.contains(&(7, i))), "{keys:?}");
    assert_eq!(keys.len(), 2004);
}

#[test]
fn schema_update_options_let_new_keys_become_nullable_columns() {
    let emulator = Emulator::start(&["--job-delay-ms", "100"]);
    emulator.create_dataset(PROJECT, DATASET);
    let without_level: Vec<Value> = fields().as_array().unwrap()[..3].to_vec();
    emulator.create_table(PROJECT, DATASET, "grows", json!(without_level));
    let text = config(
        &emulator,
        "grows",
        "schema_update_options [\"ALLOW_FIELD_ADDITION\"]",
        "",
    );
    let server = Server::start(&text);
    let summary = send(&server, "app.grow", 1000, &[]);
    assert_eq!(acked(&summary), [1000], "{summary}");
    assert_eq!(
        wait_rows(&emulator, "grows", 1000, 30),
        1000,
        "{}",
        server.log()
    );
    let (_, table) = emulator.call(
        "GET",
        &format!("/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/grows"),
        None,
    );
    let level = table["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "level")
        .cloned()
        .unwrap_or_else(|| panic!("no level column: {table}"));
    assert_eq!(level["mode"], "NULLABLE", "{level}");
    assert!(
        emulator
            .rows(PROJECT, DATASET, "grows")
            .iter()
            .all(|r| r["level"] == "info")
    );
}

#[test]
fn a_missing_dataset_holds_the_chunk_until_it_exists_then_the_job_creates_the_table() {
    let emulator = Emulator::start(&["--job-delay-ms", "100"]);
    let schema = format!("auto_create_table true\n  schema {}", fields());
    let text = config(&emulator, "later", &schema, "");
    let server = Server::start(&text);
    let summary = send(&server, "app.later", 500, &[]);
    assert_eq!(acked(&summary), [500], "{summary}");
    server.wait_log("dataset not found");
    assert!(jobs(&emulator).is_empty());
    emulator.create_dataset(PROJECT, DATASET);
    assert_eq!(
        wait_rows(&emulator, "later", 500, 30),
        500,
        "{}",
        server.log()
    );
    assert_all_acked_landed_once(&emulator, "later", &[500]);
    let jobs = jobs(&emulator);
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0]["configuration"]["load"]["createDisposition"],
        "CREATE_IF_NEEDED"
    );
}

#[test]
fn a_job_that_fails_transiently_is_loaded_again_under_the_next_id() {
    // Every second job ends with backendError instead of loading.
    let emulator = emulator_with_table(
        &["--job-delay-ms", "200", "--job-failure-rate", "0.5"],
        "flaky",
    );
    let text = config(&emulator, "flaky", SECONDARY, "chunk_limit_records 1000");
    let server = Server::start(&text);
    let summary = send(&server, "app.flaky", 4000, &[]);
    assert_eq!(acked(&summary), [4000], "{summary}");
    assert_eq!(
        wait_rows(&emulator, "flaky", 4000, 60),
        4000,
        "{}",
        server.log()
    );
    assert_all_acked_landed_once(&emulator, "flaky", &[4000]);
    let jobs = jobs(&emulator);
    let failed: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["status"]["errorResult"]["reason"] == "backendError")
        .collect();
    assert!(!failed.is_empty(), "{jobs:?}");
    // A failed job's chunk came back as the next generation of the same id.
    for job in failed {
        let id = job["jobReference"]["jobId"].as_str().unwrap();
        let (stem, n) = id.rsplit_once('_').unwrap();
        let next = format!("{stem}_{}", n.parse::<u32>().unwrap() + 1);
        assert!(
            jobs.iter()
                .any(|j| j["jobReference"]["jobId"] == next.as_str()),
            "no {next} after {id}"
        );
    }
    assert!(read_json_lines(&server.path("dead"), "dump").is_empty());
}
