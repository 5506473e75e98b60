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
            ":1: unknown @type 'elasticsearch' in <match **> (bqforward supports: bigquery_insert, bigquery_storage_write, bigquery_load, stdout, null, file, copy, relabel, rewrite_tag_filter)",
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

/// One `check` names every problem in the config, in line order, and a misspelt name gets
/// the one it is closest to, even for a required parameter it leaves missing.
#[test]
fn check_reports_every_error_in_line_order_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fluent.conf",
        "<source>\n  @type forward\n  prot 24224\n</source>\n\
         <match a.**>\n  @type bigquery_insert\n  project p\n  dataset d\n  tabel t\n</match>\n\
         <match b.**>\n  @type file\n  path /tmp/x\n  apend true\n  <buffer>\n    flush_intervl 1s\n  </buffer>\n</match>\n\
         <match c.**>\n  @type elasticsearch\n</match>\n",
    );
    let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
    assert_eq!(code, 1, "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    let want = [
        ":3: unknown parameter 'prot' in <source> (@type forward) (did you mean 'port'?)",
        ":9: unknown parameter 'tabel' in <match a.**> (@type bigquery_insert) (did you mean 'table'? bigquery_insert needs 'table')",
        ":14: unknown parameter 'apend' in <match b.**> (@type file) (did you mean 'append'?)",
        ":16: unknown parameter 'flush_intervl' in <buffer>",
        ":19: unknown @type 'elasticsearch' in <match c.**>",
    ];
    assert_eq!(errors.len(), want.len(), "{err}");
    for (line, want) in errors.iter().zip(want) {
        assert!(line.contains(want), "want {want:?} in {line:?}\n{err}");
    }
    assert!(err.contains("5 errors in"), "{err}");
}

/// Every chunk-key form fluentd accepts in a `<buffer ...>` line passes `check`; what it
/// refuses (time without timekey, bracket paths) is refused with fluentd's message.
#[test]
fn chunk_keys_fluentd_accepts_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    for (buffer, table) in [
        ("<buffer time>\n    timekey 1d\n", "t_%Y%m%d"),
        ("<buffer tag>\n", "${tag}"),
        (
            "<buffer tag,time>\n    timekey 1h\n    timekey_wait 10m\n    timekey_use_utc true\n",
            "${tag[0]}_%Y%m%d%H",
        ),
        (
            "<buffer time, tag, status>\n    timekey 3600\n    timekey_zone +09:00\n",
            "${tag}_${status}_%Y%m%d",
        ),
        (
            "<buffer $.kubernetes.namespace>\n",
            "ns_${$.kubernetes.namespace}",
        ),
        (
            "<buffer [\"tag\", \"time\"]>\n    timekey 1d\n    timekey_zone Asia/Tokyo\n",
            "t",
        ),
        ("<buffer>\n    chunk_keys tag\n", "${tag}"),
    ] {
        let path = write_config(
            &dir,
            "fluent.conf",
            &format!(
                "<match **>\n  @type bigquery_insert\n  auth_method none\n  endpoint http://127.0.0.1:9\n  project p\n  dataset d\n  table {table}\n  {buffer}  </buffer>\n</match>\n"
            ),
        );
        let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
        assert_eq!(code, 0, "{buffer}{err}");
        assert!(err.contains("chunks are keyed by destination"), "{err}");
    }
    for (buffer, want) in [
        (
            "<buffer time>\n",
            "argument includes 'time', but timekey is not configured",
        ),
        ("<buffer $['a']>\n", "bracket notation is not allowed"),
        (
            "<buffer a/b>\n",
            "chunk_keys specification includes invalid char",
        ),
        (
            "<buffer time>\n    timekey 1d\n    timekey_zone Mars/Base\n",
            "unknown timezone 'Mars/Base'",
        ),
    ] {
        let path = write_config(
            &dir,
            "fluent.conf",
            &format!(
                "<match **>\n  @type bigquery_insert\n  auth_method none\n  project p\n  dataset d\n  table t\n  {buffer}  </buffer>\n</match>\n"
            ),
        );
        let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
        assert_eq!(code, 1, "{buffer}{err}");
        assert!(err.contains(want), "{buffer}: want {want:?}\n{err}");
    }
}

