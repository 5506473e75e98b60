// Owns the life of a job: jobs.insert for loads (job id rules, 409 for a repeated id, location,
// the per-table daily quota, injected failures), the states PENDING → RUNNING → DONE on the clock
// of `--job-delay-ms`, jobs.cancel, and the look-ups of jobs.get and jobs.list. Must not know
// HTTP: the routes parse requests, call these, and render the records.
//
// <https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs>. A job id is unique within its
// project and location; BigQuery answers a jobs.insert that repeats one with 409 `duplicate`
// "Already Exists: Job PROJECT:LOCATION.JOBID" (googleapis/google-cloud-java#2867), and the job
// that exists is unchanged: what makes client-chosen job ids exactly-once.

mod execute;
mod record;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

pub use execute::{Env, Outcome};
pub use record::{JobRecord, JobState, Projection, key, list_item, render};

use crate::error::{ApiError, ErrorProto};
use crate::load::{self, LoadConfig};
use crate::store::{JobUpdate, Store, StoreError, dataset_key, table_key};
use crate::table::next_etag;

/// BigQuery's limit of load jobs per table per day ("Load jobs per table per day: 1,500, including
/// failures", <https://cloud.google.com/bigquery/quotas#load_jobs>).
pub const DEFAULT_LOAD_JOBS_PER_TABLE_PER_DAY: u64 = 1_500;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A jobs.insert request that passed every check that does not depend on existing jobs.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub project: String,
    pub job_id: String,
    pub location: String,
    pub config: LoadConfig,
    /// `configuration` as it will be stored and answered.
    pub configuration: Value,
}

impl Prepared {
    pub fn key(&self) -> String {
        key(&self.project, &self.location, &self.job_id)
    }
}

pub fn duplicate(project: &str, location: &str, job_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "duplicate",
        format!("Already Exists: Job {project}:{location}.{job_id}"),
    )
}

/// "Not found: Job p:US.id" (or "p:id" when asked without a location, as observed in
/// googleapis/google-cloud-dotnet#6332).
pub fn not_found(project: &str, location: Option<&str>, job_id: &str) -> ApiError {
    let name = match location {
        Some(loc) => format!("{project}:{loc}.{job_id}"),
        None => format!("{project}:{job_id}"),
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        "notFound",
        format!("Not found: Job {name}"),
    )
}

/// Multi-region names are upper case in BigQuery's answers ("US", "EU"), regions lower case.
pub fn normalize_location(location: &str) -> String {
    let lower = location.trim().to_ascii_lowercase();
    match lower.as_str() {
        "us" | "eu" => lower.to_ascii_uppercase(),
        _ => lower,
    }
}

/// Job ids: "letters (a-z, A-Z), numbers (0-9), underscores (_), or dashes (-). The maximum
/// length is 1,024 characters" (JobReference.jobId).
fn check_job_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "Invalid job ID \"{id}\". Job IDs must be alphanumeric (plus underscores and dashes) and must be at most 1024 characters long."
    )))
}

