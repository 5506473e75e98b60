// Owns datasets.insert / get / delete.
// Must not touch tables' rows directly; deleting contents goes through the store.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::params::{self, Params};
use super::{ApiBase, AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::store::dataset_key;

/// "Valid values are 0, 1, and 3. Requests specifying an invalid value will be rejected."
/// (datasets.get / datasets.insert `accessPolicyVersion`).
fn check_access_policy_version(q: &Params) -> Result<(), ApiError> {
    match q.int("accessPolicyVersion") {
        None | Some(0 | 1 | 3) => Ok(()),
        Some(v) => Err(ApiError::invalid(format!(
            "Invalid value for accessPolicyVersion: {v}. Valid values are 0, 1, and 3."
        ))),
    }
}

/// The stored resource with its `selfLink` for this request's host.
fn answer(mut resource: Value, base: &ApiBase, project: &str, dataset: &str) -> Value {
    resource["selfLink"] = json!(format!("{}/projects/{project}/datasets/{dataset}", base.0));
    resource
}

pub async fn insert(
    State(app): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    base: ApiBase,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = params::parse(query.as_deref(), &params::DATASETS_INSERT)?;
    check_access_policy_version(&q)?;
    let mut resource: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    let dataset = resource
        .pointer("/datasetReference/datasetId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::invalid("Required parameter is missing: datasetReference.datasetId")
        })?;
    let now = now_ms().to_string();
    resource["kind"] = json!("bigquery#dataset");
    resource["id"] = json!(format!("{project}:{dataset}"));
    resource["datasetReference"] = json!({"projectId": project, "datasetId": dataset});
    resource["creationTime"] = json!(now);
    resource["lastModifiedTime"] = json!(now);
    resource["etag"] = json!(format!("{now}"));
    if resource.get("location").is_none() {
        resource["location"] = json!("US");
    }
    let key = dataset_key(&project, &dataset);
    let stored = resource.clone();
    let created = blocking(&app, move |a| Ok(a.store.create_dataset(&key, stored)?)).await?;
    if !created {
        return Err(ApiError::dataset_exists(&project, &dataset));
    }
    let body = answer(resource, &base, &project, &dataset);
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `datasetView` is accepted; the emulator keeps no ACL beyond what the dataset was created with,
/// so every view answers the same resource.
pub async fn get(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    base: ApiBase,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::DATASETS_GET)?;
    check_access_policy_version(&q)?;
    app.store
        .dataset(&dataset_key(&project, &dataset))
        .map(|r| Json(answer(r, &base, &project, &dataset)))
        .ok_or_else(|| ApiError::dataset_not_found(&project, &dataset))
}

pub async fn delete(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let q = params::parse(query.as_deref(), &params::DATASETS_DELETE)?;
    let delete_contents = q.bool("deleteContents").unwrap_or(false);
    let key = dataset_key(&project, &dataset);
    if app.store.dataset(&key).is_none() {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    }
    if !delete_contents && !app.store.tables_in(&key).is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "resourceInUse",
            format!("Dataset {project}:{dataset} is still in use"),
        ));
    }
    blocking(&app, move |a| Ok(a.store.delete_dataset(&key)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
