// Owns tabledata.insertAll (normal and null mode, template tables, decorators, dedup) and
// tabledata.list with BigQuery's `{"f":[{"v":…}]}` row shape. Must not parse schemas or bodies
// itself: that is `schema` and `insert`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_ENCODING;
use serde_json::{Map, Value, json};

use super::params::{self, Params};
use super::tables::{lookup, split_decorator};
use super::{App, AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::insert::{self, InsertRow, payload_too_large};
use crate::schema::{
    FieldType, Mode, RowError, Schema, Selection, ValidateOptions, format_timestamp_iso,
    format_timestamp_seconds,
};
use crate::stats::Stats;
use crate::store::{NewRow, TableInfo, table_key};

pub async fn insert_all(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    Stats::add(&app.stats.insert_all_requests, 1);
    params::parse(query.as_deref(), &params::TABLEDATA_INSERT_ALL)?;
    let limit = app.limits.max_request_bytes;
    // A compressed body larger than the limit cannot be under it once inflated.
    let raw = axum::body::to_bytes(body, limit.saturating_add(1))
        .await
        .map_err(|_| payload_too_large(limit))?;
    let gzip = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("gzip"));
    blocking(&app, move |a| {
        let body = insert::decode_body(gzip, &raw, limit)?;
        if a.faults.null_mode() {
            let n = insert::count_rows(&body, &a.limits)? as u64;
            Stats::add(&a.stats.rows_received, n);
            Stats::add(&a.stats.rows_accepted, n);
            Stats::add(&a.stats.rows_discarded, n);
            return Ok(Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})));
        }
        let req = insert::parse_request(&body, &a.limits)?;
        insert_rows(a, &project, &dataset, &table, req).map(Json)
    })
    .await
}

fn insert_rows(
    a: &App,
    project: &str,
    dataset: &str,
    table: &str,
    req: insert::InsertAllRequest,
) -> Result<Value, ApiError> {
    let (base, decorator) = split_decorator(table);
    let base_info = lookup_app(a, project, dataset, base)?;
    let (target, info) = match req.template_suffix.as_deref().filter(|s| !s.is_empty()) {
        Some(suffix) => instance_table(a, project, dataset, base, suffix, &base_info)?,
        None => (base.to_string(), base_info),
    };
    let rows: Vec<InsertRow> = req.rows.unwrap_or_default();
    let opts = ValidateOptions {
        ignore_unknown_values: req.ignore_unknown_values.unwrap_or(false),
    };
    let skip_invalid = req.skip_invalid_rows.unwrap_or(false);
    let key = table_key(project, dataset, &target);
    // Right after a schema change the streaming path still checks rows against the old schema.
    let schema = a.propagation.visible(&key, &info.schema);
    let outcomes = insert::check_rows(&schema, &rows, opts, &a.limits);
    let invalid = outcomes.iter().filter(|o| o.is_err()).count() as u64;
    Stats::add(&a.stats.rows_received, rows.len() as u64);
    Stats::add(&a.stats.rows_invalid, invalid);
    if invalid > 0 && !skip_invalid {
        Stats::add(&a.stats.rows_stopped, rows.len() as u64 - invalid);
        return Ok(insert::response(&outcomes, false));
    }
    store_rows(a, &key, &info, decorator, &rows, &outcomes)?;
    Ok(insert::response(&outcomes, skip_invalid))
}

fn lookup_app(a: &App, project: &str, dataset: &str, table: &str) -> Result<TableInfo, ApiError> {
    if a.store
        .dataset(&crate::store::dataset_key(project, dataset))
        .is_none()
    {
        return Err(ApiError::dataset_not_found(project, dataset));
    }
    a.store
        .table(&table_key(project, dataset, table))
        .ok_or_else(|| ApiError::table_not_found(project, dataset, table))
}

/// `{base}{suffix}`, created on first use from the template's schema and partitioning
/// (<https://cloud.google.com/bigquery/docs/streaming-data-into-bigquery#template-tables>).
fn instance_table(
    a: &App,
    project: &str,
    dataset: &str,
    base: &str,
    suffix: &str,
    template: &TableInfo,
) -> Result<(String, TableInfo), ApiError> {
    let name = format!("{base}{suffix}");
    let key = table_key(project, dataset, &name);
    if let Some(info) = a.store.table(&key) {
        return Ok((name, info));
    }
    let now = now_ms().to_string();
    let mut resource = json!({
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": name},
        "schema": template.resource.get("schema").cloned().unwrap_or(json!({"fields": []})),
        "creationTime": now,
        "lastModifiedTime": now,
    });
    for k in ["timePartitioning", "clustering"] {
        if let Some(v) = template.resource.get(k) {
            resource[k] = v.clone();
        }
    }
    // A concurrent request may have created it first; either way it exists now.
    a.store
        .create_table(&key, resource, (*template.schema).clone())?;
    let info = a
        .store
        .table(&key)
        .ok_or_else(|| ApiError::table_not_found(project, dataset, &name))?;
    Ok((name, info))
}

