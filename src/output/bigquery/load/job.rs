//! A load job as data: its id (derived from the chunk and the destination, so a chunk sent
//! again after a crash or a lost answer finds its job instead of loading twice), the Job
//! resource jobs.insert takes, and what a Job resource jobs.get answers means. Pure; no I/O.
//! Reference: <https://cloud.google.com/bigquery/docs/reference/rest/v2/Job>.

use super::super::destination::TableKey;
use super::super::schema::Schema;
use crate::buffer::ChunkId;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// `errorResult.reason`s after which the chunk is loaded again (under the next job id):
/// fluent-plugin-bigquery's RETRYABLE_ERROR_REASON, plus the daily load quota and a cancelled
/// job (`stopped`: nothing was loaded), and `notFound` (the next attempt's tables.get tells a
/// missing table, which is dead-lettered, from a missing dataset, which waits).
const RETRYABLE: &[&str] = &[
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "tableUnavailable",
    "quotaExceeded",
    "timeout",
    "stopped",
    "notFound",
];

/// How many of a failed job's `errors` go into the dead letters' message.
const ERRORS_KEPT: usize = 5;

/// `bqforward_<40 hex digits>_<generation>`: the digits are SHA-256 of the chunk id and the
/// destination; the generation counts jobs of this chunk that failed transiently (BigQuery
/// keeps a failed job's id, so a retry needs a new one).
pub fn job_id(chunk: &ChunkId, key: &TableKey, generation: u32) -> String {
    let mut hash = Sha256::new();
    hash.update(chunk.hex().as_bytes());
    for part in [&key.project, &key.dataset, &key.table] {
        hash.update(b"\n");
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("bqforward_{hex}_{generation}")
}

/// The parts of `configuration.load` that come from the output's parameters.
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    pub max_bad_records: u32,
    pub ignore_unknown_values: bool,
    /// `ALLOW_FIELD_ADDITION`, `ALLOW_FIELD_RELAXATION`.
    pub schema_update_options: Vec<String>,
    /// jobReference.location, when configured (`location`); else the table's.
    pub location: Option<String>,
}

impl LoadSettings {
    /// ALLOW_FIELD_ADDITION: new fields become columns of the job's schema.
    pub fn adds(&self) -> bool {
        self.schema_update_options
            .iter()
            .any(|o| o == "ALLOW_FIELD_ADDITION")
    }

    /// ALLOW_FIELD_RELAXATION: REQUIRED columns rows lack become NULLABLE.
    pub fn relaxes(&self) -> bool {
        self.schema_update_options
            .iter()
            .any(|o| o == "ALLOW_FIELD_RELAXATION")
    }
}

/// When the table does not exist and `auto_create_table` is on: the job creates it.
pub struct Create<'a> {
    pub schema: &'a Schema,
    /// Partitioning and clustering, as tables.insert takes them.
    pub extra: &'a Map<String, Value>,
}

/// The Job resource for one chunk's NDJSON data, as fluent-plugin-bigquery builds it
/// (writer.rb `create_load_job`): WRITE_APPEND; CREATE_NEVER for an existing table, else
/// the schema, partitioning and clustering with CREATE_IF_NEEDED. `grown`: schema evolution's
/// fields for an existing table (its own, as tables.get gave them, and the new columns),
/// which BigQuery applies when the job commits as `schemaUpdateOptions` allow. No
/// `autodetect`: the columns and their types are bqforward's (`evolve`), not a sample's.
pub fn resource(
    key: &TableKey,
    job_id: &str,
    location: Option<&str>,
    settings: &LoadSettings,
    create: Option<Create<'_>>,
    grown: Option<&[Value]>,
) -> Value {
    let mut load = json!({
        "destinationTable": {
            "projectId": key.project,
            "datasetId": key.dataset,
            "tableId": key.table,
        },
        "sourceFormat": "NEWLINE_DELIMITED_JSON",
        "writeDisposition": "WRITE_APPEND",
        "ignoreUnknownValues": settings.ignore_unknown_values,
        "maxBadRecords": settings.max_bad_records,
    });
    match create {
        Some(create) => {
            load["createDisposition"] = "CREATE_IF_NEEDED".into();
            load["schema"] = create.schema.to_json();
            if let Some(partitioning) = create.extra.get("timePartitioning") {
                load["timePartitioning"] = partitioning.clone();
            }
            if let Some(clustering) = create.extra.get("clustering") {
                load["clustering"] = clustering.clone();
            }
        }
        None => {
            load["createDisposition"] = "CREATE_NEVER".into();
            if let Some(fields) = grown {
                load["schema"] = json!({ "fields": fields });
            }
        }
    }
    if !settings.schema_update_options.is_empty() {
        load["schemaUpdateOptions"] = json!(settings.schema_update_options);
    }
    let mut reference = json!({"projectId": key.project, "jobId": job_id});
    if let Some(location) = location {
        reference["location"] = location.into();
    }
    json!({
        "jobReference": reference,
        "configuration": {"load": load},
    })
}

/// What a Job resource says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// PENDING or RUNNING.
    Running,
    /// DONE without errorResult: the rows are in the table (less `bad` skipped ones).
    Loaded { rows: u64, bad: u64 },
    /// DONE with errorResult: nothing was loaded.
    Failed(JobError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// Load again under a new job id (transient), or dead-letter the chunk.
    pub retry: bool,
    pub reason: String,
    pub location: String,
    /// errorResult's message, then the first of `errors` that say something else.
    pub message: String,
}

