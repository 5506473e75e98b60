// Owns datasets.insert / get / delete.
// Must not touch tables' rows directly; deleting contents goes through the store.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::store::dataset_key;

pub async fn insert(
    State(app): State<AppState>,
    Path(project): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
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
    Ok((StatusCode::OK, Json(resource)).into_response())
}

pub async fn get(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    app.store
        .dataset(&dataset_key(&project, &dataset))
        .map(Json)
        .ok_or_else(|| ApiError::dataset_not_found(&project, &dataset))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteParams {
    #[serde(default)]
    delete_contents: bool,
}

pub async fn delete(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    let key = dataset_key(&project, &dataset);
    if app.store.dataset(&key).is_none() {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    }
    if !params.delete_contents && !app.store.tables_in(&key).is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "resourceInUse",
            format!("Dataset {project}:{dataset} is still in use"),
        ));
    }
    blocking(&app, move |a| Ok(a.store.delete_dataset(&key)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
