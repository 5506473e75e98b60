// Owns the emulator's own admin paths under `/_emulator` (faults, stats, row counts, health).
// Must not be subject to fault injection, and must not change BigQuery-visible data.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::auth::TokenPolicy;
use crate::error::ApiError;
use crate::faults::FaultConfig;
use crate::store::table_key;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/_emulator/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(
            "/_emulator/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .route("/_emulator/stats", get(get_stats))
        .route("/_emulator/auth", get(get_auth).post(set_auth))
        .route("/_emulator/stats/reset", post(reset_stats))
        .route(
            "/_emulator/projects/{project}/datasets/{dataset}/tables/{table}/count",
            get(count),
        )
}

async fn get_faults(State(app): State<AppState>) -> Json<FaultConfig> {
    Json(app.faults.config())
}

/// Replaces the fault settings; fields left out take their defaults (no fault).
async fn set_faults(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<FaultConfig>, ApiError> {
    let config: FaultConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid fault settings: {e}")))?;
    config.validate().map_err(ApiError::invalid)?;
    tracing::info!(?config, "fault settings changed");
    app.faults.set(config.clone());
    Ok(Json(config))
}

async fn clear_faults(State(app): State<AppState>) -> Json<FaultConfig> {
    app.faults.set(FaultConfig::default());
    Json(FaultConfig::default())
}

/// The bearer tokens seen so far and the accepted / refused lists.
async fn get_auth(State(app): State<AppState>) -> Json<Value> {
    Json(app.tokens.snapshot())
}

/// Replaces which tokens are accepted (`{"require": [...], "refuse": [...]}`); the tokens
/// seen are kept.
async fn set_auth(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let policy: TokenPolicy = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid token settings: {e}")))?;
    app.tokens.set(policy);
    Ok(Json(app.tokens.snapshot()))
}

async fn get_stats(State(app): State<AppState>) -> Json<Value> {
    Json(app.stats.snapshot())
}

async fn reset_stats(State(app): State<AppState>) -> Json<Value> {
    app.stats.reset();
    Json(app.stats.snapshot())
}

async fn count(
    State(app): State<AppState>,
    Path((project, dataset, table)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let info = app
        .store
        .table(&table_key(&project, &dataset, &table))
        .ok_or_else(|| ApiError::table_not_found(&project, &dataset, &table))?;
    Ok(Json(json!({"rows": info.rows})))
}
