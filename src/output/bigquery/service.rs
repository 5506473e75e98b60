//! The BigQuery API through `gcp-bigquery-client`: the output's credentials (`credentials`) on
//! every call and a 401 dropping the refused token, pre-gzipped insertAll bodies, table creation
//! and schema fetches, with every error turned into a `Failure` for `classify`. No retry or row
//! logic here.

use super::classify::Failure;
use super::credentials::{Credentials, TokenError};
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequestGzipped;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;
use std::sync::Arc;
use std::time::Duration;

/// Where it was defined before `credentials` existed.
pub use super::credentials::AuthMethod;

/// The output's credentials as gcp-bigquery-client asks for them.
#[derive(Clone)]
struct RestAuth(Arc<Credentials>);

#[async_trait::async_trait]
impl Authenticator for RestAuth {
    async fn access_token(&self) -> Result<String, BQError> {
        self.0.token().await.map_err(|e| {
            // The crate has no variant for "no token"; `failure` unwraps this one.
            BQError::InvalidServiceAccountAuthenticator(std::io::Error::other(e))
        })
    }
}

/// How long one HTTP request (its answer included) may take when `request_timeout_sec` is not
/// set: an answer that never comes fails as a timeout and the chunk is retried with backoff,
/// instead of holding its delivery forever (fluent-plugin-bigquery's default is no limit).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach BigQuery: credentials, endpoint, timeouts.
pub struct Connection {
    /// Shared with every client of the output (REST here, Storage Write over gRPC).
    pub credentials: Arc<Credentials>,
    pub endpoint: Option<String>,
    /// `request_timeout_sec`; `None`: not set (REST clients then use
    /// `DEFAULT_REQUEST_TIMEOUT`, see `request_timeout()`).
    pub request_timeout: Option<Duration>,
    pub open_timeout: Duration,
}

impl Connection {
    /// How long one REST request may take: `request_timeout_sec`, else
    /// `DEFAULT_REQUEST_TIMEOUT`. Never unbounded.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }
}

pub struct BigQueryClient {
    client: Client,
    credentials: Arc<Credentials>,
    /// For the calls made here directly (`table_meta`, `patch_table`).
    rest: Rest,
}

pub struct TableRef<'a> {
    pub project: &'a str,
    pub dataset: &'a str,
    pub table: &'a str,
}

