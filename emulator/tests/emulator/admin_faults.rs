//! Fault injection (CLI flags and `POST /_emulator/faults`) and the counters at
//! `GET /_emulator/stats`. Error bodies: <https://cloud.google.com/bigquery/docs/error-messages>.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Emulator, error_body, gzip, ok_insert, rows};

fn table(emu: &Emulator) {
    emu.with_table(json!([{"name": "a", "type": "STRING"}]));
}

fn one_row() -> Value {
    rows(&[json!({"a": "x"})])
}

fn set_faults(emu: &Emulator, faults: Value) -> Value {
    let (status, body) = emu.post(&emu.url("/_emulator/faults"), &faults);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn cli_rates_answer_429_500_503_with_bigquerys_bodies() {
    let cases = [
        (
            "--error-429-rate",
            429,
            "rateLimitExceeded",
            "RESOURCE_EXHAUSTED",
        ),
        ("--error-500-rate", 500, "internalError", "INTERNAL"),
        ("--error-503-rate", 503, "backendError", "UNAVAILABLE"),
    ];
    for (flag, code, reason, status_name) in cases {
        let emu = Emulator::start(&[flag, "1"]);
        table(&emu);
        let (status, body) = emu.insert_all("t", one_row());
        assert_eq!(status, code);
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["status"], status_name);
        assert_eq!(body["error"]["errors"][0]["reason"], reason);
        assert_eq!(body["error"]["errors"][0]["domain"], "global");
        assert_eq!(emu.count("t"), 0);
        assert_eq!(emu.stats()["faults_injected"], 1);
    }
}

#[test]
fn faults_change_at_run_time_and_spread_evenly() {
    let emu = Emulator::start(&[]);
    table(&emu);
    let config = set_faults(&emu, json!({"error_503_rate": 0.5}));
    assert_eq!(config["error_503_rate"], 0.5);
    assert_eq!(emu.get(&emu.url("/_emulator/faults")).1, config);
    let statuses: Vec<u16> = (0..4).map(|_| emu.insert_all("t", one_row()).0).collect();
    assert_eq!(statuses, [200, 503, 200, 503]);
    assert_eq!(emu.count("t"), 2);
    let (_, body) = emu.insert_all("t", one_row());
    assert_eq!(body, ok_insert());
    let (_, body) = emu.insert_all("t", one_row());
    assert_eq!(
        body,
        error_body(
            503,
            "backendError",
            "The service is currently unavailable.",
            "UNAVAILABLE"
        )
    );
    // DELETE clears every fault.
    emu.delete(&emu.url("/_emulator/faults"));
    assert_eq!(emu.insert_all("t", one_row()).0, 200);
    let stats = emu.stats();
    assert_eq!(stats["faults_503"], 3);
}

#[test]
fn dropped_connections_get_no_answer() {
    let emu = Emulator::start(&["--drop-rate", "1"]);
    table(&emu);
    let result = emu.try_post(&emu.api("/datasets/d/tables/t/insertAll"), &one_row());
    assert!(
        result.is_err(),
        "expected a transport error, got {result:?}"
    );
    assert_eq!(emu.count("t"), 0);
    assert_eq!(emu.stats()["faults_dropped"], 1);
}

#[test]
fn latency_is_added_to_requests_in_scope() {
    let emu = Emulator::start(&[]);
    table(&emu);
    set_faults(&emu, json!({"latency_ms": 300}));
    let started = Instant::now();
    assert_eq!(emu.insert_all("t", one_row()).0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    emu.get(&emu.api("/datasets/d/tables/t"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "tables.get is out of scope"
    );
    assert_eq!(emu.stats()["faults_delayed"], 1);
}

#[test]
fn scope_all_applies_faults_to_every_api_request() {
    let emu = Emulator::start(&[]);
    table(&emu);
    set_faults(&emu, json!({"error_500_rate": 1.0, "scope": "all"}));
    assert_eq!(emu.get(&emu.api("/datasets/d/tables/t")).0, 500);
    // Admin paths are never faulted.
    assert_eq!(emu.get(&emu.url("/_emulator/health")).0, 200);
}

#[test]
fn null_mode_answers_success_counts_rows_and_stores_nothing() {
    let emu = Emulator::start(&["--null-mode"]);
    table(&emu);
    let body = serde_json::to_vec(&rows(&[
        json!({"a": "x"}),
        json!({"whatever": 1}),
        json!({}),
    ]))
    .unwrap();
    let (status, answer) = emu.post_raw(
        &emu.api("/datasets/d/tables/t/insertAll"),
        gzip(&body),
        true,
    );
    assert_eq!((status, answer), (200, ok_insert()));
    assert_eq!(emu.count("t"), 0);
    let stats = emu.stats();
    assert_eq!(stats["rows_discarded"], 3);
    assert_eq!(stats["rows_accepted"], 3);
    // Switched off at run time, rows are stored again.
    set_faults(&emu, json!({}));
    assert_eq!(emu.insert_all("t", one_row()).0, 200);
    assert_eq!(emu.count("t"), 1);
}

#[test]
fn stats_count_requests_rows_and_reset() {
    let emu = Emulator::start(&[]);
    table(&emu);
    emu.insert_all("t", rows(&[json!({"a": "x"}), json!({"a": "y"})]));
    emu.insert_all("t", rows(&[json!({"a": "x"}), json!({"b": 1})]));
    let stats = emu.stats();
    assert_eq!(stats["insert_all_requests"], 2);
    assert_eq!(stats["rows_received"], 4);
    assert_eq!(stats["rows_accepted"], 2);
    assert_eq!(stats["rows_inserted"], 2);
    assert_eq!(stats["rows_invalid"], 1);
    assert_eq!(stats["rows_stopped"], 1);
    assert_eq!(stats["faults_injected"], 0);
    assert!(stats["requests"].as_u64().unwrap() >= 4);
    let (status, reset) = emu.post(&emu.url("/_emulator/stats/reset"), &json!({}));
    assert_eq!(status, 200);
    assert_eq!(reset["requests"], 0);
}

#[test]
fn bad_fault_settings_are_rejected() {
    let emu = Emulator::start(&[]);
    for bad in [
        json!({"error_429_rate": 2.0}),
        json!({"no_such_knob": 1}),
        json!("x"),
    ] {
        let (status, _) = emu.post(&emu.url("/_emulator/faults"), &bad);
        assert_eq!(status, 400, "{bad}");
    }
}
