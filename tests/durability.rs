//! The delivery promise under crashes, outages and shutdowns: an acked event is never lost.
//! Real bqforward processes (killed with SIGKILL, stopped with SIGTERM, restarted on the same
//! buffer directory), a real sender waiting for acks, and the bigquery-emulator.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PROJECT: &str = "proj";
const DATASET: &str = "logs";

fn emulator_with_table(table: &str) -> Emulator {
    let emulator = Emulator::start(&[]);
    emulator.create_dataset(PROJECT, DATASET);
    create_table(&emulator, table);
    emulator
}

/// A table for forward_send.py's events.
fn create_table(emulator: &Emulator, table: &str) {
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

fn config(emulator: &Emulator, table: &str, buffer: &str) -> String {
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
  <buffer>
    flush_interval 0.2s
    retry_wait 0.2s
    retry_max_interval 1s
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

fn assert_all_acked_landed(emulator: &Emulator, table: &str, acked_per_connection: &[u64]) {
    let keys = landed(emulator, table);
    for (conn, &acked) in acked_per_connection.iter().enumerate() {
        for seq in 0..acked {
            assert!(
                keys.contains(&(conn as u64, seq)),
                "acked event {conn}/{seq} lost"
            );
        }
    }
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

#[test]
fn kill_9_with_a_file_buffer_loses_no_acked_event() {
    let emulator = emulator_with_table("crash");
    let server = Server::start(&config(
        &emulator,
        "crash",
        "@type file\n    path {dir}/buffer\n    chunk_limit_records 1000",
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
            "250000",
            "--chunk",
            "1000",
            "--ack",
            "--tolerate-disconnect",
            "--pad",
            "20",
        ],
    );
    // Let some chunks be delivered, then make BigQuery fail so the rest piles up on disk.
    assert!(
        wait_rows(&emulator, "crash", 10_000, 60) >= 10_000,
        "{}",
        server.log()
    );
    emulator.set_faults(json!({"error_503_rate": 1.0}));
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
    let before = emulator.count(PROJECT, DATASET, "crash");
    assert!(
        before < total,
        "the crash should leave acked events only on disk ({before} of {total})"
    );

    emulator.set_faults(json!({}));
    let server = server.restart(&[]);
    let count = wait_rows(&emulator, "crash", total, 300);
    assert!(
        count >= total,
        "{count} of {total} after restart:\n{}",
        server.log()
    );
    assert_all_acked_landed(&emulator, "crash", &acked);
    assert!(
        server
            .log()
            .contains("recovered buffered chunks from a previous run")
    );
    let sent = serde_json::from_str::<Value>(summary.trim()).unwrap()["sent"].as_u64();
    eprintln!(
        "kill -9: sent {sent:?}, acked {total}, in BigQuery before the crash {before}, landed {count}, acked lost 0"
    );
}

/// A delivered chunk's file is kept and the next chunk written over it from its start: killed
/// while that chunk is being filled (its file still holding the earlier chunk's bytes after
/// its own), the next start sends exactly its acked events, none of the earlier chunk's
/// again, and sees nothing torn or corrupt.
#[test]
fn kill_9_while_a_chunk_is_written_over_a_spare_file_sends_exactly_its_events() {
    let emulator = emulator_with_table("first");
    create_table(&emulator, "second");
    let config = config(
        &emulator,
        "${tag[1]}",
        "@type file\n    path {dir}/buffer\n    chunk_limit_records 500",
    )
    .replace("flush_interval 0.2s", "flush_interval 60s");
    let server = Server::start(&config);
    let buffer = server.path("buffer");
    // Chunk files kept to be written over (their header's length marked 0xffffffff), and
    // those holding a chunk.
    let files = || {
        let mut counts = (0, 0);
        for entry in std::fs::read_dir(&buffer).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                match std::fs::read(&path).unwrap().starts_with(&[0xff; 4]) {
                    true => counts.0 += 1,
                    false => counts.1 += 1,
                }
            }
        }
        counts
    };
    let send = |tag: &str, events: &str, chunk: &str, pad: &str| {
        let args = [
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            tag,
            "--events",
            events,
            "--chunk",
            chunk,
            "--pad",
            pad,
            "--ack",
        ];
        let out = run_client("forward_send.py", &args);
        assert!(out.contains(&format!("\"acked\": {events}")), "{out}");
    };
    // Four full chunks of long events delivered: their files are kept.
    send("app.first", "2000", "500", "200");
    assert_eq!(
        wait_rows(&emulator, "first", 2000, 30),
        2000,
        "{}",
        server.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while files() != (4, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(files(), (4, 0), "{}", server.log());
    // A chunk of fewer, shorter events, acked and staged in one of those files.
    send("app.second", "300", "100", "10");
    assert_eq!(files(), (3, 1));
    let mut server = server;
    server.kill();

    let server = server.restart(&[]);
    assert_eq!(
        wait_rows(&emulator, "second", 300, 30),
        300,
        "{}",
        server.log()
    );
    server.wait_log("recovered buffered chunks from a previous run");
    assert_all_acked_landed(&emulator, "second", &[300]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(emulator.count(PROJECT, DATASET, "second"), 300);
    assert_eq!(emulator.count(PROJECT, DATASET, "first"), 2000);
    let log = server.log();
    assert!(!log.contains("corrupt") && !log.contains("torn"), "{log}");
    // The start removed the three spares; the delivered chunk's file is the one kept now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files() != (1, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(files(), (1, 0));
}

#[test]
fn bigquery_outage_blocks_senders_with_bounded_memory_then_delivers_everything() {
    let emulator = emulator_with_table("outage");
    emulator.set_faults(json!({"error_503_rate": 1.0}));
    let server = Server::start(&config(
        &emulator,
        "outage",
        "total_limit_size 2m\n    chunk_limit_size 256k\n    overflow_action block",
    ));
    let sender = spawn_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            "app.outage",
            "--connections",
            "2",
            "--events",
            "60000",
            "--chunk",
            "500",
            "--ack",
            "--pad",
            "100",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    let mut sender = sender;
    let rss = peak_rss_kib(server.pid());
    let stats = emulator.stats();
    assert!(stats["faults_503"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(emulator.count(PROJECT, DATASET, "outage"), 0);
    // 20 MB of records cannot fit in a 2 MB buffer: the senders must be waiting for acks.
    assert!(
        sender.try_wait().unwrap().is_none(),
        "senders were not slowed:\n{}",
        server.log()
    );
    assert!(rss < 120 * 1024, "peak RSS {rss} KiB during the outage");

    emulator.set_faults(json!({}));
    let summary = finish_client(sender);
    assert!(summary.contains("\"acked\": 120000"), "{summary}");
    assert_eq!(wait_rows(&emulator, "outage", 120_000, 120), 120_000);
    assert_all_acked_landed(&emulator, "outage", &[60_000, 60_000]);
}

#[test]
fn memory_buffer_spills_at_shutdown_and_the_next_start_sends_it() {
    let emulator = emulator_with_table("spill");
    emulator.set_faults(json!({"error_503_rate": 1.0}));
    let mut server = Server::start_with(
        &config(&emulator, "spill", "path {dir}/spill"),
        &["--shutdown-timeout", "1s"],
    );
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "forward",
            "--tag",
            "app.spill",
            "--events",
            "3000",
            "--chunk",
            "300",
            "--ack",
        ],
    );
    assert!(out.contains("\"acked\": 3000"), "{out}");
    assert!(server.terminate().success());
    assert!(
        server
            .log()
            .contains("undelivered chunks kept on disk for the next start"),
        "{}",
        server.log()
    );
    assert_eq!(emulator.count(PROJECT, DATASET, "spill"), 0);

    emulator.set_faults(json!({}));
    let server = server.restart(&[]);
    assert_eq!(
        wait_rows(&emulator, "spill", 3000, 60),
        3000,
        "{}",
        server.log()
    );
    assert_all_acked_landed(&emulator, "spill", &[3000]);
}

#[test]
fn sigterm_with_a_file_buffer_keeps_the_rest_for_the_next_start() {
    let emulator = emulator_with_table("term");
    emulator.set_faults(json!({"error_503_rate": 1.0}));
    let mut server = Server::start_with(
        &config(&emulator, "term", "@type file\n    path {dir}/buffer"),
        &["--shutdown-timeout", "1s"],
    );
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "compressed",
            "--tag",
            "app.term",
            "--events",
            "2000",
            "--chunk",
            "200",
            "--ack",
        ],
    );
    assert!(out.contains("\"acked\": 2000"), "{out}");
    let started = Instant::now();
    assert!(server.terminate().success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown overran its deadline"
    );
    emulator.set_faults(json!({}));
    let server = server.restart(&[]);
    assert_eq!(
        wait_rows(&emulator, "term", 2000, 60),
        2000,
        "{}",
        server.log()
    );
    assert_all_acked_landed(&emulator, "term", &[2000]);
}

#[test]
fn corrupt_chunk_is_set_aside_and_the_rest_is_served() {
    let emulator = emulator_with_table("corrupt");
    let config = config(&emulator, "corrupt", "@type file\n    path {dir}/buffer");
    let mut server = Server::start(&config);
    let buffer = server.path("buffer");
    server.kill();
    std::fs::write(
        buffer.join("chunk-0123456789abcdef0123456789abcdef.log"),
        b"\x00\x00\x00\x04\xde\xad\xbe\xefjunk and more junk after a bad frame",
    )
    .unwrap();
    let server = server.restart(&[]);
    server.wait_log("corrupt buffer chunk set aside");
    assert!(
        buffer
            .join("corrupt")
            .join("chunk-0123456789abcdef0123456789abcdef.log")
            .exists()
    );
    let out = run_client(
        "forward_send.py",
        &[
            "--port",
            &server.port.to_string(),
            "--mode",
            "packed",
            "--tag",
            "app.corrupt",
            "--events",
            "100",
            "--chunk",
            "50",
            "--ack",
        ],
    );
    assert!(out.contains("\"acked\": 100"), "{out}");
    assert_eq!(wait_rows(&emulator, "corrupt", 100, 30), 100);
}

#[test]
fn a_second_process_cannot_share_the_buffer_directory() {
    let emulator = emulator_with_table("lock");
    let first = Server::start(&config(
        &emulator,
        "lock",
        "@type file\n    path {dir}/buffer",
    ));
    let config_path = first.path("fluent.conf");
    let out = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by another process"), "{err}");
}

#[test]
fn throw_exception_refuses_without_ack_when_full() {
    let emulator = emulator_with_table("full");
    emulator.set_faults(json!({"error_503_rate": 1.0}));
    let server = Server::start(&config(
        &emulator,
        "full",
        "total_limit_size 64k\n    overflow_action throw_exception",
    ));
    let mut stream = server.connect();
    let mut acked = 0;
    let mut refused = false;
    for i in 0..400 {
        let record = json!({"conn": 0, "seq": i, "msg": "x".repeat(500)});
        send(
            &mut stream,
            &message_with_ack("app.full", &record, &format!("c{i}")),
        );
        match read_ack(&mut stream) {
            Ok(id) => {
                assert_eq!(id, format!("c{i}"));
                acked += 1;
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the buffer never filled");
    assert!(acked > 0);
    server.wait_log("buffer full");
    emulator.set_faults(json!({}));
    assert_eq!(wait_rows(&emulator, "full", acked, 30), acked);
}
