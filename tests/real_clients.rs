//! Real senders other than Python: Fluent Bit's `out_forward` (PackedForward, gzip, acks,
//! `[[time, metadata], record]` entries) and Docker's fluentd log driver library
//! (fluent-logger-golang: Message mode, EventTime, acks, TCP and Unix socket).
//!
//! Fluent Bit runs only when `FLUENT_BIT_BIN` names its binary (else the test says it skipped).
//! The Go sender needs `go` and fluent-logger-golang from Debian
//! (`tests/clients/install-go.sh`); without them the Go tests fail and say what to install.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A JSON-lines file output per tag under {dir}/out, with the tag and a float time injected.
const FILE_MATCH: &str = r#"
<match **>
  @type file
  path {dir}/out/${tag}
  append true
  <format>
    @type json
  </format>
  <inject>
    tag_key tag
    time_key time
    time_type float
  </inject>
</match>
"#;

const TCP_SOURCE: &str = r#"
<source>
  @type forward
  bind 127.0.0.1
  port 0
</source>
"#;

const UNIX_SOURCE: &str = r#"
<source>
  @type unix
  path {dir}/fluent.sock
</source>
"#;

fn start(source: &str) -> Server {
    Server::start(&format!("{source}{FILE_MATCH}"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A child process whose output goes to a file, killed when dropped so that no test path
/// leaves it running.
struct Proc {
    child: Child,
    output: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, output: PathBuf) -> Proc {
        let file = std::fs::File::create(&output).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; kills it and panics after that.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{:?} still running after {limit:?}; killed. Output:\n{}",
                    self.output,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn terminate(&mut self, grace: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Fluent Bit

fn fluent_bit_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FLUENT_BIT_BIN") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(path.exists(), "FLUENT_BIT_BIN={path:?} does not exist");
            Some(path)
        }
        _ => {
            skip(test, "FLUENT_BIT_BIN not set");
            None
        }
    }
}

/// Where Fluent Bit's `out_forward` connects.
enum Target<'a> {
    Tcp(u16),
    Unix(&'a Path),
}

/// Runs Fluent Bit with `dummy` (exactly `samples` records, then idle) into `forward` with
/// acks, waits until bqforward has written them all, stops Fluent Bit and returns the lines
/// of `tag` and Fluent Bit's log.
fn run_fluent_bit(
    bin: &Path,
    server: &Server,
    target: Target,
    tag: &str,
    samples: usize,
    extra_output: &str,
) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let address = match target {
        Target::Tcp(port) => format!("Host 127.0.0.1\n    Port {port}"),
        Target::Unix(path) => format!("Unix_Path {}", path.display()),
    };
    // Retry_Limit no_retries: a chunk that is not acked is dropped and logged, so the count
    // below catches it, and nothing is ever sent twice.
    let config = format!(
        r#"
[SERVICE]
    Flush      0.2
    Grace      2
    Log_Level  info

[INPUT]
    Name     dummy
    Tag      {tag}
    Dummy    {{"msg":"hello","n":1,"nested":{{"k":[1,"a",null]}},"unicode":"café 😀"}}
    Samples  {samples}
    Rate     2000

[OUTPUT]
    Name                  forward
    Match                 *
    {address}
    Require_ack_response  true
    Retry_Limit           no_retries
    {extra_output}
"#
    );
    let config_path = dir.path().join("fluent-bit.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&config_path);
    let started = now();
    let mut fluent_bit = Proc::spawn(cmd, dir.path().join("fluent-bit.log"));

    let out = server.path("out");
    let deadline = Instant::now() + Duration::from_secs(60);
    while complete_lines(&out, tag) < samples && Instant::now() < deadline {
        if let Some(status) = fluent_bit.child.try_wait().unwrap() {
            panic!(
                "fluent-bit exited early with {status}:\n{}",
                fluent_bit.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fluent_bit.terminate(Duration::from_secs(10));
    let log = fluent_bit.output();
    // Fluent Bit has exited: nothing more can arrive, so the count is final.
    let lines = read_json_lines(&out, tag);
    assert_eq!(
        lines.len(),
        samples,
        "records written for {tag}\nfluent-bit log:\n{log}\nbqforward log:\n{}",
        server.log()
    );
    let finished = now();
    for line in &lines {
        assert_eq!(line["msg"], "hello", "{line}");
        assert_eq!(line["n"], 1, "{line}");
        assert_eq!(line["nested"], serde_json::json!({"k": [1, "a", null]}));
        assert_eq!(line["unicode"], "café 😀");
        assert_eq!(line["tag"], tag);
        // The EventTime inside `[[time, metadata], record]` is the record's time.
        let time = line["time"].as_f64().unwrap();
        assert!(
            (started - 1.0..finished + 1.0).contains(&time),
            "time {time} outside the run [{started}, {finished}]"
        );
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "no metadata leaks into the record: {line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["time"].as_f64().unwrap().fract() != 0.0),
        "sub-second times kept"
    );
    (lines, log)
}

/// How many whole lines the files under `dir` named with `name_part` hold so far (the file
/// output may be in the middle of writing one).
fn complete_lines(dir: &Path, name_part: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(name_part))
        .map(|p| {
            let bytes = std::fs::read(p).unwrap_or_default();
            bytes.iter().filter(|&&b| b == b'\n').count()
        })
        .sum()
}

/// Fluent Bit logs `[error]` or `[ warn]` lines (and mentions retries) when a chunk fails.
fn assert_no_chunk_trouble(log: &str) {
    let trouble: Vec<&str> = log
        .lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            l.contains("[error]")
                || (l.contains("[ warn]") && !l.contains("service will shutdown"))
                || lower.contains("retry")
        })
        .collect();
    assert!(
        trouble.is_empty(),
        "fluent-bit reported trouble:\n{}\n\nfull log:\n{log}",
        trouble.join("\n")
    );
}

#[test]
fn fluent_bit_forward_with_acks_delivers_every_record() {
    let Some(bin) = fluent_bit_bin("fluent_bit_forward_with_acks_delivers_every_record") else {
        return;
    };
    let server = start(TCP_SOURCE);
    let (_, log) = run_fluent_bit(
        &bin,
        &server,
        Target::Tcp(server.port),
        "fb.plain",
        3000,
        "",
    );
    assert_no_chunk_trouble(&log);
}

#[test]
fn fluent_bit_forward_with_gzip_and_acks_delivers_every_record() {
    let Some(bin) = fluent_bit_bin("fluent_bit_forward_with_gzip_and_acks_delivers_every_record")
    else {
        return;
    };
    let server = start(TCP_SOURCE);
    let (_, log) = run_fluent_bit(
        &bin,
        &server,
        Target::Tcp(server.port),
        "fb.gzip",
        3000,
        "Compress              gzip",
    );
    assert_no_chunk_trouble(&log);
}

#[test]
fn fluent_bit_forward_over_a_unix_socket() {
    // The FireLens shape: Fluent Bit's `unix_path` into a local aggregator.
    let Some(bin) = fluent_bit_bin("fluent_bit_forward_over_a_unix_socket") else {
        return;
    };
    let server = start(UNIX_SOURCE);
    let sock = server.path("fluent.sock");
    let (_, log) = run_fluent_bit(
        &bin,
        &server,
        Target::Unix(&sock),
        "fb.unix",
        1000,
        "Compress              gzip",
    );
    assert_no_chunk_trouble(&log);
}

// ---------------------------------------------------------------------------------------------
// Docker's fluentd log driver library (fluent-logger-golang)

const GO_PACKAGES: &str = "golang-go golang-github-fluent-fluent-logger-golang-dev";

/// Builds `tests/clients/go_sender` once per test run, offline against Debian's GOPATH.
fn go_sender() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("go_sender");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/go_sender");
        let mut cmd = Command::new(&go);
        cmd.arg("build")
            .arg("-o")
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOFLAGS", "")
            // Pure Go: no C toolchain questions, the same binary everywhere.
            .env("CGO_ENABLED", "0");
        if std::env::var_os("GOCACHE").is_none() {
            cmd.env("GOCACHE", tmp.join("go-cache"));
        }
        let result = cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {go:?} ({e}): install the Debian packages {GO_PACKAGES} \
                 (tests/clients/install-go.sh), or set GO to the go binary"
            )
        });
        assert!(
            result.status.success(),
            "go build of tests/clients/go_sender failed (needs {GO_PACKAGES}; \
             tests/clients/install-go.sh installs them):\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    })
}

