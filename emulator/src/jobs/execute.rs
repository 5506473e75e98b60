// Owns what finishing a load job does to its destination: the dataset and location checks,
// createDisposition and writeDisposition, the table a job creates, partitioning and clustering
// that must match, then `load::read` and the one transaction that writes the rows and the job's
// final record. Must not know HTTP or parse data itself.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::record::{JobRecord, JobState, LoadStats};
use super::{record_of, value_of};
use crate::error::ErrorProto;
use crate::load::{
    self, CreateDisposition, Destination, Failed, LoadConfig, LoadLimits, TableRef,
    WriteDisposition,
};
use crate::propagation::SchemaPropagation;
use crate::schema::FieldJson;
use crate::store::{NewRow, RowsChange, Store, StoreError, TableInfo, TableWrite, dataset_key};
use crate::table::{check_layout, next_etag};

/// What finishing a job needs.
pub struct Env<'a> {
    pub store: &'a Store,
    pub propagation: &'a SchemaPropagation,
    /// How long insertAll keeps seeing the old schema after a load changed it.
    pub schema_update_delay: Duration,
    pub limits: &'a LoadLimits,
}

/// How a finished job ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Loaded { rows: u64, bad_records: u64 },
    Failed,
}

fn not_found(message: String) -> Failed {
    Failed::single(ErrorProto::new("notFound", message))
}

fn invalid(message: String) -> Failed {
    Failed::single(ErrorProto::invalid(message))
}

/// Runs a job that is due: loads its data into its table and marks it DONE, or marks it DONE with
/// the error that stopped it; one transaction either way.
pub fn complete(env: &Env<'_>, key: &str, now_ms: i64) -> Result<Option<Outcome>, StoreError> {
    let data = env.store.job_data(key)?.unwrap_or_default();
    let Some(value) = env.store.job(key) else {
        return Ok(None);
    };
    let destination_key = record_of(key, &value)?.destination_key;
    let mut outcome = None;
    env.store
        .finish_job(key, &destination_key, now_ms, |job, table| {
            let mut record = record_of(key, job)?;
            if record.state == JobState::Done {
                return Ok::<_, StoreError>(None);
            }
            match run(env, &record, &data, table, now_ms) {
                Err(failed) => {
                    record.fail(failed.error_result, failed.errors, now_ms);
                    outcome = Some(Outcome::Failed);
                    Ok(Some((value_of(&record)?, None)))
                }
                Ok((write, stats, errors)) => {
                    record.succeed(stats, errors, now_ms);
                    outcome = Some(Outcome::Loaded {
                        rows: stats.output_rows,
                        bad_records: stats.bad_records,
                    });
                    Ok(Some((value_of(&record)?, Some(write))))
                }
            }
        })?;
    Ok(outcome)
}

/// The load itself, decided against the table as it is now (under the store's writer lock).
fn run(
    env: &Env<'_>,
    record: &JobRecord,
    data: &[u8],
    table: Option<&TableInfo>,
    now_ms: i64,
) -> Result<(TableWrite, LoadStats, Vec<ErrorProto>), Failed> {
    if record.injected_failure {
        // BigQuery's retryable job failure (backendError: "retry the job").
        return Err(Failed::single(ErrorProto::new(
            "backendError",
            "Error encountered during execution. Retrying may solve the problem.",
        )));
    }
    let config = load::config::parse(&record.configuration["load"], &record.project)
        .map_err(|e| invalid(e.0))?;
    let dest = &config.destination;
    let dataset = check_dataset(env.store, dest, &record.location)?;
    check_dispositions(&config, table)?;
    if let Some(t) = table {
        check_same_layout(&t.resource, &config)?;
    }
    let destination = table.map(|t| Destination {
        fields: fields_of(&t.resource),
        schema: &t.schema,
    });
    let loaded = load::read(data, &config, destination, env.limits)?;
    let table_key = record.destination_key.as_str();
    let truncating = matches!(
        config.write,
        WriteDisposition::Truncate | WriteDisposition::TruncateData
    );
    let mut resource = match table {
        Some(t) => t.resource.clone(),
        None => new_table(dest, &dataset, &config, now_ms),
    };
    if loaded.schema_changed {
        resource["schema"] = json!({"fields": loaded.fields});
    }
    if table.is_none() || loaded.schema_changed || truncating {
        let previous = resource["etag"].as_str().unwrap_or_default().to_string();
        resource["lastModifiedTime"] = json!(now_ms.to_string());
        resource["etag"] = json!(next_etag(table_key, &previous, &now_ms.to_string()));
    }
    check_layout(&resource, &loaded.schema).map_err(|e| invalid(e.0))?;
    let info = TableInfo {
        resource: resource.clone(),
        schema: Arc::new(loaded.schema.clone()),
        rows: 0,
        bytes: 0,
        oldest_entry_ms: None,
        partitions: Default::default(),
        loaded_rows: 0,
    };
    let partition = dest.partition.as_deref();
    let rows: Vec<NewRow> = loaded
        .rows
        .into_iter()
        .map(|row| NewRow {
            partition: info.partition_for(partition, &row),
            row,
        })
        .collect();
    let change = match (truncating, &dest.partition) {
        (false, _) => RowsChange::Append,
        (true, None) => RowsChange::ReplaceAll,
        (true, Some(p)) => RowsChange::ReplacePartition(p.clone()),
    };
    let stats = LoadStats {
        input_files: 1,
        input_file_bytes: data.len() as u64,
        output_rows: rows.len() as u64,
        output_bytes: loaded.output_bytes,
        bad_records: loaded.bad_records,
    };
    // insertAll sees a changed schema only after the propagation delay, as after tables.patch;
    // told before the change is committed, so no insert can see it early.
    match table {
        Some(t) if loaded.schema_changed => env.propagation.changed(
            table_key,
            t.schema.clone(),
            Arc::new(loaded.schema.clone()),
            env.schema_update_delay,
        ),
        None => env.propagation.forget(table_key),
        Some(_) => {}
    }
    let write = TableWrite {
        key: table_key.to_string(),
        resource,
        schema: loaded.schema,
        change,
        rows,
    };
    Ok((write, stats, loaded.errors))
}

