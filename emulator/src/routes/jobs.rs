// Owns the jobs endpoints under `/bigquery/v2/projects/{p}/jobs` (jobs.insert on the metadata
// URI, jobs.get, jobs.list, jobs.cancel), creating a load job for the upload endpoints, and the
// task that moves each job through its states on time. Must not hold job rules: `jobs` has them.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::params;
use super::tables::parse_json;
use super::{ApiBase, App, AppState, blocking, now_ms};
use crate::error::ApiError;
use crate::jobs::{
    self, Env, InsertOptions, JobRecord, JobState, Outcome, Prepared, Projection, Step,
};
use crate::stats::Stats;

fn env(a: &App) -> Env<'_> {
    Env {
        store: &a.store,
        propagation: &a.propagation,
        schema_update_delay: a.faults.schema_update_delay(),
        limits: &a.load_limits,
    }
}

fn count_outcome(a: &App, outcome: Option<Outcome>) {
    match outcome {
        Some(Outcome::Loaded { rows, bad_records }) => {
            Stats::add(&a.stats.jobs_succeeded, 1);
            Stats::add(&a.stats.rows_loaded, rows);
            Stats::add(&a.stats.load_bad_records, bad_records);
        }
        Some(Outcome::Failed) => Stats::add(&a.stats.jobs_failed, 1),
        None => {}
    }
}

/// One step of a job's life, at the current time; `Some(when)` if it is not done yet.
fn step(a: &App, key: &str) -> Result<Option<i64>, ApiError> {
    match jobs::advance(&env(a), key, now_ms())? {
        Step::WaitUntil(at) => Ok(Some(at)),
        Step::Finished(outcome) => {
            count_outcome(a, outcome);
            Ok(None)
        }
    }
}

/// Moves a job through PENDING → RUNNING → DONE on its schedule, in the background.
pub fn schedule(app: &AppState, key: String) {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            let k = key.clone();
            match blocking(&app, move |a| step(a, &k)).await {
                Ok(Some(at)) => {
                    let wait = u64::try_from(at - now_ms()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(job = %key, error = %e, "job stopped: it stays as it is until a restart");
                    return;
                }
            }
        }
    });
}

/// Picks up the jobs a previous run left unfinished.
pub fn resume(app: &AppState) {
    for key in jobs::unfinished(&app.store) {
        tracing::info!(job = %key, "resuming job");
        schedule(app, key);
    }
}

/// jobs.insert with data (multipart, or the last chunk of a resumable upload): creates the job
/// and returns it as BigQuery answers. With `job_delay_ms` 0 the job is done before the answer.
/// Runs to its end even when the request is given up meanwhile (see `detached`): a job that is
/// in the store is always scheduled, so it finishes whatever became of its client.
pub async fn create(
    app: &AppState,
    prepared: Prepared,
    data: Vec<u8>,
) -> Result<JobRecord, ApiError> {
    let app = app.clone();
    detached(async move { create_now(&app, prepared, data).await }).await
}

/// Runs `work` in its own task and waits for it. A request's future is dropped when its client
/// disconnects before the answer (kill -9, a client timeout): work that changes the store in
/// several steps must not stop half-way then, as BigQuery carries out a jobs.insert whose data
/// it received whether or not anyone reads the answer. (A job inserted by the blocking step of
/// `create_now` but never scheduled, because the request was dropped between the two, stayed
/// PENDING until the emulator restarted.)
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

async fn create_now(
    app: &AppState,
    prepared: Prepared,
    data: Vec<u8>,
) -> Result<JobRecord, ApiError> {
    let delay = app.faults.job_delay();
    let key = prepared.key();
    let k = key.clone();
    let record = blocking(app, move |a| {
        if a.store.job(&k).is_some() {
            Stats::add(&a.stats.jobs_duplicate, 1);
            return Err(jobs::duplicate(
                &prepared.project,
                &prepared.location,
                &prepared.job_id,
            ));
        }
        let inject_failure = a.faults.draw_job_failure();
        if inject_failure {
            Stats::add(&a.stats.faults_job_failures, 1);
        }
        let opts = InsertOptions {
            now_ms: now_ms(),
            delay,
            inject_failure,
            jobs_per_table_per_day: a.load_jobs_per_table_per_day,
        };
        let record = jobs::insert(&a.store, prepared, &data, &opts).inspect_err(|e| {
            if e.status == StatusCode::CONFLICT {
                Stats::add(&a.stats.jobs_duplicate, 1);
            }
        })?;
        Stats::add(&a.stats.jobs_inserted, 1);
        if record.state == JobState::Done {
            // Refused at once (the table's daily quota).
            Stats::add(&a.stats.jobs_failed, 1);
            return Ok(record);
        }
        if delay.is_zero() {
            step(a, &k)?;
        }
        jobs::find(
            &a.store,
            &record.project,
            Some(&record.location),
            &record.job_id,
        )?
        .ok_or_else(|| ApiError::internal("job vanished"))
    })
    .await?;
    if record.state != JobState::Done {
        schedule(app, key);
    }
    Ok(record)
}

