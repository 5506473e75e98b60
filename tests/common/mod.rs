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
fn collect(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
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
        let dir = tempfile::tempdir().unwrap();
        let text = config.replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.path().join("fluent.conf");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
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

/// JSON lines of every file under `dir` whose name contains `name_part`, files in name order.
pub fn read_json_lines(dir: &Path, name_part: &str) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
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
            std::fs::read_to_string(f)
                .unwrap()
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
    if let Ok(p) = std::env::var("BQFORWARD_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{venv:?} missing: run `python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt` (or .ci/run)"
    );
    venv
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
