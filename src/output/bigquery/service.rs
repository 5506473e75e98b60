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

/// How to reach BigQuery: credentials, endpoint, timeouts.
pub struct Connection {
    /// Shared with every client of the output (REST here, Storage Write over gRPC).
    pub credentials: Arc<Credentials>,
    pub endpoint: Option<String>,
    pub request_timeout: Option<Duration>,
    pub open_timeout: Duration,
}

pub struct BigQueryClient {
    client: Client,
    credentials: Arc<Credentials>,
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
        let (endpoint, request_timeout, open_timeout) =
            (endpoint.as_deref(), *request_timeout, *open_timeout);
        let mut http = reqwest::Client::builder()
            .connect_timeout(open_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(timeout) = request_timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(|e| format!("HTTP client: {e}"))?;
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
        })
    }

    /// The credentials this client sends.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// A 401 means the token was refused (revoked, or expired early): the next request fetches
    /// a new one instead of the cached one. `generation` was read before the request.
    async fn answered<T>(&self, generation: u64, answer: Result<T, BQError>) -> Result<T, Failure> {
        let answer = answer.map_err(failure);
        if let Err(Failure::Http { status: 401, .. }) = &answer {
            self.credentials.refused(generation).await;
        }
        answer
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