/// `check --help` and `health --help` list their own flags only.
#[test]
fn subcommand_help_lists_its_own_flags() {
    let (_, check, _) = bqforward(&["check", "--help"], &[]);
    assert!(
        check.contains("--config") && check.contains("--verbose"),
        "{check}"
    );
    for other in ["--threads", "--shutdown-timeout", "--url", "--dry-run"] {
        assert!(
            !check.contains(other),
            "check --help lists {other}:\n{check}"
        );
    }
    let (_, health, _) = bqforward(&["health", "--help"], &[]);
    assert!(
        health.contains("--url") && health.contains("--timeout"),
        "{health}"
    );
    for other in ["--config", "--threads", "--verbose", "--log-format"] {
        assert!(
            !health.contains(other),
            "health --help lists {other}:\n{health}"
        );
    }
    let (_, run, _) = bqforward(&["run", "--help"], &[]);
    assert!(
        run.contains("--threads") && run.contains("--shutdown-timeout"),
        "{run}"
    );
}

/// `check` says when bigquery_insert keeps the plugin's throughput-bounding buffer defaults
/// (one flush thread, total_limit_size 1g), and is quiet once both are set.
#[test]
fn check_notes_the_plugins_buffer_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let output = |buffer: &str| {
        format!(
            "<match app.**>\n  @type bigquery_insert\n  auth_method none\n  endpoint http://127.0.0.1:9\n  project p\n  dataset d\n  table t\n  fetch_schema true\n{buffer}</match>\n"
        )
    };
    let path = write_config(&dir, "defaults.conf", &output(""));
    let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "flush_thread_count 1 (one insertAll request at a time) and total_limit_size 1g"
        ),
        "{err}"
    );
    let path = write_config(
        &dir,
        "threads.conf",
        &output("  <buffer>\n    flush_thread_count 4\n  </buffer>\n"),
    );
    let (_, _, err) = bqforward(&["check", "-c", &path], &[]);
    assert!(
        err.contains("keeps the plugin's default total_limit_size 1g"),
        "{err}"
    );
    let path = write_config(
        &dir,
        "tuned.conf",
        &output("  <buffer>\n    flush_thread_count 4\n    total_limit_size 64m\n  </buffer>\n"),
    );
    let (code, _, err) = bqforward(&["check", "-c", &path], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("keeps the plugin's default"), "{err}");
}

/// The image's config (deploy/config/bqforward.conf) always sets `json_key` from
/// BIGQUERY_JSON_KEY and takes the method from BIGQUERY_AUTH_METHOD: every method the image
/// documents passes `check` with the variable unset, as fluent-plugin-bigquery accepts
/// `json_key` under any method and reads it only for json_key.
#[test]
fn image_config_passes_check_with_each_documented_auth_method() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("deploy/config/bqforward.conf");
    let dir = tempfile::tempdir().unwrap();
    let buffer = dir.path().join("buffer");
    let dead = dir.path().join("dead-letters");
    // A key that loads (test-only, valid nowhere): check reads the key now.
    let key = std::fs::read_to_string(
        root.join("tests/fixtures/credentials/test-only-service-account.json"),
    )
    .unwrap();
    let key = key.as_str();
    for method in ["json_key", "application_default", "compute_engine", "none"] {
        let mut env = vec![
            ("BIGQUERY_PROJECT", "p"),
            ("BIGQUERY_AUTH_METHOD", method),
            ("BQFORWARD_BUFFER_DIR", buffer.to_str().unwrap()),
            ("BQFORWARD_DEAD_LETTER_DIR", dead.to_str().unwrap()),
        ];
        if method == "json_key" {
            env.push(("BIGQUERY_JSON_KEY", key));
        }
        let (code, out, err) = bqforward(&["check", "-c", config.to_str().unwrap()], &env);
        assert_eq!(code, 0, "BIGQUERY_AUTH_METHOD={method}: {err}");
        assert!(out.contains("config OK"), "{out}");
        // No complaint about json_key (the note naming the credentials may mention it).
        assert!(
            !err.lines()
                .any(|l| l.contains("WARN") && l.contains("json_key")),
            "BIGQUERY_AUTH_METHOD={method}: {err}"
        );
    }
}

