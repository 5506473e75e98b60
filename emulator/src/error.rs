// Owns Google's error shapes: the request-level body (`{"error":{code,message,errors,status}}`)
// with its HTTP mapping, and a job's `ErrorProto`. Must not decide *when* an error happens;
// callers pick the constructor, this only shapes the answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One entry of a job's `status.errorResult` / `status.errors`
/// (<https://cloud.google.com/bigquery/docs/reference/rest/v2/ErrorProto>): `reason`, an optional
/// `location` (the file or config path the error is about), `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorProto {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub message: String,
}

impl ErrorProto {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_string(),
            location: None,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid", message)
    }

    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }
}

/// A request-level failure, answered with the JSON body Google APIs use:
/// <https://cloud.google.com/bigquery/docs/error-messages> (reason column = `errors[].reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// Body-level problems BigQuery reports as `badRequest` (unparseable JSON, payload too big).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "badRequest", message)
    }

    pub fn table_not_found(project: &str, dataset: &str, table: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("Not found: Table {project}:{dataset}.{table}"),
        )
    }

    pub fn dataset_not_found(project: &str, dataset: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("Not found: Dataset {project}:{dataset}"),
        )
    }

    pub fn table_exists(project: &str, dataset: &str, table: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "duplicate",
            format!("Already Exists: Table {project}:{dataset}.{table}"),
        )
    }

    pub fn dataset_exists(project: &str, dataset: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "duplicate",
            format!("Already Exists: Dataset {project}:{dataset}"),
        )
    }

    /// An `If-Match` that does not match the resource's etag. Observed message (python-bigquery
    /// #772: "Precondition check failed."); reason `conditionNotMet` as for every Google API.
    pub fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "conditionNotMet",
            "Precondition check failed.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internalError", message)
    }

    /// The canonical gRPC status name Google puts in `error.status`.
    fn status_name(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            409 => "ALREADY_EXISTS",
            412 => "FAILED_PRECONDITION",
            413 => "INVALID_ARGUMENT",
            429 => "RESOURCE_EXHAUSTED",
            500 => "INTERNAL",
            503 => "UNAVAILABLE",
            _ => "UNKNOWN",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.status.as_u16(),
                "message": self.message,
                "errors": [{
                    "message": self.message,
                    "domain": "global",
                    "reason": self.reason,
                }],
                "status": self.status_name(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