/// jobs.insert on the metadata URI. The emulator runs only loads whose data comes with the job
/// (the upload URI), so this answers 409 for an id that exists, as BigQuery would, and otherwise
/// says where to send the data.
pub async fn insert(
    State(app): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    params::parse(query.as_deref(), &params::JOBS_INSERT)?;
    let resource = parse_json(&body)?;
    let reference = resource.get("jobReference");
    let text = |k: &str| reference.and_then(|r| r.get(k)).and_then(Value::as_str);
    if let Some(id) = text("jobId")
        && let Some(existing) = jobs::find(&app.store, &project, text("location"), id)?
    {
        Stats::add(&app.stats.jobs_duplicate, 1);
        return Err(jobs::duplicate(&project, &existing.location, id));
    }
    jobs::prepare(&app.store, &project, &resource)?;
    Err(ApiError::invalid(format!(
        "bigquery-emulator loads data uploaded with the job only: send the job and its data to /upload/bigquery/v2/projects/{project}/jobs with uploadType=multipart or uploadType=resumable"
    )))
}

fn lookup(
    app: &AppState,
    project: &str,
    location: Option<&str>,
    job_id: &str,
) -> Result<JobRecord, ApiError> {
    jobs::find(&app.store, project, location, job_id)?.ok_or_else(|| {
        jobs::not_found(
            project,
            location.map(jobs::normalize_location).as_deref(),
            job_id,
        )
    })
}

/// jobs.get.
pub async fn get(
    State(app): State<AppState>,
    Path((project, job_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    base: ApiBase,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::JOBS_GET)?;
    let record = lookup(&app, &project, q.text("location"), &job_id)?;
    Ok(Json(jobs::render(&record, &base.0)))
}

/// jobs.cancel: `{"kind": "bigquery#jobCancelResponse", "job": …}`.
pub async fn cancel(
    State(app): State<AppState>,
    Path((project, job_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    base: ApiBase,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::JOBS_CANCEL)?;
    let record = lookup(&app, &project, q.text("location"), &job_id)?;
    let was_done = record.state == JobState::Done;
    let key = record.key();
    let after = blocking(&app, move |a| Ok(jobs::cancel(&a.store, &key, now_ms())?))
        .await?
        .ok_or_else(|| jobs::not_found(&project, Some(&record.location), &job_id))?;
    if !was_done
        && after
            .error_result
            .as_ref()
            .is_some_and(|e| e.reason == "stopped")
    {
        Stats::add(&app.stats.jobs_cancelled, 1);
    }
    Ok(Json(json!({
        "kind": "bigquery#jobCancelResponse",
        "job": jobs::render(&after, &base.0),
    })))
}

/// Jobs per page when maxResults is not given.
const DEFAULT_JOB_PAGE: u64 = 1_000;

/// jobs.list: newest first, filtered by `stateFilter` (repeatable), `minCreationTime`,
/// `maxCreationTime` and `parentJobId` (no job here has children), paged by offset tokens.
/// `allUsers` changes nothing: every job is the emulator's one user's.
pub async fn list(
    State(app): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = params::parse(query.as_deref(), &params::JOBS_LIST)?;
    let states: Vec<String> = q
        .texts("stateFilter")
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let projection = match q.text("projection").map(str::to_ascii_lowercase).as_deref() {
        Some("minimal") => Projection::Minimal,
        _ => Projection::Full,
    };
    let min = q.int("minCreationTime");
    let max = q.int("maxCreationTime");
    let start = match q.text("pageToken") {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("Invalid page token: {token}")))?,
        None => 0,
    };
    let page = q
        .int("maxResults")
        .map_or(DEFAULT_JOB_PAGE, |n| n.unsigned_abs()) as usize;
    let parent = q.text("parentJobId").is_some();
    let all = jobs::list(&app.store, &project)?;
    let selected: Vec<&JobRecord> = all
        .iter()
        .filter(|_| !parent)
        .filter(|r| states.is_empty() || states.iter().any(|s| s == r.state.filter_name()))
        .filter(|r| min.is_none_or(|m| r.creation_ms >= m))
        .filter(|r| max.is_none_or(|m| r.creation_ms <= m))
        .collect();
    let items: Vec<Value> = selected
        .iter()
        .skip(start)
        .take(page)
        .map(|r| jobs::list_item(r, projection))
        .collect();
    let mut body = json!({
        "kind": "bigquery#jobList",
        "etag": format!("{}", selected.len()),
    });
    if !items.is_empty() {
        body["jobs"] = Value::Array(items);
    }
    let next = start.saturating_add(page);
    if page > 0 && next < selected.len() {
        body["nextPageToken"] = json!(next.to_string());
    }
    Ok(Json(body))
}