pub fn state(job: &Value) -> JobState {
    let status = &job["status"];
    if status["state"].as_str() != Some("DONE") {
        return JobState::Running;
    }
    let count = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or(v.as_u64())
            .unwrap_or(0)
    };
    let Some(error) = status.get("errorResult").filter(|e| e.is_object()) else {
        let load = &job["statistics"]["load"];
        return JobState::Loaded {
            rows: count(&load["outputRows"]),
            bad: count(&load["badRecords"]),
        };
    };
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let reason = text(error, "reason");
    let mut message = text(error, "message");
    let mut kept = 0;
    for e in status["errors"].as_array().into_iter().flatten() {
        let m = text(e, "message");
        if m.is_empty() || m == text(error, "message") || kept == ERRORS_KEPT {
            continue;
        }
        kept += 1;
        message.push_str(" | ");
        let location = text(e, "location");
        if !location.is_empty() {
            message.push_str(&location);
            message.push_str(": ");
        }
        message.push_str(&m);
    }
    JobState::Failed(JobError {
        retry: RETRYABLE.contains(&reason.as_str()),
        location: text(error, "location"),
        reason,
        message,
    })
}

/// The job's location as BigQuery reports it (jobs.get needs it outside US and EU).
pub fn location(job: &Value) -> Option<String> {
    job["jobReference"]["location"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(table: &str) -> TableKey {
        TableKey {
            project: "p".into(),
            dataset: "d".into(),
            table: table.into(),
            template_suffix: None,
            schema_path: None,
            schema_table: None,
        }
    }

    #[test]
    fn job_ids_are_stable_per_chunk_destination_and_generation() {
        let chunk = ChunkId([7; 16]);
        let a = job_id(&chunk, &key("t"), 0);
        assert_eq!(a, job_id(&chunk, &key("t"), 0));
        assert!(a.starts_with("bqforward_") && a.ends_with("_0"));
        assert_eq!(a.len(), "bqforward_".len() + 40 + 2);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_ne!(a, job_id(&chunk, &key("t"), 1));
        assert_ne!(a, job_id(&chunk, &key("u"), 0));
        assert_ne!(a, job_id(&ChunkId([8; 16]), &key("t"), 0));
    }

    #[test]
    fn resource_creates_only_a_missing_table() {
        let schema = Schema::from_json(&json!([{"name": "a", "type": "INTEGER"}])).unwrap();
        let mut extra = Map::new();
        extra.insert("timePartitioning".into(), json!({"type": "DAY"}));
        let settings = LoadSettings {
            max_bad_records: 3,
            ..LoadSettings::default()
        };
        let r = resource(
            &key("t$20261202"),
            "j",
            Some("EU"),
            &settings,
            Some(Create {
                schema: &schema,
                extra: &extra,
            }),
            None,
        );
        let load = &r["configuration"]["load"];
        assert_eq!(
            r["jobReference"],
            json!({"projectId": "p", "jobId": "j", "location": "EU"})
        );
        assert_eq!(load["destinationTable"]["tableId"], "t$20261202");
        assert_eq!(load["createDisposition"], "CREATE_IF_NEEDED");
        assert_eq!(load["schema"]["fields"][0]["name"], "a");
        assert_eq!(load["timePartitioning"]["type"], "DAY");
        assert_eq!(load["maxBadRecords"], 3);
        assert_eq!(load["sourceFormat"], "NEWLINE_DELIMITED_JSON");
        assert_eq!(load["writeDisposition"], "WRITE_APPEND");

        let settings = LoadSettings {
            schema_update_options: vec!["ALLOW_FIELD_ADDITION".into()],
            ..LoadSettings::default()
        };
        let r = resource(&key("t"), "j", None, &settings, None, None);
        let load = &r["configuration"]["load"];
        assert_eq!(load["createDisposition"], "CREATE_NEVER");
        assert!(load.get("schema").is_none());
        assert!(load.get("autodetect").is_none());
        assert_eq!(load["schemaUpdateOptions"], json!(["ALLOW_FIELD_ADDITION"]));
        assert!(r["jobReference"].get("location").is_none());

        // Schema evolution: the table's fields as given, and the new column.
        let grown = [
            json!({"name": "a", "type": "INTEGER", "description": "kept"}),
            json!({"name": "b", "type": "STRING", "mode": "NULLABLE"}),
        ];
        let r = resource(&key("t"), "j", None, &settings, None, Some(&grown));
        let load = &r["configuration"]["load"];
        assert_eq!(load["createDisposition"], "CREATE_NEVER");
        assert_eq!(load["schema"]["fields"], json!(grown));
        assert!(load.get("autodetect").is_none());
        assert_eq!(load["schemaUpdateOptions"], json!(["ALLOW_FIELD_ADDITION"]));
    }

    #[test]
    fn job_states_as_bigquery_reports_them() {
        assert_eq!(
            state(&json!({"status": {"state": "RUNNING"}})),
            JobState::Running
        );
        assert_eq!(
            state(&json!({"status": {"state": "DONE"},
                "statistics": {"load": {"outputRows": "12", "badRecords": "1"}}})),
            JobState::Loaded { rows: 12, bad: 1 }
        );
        let failed = state(&json!({"status": {"state": "DONE",
        "errorResult": {"reason": "invalid", "message": "too many errors"},
        "errors": [
            {"reason": "invalid", "message": "too many errors"},
            {"reason": "invalid", "location": "file-00000000", "message": "no such field: x."}
        ]}}));
        let JobState::Failed(e) = failed else {
            panic!("{failed:?}")
        };
        assert!(!e.retry);
        assert_eq!(e.reason, "invalid");
        assert_eq!(
            e.message,
            "too many errors | file-00000000: no such field: x."
        );
        for reason in ["backendError", "quotaExceeded", "notFound", "stopped"] {
            let s = state(&json!({"status": {"state": "DONE",
                "errorResult": {"reason": reason, "message": "m"}}}));
            assert!(
                matches!(s, JobState::Failed(JobError { retry: true, .. })),
                "{reason}"
            );
        }
    }
}