const BASE_NS: i64 = 1_700_000_000_123_456_789;
const STEP_NS: i64 = 1_234_567;

/// Starts go_sender with `args` and the fixed line times; `finish_go_sender` waits for it.
fn spawn_go_sender(args: &[&str], output: PathBuf) -> Proc {
    let mut cmd = Command::new(go_sender());
    cmd.args(args).args([
        "-base-ns",
        &BASE_NS.to_string(),
        "-step-ns",
        &STEP_NS.to_string(),
        "-timeout",
        "60s",
    ]);
    Proc::spawn(cmd, output)
}

/// Waits (bounded) for go_sender and checks that it sent `count` lines without a retry.
fn finish_go_sender(mut sender: Proc, count: usize) {
    let status = sender.wait(Duration::from_secs(90));
    let output = sender.output();
    assert!(status.success(), "go_sender failed ({status}):\n{output}");
    // The library writes `fluent#...` to stderr when an ack is wrong or a write is retried.
    assert!(
        !output.contains("fluent#"),
        "go_sender complained:\n{output}"
    );
    assert_eq!(output.trim(), format!(r#"{{"sent":{count}}}"#));
}

/// Checks that `lines` are exactly Docker's records `line 0..count`, in order, each with the
/// sub-second time the sender gave it.
fn assert_docker_lines(lines: &[&Value], tag: &str, count: usize) {
    assert_docker_lines_with(lines, tag, count, true)
}

/// As `assert_docker_lines`; without `sub_second` the sender sent whole seconds (truncated).
fn assert_docker_lines_with(lines: &[&Value], tag: &str, count: usize, sub_second: bool) {
    assert_eq!(lines.len(), count, "lines for {tag}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["log"], format!("line {i}"), "order for {tag}");
        assert_eq!(line["source"], "stdout");
        assert_eq!(line["container_name"], "/web-1");
        assert_eq!(
            line["container_id"],
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(line["tag"], tag);
        assert_eq!(line.as_object().unwrap().len(), 6, "{line}");
        let ns = BASE_NS + i as i64 * STEP_NS;
        let sent = if sub_second {
            ns as f64 / 1e9
        } else {
            (ns / 1_000_000_000) as f64
        };
        let got = line["time"].as_f64().unwrap();
        // f64 near 1.7e9 resolves ~0.24 µs; the sender's times differ by 1.23 ms.
        assert!(
            (got - sent).abs() < 1e-6,
            "line {i} of {tag}: time {got} != sent {sent}"
        );
    }
}

#[test]
fn docker_fluentd_driver_over_tcp_from_several_containers() {
    let server = start(TCP_SOURCE);
    let port = server.port.to_string();
    let count = 300;
    let tags = [
        "docker.aaaaaaaaaaaa",
        "docker.bbbbbbbbbbbb",
        "docker.cccccccccccc",
    ];
    // Several containers logging at once, one connection each, like one Docker host.
    let senders: Vec<Proc> = tags
        .iter()
        .map(|tag| {
            spawn_go_sender(
                &["-port", &port, "-tag", tag, "-count", &count.to_string()],
                server.path(&format!("{tag}.sender.txt")),
            )
        })
        .collect();
    for sender in senders {
        finish_go_sender(sender, count);
    }
    // Every line was acked before the sender went on, and acked means written.
    let got = read_json_lines(&server.path("out"), ".log");
    for tag in tags {
        let lines: Vec<&Value> = got.iter().filter(|l| l["tag"] == tag).collect();
        assert_docker_lines(&lines, tag, count);
    }
    assert_eq!(got.len(), count * tags.len());
}

#[test]
fn docker_fluentd_driver_over_a_unix_socket() {
    let server = start(UNIX_SOURCE);
    let sock = server.path("fluent.sock");
    let tag = "docker.unixsocket01";
    let sender = spawn_go_sender(
        &[
            "-network",
            "unix",
            "-socket",
            sock.to_str().unwrap(),
            "-tag",
            tag,
            "-count",
            "200",
        ],
        server.path("sender.txt"),
    );
    finish_go_sender(sender, 200);
    let got = read_json_lines(&server.path("out"), ".log");
    let lines: Vec<&Value> = got.iter().collect();
    assert_docker_lines(&lines, tag, 200);
}

#[test]
fn docker_fluentd_driver_with_its_defaults_no_ack_and_whole_seconds() {
    // Docker's defaults: fluentd-sub-second-precision=false, fluentd-request-ack=false, so
    // Message mode `[tag, int, record]` with nothing to wait for but the file.
    let server = start(TCP_SOURCE);
    let tag = "docker.defaults0001";
    let sender = spawn_go_sender(
        &[
            "-port",
            &server.port.to_string(),
            "-tag",
            tag,
            "-count",
            "200",
            "-sub-second=false",
            "-ack=false",
        ],
        server.path("sender.txt"),
    );
    finish_go_sender(sender, 200);
    let got = wait_for(200, || read_json_lines(&server.path("out"), ".log"));
    let lines: Vec<&Value> = got.iter().collect();
    assert_docker_lines_with(&lines, tag, 200, false);
}
