// Owns the HTTP surface: the router, shared state, and the fault/logging middleware.
// Must not hold business rules: validation lives in `schema`/`insert`, persistence in `store`.

mod admin;
mod datasets;
mod jobs;
mod params;
mod shape;
mod table_update;
mod tabledata;
mod tables;
mod upload;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::header::HOST;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::faults::{Fault, RequestKind};
use crate::stats::Stats;
use crate::store::StoreError;
pub use crate::{App, AppState};
pub use jobs::resume as resume_jobs;

/// `http://HOST/bigquery/v2` from the request's Host header: the base of the `selfLink`s the
/// emulator answers (BigQuery's point at https://bigquery.googleapis.com/bigquery/v2).
pub struct ApiBase(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiBase {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        Ok(ApiBase(format!("http://{host}/bigquery/v2")))
    }
}

impl ApiBase {
    /// `http://HOST`, the root the upload URLs hang from.
    pub fn origin(&self) -> &str {
        self.0.strip_suffix("/bigquery/v2").unwrap_or(&self.0)
    }
}

/// Marks a response the server must not send: the connection is closed instead.
#[derive(Clone, Copy, Debug)]
pub struct DropConnection;

const V2: &str = "/bigquery/v2/projects/{project}";
const UPLOAD: &str = "/upload/bigquery/v2/projects/{project}/jobs";

pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route(&format!("{V2}/datasets"), post(datasets::insert))
        .route(
            &format!("{V2}/datasets/{{dataset}}"),
            get(datasets::get).delete(datasets::delete),
        )
        .route(
            &format!("{V2}/datasets/{{dataset}}/tables"),
            post(tables::insert).get(tables::list),
        )
        .route(
            &format!("{V2}/datasets/{{dataset}}/tables/{{table}}"),
            get(tables::get)
                .patch(table_update::patch)
                .put(table_update::update)
                .delete(tables::delete),
        )
        .route(
            &format!("{V2}/datasets/{{dataset}}/tables/{{table}}/insertAll"),
            post(tabledata::insert_all),
        )
        .route(
            &format!("{V2}/datasets/{{dataset}}/tables/{{table}}/data"),
            get(tabledata::list),
        )
        .route(&format!("{V2}/jobs"), post(jobs::insert).get(jobs::list))
        .route(&format!("{V2}/jobs/{{job}}"), get(jobs::get))
        .route(&format!("{V2}/jobs/{{job}}/cancel"), post(jobs::cancel))
        .route(UPLOAD, post(upload::start).put(upload::chunk))
        .layer(middleware::from_fn_with_state(app.clone(), faults_layer))
        .layer(middleware::from_fn_with_state(app.clone(), auth_layer))
        .layer(middleware::from_fn(shape::shape_layer));
    Router::new()
        .merge(api)
        .merge(admin::router())
        .fallback(not_found)
        .with_state(app)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "notFound",
        format!("Not found: {} {}", req.method(), req.uri().path()),
    )
}

/// What a request is, for the fault scope: `/upload/…`, `…/projects/P/jobs…`, `…/insertAll`.
fn request_kind(path: &str) -> RequestKind {
    if path.starts_with("/upload/") {
        return RequestKind::Upload;
    }
    if path.ends_with("/insertAll") {
        return RequestKind::InsertAll;
    }
    match path.split('/').nth(5) {
        Some("jobs") => RequestKind::Jobs,
        _ => RequestKind::Other,
    }
}

/// Records the bearer token and answers 401 as BigQuery does when the policy refuses it.
async fn auth_layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.tokens.check(authorization) {
        Ok(()) => next.run(req).await,
        Err(why) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authError",
            format!("Request had invalid authentication credentials: {why}."),
        )
        .into_response(),
    }
}

/// Counts BigQuery API requests and applies the configured faults before routing.
async fn faults_layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    Stats::add(&app.stats.requests, 1);
    let (latency, fault) = app.faults.draw(request_kind(req.uri().path()));
    if let Some(delay) = latency {
        Stats::add(&app.stats.faults_delayed, 1);
        tokio::time::sleep(delay).await;
    }
    match fault {
        None => next.run(req).await,
        Some(Fault::Drop) => {
            Stats::add(&app.stats.faults_dropped, 1);
            // Read the request first so the client sees the connection close after sending,
            // like a server that died mid-request (not a refused connection).
            let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
            let mut resp = Response::new(Body::empty());
            resp.extensions_mut().insert(DropConnection);
            resp
        }
        Some(Fault::DropResponse) => {
            Stats::add(&app.stats.faults_response_dropped, 1);
            // Carried out in full (a job is created, rows stored); only the answer is lost.
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(DropConnection);
            resp
        }
        Some(Fault::Status(code)) => {
            let counter = match code {
                429 => &app.stats.faults_429,
                500 => &app.stats.faults_500,
                _ => &app.stats.faults_503,
            };
            Stats::add(counter, 1);
            injected_error(code).into_response()
        }
    }
}

/// The bodies BigQuery sends for these statuses
/// (<https://cloud.google.com/bigquery/docs/error-messages>: rateLimitExceeded, internalError,
/// backendError).
fn injected_error(code: u16) -> ApiError {
    match code {
        429 => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimitExceeded",
            "Exceeded rate limits: too many api requests per user per method for this user_method. For more information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
        ),
        500 => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internalError",
            "An internal error occurred and the request could not be completed.",
        ),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backendError",
            "The service is currently unavailable.",
        ),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError::internal(e.to_string())
    }
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Milliseconds since the epoch, as BigQuery's resource timestamps.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Logged at debug level for every request by the server.
pub fn log_request(method: &str, path: &str, status: u16, started: Instant) {
    tracing::debug!(
        method,
        path,
        status,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_sorted_into_fault_scopes_by_path() {
        let kind = |p: &str| request_kind(p);
        assert_eq!(
            kind("/bigquery/v2/projects/p/datasets/d/tables/t/insertAll"),
            RequestKind::InsertAll
        );
        assert_eq!(
            kind("/upload/bigquery/v2/projects/p/jobs"),
            RequestKind::Upload
        );
        assert_eq!(kind("/bigquery/v2/projects/p/jobs"), RequestKind::Jobs);
        assert_eq!(
            kind("/bigquery/v2/projects/p/jobs/j/cancel"),
            RequestKind::Jobs
        );
        assert_eq!(
            kind("/bigquery/v2/projects/p/datasets/jobs"),
            RequestKind::Other
        );
        assert_eq!(
            kind("/bigquery/v2/projects/jobs/datasets"),
            RequestKind::Other
        );
    }
}
