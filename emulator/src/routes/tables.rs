// Owns tables.insert / get / list / delete, the table resource's shape and its etag.
// Must not validate rows; it only checks schemas, partitioning and clustering specs.
// tables.patch / tables.update are in `table_update`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::params::{self, Params};
use super::{ApiBase, AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::schema::{FieldJson, Selection, check_limits};
use crate::store::{TableInfo, dataset_key, schema_of, table_key};
use crate::table::{check_layout, next_etag};

/// Splits a partition decorator off a table id: "t$20261124" → ("t", Some("20261124")).
pub fn split_decorator(table: &str) -> (&str, Option<&str>) {
    match table.split_once('$') {
        Some((base, partition)) => (base, Some(partition)),
        None => (table, None),
    }
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))
}

pub async fn insert(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    base: ApiBase,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    params::parse(query.as_deref(), &params::TABLES_INSERT)?;
    let mut resource = parse_json(&body)?;
    let table = resource
        .pointer("/tableReference/tableId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::invalid("Required parameter is missing: tableReference.tableId")
        })?;
    let Some(dataset_resource) = app.store.dataset(&dataset_key(&project, &dataset)) else {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    };
    let schema = schema_of(&resource).map_err(ApiError::invalid)?;
    check_limits(&schema).map_err(|e| ApiError::invalid(e.0))?;
    check_layout(&resource, &schema).map_err(|e| ApiError::invalid(e.0))?;
    let now = now_ms().to_string();
    let key = table_key(&project, &dataset, &table);
    resource["tableReference"] =
        json!({"projectId": project, "datasetId": dataset, "tableId": table});
    resource["creationTime"] = json!(now);
    resource["lastModifiedTime"] = json!(now);
    resource["etag"] = json!(next_etag(&key, "", &now));
    // A table lives where its dataset does.
    resource["location"] = dataset_resource
        .get("location")
        .cloned()
        .unwrap_or(json!("US"));
    if resource.get("schema").is_none() {
        resource["schema"] = json!({"fields": []});
    }
    let stored = resource.clone();
    let created = blocking(&app, move |a| {
        let created = a.store.create_table(&key, stored, schema)?;
        if created {
            // A table created anew under an old name has no schema change pending.
            a.propagation.forget(&key);
        }
        Ok(created)
    })
    .await?;
    if !created {
        return Err(ApiError::table_exists(&project, &dataset, &table));
    }
    let info = app
        .store
        .table(&table_key(&project, &dataset, &table))
        .ok_or_else(|| ApiError::table_not_found(&project, &dataset, &table))?;
    Ok(Json(render(&info, &base)))
}

/// The table's etag. It changes with every modification of the resource (tables.insert, patch,
/// update), not with streamed rows. Tables stored before etags were kept get one derived from
/// their last modification.
pub(super) fn etag_of(key: &str, info: &TableInfo) -> String {
    match info.resource.get("etag").and_then(Value::as_str) {
        Some(etag) => etag.to_string(),
        None => {
            let modified = info.resource["lastModifiedTime"].as_str().unwrap_or("0");
            next_etag(key, "", modified)
        }
    }
}

/// The table resource as tables.get answers it, with the counters filled in. The emulator never
/// flushes its streaming buffer, so `numRows` counts all rows and `streamingBuffer.estimatedRows`
/// all streamed rows (BigQuery's `numRows` excludes rows still in the buffer); loaded rows are
/// never in it.
pub fn render(info: &TableInfo, base: &ApiBase) -> Value {
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
    r["selfLink"] = json!(format!("{}/projects/{p}/datasets/{d}/tables/{t}", base.0));
    r["type"] = json!("TABLE");
    r["etag"] = json!(etag_of(&table_key(&p, &d, &t), info));
    r["numRows"] = json!(info.rows.to_string());
    r["numBytes"] = json!(info.bytes.to_string());
    // Rows written by load jobs go to managed storage, not the streaming buffer.
    let streamed = info.rows.saturating_sub(info.loaded_rows);
    if streamed > 0 {
        let bytes = info.bytes.saturating_mul(streamed) / info.rows;
        r["streamingBuffer"] = json!({
            "estimatedRows": streamed.to_string(),
            "estimatedBytes": bytes.to_string(),
            "oldestEntryTime": info.oldest_entry_ms.unwrap_or(0).to_string(),
        });
    }
    r
}

