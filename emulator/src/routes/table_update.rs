// Owns tables.patch and tables.update: the etag precondition (`If-Match`), patch (merge) versus
// update (replace) semantics, and which schema changes are allowed. Must not validate rows.
//
// <https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/patch>: "The update method
// replaces the entire Table resource, whereas the patch method only replaces fields that are
// provided in the submitted Table resource." Schema changes follow
// <https://cloud.google.com/bigquery/docs/managing-table-schemas> (add NULLABLE or REPEATED
// columns, also inside records; relax REQUIRED to NULLABLE) with the errors of
// <https://cloud.google.com/bigquery/docs/troubleshoot-schemas>.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::IF_MATCH;
use serde_json::{Map, Value, json};

use super::params;
use super::tables::{etag_of, lookup, parse_json, render};
use super::{ApiBase, App, AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::schema::{Schema, check_additive, check_limits};
use crate::store::{TableInfo, schema_of, table_key};
use crate::table::{check_layout, next_etag};

/// Attributes the server sets; a request that carries them is not refused, they are ignored.
const OUTPUT_ONLY: &[&str] = &[
    "kind",
    "etag",
    "id",
    "selfLink",
    "tableReference",
    "creationTime",
    "lastModifiedTime",
    "numRows",
    "numBytes",
    "numLongTermBytes",
    "numPhysicalBytes",
    "numTimeTravelPhysicalBytes",
    "numTotalLogicalBytes",
    "numActiveLogicalBytes",
    "numLongTermLogicalBytes",
    "numTotalPhysicalBytes",
    "numActivePhysicalBytes",
    "numLongTermPhysicalBytes",
    "numPartitions",
    "streamingBuffer",
    "type",
    "location",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// tables.patch: given attributes replace, nested objects merge, `null` removes.
    Merge,
    /// tables.update: the given resource replaces every attribute a caller may set.
    Replace,
}

/// One tables.patch / tables.update request, as the handler received it.
struct Request {
    project: String,
    dataset: String,
    table: String,
    query: Option<String>,
    if_match: Option<String>,
    body: Bytes,
}

pub async fn patch(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: ApiBase,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = Request::new(project, dataset, table, query, &headers, body);
    modify(app, req, How::Merge)
        .await
        .map(|info| Json(render(&info, &base)))
}

pub async fn update(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: ApiBase,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = Request::new(project, dataset, table, query, &headers, body);
    modify(app, req, How::Replace)
        .await
        .map(|info| Json(render(&info, &base)))
}

impl Request {
    fn new(
        project: String,
        dataset: String,
        table: String,
        query: Option<String>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Self {
        // A header that is not text matches no etag.
        let if_match = headers
            .get(IF_MATCH)
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
        Self {
            project,
            dataset,
            table,
            query,
            if_match,
            body,
        }
    }
}

async fn modify(app: AppState, req: Request, how: How) -> Result<TableInfo, ApiError> {
    let q = params::parse(req.query.as_deref(), &params::TABLES_UPDATE)?;
    if q.bool("autodetect_schema") == Some(true) {
        return Err(ApiError::invalid(
            "autodetect_schema applies to external tables, which bigquery-emulator does not have",
        ));
    }
    let Value::Object(body) = parse_json(&req.body)? else {
        return Err(ApiError::invalid(
            "Invalid JSON payload received. Expected an object.",
        ));
    };
    let (project, dataset, table) = (req.project, req.dataset, req.table);
    lookup(&app, &project, &dataset, &table)?;
    let key = table_key(&project, &dataset, &table);
    let name = format!("{project}:{dataset}.{table}");
    let if_match = req.if_match;
    let updated = blocking(&app, move |a| {
        a.store.update_table_with(&key, |current| {
            if let Some(wanted) = &if_match
                && !etag_matches(wanted, &etag_of(&key, current))
            {
                return Err(ApiError::precondition_failed());
            }
            let (resource, schema) = changed(current, body, how, &name, &key)?;
            note_schema_change(a, &key, current, &schema);
            Ok((resource, schema))
        })
    })
    .await?;
    updated.ok_or_else(|| ApiError::table_not_found(&project, &dataset, &table))
}

/// Tells insertAll's schema view about a change. Called under the store's writer lock before
/// the new schema is visible anywhere, so no insert can see it before the delay has passed.
fn note_schema_change(a: &App, key: &str, current: &TableInfo, schema: &Schema) {
    if *schema != *current.schema {
        a.propagation.changed(
            key,
            current.schema.clone(),
            Arc::new(schema.clone()),
            a.faults.schema_update_delay(),
        );
    }
}

/// `If-Match` against the table's etag: a list of etags, quoted or not, weak or not, or `*`.
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|t| t == "*" || t == etag)
}

/// The resource and schema after the request, checked as BigQuery checks them.
fn changed(
    current: &TableInfo,
    body: Map<String, Value>,
    how: How,
    name: &str,
    key: &str,
) -> Result<(Value, Schema), ApiError> {
    let mut resource = match how {
        How::Merge => current.resource.clone(),
        How::Replace => {
            // The schema stays when the new resource has none: a table cannot lose its columns
            // this way (omitting them is "Field … is missing in new schema").
            let keep =
                |k: &str| OUTPUT_ONLY.contains(&k) || (k == "schema" && !body.contains_key(k));
            let kept: Map<String, Value> = current
                .resource
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(kept)
        }
    };
    let changes: Map<String, Value> = body
        .into_iter()
        .filter(|(k, _)| !OUTPUT_ONLY.contains(&k.as_str()))
        .collect();
    merge_patch(&mut resource, Value::Object(changes));
    let schema = schema_of(&resource).map_err(ApiError::invalid)?;
    check_limits(&schema).map_err(|e| ApiError::invalid(e.0))?;
    check_additive(&current.schema, &schema, name).map_err(|e| ApiError::invalid(e.0))?;
    check_layout(&resource, &schema).map_err(|e| ApiError::invalid(e.0))?;
    let now = now_ms().to_string();
    resource["etag"] = json!(next_etag(key, &etag_of(key, current), &now));
    resource["lastModifiedTime"] = json!(now);
    Ok((resource, schema))
}

/// Google's patch semantics (as JSON merge patch, RFC 7396): objects merge member by member,
/// `null` removes a member (how a label is deleted), anything else replaces, arrays whole.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(members) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in members {
            if v.is_null() {
                t.remove(&k);
            } else {
                merge_patch(t.entry(k).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_merges_objects_removes_nulls_and_replaces_arrays() {
        let mut r = json!({"labels": {"a": "1", "b": "2"}, "description": "d",
                           "schema": {"fields": [{"name": "x", "type": "STRING"}]}});
        merge_patch(
            &mut r,
            json!({"labels": {"a": null, "c": "3"},
                   "schema": {"fields": [{"name": "y", "type": "STRING"}]}}),
        );
        assert_eq!(
            r,
            json!({"labels": {"b": "2", "c": "3"}, "description": "d",
                   "schema": {"fields": [{"name": "y", "type": "STRING"}]}})
        );
    }

    #[test]
    fn if_match_takes_lists_quotes_weak_tags_and_star() {
        assert!(etag_matches("abc==", "abc=="));
        assert!(etag_matches("\"abc==\"", "abc=="));
        assert!(etag_matches("W/\"x\", \"abc==\"", "abc=="));
        assert!(etag_matches("*", "abc=="));
        assert!(!etag_matches("abd==", "abc=="));
        assert!(!etag_matches("\u{0}", "abc=="));
    }
}
