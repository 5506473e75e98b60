//! Load jobs over plain HTTP, byte for byte as google-cloud-bigquery (with google-resumable-media)
//! sends them: multipart uploads, resumable sessions and chunks, and jobs.get polling.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Emulator, PROJECT};

/// A load job resource with this id and `configuration.load` (destination `d.t` unless given).
pub fn load_job(job_id: &str, load: Value) -> Value {
    let mut load = load;
    if load.get("destinationTable").is_none() {
        load["destinationTable"] = json!({"projectId": PROJECT, "datasetId": "d", "tableId": "t"});
    }
    json!({
        "jobReference": {"projectId": PROJECT, "jobId": job_id},
        "configuration": {"load": load},
    })
}

/// `configuration.load` for newline-delimited JSON with this schema.
pub fn ndjson(fields: Value) -> Value {
    json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "schema": {"fields": fields}})
}

/// A client that never follows redirects: a 308 is an answer of the upload protocol.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn json_of(resp: reqwest::blocking::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body: {text}"))
    };
    (status, body)
}

impl Emulator {
    pub fn upload_url(&self, upload_type: &str) -> String {
        self.url(&format!(
            "/upload/bigquery/v2/projects/{PROJECT}/jobs?uploadType={upload_type}"
        ))
    }

    /// The multipart/related body google-resumable-media builds: the job as JSON, then the data.
    pub fn multipart_body(job: &Value, data: &[u8]) -> (String, Vec<u8>) {
        let boundary = "===============7330845974216740156==";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(job.to_string().as_bytes());
        body.extend_from_slice(format!("\r\n--{boundary}\r\ncontent-type: */*\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
        (format!("multipart/related; boundary=\"{boundary}\""), body)
    }

    /// jobs.insert with `uploadType=multipart`.
    pub fn load_multipart(&self, job: &Value, data: &[u8]) -> (u16, Value) {
        let (content_type, body) = Self::multipart_body(job, data);
        json_of(
            http()
                .post(self.upload_url("multipart"))
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .expect("multipart upload"),
        )
    }

    /// Opens a resumable session; `Ok(session URI)` or the error answer.
    pub fn resumable_session(
        &self,
        job: &Value,
        total: Option<u64>,
    ) -> Result<String, (u16, Value)> {
        let mut req = http()
            .post(self.upload_url("resumable"))
            .header("Content-Type", "application/json; charset=UTF-8")
            .header("X-Upload-Content-Type", "*/*")
            .body(job.to_string());
        if let Some(n) = total {
            req = req.header("X-Upload-Content-Length", n.to_string());
        }
        let resp = req.send().expect("resumable initiation");
        if resp.status() != 200 {
            return Err(json_of(resp));
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("Location header")
            .to_string();
        Ok(location)
    }

    /// PUT to a session URI: status, the `Range` header of a 308, the JSON body.
    pub fn put_chunk(
        &self,
        session: &str,
        content_range: Option<&str>,
        data: &[u8],
    ) -> (u16, Option<String>, Value) {
        let mut req = http()
            .put(session)
            .header("Content-Type", "*/*")
            .body(data.to_vec());
        if let Some(range) = content_range {
            req = req.header("Content-Range", range);
        }
        let resp = req.send().expect("chunk");
        let range = resp
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (status, body) = json_of(resp);
        (status, range, body)
    }

    pub fn get_job(&self, job_id: &str) -> (u16, Value) {
        self.get(&self.api(&format!("/jobs/{job_id}")))
    }

    /// Polls jobs.get until the job is DONE and returns it, with every state seen on the way.
    pub fn wait_job(&self, job_id: &str) -> (Value, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut states = Vec::new();
        loop {
            let (status, job) = self.get_job(job_id);
            assert_eq!(status, 200, "{job}");
            let state = job["status"]["state"].as_str().expect("state").to_string();
            if states.last() != Some(&state) {
                states.push(state.clone());
            }
            if state == "DONE" {
                return (job, states);
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} never finished: {job}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
