// Owns tables.insert / get / list / patch (update) / delete and the table resource's shape.
// Must not validate rows; it only checks schemas, partitioning and clustering specs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::schema::{FieldType, Mode, Schema, check_additive};
use crate::store::{TableInfo, dataset_key, schema_of, table_key};

/// Splits a partition decorator off a table id: "t$20261124" → ("t", Some("20261124")).
pub fn split_decorator(table: &str) -> (&str, Option<&str>) {
    match table.split_once('$') {
        Some((base, partition)) => (base, Some(partition)),
        None => (table, None),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))
}

/// Checks timePartitioning and clustering against the schema, as tables.insert does.
fn check_layout(resource: &Value, schema: &Schema) -> Result<(), ApiError> {
    if let Some(tp) = resource.get("timePartitioning").filter(|v| !v.is_null()) {
        let kind = tp.get("type").and_then(Value::as_str).unwrap_or("DAY");
        if !["DAY", "HOUR", "MONTH", "YEAR"].contains(&kind) {
            return Err(ApiError::invalid(format!(
                "Invalid value for timePartitioning.type: {kind}"
            )));
        }
        if let Some(field) = tp.get("field").and_then(Value::as_str) {
            let f = schema.lookup(field).ok_or_else(|| {
                ApiError::invalid(format!(
                    "The field specified for partitioning cannot be found in the schema: {field}"
                ))
            })?;
            let ok = matches!(
                f.ty,
                FieldType::Timestamp | FieldType::Date | FieldType::Datetime
            );
            if !ok || f.mode == Mode::Repeated {
                return Err(ApiError::invalid(format!(
                    "The field specified for time partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type found is: {}.",
                    f.ty.canonical()
                )));
            }
        }
    }
    if let Some(fields) = resource
        .pointer("/clustering/fields")
        .and_then(Value::as_array)
    {
        if fields.len() > 4 {
            return Err(ApiError::invalid(
                "Too many clustering fields: at most 4 are allowed.",
            ));
        }
        for f in fields {
            let name = f.as_str().unwrap_or_default();
            if schema.lookup(name).is_none() {
                return Err(ApiError::invalid(format!(
                    "The field specified for clustering cannot be found in the schema.  Invalid field: {name}."
                )));
            }
        }
    }
    Ok(())
}

pub async fn insert(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let mut resource = parse_json(&body)?;
    let table = resource
        .pointer("/tableReference/tableId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::invalid("Required parameter is missing: tableReference.tableId")
        })?;
    if app
        .store
        .dataset(&dataset_key(&project, &dataset))
        .is_none()
    {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    }
    let schema = schema_of(&resource).map_err(ApiError::invalid)?;
    check_layout(&resource, &schema)?;
    let now = now_ms().to_string();
    resource["tableReference"] =
        json!({"projectId": project, "datasetId": dataset, "tableId": table});
    resource["creationTime"] = json!(now);
    resource["lastModifiedTime"] = json!(now);
    if resource.get("schema").is_none() {
        resource["schema"] = json!({"fields": []});
    }
    let key = table_key(&project, &dataset, &table);
    let stored = resource.clone();
    let created = blocking(&app, move |a| {
        Ok(a.store.create_table(&key, stored, schema)?)
    })
    .await?;
    if !created {
        return Err(ApiError::table_exists(&project, &dataset, &table));
    }
    let info = app
        .store
        .table(&table_key(&project, &dataset, &table))
        .ok_or_else(|| ApiError::table_not_found(&project, &dataset, &table))?;
    Ok(Json(render(&info)))
}

/// The table resource as tables.get answers it, with the counters filled in. The emulator never
/// flushes its streaming buffer, so `numRows` and `streamingBuffer.estimatedRows` both count all
/// rows (BigQuery's `numRows` excludes rows still in the buffer).
pub fn render(info: &TableInfo) -> Value {
    let mut r = info.resource.clone();
    let reference = r.get("tableReference").cloned().unwrap_or(Value::Null);
    let field = |k: &str| {
        reference
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (p, d, t) = (field("projectId"), field("datasetId"), field("tableId"));
    r["kind"] = json!("bigquery#table");
    r["id"] = json!(format!("{p}:{d}.{t}"));
    r["type"] = json!("TABLE");
    r["etag"] = json!(format!(
        "{}-{}",
        info.rows,
        r["lastModifiedTime"].as_str().unwrap_or("0")
    ));
    r["numRows"] = json!(info.rows.to_string());
    r["numBytes"] = json!(info.bytes.to_string());
    if info.rows > 0 {
        r["streamingBuffer"] = json!({
            "estimatedRows": info.rows.to_string(),
            "estimatedBytes": info.bytes.to_string(),
            "oldestEntryTime": info.oldest_entry_ms.unwrap_or(0).to_string(),
        });
    }
    r
}

pub async fn get(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (base, _) = split_decorator(&table);
    lookup(&app, &project, &dataset, base).map(|info| Json(render(&info)))
}

/// Finds a table, answering BigQuery's 404 for a missing dataset or table.
pub fn lookup(
    app: &AppState,
    project: &str,
    dataset: &str,
    table: &str,
) -> Result<TableInfo, ApiError> {
    if app.store.dataset(&dataset_key(project, dataset)).is_none() {
        return Err(ApiError::dataset_not_found(project, dataset));
    }
    app.store
        .table(&table_key(project, dataset, table))
        .ok_or_else(|| ApiError::table_not_found(project, dataset, table))
}

pub async fn list(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let dkey = dataset_key(&project, &dataset);
    if app.store.dataset(&dkey).is_none() {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    }
    let tables: Vec<Value> = app
        .store
        .tables_in(&dkey)
        .iter()
        .filter_map(|k| app.store.table(k))
        .map(|info| {
            let r = render(&info);
            json!({"kind": "bigquery#table", "id": r["id"], "tableReference": r["tableReference"], "type": "TABLE"})
        })
        .collect();
    Ok(Json(json!({
        "kind": "bigquery#tableList",
        "totalItems": tables.len(),
        "tables": tables,
    })))
}

/// tables.patch and tables.update: merges the given attributes; a new schema may only add
/// columns (or relax REQUIRED to NULLABLE).
pub async fn patch(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch = parse_json(&body)?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::invalid(
            "Invalid JSON payload received. Expected an object.",
        ));
    };
    let info = lookup(&app, &project, &dataset, &table)?;
    let mut resource = info.resource.clone();
    for (k, v) in patch {
        if !matches!(
            k.as_str(),
            "tableReference" | "kind" | "id" | "creationTime" | "numRows"
        ) {
            resource[k.as_str()] = v;
        }
    }
    let schema = schema_of(&resource).map_err(ApiError::invalid)?;
    check_additive(
        &info.schema,
        &schema,
        &format!("{project}:{dataset}.{table}"),
    )
    .map_err(|e| ApiError::invalid(e.0))?;
    check_layout(&resource, &schema)?;
    resource["lastModifiedTime"] = json!(now_ms().to_string());
    let key = table_key(&project, &dataset, &table);
    let updated = blocking(&app, move |a| {
        Ok(a.store.update_table(&key, resource, schema)?)
    })
    .await?;
    Ok(Json(render(&updated)))
}

pub async fn delete(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    lookup(&app, &project, &dataset, &table)?;
    let key = table_key(&project, &dataset, &table);
    blocking(&app, move |a| Ok(a.store.delete_table(&key)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
