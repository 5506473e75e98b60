//! The BigQuery API through `gcp-bigquery-client`: authentication as fluent-plugin-bigquery
//! offers it, pre-gzipped insertAll bodies, table creation and schema fetches, with every
//! error turned into a `Failure` for `classify`. No retry or row logic here.

use super::classify::Failure;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequestGzipped;
use gcp_bigquery_client::model::table_data_insert_all_response::TableDataInsertAllResponse;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum AuthMethod {
    /// No credentials (a local BigQuery such as the repo's bigquery-emulator).
    None,
    /// A service-account key: a file path or the key's JSON itself (as the plugin accepts).
    JsonKey(String),
    /// Application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata).
    ApplicationDefault,
    /// The GCE / GKE metadata server (workload identity).
    ComputeEngine,
}

/// Sends a fixed bearer token: for local endpoints that need none.
#[derive(Clone)]
struct NoAuth;

#[async_trait::async_trait]
impl Authenticator for NoAuth {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("bqforward-no-auth".into())
    }
}

/// How to reach BigQuery: credentials, endpoint, timeouts.
pub struct Connection {
    pub auth: AuthMethod,
    pub endpoint: Option<String>,
    pub request_timeout: Option<Duration>,
    pub open_timeout: Duration,
}

pub struct BigQueryClient {
    client: Client,
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
            auth,
            endpoint,
            request_timeout,
            open_timeout,
        } = connection;
        let (endpoint, request_timeout, open_timeout) =
            (endpoint.as_deref(), *request_timeout, *open_timeout);
        let mut http = reqwest::Client::builder()
            .connect_timeout(open_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(timeout) = request_timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(|e| format!("HTTP client: {e}"))?;
        let rest = Rest::new(http.clone(), endpoint, auth.clone());
        let mut builder = ClientBuilder::new();
        builder.with_client(http);
        if let Some(endpoint) = endpoint {
            builder.with_v2_base_url(format!("{}/bigquery/v2", endpoint.trim_end_matches('/')));
        }
        let client = match auth {
            AuthMethod::None => builder.build_from_authenticator(Arc::new(NoAuth)).await,
            AuthMethod::JsonKey(key) if key.trim_start().starts_with('{') => {
                let parsed = serde_json::from_str(key)
                    .map_err(|e| format!("json_key is not a service-account key: {e}"))?;
                builder.build_from_service_account_key(parsed, false).await
            }
            AuthMethod::JsonKey(path) => builder.build_from_service_account_key_file(path).await,
            AuthMethod::ApplicationDefault => {
                builder.build_from_application_default_credentials().await
            }
            AuthMethod::ComputeEngine => builder.build_with_workload_identity(false).await,
        }
        .map_err(|e| format!("BigQuery credentials: {e}"))?;
        Ok(Self { client, rest })
    }

    /// tabledata.insertAll with a body that is already JSON and gzipped.
    pub async fn insert_all(
        &self,
        table: &TableRef<'_>,
        gzipped_body: Vec<u8>,
    ) -> Result<TableDataInsertAllResponse, Failure> {
        self.client
            .tabledata()
            .insert_all_gzipped(
                table.project,
                table.dataset,
                table.table,
                TableDataInsertAllRequestGzipped::new(gzipped_body),
            )
            .await
            .map_err(failure)
    }

    /// tables.insert from a table resource (JSON as the REST API documents it). An existing
    /// table (409) counts as success.
    pub async fn create_table(&self, resource: serde_json::Value) -> Result<(), Failure> {
        let table: Table = serde_json::from_value(resource)
            .map_err(|e| Failure::Transport(format!("table resource: {e}")))?;
        match self.client.table().create(table).await.map_err(failure) {
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
        match self
            .client
            .dataset()
            .create(resource)
            .await
            .map_err(failure)
        {
            Ok(_) => Ok(()),
            Err(Failure::Http { status: 409, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The table's schema as BigQuery's JSON (`{"fields": [...]}`).
    pub async fn table_schema(&self, table: &TableRef<'_>) -> Result<serde_json::Value, Failure> {
        let resource = self
            .client
            .table()
            .get(table.project, table.dataset, table.table, None)
            .await
            .map_err(failure)?;
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
        self.rest
            .table(reqwest::Method::GET, table, None, None)
            .await
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
        self.rest
            .table(reqwest::Method::PATCH, table, Some(body), Some(etag))
            .await
    }
}

/// The REST calls made without gcp-bigquery-client, with the same HTTP client, endpoint and
/// credentials.
struct Rest {
    http: reqwest::Client,
    base: String,
    auth: AuthMethod,
    token: tokio::sync::OnceCell<Token>,
}

/// Where bearer tokens come from for `Rest`, per `auth_method` (gcp-bigquery-client keeps its
/// own authenticator private). yup-oauth2 caches and refreshes tokens.
enum Token {
    Fixed(&'static str),
    Yup(yup_oauth2::authenticator::DefaultAuthenticator),
    /// The GCE / GKE metadata server, asked each time as gcp-bigquery-client does.
    Metadata,
}

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const METADATA_TOKEN: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

impl Rest {
    fn new(http: reqwest::Client, endpoint: Option<&str>, auth: AuthMethod) -> Self {
        let base = match endpoint {
            Some(e) => format!("{}/bigquery/v2", e.trim_end_matches('/')),
            None => "https://bigquery.googleapis.com/bigquery/v2".to_owned(),
        };
        Self {
            http,
            base,
            auth,
            token: tokio::sync::OnceCell::new(),
        }
    }

    async fn source(&self) -> Result<&Token, Failure> {
        let io = |e: std::io::Error| Failure::Transport(format!("BigQuery credentials: {e}"));
        self.token
            .get_or_try_init(|| async {
                Ok(match &self.auth {
                    AuthMethod::None => Token::Fixed("bqforward-no-auth"),
                    AuthMethod::ComputeEngine => Token::Metadata,
                    AuthMethod::JsonKey(key) => {
                        let key = if key.trim_start().starts_with('{') {
                            yup_oauth2::parse_service_account_key(key).map_err(io)?
                        } else {
                            yup_oauth2::read_service_account_key(key)
                                .await
                                .map_err(io)?
                        };
                        Token::Yup(
                            yup_oauth2::ServiceAccountAuthenticator::builder(key)
                                .build()
                                .await
                                .map_err(io)?,
                        )
                    }
                    AuthMethod::ApplicationDefault => {
                        use yup_oauth2::authenticator::ApplicationDefaultCredentialsTypes as Adc;
                        let opts = yup_oauth2::ApplicationDefaultCredentialsFlowOpts::default();
                        Token::Yup(
                            match yup_oauth2::ApplicationDefaultCredentialsAuthenticator::builder(
                                opts,
                            )
                            .await
                            {
                                Adc::ServiceAccount(b) => b.build().await,
                                Adc::InstanceMetadata(b) => b.build().await,
                            }
                            .map_err(io)?,
                        )
                    }
                })
            })
            .await
    }

    async fn bearer(&self) -> Result<String, Failure> {
        let denied = |e: String| Failure::Transport(format!("BigQuery credentials: {e}"));
        match self.source().await? {
            Token::Fixed(token) => Ok((*token).to_owned()),
            Token::Yup(auth) => auth
                .token(&[SCOPE])
                .await
                .map_err(|e| denied(e.to_string()))?
                .token()
                .map(str::to_owned)
                .ok_or_else(|| denied("no access token".into())),
            Token::Metadata => {
                #[derive(serde::Deserialize)]
                struct Answer {
                    access_token: String,
                }
                let answer: Answer = self
                    .http
                    .get(METADATA_TOKEN)
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| denied(e.to_string()))?
                    .json()
                    .await
                    .map_err(|e| denied(e.to_string()))?;
                Ok(answer.access_token)
            }
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
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.bearer().await?);
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

    /// A service-account key (a fresh RSA key from the openssl command) whose token_uri is
    /// a local server, which answers tokens and tables.patch and keeps what it was sent:
    /// the patch carries the key's token and the etag.
    #[tokio::test]
    async fn patch_table_sends_the_json_key_token_and_the_etag() {
        let Ok(out) = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
        else {
            eprintln!("SKIP: no openssl command to make a key with");
            return;
        };
        let pem = String::from_utf8(out.stdout).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (head, body) = read_request(&mut stream).await;
                let answer = if head.starts_with("POST /token") {
                    r#"{"access_token":"tok-123","expires_in":3600,"token_type":"Bearer"}"#
                } else {
                    r#"{"etag":"e2","schema":{"fields":[{"name":"a","type":"STRING"}]}}"#
                };
                log.lock().unwrap().push((head, body));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let key = serde_json::json!({
            "type": "service_account", "project_id": "p", "private_key_id": "1",
            "private_key": pem, "client_email": "b@p.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": format!("http://127.0.0.1:{port}/token"),
        });
        let rest = Rest::new(
            reqwest::Client::new(),
            Some(&format!("http://127.0.0.1:{port}")),
            AuthMethod::JsonKey(key.to_string()),
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
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[0]
                .1
                .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
            "{seen:?}"
        );
        let head = seen[1].0.to_ascii_lowercase();
        assert!(
            head.starts_with("patch /bigquery/v2/projects/p/datasets/d/tables/t "),
            "{head}"
        );
        assert!(head.contains("authorization: bearer tok-123"), "{head}");
        assert!(head.contains("if-match: e1"), "{head}");
    }
}