/// `len` random letters and digits (job ids BigQuery chooses, upload session ids).
pub fn random_token(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

/// A server-chosen job id ("job_" and 27 URL-safe characters, like BigQuery's), for a
/// jobs.insert without one.
fn new_job_id() -> String {
    format!("job_{}", random_token(27))
}

/// Members of `configuration` besides `load`: accepted, stored and answered, with no effect.
const CONFIGURATION_EXTRAS: &[&str] = &["jobType", "labels", "jobTimeoutMs"];

/// Checks a jobs.insert body for a load job whose data is uploaded with it. `project` is the
/// project of the request path.
pub fn prepare(store: &Store, project: &str, resource: &Value) -> Result<Prepared, ApiError> {
    let Some(resource) = resource.as_object() else {
        return Err(ApiError::invalid(
            "Invalid JSON payload received. Expected a Job object.",
        ));
    };
    let reference = resource.get("jobReference").cloned().unwrap_or(json!({}));
    let text = |k: &str| {
        reference
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(p) = text("projectId").filter(|p| *p != project) {
        return Err(ApiError::invalid(format!(
            "jobReference.projectId \"{p}\" is not the project of the request, \"{project}\""
        )));
    }
    let job_id = match text("jobId") {
        Some(id) => {
            check_job_id(id)?;
            id.to_string()
        }
        None => new_job_id(),
    };
    let mut configuration = resource.get("configuration").cloned().unwrap_or(json!({}));
    let Some(members) = configuration.as_object() else {
        return Err(ApiError::invalid(
            "Required parameter is missing: configuration",
        ));
    };
    for (name, value) in members {
        let ok = name == "load"
            || CONFIGURATION_EXTRAS.contains(&name.as_str())
            || (name == "dryRun" && value.as_bool() != Some(true));
        if !ok {
            return Err(ApiError::invalid(format!(
                "bigquery-emulator runs load jobs only: configuration.{name} is not implemented"
            )));
        }
    }
    if let Some(t) = members
        .get("jobType")
        .and_then(Value::as_str)
        .filter(|t| *t != "LOAD")
    {
        return Err(ApiError::invalid(format!(
            "bigquery-emulator runs load jobs only: jobType {t} is not implemented"
        )));
    }
    let Some(load_json) = members.get("load") else {
        return Err(ApiError::invalid(
            "bigquery-emulator runs load jobs only: configuration.load is missing",
        ));
    };
    let config = load::config::parse(load_json, project).map_err(|e| ApiError::invalid(e.0))?;
    let location = match text("location") {
        Some(loc) => normalize_location(loc),
        // A job runs where its destination's dataset is.
        None => store
            .dataset(&dataset_key(
                &config.destination.project,
                &config.destination.dataset,
            ))
            .and_then(|d| {
                d.get("location")
                    .and_then(Value::as_str)
                    .map(normalize_location)
            })
            .unwrap_or_else(|| "US".to_string()),
    };
    configuration["jobType"] = json!("LOAD");
    configuration["load"]["destinationTable"]["projectId"] = json!(config.destination.project);
    Ok(Prepared {
        project: project.to_string(),
        job_id,
        location,
        config,
        configuration,
    })
}

/// What jobs.insert needs besides the request.
pub struct InsertOptions {
    pub now_ms: i64,
    /// PENDING for the first half, RUNNING for the second, then DONE.
    pub delay: Duration,
    /// Fault injection: the job will fail with a backendError.
    pub inject_failure: bool,
    /// Load jobs per table per day before `quotaExceeded`.
    pub jobs_per_table_per_day: u64,
}

fn corrupt(key: &str, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

pub fn record_of(key: &str, value: &Value) -> Result<JobRecord, StoreError> {
    serde_json::from_value(value.clone()).map_err(|e| corrupt(key, &e))
}

fn value_of(record: &JobRecord) -> Result<Value, StoreError> {
    serde_json::to_value(record).map_err(|e| corrupt(&record.key(), &e))
}

/// Load jobs created for `destination_key` in the last day.
fn recent_loads(store: &Store, destination_key: &str, now_ms: i64) -> usize {
    store
        .jobs()
        .iter()
        .filter_map(|(k, v)| record_of(k, v).ok())
        .filter(|r| r.destination_key == destination_key && r.creation_ms > now_ms - DAY_MS)
        .count()
}

/// Creates the job (PENDING) with its data; 409 when its id exists in its project and location.
/// Over the table's daily quota the job is created already DONE with `quotaExceeded`, as
/// BigQuery reports it (tidb2dw#91: location "load_job_per_table.long").
pub fn insert(
    store: &Store,
    prepared: Prepared,
    data: &[u8],
    opts: &InsertOptions,
) -> Result<JobRecord, ApiError> {
    let key = prepared.key();
    let dest = &prepared.config.destination;
    let destination_key = table_key(&dest.project, &dest.dataset, &dest.table);
    let now = opts.now_ms;
    let delay = i64::try_from(opts.delay.as_millis()).unwrap_or(i64::MAX / 2);
    let mut record = JobRecord {
        project: prepared.project,
        location: prepared.location,
        job_id: prepared.job_id,
        configuration: prepared.configuration,
        destination_key: destination_key.clone(),
        state: JobState::Pending,
        creation_ms: now,
        start_at_ms: now.saturating_add(delay / 2),
        end_at_ms: now.saturating_add(delay),
        start_ms: None,
        end_ms: None,
        error_result: None,
        errors: Vec::new(),
        load: None,
        input_bytes: data.len() as u64,
        injected_failure: opts.inject_failure,
        etag: next_etag(&key, "", &now.to_string()),
    };
    let over_quota =
        recent_loads(store, &destination_key, now) as u64 >= opts.jobs_per_table_per_day;
    let stored_data = if over_quota {
        let e = ErrorProto::new(
            "quotaExceeded",
            "Quota exceeded: Your table exceeded quota for imports or query appends per table. For more information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
        )
        .at("load_job_per_table.long");
        record.fail(e.clone(), vec![e], now);
        None
    } else {
        Some(data)
    };
    if !store.insert_job(&key, value_of(&record)?, stored_data)? {
        return Err(duplicate(&record.project, &record.location, &record.job_id));
    }
    Ok(record)
}

/// Where a job is after `advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not done: call `advance` again at this time (ms since the epoch).
    WaitUntil(i64),
    /// Done (or gone); `Some` when this call finished it.
    Finished(Option<Outcome>),
}

/// Makes the transitions that are due at `now_ms` (RUNNING, then the load itself).
pub fn advance(env: &Env<'_>, key: &str, now_ms: i64) -> Result<Step, StoreError> {
    let Some(value) = env.store.job(key) else {
        return Ok(Step::Finished(None));
    };
    let record = record_of(key, &value)?;
    match record.state {
        JobState::Done => Ok(Step::Finished(None)),
        JobState::Pending if now_ms < record.start_at_ms => Ok(Step::WaitUntil(record.start_at_ms)),
        JobState::Pending => {
            env.store.update_job_with(key, |current| {
                let mut r = record_of(key, current)?;
                if r.state != JobState::Pending {
                    return Ok::<_, StoreError>(None);
                }
                r.state = JobState::Running;
                r.start_ms = Some(now_ms);
                r.touch(now_ms);
                Ok(Some(JobUpdate {
                    job: value_of(&r)?,
                    drop_data: false,
                }))
            })?;
            advance(env, key, now_ms)
        }
        JobState::Running if now_ms < record.end_at_ms => Ok(Step::WaitUntil(record.end_at_ms)),
        JobState::Running => Ok(Step::Finished(execute::complete(env, key, now_ms)?)),
    }
}

/// jobs.cancel: a job that is not done stops at once, DONE with BigQuery's `stopped` error and
/// nothing loaded; a done job is left as it is. Returns the job afterwards.
pub fn cancel(store: &Store, key: &str, now_ms: i64) -> Result<Option<JobRecord>, StoreError> {
    let after = store.update_job_with(key, |current| {
        let mut r = record_of(key, current)?;
        if r.state == JobState::Done {
            return Ok::<_, StoreError>(None);
        }
        let e = ErrorProto::new(
            "stopped",
            "Job execution was cancelled: User requested cancellation",
        );
        r.fail(e.clone(), vec![e], now_ms);
        Ok(Some(JobUpdate {
            job: value_of(&r)?,
            drop_data: true,
        }))
    })?;
    after.map(|v| record_of(key, &v)).transpose()
}

/// The job `job_id` of `project`: in `location` when given, else in whichever location has it.
pub fn find(
    store: &Store,
    project: &str,
    location: Option<&str>,
    job_id: &str,
) -> Result<Option<JobRecord>, StoreError> {
    if let Some(loc) = location {
        let k = key(project, &normalize_location(loc), job_id);
        return store.job(&k).map(|v| record_of(&k, &v)).transpose();
    }
    let prefix = format!("{project}/");
    let suffix = format!("/{job_id}");
    store
        .jobs()
        .into_iter()
        .find(|(k, _)| {
            k.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(&suffix))
                .is_some_and(|loc| !loc.contains('/'))
        })
        .map(|(k, v)| record_of(&k, &v))
        .transpose()
}

/// Every job of `project`, newest first ("sorted in reverse chronological order, by job creation
/// time", jobs.list).
pub fn list(store: &Store, project: &str) -> Result<Vec<JobRecord>, StoreError> {
    let prefix = format!("{project}/");
    let mut jobs = store
        .jobs()
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| record_of(&k, &v))
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by(|a, b| {
        b.creation_ms
            .cmp(&a.creation_ms)
            .then_with(|| b.job_id.cmp(&a.job_id))
    });
    Ok(jobs)
}

/// Keys of the jobs that are not done: after a restart they carry on from where they were.
pub fn unfinished(store: &Store) -> Vec<String> {
    store
        .jobs()
        .into_iter()
        .filter(|(k, v)| record_of(k, v).is_ok_and(|r| r.state != JobState::Done))
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_follow_bigquerys_rules() {
        assert!(check_job_id("bqforward_abc-123").is_ok());
        for bad in ["", "has space", "dot.ted", &"x".repeat(1025)] {
            assert!(check_job_id(bad).is_err(), "{bad:?}");
        }
        let generated = new_job_id();
        assert_eq!(generated.len(), 31);
        assert!(check_job_id(&generated).is_ok());
        assert_ne!(generated, new_job_id());
    }

    #[test]
    fn locations_are_normalized_as_bigquery_names_them() {
        assert_eq!(normalize_location("us"), "US");
        assert_eq!(normalize_location("EU"), "EU");
        assert_eq!(normalize_location("Asia-Northeast1"), "asia-northeast1");
    }
}
