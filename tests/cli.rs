//! The command line as a user meets it: check, --dry-run, --version, fluentd-style `-c`,
//! and config errors that name the file and line.

mod common;

use common::*;
use std::process::Command;

fn bqforward(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn version_is_printed() {
    let (code, out, _) = bqforward(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("bqforward {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn shipped_example_configs_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let (code, out, err) = bqforward(
                &["check", "-c", path.to_str().unwrap()],
                &[("BQFORWARD_CONFIG_DIR", dir.to_str().unwrap())],
            );
            assert_eq!(code, 0, "{path:?}: {err}");
            assert!(out.contains("config OK"), "{out}");
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn check_prints_the_resolved_pipeline_with_includes_and_env() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        &dir,
        "outputs.conf",
        "<match app.** {web,api}.*>\n  @type null\n  @id drop_app\n</match>\n",
    );
    let main = write_config(
        &dir,
        "fluent.conf",
        "<source>\n  @type forward\n  port \"#{ENV['BQF_TEST_PORT']}\"\n</source>\n@include outputs.conf\n<match **>\n  @type stdout\n</match>\n",
    );
    let (code, out, err) = bqforward(&["check", "-c", &main], &[("BQF_TEST_PORT", "25000")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("forward tcp+udp 0.0.0.0:25000"), "{out}");
    assert!(
        out.contains("<match app.** {web,api}.*> -> drop_app (@type null)"),
        "{out}"
    );
    assert!(
        out.contains("<match **> -> stdout.3 (@type stdout)"),
        "{out}"
    );
    // fluentd's own flag does the same.
    let (code, out2, _) = bqforward(&["-c", &main, "--dry-run"], &[("BQF_TEST_PORT", "25000")]);
    assert_eq!(code, 0);
    assert_eq!(out, out2);
}

#[test]
fn config_errors_name_file_and_line_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "<source>\n  @type forward\n  prot 24224\n</source>\n",
            ":3: unknown parameter 'prot' in <source> (@type forward)",
        ),
        (
            "<match **>\n  @type elasticsearch\n</match>\n",
            ":1: unknown @type 'elasticsearch' in <match **> (bqforward supports: bigquery_insert, stdout, null, file, copy, relabel, rewrite_tag_filter)",
        ),
        (
            "<source>\n  @type forward\n",
            "expected end tag '</source>' but got end of file",
        ),
        (
            "<match **>\n  @type file\n</match>\n",
            ":1: <match> @type file needs 'path'",
        ),
        (
            "<source>\n  @type forward\n  <security>\n    shared_key x\n  </security>\n</source>\n",
            ":3: <security> needs 'self_hostname'",
        ),
        (
            "<filter **>\n  @type parser\n</filter>\n",
            ":1: unknown @type 'parser' in <filter **> (bqforward supports: record_transformer, grep)",
        ),
    ];
    for (text, want) in cases {
        let path = write_config(&dir, "bad.conf", text);
        let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
        assert_ne!(code, 0, "{text}");
        assert!(err.contains(want), "{text}\nwant {want:?}\ngot {err}");
        assert!(err.contains("bad.conf"), "{err}");
    }
}

#[test]
fn ignored_fluentd_parameters_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fluent.conf",
        "<source>\n  @type forward\n  linger_timeout 5\n</source>\n<match **>\n  @type null\n  <buffer>\n    flush_interval 1s\n  </buffer>\n</match>\n",
    );
    let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(":3: parameter 'linger_timeout'"), "{err}");
    assert!(err.contains("ignored by bqforward"), "{err}");
    assert!(err.contains(":8: parameter 'flush_interval'"), "{err}");
}

#[test]
fn busy_port_fails_start_up_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fluent.conf",
        &format!("<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n"),
    );
    let (code, _, err) = bqforward(&["run", "-c", &path], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot listen"), "{err}");
}

/// `--threads N` (or BQFORWARD_THREADS) sets how many threads run the pipeline, which then
/// serves as usual; zero is refused. (The null output: nothing here runs on tokio's blocking
/// threads, which carry the same name.)
#[test]
fn threads_sets_the_pipeline_threads() {
    let config = "<source>\n  @type forward\n  bind 127.0.0.1\n  port 0\n</source>\n\
                  <match **>\n  @type null\n</match>\n";
    let pipeline_threads = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|comm| comm.trim() == "bqforward-rt")
            .count()
    };
    for (args, threads) in [(vec!["--threads", "1"], 1), (vec!["--threads", "3"], 3)] {
        let mut server = Server::start_with(config, &args);
        let mut stream = server.connect();
        send(
            &mut stream,
            &message_with_ack("app.x", &serde_json::json!({"n": 1}), "c1"),
        );
        assert_eq!(read_ack(&mut stream).unwrap(), "c1");
        assert_eq!(pipeline_threads(server.pid()), threads, "{args:?}");
        assert!(server.terminate().success());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "fluent.conf", config);
    let (code, _, err) = bqforward(&["run", "-c", &path], &[("BQFORWARD_THREADS", "0")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threads"), "{err}");
}