fn store_rows(
    a: &App,
    key: &str,
    info: &TableInfo,
    decorator: Option<&str>,
    rows: &[InsertRow],
    outcomes: &[Result<Map<String, Value>, Vec<RowError>>],
) -> Result<(), ApiError> {
    let good: Vec<usize> = (0..rows.len()).filter(|i| outcomes[*i].is_ok()).collect();
    let ids: Vec<Option<&str>> = good.iter().map(|i| rows[*i].insert_id.as_deref()).collect();
    let fresh = a.dedup.claim(key, &ids);
    let mut new_rows = Vec::with_capacity(good.len());
    let mut claimed: Vec<&str> = Vec::new();
    for ((i, is_new), id) in good.iter().zip(&fresh).zip(&ids) {
        let Some(Ok(row)) = outcomes.get(*i) else {
            continue;
        };
        if !is_new {
            continue;
        }
        if let Some(id) = id {
            claimed.push(id);
        }
        new_rows.push(NewRow {
            partition: info.partition_for(decorator, row),
            row: row.clone(),
        });
    }
    let duplicates = fresh.iter().filter(|f| !**f).count() as u64;
    let inserted = match a.store.append(key, new_rows, now_ms()) {
        Ok(n) => n,
        Err(e) => {
            a.dedup.release(key, &claimed);
            return Err(e.into());
        }
    };
    Stats::add(&a.stats.rows_deduplicated, duplicates);
    Stats::add(&a.stats.rows_inserted, inserted);
    Stats::add(&a.stats.rows_accepted, good.len() as u64);
    Ok(())
}

/// Rows per page when maxResults is not given (BigQuery pages by size; this is a round number).
const DEFAULT_PAGE: u64 = 10_000;

/// How TIMESTAMP cells are written (`formatOptions` of tabledata.list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimestampFormat {
    /// Seconds since the epoch as a float ("1.7956008E9"): BigQuery's default.
    Float64,
    /// Microseconds since the epoch ("1795600800000000").
    Int64,
    /// "2026-11-25T10:00:00.000000000000Z".
    Iso8601,
}

/// `useInt64Timestamp=true` and a `timestampOutputFormat` together are refused: "Cannot specify
/// both use_int64_timestamp and timestamp_output_format" (google-cloud-bigquery never sends both
/// for that reason, client.py `list_rows`).
fn timestamp_format(q: &Params) -> Result<TimestampFormat, ApiError> {
    let int64 = q.bool("formatOptions.useInt64Timestamp").unwrap_or(false);
    let format = q
        .text("formatOptions.timestampOutputFormat")
        .filter(|f| *f != "TIMESTAMP_OUTPUT_FORMAT_UNSPECIFIED");
    Ok(match (int64, format) {
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "Cannot specify both use_int64_timestamp and timestamp_output_format.",
            ));
        }
        (true, None) | (false, Some("INT64")) => TimestampFormat::Int64,
        (false, Some("ISO8601_STRING")) => TimestampFormat::Iso8601,
        _ => TimestampFormat::Float64,
    })
}

pub async fn list(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::TABLEDATA_LIST)?;
    let ts_format = timestamp_format(&q)?;
    let (base, decorator) = split_decorator(&table);
    let info = lookup(&app, &project, &dataset, base)?;
    let schema = match Selection::parse(q.text("selectedFields").unwrap_or_default())
        .and_then(|sel| sel.map(|s| s.project(&info.schema)).transpose())
        .map_err(|e| ApiError::invalid(e.0))?
    {
        Some(projected) => Arc::new(projected),
        None => info.schema.clone(),
    };
    // The page token wins over startIndex (google-cloud-bigquery drops startIndex once it has a
    // token; BigQuery's answer to both is not documented).
    let start = match q.text("pageToken") {
        Some(token) => token
            .parse::<u64>()
            .map_err(|_| ApiError::invalid(format!("Invalid page token: {token}")))?,
        None => q.int("startIndex").map_or(0, |n| n.unsigned_abs()),
    };
    let max = q
        .int("maxResults")
        .map_or(DEFAULT_PAGE, |n| n.unsigned_abs())
        .min(DEFAULT_PAGE * 10) as usize;
    let key = table_key(&project, &dataset, base);
    let partition = decorator.map(str::to_string);
    let page = blocking(&app, move |a| {
        Ok(a.store.list(&key, start, max, partition.as_deref())?)
    })
    .await?;
    let rows: Vec<Value> = page
        .rows
        .iter()
        .map(|r| render_record(&schema, r, ts_format))
        .collect();
    let mut body = json!({
        "kind": "bigquery#tableDataList",
        "etag": format!("{}", page.total),
        "totalRows": page.total.to_string(),
    });
    if let Some(next) = page.next_index {
        body["pageToken"] = json!(next.to_string());
    }
    if !rows.is_empty() {
        body["rows"] = Value::Array(rows);
    }
    Ok(Json(body))
}

/// `{"f":[{"v":…}, …]}` in schema order; NULL as `{"v":null}`, repeated as `[{"v":…}]`.
fn render_record(schema: &Schema, row: &Map<String, Value>, ts: TimestampFormat) -> Value {
    let cells: Vec<Value> = schema
        .fields
        .iter()
        .map(|f| {
            let v = match (row.get(&f.name), f.mode) {
                (None, Mode::Repeated) => Value::Array(Vec::new()),
                (None, _) => Value::Null,
                (Some(Value::Array(items)), Mode::Repeated) => Value::Array(
                    items
                        .iter()
                        .map(|item| json!({"v": render_value(f, item, ts)}))
                        .collect(),
                ),
                (Some(v), _) => render_value(f, v, ts),
            };
            json!({"v": v})
        })
        .collect();
    json!({"f": cells})
}

fn render_value(f: &crate::schema::Field, v: &Value, ts: TimestampFormat) -> Value {
    match (&f.sub, v) {
        (Some(sub), Value::Object(obj)) => render_record(sub, obj, ts),
        _ if f.ty == FieldType::Timestamp && ts != TimestampFormat::Int64 => {
            let micros = v.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            match ts {
                TimestampFormat::Iso8601 => json!(format_timestamp_iso(micros)),
                _ => json!(format_timestamp_seconds(micros)),
            }
        }
        _ => v.clone(),
    }
}
