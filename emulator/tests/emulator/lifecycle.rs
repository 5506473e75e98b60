//! Start-up, the printed port, durability across restarts, request logging.

use std::time::Duration;

use serde_json::json;

use crate::common::{Emulator, rows};

#[test]
fn starts_in_well_under_a_second_and_prints_its_port() {
    let emu = Emulator::start(&[]);
    assert!(emu.port > 0);
    assert!(
        emu.startup < Duration::from_millis(500),
        "took {:?}",
        emu.startup
    );
    assert_eq!(emu.get(&emu.url("/_emulator/health")).0, 200);
}

#[test]
fn rows_survive_a_restart_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    {
        let emu = Emulator::start(&["--data-dir", path]);
        emu.with_table(json!([{"name": "a", "type": "STRING"}]));
        emu.insert_all("t", rows(&[json!({"a": "x"}), json!({"a": "y"})]));
        emu.stop();
    }
    let emu = Emulator::start(&["--data-dir", path]);
    assert_eq!(emu.count("t"), 2);
    let (_, page) = emu.list("t", "");
    assert_eq!(page["rows"][1], json!({"f": [{"v": "y"}]}));
    assert_eq!(emu.insert_all("t", rows(&[json!({"a": "z"})])).0, 200);
    assert_eq!(emu.count("t"), 3);
}

#[test]
fn without_a_data_dir_nothing_is_kept() {
    {
        let emu = Emulator::start(&[]);
        emu.with_table(json!([{"name": "a", "type": "STRING"}]));
    }
    let emu = Emulator::start(&[]);
    assert_eq!(emu.get(&emu.api("/datasets/d")).0, 404);
}

#[test]
fn each_request_is_logged_at_debug_level() {
    let emu = Emulator::start_with_env(&[], &[("RUST_LOG", "bigquery_emulator=debug")]);
    emu.get(&emu.api("/datasets/logged"));
    std::thread::sleep(Duration::from_millis(100));
    let stderr = emu.stop();
    assert!(
        stderr.contains("/bigquery/v2/projects/proj/datasets/logged"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    // The test reads stderr through a pipe, as a log file or `docker logs` would.
    let emu = Emulator::start_with_env(&[], &[("RUST_LOG", "bigquery_emulator=debug")]);
    emu.get(&emu.api("/datasets/plain"));
    std::thread::sleep(Duration::from_millis(100));
    let stderr = emu.stop();
    assert!(stderr.contains("bigquery-emulator started"), "{stderr}");
    assert!(stderr.contains("status=404"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in {stderr:?}"
    );
}
