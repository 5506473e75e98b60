// Owns the job record (what the store keeps of a job) and the Job resource BigQuery answers for it
// (`kind`, `id`, `selfLink`, `jobReference`, `configuration`, `statistics`, `status`, …).
// Must not change job state; `jobs` does.
//
// <https://cloud.google.com/bigquery/docs/reference/rest/v2/Job>; shapes checked against real
// answers quoted in keboola storage-api tests (a failed CSV load job, whole).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ErrorProto;

/// The e-mail address jobs are run as: the emulator accepts any credentials and knows no users.
pub const USER_EMAIL: &str = "emulator@bigquery-emulator.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobState {
    Pending,
    Running,
    Done,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Done => "DONE",
        }
    }

    /// The `stateFilter` value of jobs.list that selects this state.
    pub fn filter_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
        }
    }
}

/// `statistics.load` of a successful load job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadStats {
    pub input_files: u64,
    pub input_file_bytes: u64,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub bad_records: u64,
}

/// Everything the emulator keeps of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub project: String,
    pub location: String,
    pub job_id: String,
    /// `configuration` as the client sent it, with `jobType` and the destination's `projectId`
    /// filled in.
    pub configuration: Value,
    /// Store key of the destination table ("project/dataset/table").
    pub destination_key: String,
    pub state: JobState,
    pub creation_ms: i64,
    /// When the job turns RUNNING and when it finishes (`--job-delay-ms` after creation).
    pub start_at_ms: i64,
    pub end_at_ms: i64,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub error_result: Option<ErrorProto>,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
    pub load: Option<LoadStats>,
    /// Size of the uploaded data.
    pub input_bytes: u64,
    /// Fault injection: the job finishes with a backendError instead of loading.
    #[serde(default)]
    pub injected_failure: bool,
    pub etag: String,
}

impl JobRecord {
    /// The store key: job ids are unique per project and location.
    pub fn key(&self) -> String {
        key(&self.project, &self.location, &self.job_id)
    }

    /// Marks the job done with an error (nothing loaded).
    pub fn fail(&mut self, error_result: ErrorProto, errors: Vec<ErrorProto>, now_ms: i64) {
        self.error_result = Some(error_result);
        self.finish(errors, now_ms);
    }

    /// Marks the job done after it loaded, with the errors of the rows it skipped.
    pub fn succeed(&mut self, stats: LoadStats, errors: Vec<ErrorProto>, now_ms: i64) {
        self.load = Some(stats);
        self.finish(errors, now_ms);
    }

    fn finish(&mut self, errors: Vec<ErrorProto>, now_ms: i64) {
        self.state = JobState::Done;
        self.start_ms.get_or_insert(now_ms);
        self.end_ms = Some(now_ms);
        self.errors = errors;
        self.touch(now_ms);
    }

    /// A new etag after a change, as for tables (16 bytes in base64).
    pub fn touch(&mut self, now_ms: i64) {
        self.etag = crate::table::next_etag(&self.key(), &self.etag, &now_ms.to_string());
    }
}

pub fn key(project: &str, location: &str, job_id: &str) -> String {
    format!("{project}/{location}/{job_id}")
}

/// How much of the resource jobs.list shows (`projection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Full,
    /// "Does not include the job configuration" (nor status, user_email: full-projection-only).
    Minimal,
}

fn ms(v: i64) -> Value {
    json!(v.to_string())
}

fn statistics(r: &JobRecord) -> Value {
    let mut stats = Map::new();
    stats.insert("creationTime".into(), ms(r.creation_ms));
    if let Some(start) = r.start_ms {
        stats.insert("startTime".into(), ms(start));
    }
    if let Some(end) = r.end_ms {
        stats.insert("endTime".into(), ms(end));
    }
    if let Some(load) = r.load {
        // int64 members are strings in BigQuery's JSON.
        stats.insert(
            "load".into(),
            json!({
                "inputFiles": load.input_files.to_string(),
                "inputFileBytes": load.input_file_bytes.to_string(),
                "outputRows": load.output_rows.to_string(),
                "outputBytes": load.output_bytes.to_string(),
                "badRecords": load.bad_records.to_string(),
            }),
        );
    }
    Value::Object(stats)
}

fn status(r: &JobRecord) -> Value {
    let mut status = json!({"state": r.state.name()});
    if let Some(e) = &r.error_result {
        status["errorResult"] = json!(e);
    }
    if !r.errors.is_empty() {
        status["errors"] = json!(r.errors);
    }
    status
}

fn reference(r: &JobRecord) -> Value {
    json!({"projectId": r.project, "jobId": r.job_id, "location": r.location})
}

/// The Job resource, as jobs.insert, jobs.get and jobs.cancel answer it. `api_base` is
/// `http://HOST/bigquery/v2`.
pub fn render(r: &JobRecord, api_base: &str) -> Value {
    json!({
        "kind": "bigquery#job",
        "etag": r.etag,
        "id": format!("{}:{}.{}", r.project, r.location, r.job_id),
        "selfLink": format!(
            "{api_base}/projects/{}/jobs/{}?location={}",
            r.project, r.job_id, r.location
        ),
        "user_email": USER_EMAIL,
        "principal_subject": format!("user:{USER_EMAIL}"),
        "configuration": r.configuration,
        "jobReference": reference(r),
        "statistics": statistics(r),
        "status": status(r),
        "jobCreationReason": {"code": "REQUESTED"},
    })
}

/// One entry of jobs.list (`JobList.jobs[]`).
pub fn list_item(r: &JobRecord, projection: Projection) -> Value {
    let mut item = json!({
        "kind": "bigquery#job",
        "id": format!("{}:{}.{}", r.project, r.location, r.job_id),
        "jobReference": reference(r),
        "state": r.state.name(),
        "statistics": statistics(r),
    });
    if let Some(e) = &r.error_result {
        item["errorResult"] = json!(e);
    }
    if projection == Projection::Full {
        item["configuration"] = r.configuration.clone();
        item["status"] = status(r);
        item["user_email"] = json!(USER_EMAIL);
        item["principal_subject"] = json!(format!("user:{USER_EMAIL}"));
    }
    item
}