/// tables.get. `view=BASIC` leaves out the storage statistics ("does not include storage
/// statistics such as numRows or numBytes"); `selectedFields` narrows the returned schema.
pub async fn get(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    base: ApiBase,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::TABLES_GET)?;
    let (id, _) = split_decorator(&table);
    let info = lookup(&app, &project, &dataset, id)?;
    let mut r = render(&info, &base);
    if let (Some("BASIC"), Some(obj)) = (q.text("view"), r.as_object_mut()) {
        for k in [
            "numRows",
            "numBytes",
            "numLongTermBytes",
            "lastModifiedTime",
            "streamingBuffer",
        ] {
            obj.remove(k);
        }
    }
    select_schema(&mut r, &q)?;
    Ok(Json(r))
}

/// Applies tables.get's `selectedFields` to the resource's `schema.fields`.
fn select_schema(resource: &mut Value, q: &Params) -> Result<(), ApiError> {
    let Some(sel) = Selection::parse(q.text("selectedFields").unwrap_or_default())
        .map_err(|e| ApiError::invalid(e.0))?
    else {
        return Ok(());
    };
    let schema = schema_of(resource).map_err(ApiError::invalid)?;
    sel.project(&schema).map_err(|e| ApiError::invalid(e.0))?;
    let fields: Vec<FieldJson> = resource
        .pointer("/schema/fields")
        .cloned()
        .and_then(|f| serde_json::from_value(f).ok())
        .unwrap_or_default();
    resource["schema"]["fields"] = json!(sel.project_json(&fields));
    Ok(())
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

/// Tables per page when maxResults is not given.
const DEFAULT_TABLE_PAGE: u64 = 1_000;

/// tables.list, in table id order, paged by `maxResults` / `pageToken` (offset tokens).
pub async fn list(
    State(app): State<AppState>,
    Path((project, dataset)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::TABLES_LIST)?;
    let dkey = dataset_key(&project, &dataset);
    if app.store.dataset(&dkey).is_none() {
        return Err(ApiError::dataset_not_found(&project, &dataset));
    }
    let start = match q.text("pageToken") {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("Invalid page token: {token}")))?,
        None => 0,
    };
    let max = q
        .int("maxResults")
        .map_or(DEFAULT_TABLE_PAGE, |n| n.unsigned_abs()) as usize;
    let keys = app.store.tables_in(&dkey);
    let tables: Vec<Value> = keys
        .iter()
        .skip(start)
        .take(max)
        .filter_map(|k| app.store.table(k))
        .map(|info| list_item(&info))
        .collect();
    let mut body = json!({
        "kind": "bigquery#tableList",
        "etag": format!("{}", keys.len()),
        "totalItems": keys.len(),
        "tables": tables,
    });
    let next = start.saturating_add(max);
    if max > 0 && next < keys.len() {
        body["nextPageToken"] = json!(next.to_string());
    }
    Ok(Json(body))
}

/// One entry of tables.list: the reference and a few attributes, not the schema.
fn list_item(info: &TableInfo) -> Value {
    let r = &info.resource;
    let reference = r.get("tableReference").cloned().unwrap_or(Value::Null);
    let part = |k: &str| reference.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut item = json!({
        "kind": "bigquery#table",
        "id": format!("{}:{}.{}", part("projectId"), part("datasetId"), part("tableId")),
        "tableReference": reference,
        "type": "TABLE",
    });
    for k in [
        "creationTime",
        "expirationTime",
        "friendlyName",
        "labels",
        "timePartitioning",
        "clustering",
    ] {
        if let Some(v) = r.get(k) {
            item[k] = v.clone();
        }
    }
    item
}

pub async fn delete(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    params::parse(query.as_deref(), &params::TABLES_DELETE)?;
    lookup(&app, &project, &dataset, &table)?;
    let key = table_key(&project, &dataset, &table);
    blocking(&app, move |a| {
        a.propagation.forget(&key);
        Ok(a.store.delete_table(&key)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