/// A running `bqforward replay`, its stdout and stderr lines collected as they come.
struct Replay {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Replay {
    fn start(config: &str, args: &[&str]) -> Replay {
        let mut child = Command::new(BIN)
            .args(["replay", "-c", config])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::sync::Arc::default();
        let stderr = std::sync::Arc::default();
        collect(child.stdout.take().unwrap(), std::sync::Arc::clone(&stdout));
        collect(child.stderr.take().unwrap(), std::sync::Arc::clone(&stderr));
        Replay {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits until `done` holds of the replay (its stdout and stderr), within `seconds`.
    fn wait(&self, seconds: u64, what: &str, done: impl Fn(&Replay) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "replay: no {what} within {seconds} s; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Its exit status, waiting at most `seconds`.
    fn exit(&mut self, seconds: u64) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The collectors read to the end of the pipes.
                std::thread::sleep(std::time::Duration::from_millis(100));
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replay still running after {seconds} s; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An out_file line (what the `file` output writes by default) with record `{"n": n}`.
fn out_file_line(n: usize) -> String {
    format!("2026-12-03T10:00:00+0000\tapp.web\t{{\"n\":{n}}}\n")
}

#[test]
fn an_interrupted_replay_stops_reading_and_delivers_what_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "r.conf", "<match app.**>\n  @type stdout\n</match>\n");
    // A pipe that never ends while the replay reads it: a line every 50 ms.
    let fifo = dir.path().join("slow.log");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Not joined: if the replay never opened the pipe, this thread waits in `open` for good.
    let _writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                return;
            };
            for n in 1..10_000 {
                if pipe.write_all(out_file_line(n).as_bytes()).is_err() {
                    return; // the replay is gone
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let mut replay = Replay::start(&config, &[fifo.to_str().unwrap()]);
    // Read events wait in the replay's batch (up to 1,000) until it is handed on; its
    // progress line (every second) says they were read.
    replay.wait(20, "progress line", |r| r.stderr().contains("events read"));
    replay.signal("-INT");
    let status = replay.exit(20);
    assert_eq!(status.code(), Some(1), "{}", replay.stderr());
    let stderr = replay.stderr();
    assert!(
        stderr.contains("replay: interrupted: no more lines are read"),
        "{stderr}"
    );
    // "interrupted after FILE:N": N lines read, every one of them delivered, in order.
    let at = format!("interrupted after {}:", fifo.display());
    let read: usize = stderr
        .split(&at)
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {at:?} in:\n{stderr}"));
    assert!(read >= 3, "{stderr}");
    let delivered: Vec<String> = replay.stdout();
    let expected: Vec<String> = (1..=read).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(delivered.len(), read, "{delivered:?}");
    for (line, want) in delivered.iter().zip(&expected) {
        assert!(line.ends_with(want.as_str()), "{line} is not {want}");
    }
}

#[test]
fn a_second_interrupt_stops_a_replay_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // An output that cannot deliver (nothing listens on port 1): the replay would wait out
    // its --timeout of ten minutes for it.
    let config = write_config(
        &dir,
        "r.conf",
        "<match app.**>\n  @type bigquery_insert\n  auth_method none\n  \
         endpoint http://127.0.0.1:1\n  project p\n  dataset d\n  table t\n  \
         fetch_schema true\n</match>\n",
    );
    let lines: String = (1..=5).map(out_file_line).collect();
    let file = write_config(&dir, "five.log", &lines);
    let mut replay = Replay::start(&config, &["--timeout", "10m", &file]);
    replay.wait(20, "wait for the outputs", |r| {
        r.stderr().contains("waiting for the outputs to deliver")
    });
    replay.signal("-INT");
    replay.wait(10, "first interrupt's line", |r| {
        r.stderr().contains("interrupt again to stop at once")
    });
    assert!(
        replay.child.try_wait().unwrap().is_none(),
        "the first interrupt ended it"
    );
    replay.signal("-TERM");
    let status = replay.exit(10);
    assert_eq!(status.code(), Some(128 + 15), "{}", replay.stderr());
    assert!(
        replay
            .stderr()
            .contains("replay: interrupted again: stopping at once"),
        "{}",
        replay.stderr()
    );
}