/// The destination's dataset, which must exist in the job's location.
fn check_dataset(store: &Store, dest: &TableRef, location: &str) -> Result<Value, Failed> {
    let Some(dataset) = store.dataset(&dataset_key(&dest.project, &dest.dataset)) else {
        return Err(not_found(format!(
            "Not found: Dataset {}:{}",
            dest.project, dest.dataset
        )));
    };
    let dataset_location = dataset
        .get("location")
        .and_then(Value::as_str)
        .map_or_else(|| "US".to_string(), super::normalize_location);
    if dataset_location != location {
        // As BigQuery words it for a job run elsewhere than its dataset.
        return Err(not_found(format!(
            "Not found: Dataset {}:{} was not found in location {location}",
            dest.project, dest.dataset
        )));
    }
    Ok(dataset)
}

fn check_dispositions(config: &LoadConfig, table: Option<&TableInfo>) -> Result<(), Failed> {
    let dest = &config.destination;
    match table {
        None if config.create == CreateDisposition::Never => Err(not_found(format!(
            "Not found: Table {}:{}.{}",
            dest.project, dest.dataset, dest.table
        ))),
        // "If the table already exists and contains data, a 'duplicate' error is returned in
        // the job result" (writeDisposition WRITE_EMPTY).
        Some(t) if config.write == WriteDisposition::Empty && t.rows > 0 => {
            Err(Failed::single(ErrorProto::new(
                "duplicate",
                format!(
                    "Already Exists: Table {}:{}.{}",
                    dest.project, dest.dataset, dest.table
                ),
            )))
        }
        _ => Ok(()),
    }
}

/// `interval(type:day,field:ts)`, as BigQuery describes a partitioning in its mismatch error.
fn describe_partitioning(tp: Option<&Value>) -> String {
    match tp.filter(|v| !v.is_null()) {
        None => "none".to_string(),
        Some(tp) => {
            let kind = tp
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("DAY")
                .to_ascii_lowercase();
            match tp.get("field").and_then(Value::as_str) {
                Some(f) => format!("interval(type:{kind},field:{f})"),
                None => format!("interval(type:{kind})"),
            }
        }
    }
}

fn clustering_fields(v: Option<&Value>) -> Vec<String> {
    v.and_then(|c| c.get("fields"))
        .and_then(Value::as_array)
        .map(|fields| {
            fields
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

/// A job's `timePartitioning` and `clustering` must be the existing table's ("Incompatible table
/// partitioning specification. Expects partitioning specification interval(type:day,field:ts),
/// but input partitioning specification is none").
fn check_same_layout(resource: &Value, config: &LoadConfig) -> Result<(), Failed> {
    if let Some(tp) = &config.time_partitioning {
        let have = describe_partitioning(resource.get("timePartitioning"));
        let want = describe_partitioning(Some(tp));
        if have != want {
            return Err(invalid(format!(
                "Incompatible table partitioning specification. Expects partitioning specification {have}, but input partitioning specification is {want}"
            )));
        }
    }
    if let Some(c) = &config.clustering {
        let have = clustering_fields(resource.get("clustering"));
        let want = clustering_fields(Some(c));
        if have != want {
            return Err(invalid(format!(
                "Incompatible table clustering specification. Expects clustering fields [{}], but input clustering fields are [{}]",
                have.join(","),
                want.join(",")
            )));
        }
    }
    Ok(())
}

fn fields_of(resource: &Value) -> Vec<FieldJson> {
    resource
        .pointer("/schema/fields")
        .cloned()
        .and_then(|f| serde_json::from_value(f).ok())
        .unwrap_or_default()
}

/// The table a CREATE_IF_NEEDED load creates: where its dataset is, with the job's partitioning,
/// clustering and `destinationTableProperties`.
fn new_table(dest: &TableRef, dataset: &Value, config: &LoadConfig, now_ms: i64) -> Value {
    let mut resource = Map::new();
    resource.insert(
        "tableReference".into(),
        json!({"projectId": dest.project, "datasetId": dest.dataset, "tableId": dest.table}),
    );
    resource.insert("creationTime".into(), json!(now_ms.to_string()));
    resource.insert(
        "location".into(),
        dataset.get("location").cloned().unwrap_or(json!("US")),
    );
    if let Some(tp) = &config.time_partitioning {
        resource.insert("timePartitioning".into(), tp.clone());
    }
    if let Some(c) = &config.clustering {
        resource.insert("clustering".into(), c.clone());
    }
    if let Some(Value::Object(props)) = &config.table_properties {
        for k in ["description", "friendlyName", "labels"] {
            if let Some(v) = props.get(k) {
                resource.insert(k.into(), v.clone());
            }
        }
    }
    Value::Object(resource)
}
