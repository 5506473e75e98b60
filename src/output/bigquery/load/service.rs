//! The REST calls a load job needs, over reqwest: `tables.get` (is the table there, where),
//! `jobs.insert` with its data on the upload URI (multipart for small data, resumable in
//! pieces for the rest), `jobs.get`. Every error becomes a `Failure` for `classify`; no
//! retry or job logic here. gcp-bigquery-client has no media upload, so this holds its own
//! HTTP client; tokens come from the output's `Credentials`, shared with its REST client. A 401
//! drops the token it carried and the request goes once more with a new one.
//! Protocols: <https://cloud.google.com/bigquery/docs/reference/api-uploads>.

use super::super::classify::Failure;
use super::super::credentials::Credentials;
use super::super::service::{Connection, TableRef};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const GOOGLE: &str = "https://bigquery.googleapis.com";
/// Data up to this size goes in one multipart request (google-cloud-bigquery's threshold).
pub const MULTIPART_MAX: usize = 5 * 1024 * 1024;
/// Resumable uploads send pieces of this size: a multiple of 256 KiB, as Google requires of
/// every piece but the last.
pub const UPLOAD_PIECE: usize = 8 * 1024 * 1024;
/// Failed pieces in a row before the upload is given up (the chunk is retried later; its job
/// is not created until the last byte arrives, so nothing is loaded twice).
const PIECE_TRIES: u32 = 4;

pub struct LoadService {
    http: reqwest::Client,
    base: String,
    credentials: Arc<Credentials>,
    /// Bounds every request (answer included) and the token fetch before it: a hang fails as
    /// `Failure::Timeout`, which the delivery retries with backoff (logged).
    timeout: Duration,
}

