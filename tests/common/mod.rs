//! Test harness: starts the real `bqforward` binary on a config, finds the port it bound,
//! runs real clients (Python fluent-logger, raw sockets), and reads what the outputs wrote.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bqforward");

pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Collects a child's output lines in the background.
pub fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
}

impl Server {
    /// Starts bqforward on `config`, where `{dir}` stands for a fresh temporary directory.
    /// Listeners should use `port 0`; the bound port is read from the log.
    pub fn start(config: &str) -> Server {
        Self::start_with(config, &[])
    }

    /// As `start`, with more command-line arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let text = config.replace("{dir}", dir.path().to_str().unwrap());
        std::fs::write(dir.path().join("fluent.conf"), text).unwrap();
        Self::spawn(dir, args)
    }

    /// Stops this process (SIGKILL unless it already exited) and starts a new one on the
    /// same directory and config, as a restart after a crash.
    pub fn restart(mut self, args: &[&str]) -> Server {
        self.kill();
        let dir = tempfile::TempDir::new().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        Self::spawn(old, args)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// As `start_with`, with environment variables set for bqforward (an empty value removes
    /// the variable).
    pub fn start_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let text = config.replace("{dir}", dir.path().to_str().unwrap());
        std::fs::write(dir.path().join("fluent.conf"), text).unwrap();
        Self::spawn_env(dir, args, env)
    }

    fn spawn(dir: tempfile::TempDir, args: &[&str]) -> Server {
        Self::spawn_env(dir, args, &[])
    }

    fn spawn_env(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        let path = dir.path().join("fluent.conf");
        let mut command = Command::new(BIN);
        for (name, value) in env {
            if value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        let mut child = command
            .args(["run", "-c"])
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bqforward");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), Arc::clone(&log));
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout));
        let mut server = Server {
            child,
            port: 0,
            dir,
            log,
            stdout,
        };
        server.port = server.wait_listening();
        server
    }

    fn wait_listening(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bqforward exited with {status}:\n{}", self.log());
            }
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("listening")) {
                let port = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                return port;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bqforward did not start listening:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the collector threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bqforward ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records that a test could not run and passes without checking anything: a line on stderr
/// and, when `BQFORWARD_SKIP_LOG` names a file (scripts/test.sh sets it), a line there, so the
/// suite's closing line counts it as skipped rather than passed.
pub fn skip(test: &str, why: &str) {
    eprintln!("skipped: {test}: {why}");
    if let Some(path) = std::env::var_os("BQFORWARD_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{test}: {why}");
    }
}

