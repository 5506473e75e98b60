//! Starts the emulator binary and offers small HTTP helpers for the black-box tests.
#![allow(dead_code)]

pub mod jobs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod write;

pub const PROJECT: &str = "proj";

pub struct Emulator {
    child: Child,
    pub port: u16,
    /// The Storage Write (gRPC) port, when started with `--grpc-port`.
    pub grpc_port: Option<u16>,
    pub startup: Duration,
    http: reqwest::blocking::Client,
}

impl Emulator {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bigquery-emulator"));
        cmd.args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start bigquery-emulator");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let port = read_port(&mut stdout, "listening on ");
        let grpc_port = args
            .contains(&"--grpc-port")
            .then(|| read_port(&mut stdout, "grpc listening on "));
        let startup = started.elapsed();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            child,
            port,
            grpc_port,
            startup,
            http,
        }
    }

    /// Started with the Storage Write API on a free port as well.
    pub fn start_grpc(args: &[&str]) -> Self {
        let mut all = vec!["--grpc-port", "0"];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// `http://127.0.0.1:{grpc_port}`
    pub fn grpc_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.grpc_port.expect("started with --grpc-port")
        )
    }

    /// Stops the process and returns what it wrote on stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut err);
        }
        let _ = self.child.wait();
        err
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `/bigquery/v2/projects/proj{path}`
    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/bigquery/v2/projects/{PROJECT}{path}"))
    }

    pub fn base_url(&self) -> String {
        self.url("/bigquery/v2")
    }

    fn answer(resp: reqwest::blocking::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}"))
        };
        (status, body)
    }

    pub fn get(&self, url: &str) -> (u16, Value) {
        Self::answer(self.http.get(url).send().expect("GET"))
    }

    /// Status, Content-Type and the body exactly as sent.
    pub fn get_raw(&self, url: &str) -> (u16, String, String) {
        let resp = self.http.get(url).send().expect("GET");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, content_type, resp.text().expect("body"))
    }

    /// Sends `method` with a JSON body and extra headers.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, url).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.send().expect("request"))
    }

    pub fn delete(&self, url: &str) -> (u16, Value) {
        Self::answer(self.http.delete(url).send().expect("DELETE"))
    }

    pub fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.http.post(url).json(body).send().expect("POST"))
    }

    pub fn patch(&self, url: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.http.patch(url).json(body).send().expect("PATCH"))
    }

    pub fn post_raw(&self, url: &str, body: Vec<u8>, gzip: bool) -> (u16, Value) {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body);
        if gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        Self::answer(req.send().expect("POST"))
    }

    /// Sends and returns the transport result, for tests that expect no answer at all.
    pub fn try_post(&self, url: &str, body: &Value) -> Result<u16, reqwest::Error> {
        self.http
            .post(url)
            .json(body)
            .send()
            .map(|r| r.status().as_u16())
    }

    pub fn create_dataset(&self, dataset: &str) {
        let (status, body) = self.post(
            &self.api("/datasets"),
            &json!({"datasetReference": {"projectId": PROJECT, "datasetId": dataset}}),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn create_table(&self, dataset: &str, table: &str, extra: Value) {
        let mut resource = json!({
            "tableReference": {"projectId": PROJECT, "datasetId": dataset, "tableId": table}
        });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                resource[k] = v;
            }
        }
        let (status, body) =
            self.post(&self.api(&format!("/datasets/{dataset}/tables")), &resource);
        assert_eq!(status, 200, "{body}");
    }

    /// Dataset `d` with table `t` of the given fields.
    pub fn with_table(&self, fields: Value) {
        self.create_dataset("d");
        self.create_table("d", "t", json!({"schema": {"fields": fields}}));
    }

    pub fn insert_all(&self, table: &str, body: Value) -> (u16, Value) {
        self.post(
            &self.api(&format!("/datasets/d/tables/{table}/insertAll")),
            &body,
        )
    }

    pub fn list(&self, table: &str, query: &str) -> (u16, Value) {
        self.get(&self.api(&format!("/datasets/d/tables/{table}/data{query}")))
    }

    pub fn count(&self, table: &str) -> u64 {
        self.count_in("d", table)
    }

    pub fn count_in(&self, dataset: &str, table: &str) -> u64 {
        let (status, body) = self.get(&self.url(&format!(
            "/_emulator/projects/{PROJECT}/datasets/{dataset}/tables/{table}/count"
        )));
        assert_eq!(status, 200, "{body}");
        body["rows"].as_u64().expect("rows")
    }

    pub fn stats(&self) -> Value {
        self.get(&self.url("/_emulator/stats")).1
    }
}

/// Reads one `{prefix}HOST:PORT` line.
fn read_port(stdout: &mut impl BufRead, prefix: &str) -> u16 {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read listening line");
    line.trim()
        .strip_prefix(prefix)
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with the pinned clients of `tests/clients/requirements.txt` (`scripts/test.sh`
/// makes `.venv` at the workspace root); `BQFORWARD_TEST_PYTHON` overrides it.
pub fn python() -> PathBuf {
    // Set but empty counts as unset (a shell's `BQFORWARD_TEST_PYTHON=`).
    if let Some(p) = std::env::var_os("BQFORWARD_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "{venv:?} missing: run `python3 -m venv .venv && .venv/bin/pip install -r tests/clients/requirements.txt` at the workspace root (or scripts/test.sh)"
    );
    venv
}

/// Runs `emulator/tests/clients/<script> PORT <args>` and returns its last stdout line as JSON;
/// panics with the script's output unless it succeeds.
pub fn run_client(script: &str, port: u16, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("{script}: last line is not JSON: {stdout}"))
}

/// `{"rows":[{"json":row}, …]}`
pub fn rows(rows: &[Value]) -> Value {
    json!({"rows": rows.iter().map(|r| json!({"json": r})).collect::<Vec<_>>()})
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// Google's request-level error body.
pub fn error_body(code: u16, reason: &str, message: &str, status: &str) -> Value {
    json!({"error": {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": status,
    }})
}

pub const OK_INSERT: &str = r#"{"kind":"bigquery#tableDataInsertAllResponse"}"#;

pub fn ok_insert() -> Value {
    serde_json::from_str(OK_INSERT).expect("json")
}