impl BigQueryClient {
    pub async fn connect(connection: &Connection) -> Result<Self, String> {
        let Connection {
            credentials,
            endpoint,
            request_timeout,
            open_timeout,
        } = connection;
        let (endpoint, request_timeout, open_timeout) = (
            endpoint.as_deref(),
            request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            *open_timeout,
        );
        let http = reqwest::Client::builder()
            .connect_timeout(open_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .timeout(request_timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let rest = Rest::new(http.clone(), endpoint, Arc::clone(credentials));
        let mut builder = ClientBuilder::new();
        builder.with_client(http);
        if let Some(endpoint) = endpoint {
            builder.with_v2_base_url(format!("{}/bigquery/v2", endpoint.trim_end_matches('/')));
        }
        let client = builder
            .build_from_authenticator(Arc::new(RestAuth(Arc::clone(credentials))))
            .await
            .map_err(|e| format!("BigQuery client: {e}"))?;
        Ok(Self {
            client,
            credentials: Arc::clone(credentials),
            rest,
        })
    }

    /// The credentials this client sends.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// A 401 means the token was refused (revoked, or expired early): the next request fetches
    /// a new one instead of the cached one. `generation` was read before the request.
    async fn answered<T>(&self, generation: u64, answer: Result<T, BQError>) -> Result<T, Failure> {
        self.answered_raw(generation, answer.map_err(failure)).await
    }

    /// tabledata.insertAll with a body that is already JSON and gzipped.
    pub async fn insert_all(
        &self,
        table: &TableRef<'_>,
        gzipped_body: Vec<u8>,
    ) -> Result<TableDataInsertAllResponse, Failure> {
        let generation = self.credentials.generation();
        let answer = self
            .client
            .tabledata()
            .insert_all_gzipped(
                table.project,
                table.dataset,
                table.table,
                TableDataInsertAllRequestGzipped::new(gzipped_body),
            )
            .await;
        self.answered(generation, answer).await
    }

    /// tables.insert from a table resource (JSON as the REST API documents it). An existing
    /// table (409) counts as success.
    pub async fn create_table(&self, resource: serde_json::Value) -> Result<(), Failure> {
        let table: Table = serde_json::from_value(resource)
            .map_err(|e| Failure::Transport(format!("table resource: {e}")))?;
        let generation = self.credentials.generation();
        let answer = self.client.table().create(table).await;
        match self.answered(generation, answer).await {
            Ok(_) => Ok(()),
            Err(Failure::Http { status: 409, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// datasets.insert, in `location` when given (else BigQuery's default, US). An existing
    /// dataset (409) counts as success.
    pub async fn create_dataset(
        &self,
        project: &str,
        dataset: &str,
        location: Option<&str>,
    ) -> Result<(), Failure> {
        let mut resource = gcp_bigquery_client::model::dataset::Dataset::new(project, dataset);
        if let Some(location) = location {
            resource = resource.location(location);
        }
        let generation = self.credentials.generation();
        let answer = self.client.dataset().create(resource).await;
        match self.answered(generation, answer).await {
            Ok(_) => Ok(()),
            Err(Failure::Http { status: 409, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The table's schema as BigQuery's JSON (`{"fields": [...]}`).
    pub async fn table_schema(&self, table: &TableRef<'_>) -> Result<serde_json::Value, Failure> {
        let generation = self.credentials.generation();
        let answer = self
            .client
            .table()
            .get(table.project, table.dataset, table.table, None)
            .await;
        let resource = self.answered(generation, answer).await?;
        serde_json::to_value(resource.schema)
            .map_err(|e| Failure::Unreadable(format!("table schema: {e}")))
    }
}

/// A table's resource as tables.get answers it, with its `etag` (for `If-Match`).
#[derive(Debug, Clone)]
pub struct TableMeta {
    pub resource: serde_json::Value,
    pub etag: String,
}

impl BigQueryClient {
    /// tables.get as raw JSON (gcp-bigquery-client's model drops members a schema patch must
    /// send back unchanged, such as `policyTags`), with the etag.
    pub async fn table_meta(&self, table: &TableRef<'_>) -> Result<TableMeta, Failure> {
        let generation = self.credentials.generation();
        let answer = self
            .rest
            .table(reqwest::Method::GET, table, None, None)
            .await;
        self.answered_raw(generation, answer).await
    }

    /// tables.patch with `body` (e.g. `{"schema": {"fields": [...]}}`), only if the table's
    /// etag is still `etag`: another writer's change in between is 412 (`Failure::Http` with
    /// status 412), and nothing is changed. gcp-bigquery-client's patch sends no `If-Match`.
    pub async fn patch_table(
        &self,
        table: &TableRef<'_>,
        body: &serde_json::Value,
        etag: &str,
    ) -> Result<TableMeta, Failure> {
        let generation = self.credentials.generation();
        let answer = self
            .rest
            .table(reqwest::Method::PATCH, table, Some(body), Some(etag))
            .await;
        self.answered_raw(generation, answer).await
    }

    /// `answered` for the calls made here directly (and the one place a 401 drops the token).
    async fn answered_raw<T>(
        &self,
        generation: u64,
        answer: Result<T, Failure>,
    ) -> Result<T, Failure> {
        if let Err(Failure::Http { status: 401, .. }) = &answer {
            self.credentials.refused(generation).await;
        }
        answer
    }
}

/// The REST calls made without gcp-bigquery-client, with the same HTTP client, endpoint and
/// credentials.
struct Rest {
    http: reqwest::Client,
    base: String,
    credentials: Arc<Credentials>,
}

impl Rest {
    fn new(http: reqwest::Client, endpoint: Option<&str>, credentials: Arc<Credentials>) -> Self {
        let base = match endpoint {
            Some(e) => format!("{}/bigquery/v2", e.trim_end_matches('/')),
            None => "https://bigquery.googleapis.com/bigquery/v2".to_owned(),
        };
        Self {
            http,
            base,
            credentials,
        }
    }

    /// One call on a table resource; Google's JSON error bodies become `Failure::Http`.
    async fn table(
        &self,
        method: reqwest::Method,
        table: &TableRef<'_>,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<TableMeta, Failure> {
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| Failure::Transport(format!("endpoint {}: {e}", self.base)))?;
        url.path_segments_mut()
            .map_err(|()| Failure::Transport(format!("endpoint {} cannot take a path", self.base)))?
            .extend([
                "projects",
                table.project,
                "datasets",
                table.dataset,
                "tables",
                table.table,
            ]);
        let mut request = self.http.request(method, url).bearer_auth(
            self.credentials
                .token()
                .await
                .map_err(|e| Failure::Transport(e.to_string()))?,
        );
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        if let Some(etag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Transport(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
            Failure::Unreadable(format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if !(200..300).contains(&status) {
            let error = &json["error"];
            return Err(Failure::Http {
                status,
                reasons: error["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                    .collect(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        let etag = json["etag"].as_str().unwrap_or_default().to_owned();
        Ok(TableMeta {
            resource: json,
            etag,
        })
    }
}

fn failure(err: BQError) -> Failure {
    match err {
        BQError::InvalidServiceAccountAuthenticator(e)
            if e.get_ref().is_some_and(|e| e.is::<TokenError>()) =>
        {
            Failure::Transport(e.to_string())
        }
        BQError::RequestError(e) if e.is_timeout() => Failure::Timeout,
        // The crate reads every error body as Google's JSON; any other body ends here.
        BQError::RequestError(e) if e.is_decode() => Failure::Unreadable(e.to_string()),
        BQError::RequestError(e) => match e.status() {
            Some(status) => Failure::Http {
                status: status.as_u16(),
                reasons: Vec::new(),
                message: e.to_string(),
            },
            None => Failure::Transport(e.to_string()),
        },
        BQError::ResponseError { error } => Failure::Http {
            status: u16::try_from(error.error.code).unwrap_or(500),
            reasons: error
                .error
                .errors
                .iter()
                .filter_map(|e| e.get("reason").cloned())
                .collect(),
            message: error.error.message,
        },
        other => Failure::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 exchange per connection: returns the request's head and body.
    async fn read_request(stream: &mut tokio::net::TcpStream) -> (String, String) {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return (head.to_owned(), body.to_owned());
                }
            }
            if n == 0 {
                return (text, String::new());
            }
        }
    }

    /// A json_key service account (the suite's test-only key): the patch carries the output's
    /// credentials' token (google-cloud-auth signs a JWT with the key, for the BigQuery scope)
    /// and the etag.
    #[tokio::test]
    async fn patch_table_sends_the_credentials_token_and_the_etag() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (head, body) = read_request(&mut stream).await;
                let answer = r#"{"etag":"e2","schema":{"fields":[{"name":"a","type":"STRING"}]}}"#;
                log.lock().unwrap().push((head, body));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/credentials/test-only-service-account.json"
        );
        let credentials = Arc::new(Credentials::new(&AuthMethod::JsonKey(key.into())).unwrap());
        let token = credentials.token().await.unwrap();
        let rest = Rest::new(
            reqwest::Client::new(),
            Some(&format!("http://127.0.0.1:{port}")),
            Arc::clone(&credentials),
        );
        let table = TableRef {
            project: "p",
            dataset: "d",
            table: "t",
        };
        let body = serde_json::json!({"schema": {"fields": []}});
        let meta = rest
            .table(reqwest::Method::PATCH, &table, Some(&body), Some("e1"))
            .await
            .unwrap();
        assert_eq!(meta.etag, "e2");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let head = seen[0].0.to_ascii_lowercase();
        assert!(
            head.starts_with("patch /bigquery/v2/projects/p/datasets/d/tables/t "),
            "{head}"
        );
        assert!(
            head.contains(&format!(
                "authorization: bearer {}",
                token.to_ascii_lowercase()
            )),
            "{head}"
        );
        assert!(head.contains("if-match: e1"), "{head}");
        assert_eq!(seen[0].1, r#"{"schema":{"fields":[]}}"#);
    }
}