/// JSON lines of every file under `dir` whose name contains `name_part`, files in name order.
/// A directory the output has not created yet reads as empty, and a last line still being
/// written (no newline yet) is left for the next read (callers poll with `wait_for`).
pub fn read_json_lines(dir: &Path, name_part: &str) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{d:?}: {e}"),
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(name_part) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            // A last line without its newline is still being written: not read yet.
            let written = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            written
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{f:?}: {e}: {l}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Polls until `read` returns at least `n` items (outputs write asynchronously to acks only
/// where no ack was asked for).
pub fn wait_for<T>(n: usize, mut read: impl FnMut() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items = read();
        if items.len() >= n || Instant::now() > deadline {
            return items;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python with fluent-logger and msgpack installed (`.ci/run` makes `.venv`).
pub fn python() -> PathBuf {
    // Set but empty counts as unset (a shell's `BQFORWARD_TEST_PYTHON=`).
    if let Some(p) = std::env::var_os("BQFORWARD_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{venv:?} missing: run `python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt` (or .ci/run)"
    );
    venv
}

/// Starts `tests/clients/<script>` in the background; `finish_client` collects it.
pub fn spawn_client(script: &str, args: &[&str]) -> Child {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    Command::new(python())
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background client; panics with its output unless it succeeded.
pub fn finish_client(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Peak resident memory of a process, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `tests/clients/<script>` with `args`; panics with its output unless it succeeds.
pub fn run_client(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// msgpack of a Message-mode event `[tag, time, record, {"chunk": chunk}]` built with
/// rmp-serde (independent of bqforward's own encoder).
pub fn message_with_ack(tag: &str, record: &serde_json::Value, chunk: &str) -> Vec<u8> {
    rmp_serde::to_vec(&(
        tag,
        1_700_000_000u32,
        record,
        serde_json::json!({ "chunk": chunk }),
    ))
    .unwrap()
}

/// Reads one `{"ack": id}` answer.
pub fn read_ack(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut de = rmp_serde::Deserializer::new(stream);
    let map: std::collections::HashMap<String, String> =
        serde::Deserialize::deserialize(&mut de).map_err(std::io::Error::other)?;
    Ok(map.get("ack").cloned().unwrap_or_default())
}

/// Whether the server has closed `stream` (reads EOF or reset within the timeout).
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// The repo's bigquery-emulator, started on a free port (in memory unless `args` say).
pub struct Emulator {
    child: Child,
    pub port: u16,
    /// The Storage Write API's port (`start_grpc`); 0 when not served.
    pub grpc_port: u16,
}

impl Emulator {
    pub fn start(args: &[&str]) -> Emulator {
        Self::launch(args, false)
    }

    /// Also serving the Storage Write API (gRPC) on a free port.
    pub fn start_grpc(args: &[&str]) -> Emulator {
        Self::launch(args, true)
    }

    /// The Storage Write API's endpoint (plaintext h2c).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn launch(args: &[&str], grpc: bool) -> Emulator {
        let bin = Path::new(BIN).with_file_name("bigquery-emulator");
        assert!(
            bin.exists(),
            "{bin:?} missing: build it with `cargo build --workspace`"
        );
        let mut child = Command::new(&bin)
            .args(["--port", "0"])
            .args(if grpc { &["--grpc-port", "0"][..] } else { &[] })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut read_port = || {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line.trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("emulator said {line:?}"))
        };
        let port = read_port();
        let grpc_port = if grpc { read_port() } else { 0 };
        Emulator {
            child,
            port,
            grpc_port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        http(self.port, method, path, body)
    }

    pub fn create_dataset(&self, project: &str, dataset: &str) {
        let body =
            serde_json::json!({"datasetReference": {"projectId": project, "datasetId": dataset}});
        let (status, answer) = self.call(
            "POST",
            &format!("/bigquery/v2/projects/{project}/datasets"),
            Some(&body),
        );
        assert_eq!(status, 200, "{answer}");
    }

    pub fn create_table(
        &self,
        project: &str,
        dataset: &str,
        table: &str,
        fields: serde_json::Value,
    ) {
        let body = serde_json::json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": fields},
        });
        let path = format!("/bigquery/v2/projects/{project}/datasets/{dataset}/tables");
        let (status, answer) = self.call("POST", &path, Some(&body));
        assert_eq!(status, 200, "{answer}");
    }

    pub fn count(&self, project: &str, dataset: &str, table: &str) -> u64 {
        let path = format!("/_emulator/projects/{project}/datasets/{dataset}/tables/{table}/count");
        let (status, answer) = self.call("GET", &path, None);
        if status == 404 {
            return 0;
        }
        answer["rows"]
            .as_u64()
            .unwrap_or_else(|| panic!("count: {status} {answer}"))
    }

    /// Every row of a table as JSON objects keyed by column (tabledata.list, all pages); none
    /// while the table does not exist (callers poll with `wait_for`).
    pub fn rows(&self, project: &str, dataset: &str, table: &str) -> Vec<serde_json::Value> {
        let base = format!("/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}");
        let (status, resource) = self.call("GET", &base, None);
        if status == 404 {
            return Vec::new();
        }
        let fields = resource["schema"]["fields"].clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let path = format!("{base}/data?maxResults=1000{token}");
            let (status, page) = self.call("GET", &path, None);
            assert_eq!(status, 200, "{page}");
            for row in page["rows"].as_array().cloned().unwrap_or_default() {
                out.push(decode_row(&fields, &row));
            }
            match page["pageToken"].as_str() {
                Some(t) => token = format!("&pageToken={t}"),
                None => return out,
            }
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        self.call("GET", "/_emulator/stats", None).1
    }

    pub fn set_faults(&self, faults: serde_json::Value) {
        let (status, answer) = self.call("POST", "/_emulator/faults", Some(&faults));
        assert_eq!(status, 200, "{answer}");
    }
}

/// tabledata.list's `{"f":[{"v":...}]}` back into `{"name": value}` (values stay strings).
fn decode_row(fields: &serde_json::Value, row: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let empty = Vec::new();
    let cells = row["f"].as_array().unwrap_or(&empty);
    for (field, cell) in fields.as_array().unwrap_or(&empty).iter().zip(cells) {
        let name = field["name"].as_str().unwrap_or_default().to_owned();
        let value = &cell["v"];
        let decoded = match (field["type"].as_str(), field["mode"].as_str()) {
            (_, Some("REPEATED")) => serde_json::Value::Array(
                value
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|v| v["v"].clone())
                    .collect(),
            ),
            (Some("RECORD" | "STRUCT"), _) if !value.is_null() => {
                decode_row(&field["fields"], value)
            }
            _ => value.clone(),
        };
        out.insert(name, decoded);
    }
    serde_json::Value::Object(out)
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client for the tests (JSON in, JSON out, Connection: close).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    let value = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    (status, value)
}