impl LoadService {
    pub async fn connect(connection: &Connection) -> Result<Self, String> {
        let timeout = connection.request_timeout();
        let http = reqwest::Client::builder()
            // 308 is the resumable protocol's "resume incomplete", never a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connection.open_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // Every request, an upload piece's included (8 MiB in 120 s is 0.6 Mbit/s).
            .timeout(timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let base = connection
            .endpoint
            .as_deref()
            .unwrap_or(GOOGLE)
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            http,
            base,
            credentials: Arc::clone(&connection.credentials),
            timeout,
        })
    }

    /// Sends `request` with a bearer token; a 401 drops that token and sends the request
    /// once more with a new one (its body is in memory, so it can be copied).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let again = request.try_clone();
        let generation = self.credentials.generation();
        let response = self.authorized(request).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        self.credentials.refused(generation).await;
        match again {
            Some(again) => self.authorized(again).await,
            None => Ok(response),
        }
    }

    async fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let token = tokio::time::timeout(self.timeout, self.credentials.token())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| Failure::Transport(e.to_string()))?;
        request.bearer_auth(token).send().await.map_err(transport)
    }

    /// tables.get: the table resource (its `location`, `schema`).
    pub async fn table(&self, table: &TableRef<'_>) -> Result<Value, Failure> {
        let url = format!(
            "{}/bigquery/v2/projects/{}/datasets/{}/tables/{}",
            self.base, table.project, table.dataset, table.table
        );
        answer(self.send(self.http.get(url)).await?).await
    }

    /// datasets.get: the dataset resource (its `location`).
    pub async fn dataset(&self, project: &str, dataset: &str) -> Result<Value, Failure> {
        let url = format!(
            "{}/bigquery/v2/projects/{project}/datasets/{dataset}",
            self.base
        );
        answer(self.send(self.http.get(url)).await?).await
    }

    /// jobs.get; `None` when there is no such job.
    pub async fn job(
        &self,
        project: &str,
        job_id: &str,
        location: Option<&str>,
    ) -> Result<Option<Value>, Failure> {
        let mut url = format!("{}/bigquery/v2/projects/{project}/jobs/{job_id}", self.base);
        if let Some(location) = location {
            url.push_str("?location=");
            url.push_str(location);
        }
        match answer(self.send(self.http.get(url)).await?).await {
            Ok(job) => Ok(Some(job)),
            Err(Failure::Http { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// jobs.insert with its data: the Job resource BigQuery answers.
    pub async fn insert_job(
        &self,
        project: &str,
        job: &Value,
        data: &[u8],
    ) -> Result<Value, Failure> {
        let url = format!("{}/upload/bigquery/v2/projects/{project}/jobs", self.base);
        if data.len() <= MULTIPART_MAX {
            self.multipart(&url, job, data).await
        } else {
            self.resumable(project, job, data).await
        }
    }

    async fn multipart(&self, url: &str, job: &Value, data: &[u8]) -> Result<Value, Failure> {
        // A boundary that cannot occur in the gzip data is not knowable ahead; Google's
        // parser, like the emulator's, reads the data part by its position, and a random
        // boundary makes a collision as unlikely as the clients that do the same.
        let boundary = format!("bqforward_{:016x}", fastrand::u64(..));
        let mut body = Vec::with_capacity(data.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(job.to_string().as_bytes());
        body.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = self
            .http
            .post(format!("{url}?uploadType=multipart"))
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body);
        answer(self.send(request).await?).await
    }

    /// The resumable protocol for data in memory: a session, then the data in pieces.
    async fn resumable(&self, project: &str, job: &Value, data: &[u8]) -> Result<Value, Failure> {
        let session = self.open_session(project, job).await?;
        let mut offset = 0;
        loop {
            let end = (offset + UPLOAD_PIECE).min(data.len());
            let last = end == data.len();
            let piece = Bytes::copy_from_slice(&data[offset..end]);
            if let Some(job) = self
                .send_piece(&session, offset as u64, &piece, last)
                .await?
            {
                return Ok(job);
            }
            if last {
                return Err(Failure::Unreadable(
                    "the upload's last piece was not answered with the job".into(),
                ));
            }
            offset = end;
        }
    }

    /// Opens a resumable upload session for `job`, its data's size not told (it is written
    /// as it is sent): the session URI. A job id that exists may be refused here (409).
    pub async fn open_session(&self, project: &str, job: &Value) -> Result<String, Failure> {
        let request = self
            .http
            .post(format!(
                "{}/upload/bigquery/v2/projects/{project}/jobs?uploadType=resumable",
                self.base
            ))
            .header("Content-Type", "application/json; charset=UTF-8")
            .header("X-Upload-Content-Type", "application/octet-stream")
            .body(job.to_string());
        let response = self.send(request).await?;
        if !response.status().is_success() {
            answer(response).await?;
            return Err(Failure::Unreadable(
                "resumable upload refused without an error".into(),
            ));
        }
        response
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Failure::Unreadable("resumable upload without a Location".into()))
    }

    /// Sends `piece`, the upload's bytes from `offset`: a multiple of 256 KiB unless `last`
    /// (the upload ends with it, and the answer is the job: `Some`). A piece whose request
    /// failed, or that arrived in part, is sent again from where the upload got (asked with a
    /// status query); the upload creates its job only when its last byte arrives, so nothing
    /// is loaded twice. HTTP errors are returned as they are.
    /// The request bodies are slices of `piece` (no copy); once this returns, the caller
    /// holds its only handle again (reqwest drops its own with the request).
    pub async fn send_piece(
        &self,
        session: &str,
        offset: u64,
        piece: &Bytes,
        last: bool,
    ) -> Result<Option<Value>, Failure> {
        let end = offset + piece.len() as u64;
        let total = if last {
            end.to_string()
        } else {
            "*".to_owned()
        };
        let mut at = offset;
        let mut failures = 0u32;
        loop {
            let rest = piece.slice((at - offset) as usize..);
            let range = if rest.is_empty() {
                format!("bytes */{total}")
            } else {
                format!("bytes {at}-{}/{total}", end - 1)
            };
            let request = self
                .http
                .put(session)
                .header("Content-Range", range)
                .body(rest);
            let progress = match self.send(request).await {
                Ok(response) => progress(response).await?,
                Err(e) => {
                    failures += 1;
                    if failures >= PIECE_TRIES {
                        return Err(e);
                    }
                    match self.upload_status(session, &total).await {
                        Ok(progress) => progress,
                        Err(_) => continue,
                    }
                }
            };
            match progress {
                Progress::Done(job) => return Ok(Some(job)),
                Progress::Received(n) if (n as u64) < offset => {
                    return Err(Failure::Transport(format!(
                        "the upload has {n} bytes, fewer than the {offset} it acknowledged"
                    )));
                }
                Progress::Received(n) if n as u64 >= end && !last => return Ok(None),
                Progress::Received(n) => {
                    let n = (n as u64).min(end);
                    if n > at {
                        failures = 0;
                    } else {
                        failures += 1;
                        if failures >= PIECE_TRIES {
                            return Err(Failure::Transport(format!(
                                "the upload does not get past byte {n}"
                            )));
                        }
                    }
                    at = n;
                }
            }
        }
    }

    /// "How far did you get": `bytes */TOTAL` (`*` while unknown) with no data.
    async fn upload_status(&self, session: &str, total: &str) -> Result<Progress, Failure> {
        let request = self
            .http
            .put(session)
            .header("Content-Range", format!("bytes */{total}"))
            .body(Vec::new());
        let response = self.send(request).await?;
        progress(response).await
    }
}

enum Progress {
    /// 308: this many bytes have arrived.
    Received(usize),
    /// The last byte arrived: the job.
    Done(Value),
}

async fn progress(response: reqwest::Response) -> Result<Progress, Failure> {
    if response.status().as_u16() == 308 {
        // `Range: bytes=0-LAST`; none while nothing has arrived.
        let received = response
            .headers()
            .get("Range")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit('-').next())
            .and_then(|last| last.parse::<usize>().ok())
            .map_or(0, |last| last + 1);
        return Ok(Progress::Received(received));
    }
    answer(response).await.map(Progress::Done)
}

/// A 2xx answer's JSON, or the error as Google's error body says it.
async fn answer(response: reqwest::Response) -> Result<Value, Failure> {
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(transport)?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body)
            .map_err(|e| Failure::Unreadable(format!("answer is not JSON: {e}")));
    }
    let Ok(error) = serde_json::from_slice::<Value>(&body) else {
        return Err(Failure::Http {
            status,
            reasons: Vec::new(),
            message: String::from_utf8_lossy(&body).chars().take(300).collect(),
        });
    };
    let error = &error["error"];
    Err(Failure::Http {
        status,
        reasons: error["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        message: error["message"].as_str().unwrap_or_default().to_owned(),
    })
}

fn transport(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Transport(e.to_string())
    }
}
