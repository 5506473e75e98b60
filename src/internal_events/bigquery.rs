//! A BigQuery output's rows, requests, tables and datasets. Counted per table and reason in
//! `SinkDetail` (one short lock per request or chunk, never per row).

use crate::metrics::{LoadJobEvent, RequestOutcome, RowFate, SchemaCount, SinkDetail};
use std::time::Duration;

/// Rows BigQuery accepted.
pub struct RowsInserted<'a> {
    pub table: &'a str,
    pub rows: u64,
}

impl RowsInserted<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.rows(RowFate::Inserted, self.table, "", self.rows);
    }
}

/// Rows kept for another try, and why (`transient`, `not_found`, BigQuery's row reason...).
pub struct RowsRetried<'a> {
    pub table: &'a str,
    pub reason: &'a str,
    pub rows: u64,
}

impl RowsRetried<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.rows(RowFate::Retried, self.table, self.reason, self.rows);
    }
}

/// Rows written to `<secondary>` with their reasons.
pub struct RowsDeadLettered<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub secondary: &'a str,
    pub reasons: &'a [(&'a str, u64)],
}

impl RowsDeadLettered<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        let rows: u64 = self.reasons.iter().map(|(_, n)| n).sum();
        for (reason, n) in self.reasons {
            detail.rows(RowFate::DeadLettered, self.table, reason, *n);
        }
        tracing::warn!(output = %self.output, table = %self.table, rows, reasons = ?self.reasons,
            secondary = %self.secondary, "rows dead-lettered");
    }
}

/// Rows given up on with nowhere to put them: logged (with the first message) and counted.
pub struct RowsDropped<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub reasons: &'a [(&'a str, u64)],
    pub first: &'a str,
    /// Why they could not be kept: no `<secondary>`, or it refused them.
    pub cause: &'static str,
}

impl RowsDropped<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        let rows: u64 = self.reasons.iter().map(|(_, n)| n).sum();
        for (reason, n) in self.reasons {
            detail.rows(RowFate::Dropped, self.table, reason, *n);
        }
        tracing::error!(output = %self.output, table = %self.table, rows, reasons = ?self.reasons,
            first = %self.first, "rows lost: {}", self.cause);
    }
}

/// One insertAll request, by how it ended.
pub struct RequestFinished {
    pub outcome: RequestOutcome,
    pub elapsed: Duration,
}

impl RequestFinished {
    pub fn emit(self, detail: &SinkDetail) {
        detail.request(self.outcome, self.elapsed);
    }
}

/// `auto_create_table` created a table.
pub struct TableCreated<'a> {
    pub output: &'a str,
    pub table: &'a str,
}

impl TableCreated<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.table_created();
        tracing::info!(output = %self.output, table = %self.table, "created table (auto_create_table)");
    }
}

/// BigQuery says the dataset does not exist: its rows wait, `/readyz` fails. Logged when it
/// is first seen missing.
pub struct DatasetMissing<'a> {
    pub output: &'a str,
    pub dataset: &'a str,
    pub error: &'a str,
}

impl DatasetMissing<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        if detail.dataset_missing(self.dataset) {
            tracing::error!(output = %self.output, dataset = %self.dataset, error = %self.error,
                "dataset not found: rows wait for it (create it, or set auto_create_dataset true); /readyz reports it");
        }
    }
}

/// Rows reached a dataset that was missing.
pub struct DatasetFound<'a> {
    pub output: &'a str,
    pub dataset: &'a str,
}

impl DatasetFound<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        if detail.dataset_found(self.dataset) {
            tracing::info!(output = %self.output, dataset = %self.dataset, "dataset found: rows flow again");
        }
    }
}

/// Which BigQuery API rows went through (the `api` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    InsertAll,
    StorageWrite,
}

impl Api {
    pub fn label(self) -> &'static str {
        match self {
            Api::InsertAll => "insert_all",
            Api::StorageWrite => "storage_write",
        }
    }
}

/// insertAll bills each row as at least 1 KB
/// (https://cloud.google.com/bigquery/pricing#data_ingestion_pricing).
pub const INSERT_ALL_MIN_ROW_BYTES: u64 = 1024;

/// Rows BigQuery accepted, by size: `bytes` as sent (JSON rows for insertAll, serialized
/// protobuf rows for the Storage Write API) and what BigQuery bills for them.
pub struct BytesAppended<'a> {
    pub table: &'a str,
    pub api: Api,
    pub rows: u64,
    pub bytes: u64,
}

impl BytesAppended<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        let billed = match self.api {
            // Per row: a request's rows counted at their average size, at least 1 KB each.
            Api::InsertAll => {
                let average = self.bytes.checked_div(self.rows).unwrap_or(0);
                self.rows * average.max(INSERT_ALL_MIN_ROW_BYTES)
            }
            Api::StorageWrite => self.bytes,
        };
        detail.appended(self.api.label(), self.table, self.bytes, billed);
    }
}

/// A Storage Write stream was left for a new one.
pub struct StreamReplaced<'a> {
    pub table: &'a str,
}

impl StreamReplaced<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.stream_replaced();
        tracing::info!(table = %self.table, "write stream replaced");
    }
}

/// `bigquery_load` created a load job for a chunk (its data uploaded).
pub struct LoadJobStarted<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub job_id: &'a str,
    pub rows: u64,
    /// Uncompressed NDJSON bytes.
    pub bytes: u64,
}

impl LoadJobStarted<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.load_job(self.table, LoadJobEvent::Started);
        tracing::debug!(output = %self.output, table = %self.table, job = %self.job_id,
            rows = self.rows, bytes = self.bytes, "load job started");
    }
}

/// A chunk's load job is DONE and loaded its rows.
pub struct LoadJobDone<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub job_id: &'a str,
    pub rows: u64,
    pub bytes: u64,
    /// Rows BigQuery skipped (up to `max_bad_records`).
    pub bad_records: u64,
    /// From the upload to DONE, when this process saw both.
    pub elapsed: Option<Duration>,
}

impl LoadJobDone<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.load_job(self.table, LoadJobEvent::Done);
        detail.loaded(self.table, self.bytes, self.elapsed);
        detail.rows(RowFate::Inserted, self.table, "", self.rows);
        if self.bad_records > 0 {
            tracing::warn!(output = %self.output, table = %self.table, job = %self.job_id,
                bad_records = self.bad_records, "load job skipped bad records (max_bad_records); jobs.get lists them");
        }
        tracing::info!(output = %self.output, table = %self.table, job = %self.job_id,
            rows = self.rows, bytes = self.bytes, "load job done");
    }
}

/// A chunk's load job is still PENDING or RUNNING after `waited` of polling: warned about
/// every minute (`BQFORWARD_LOAD_JOB_WARN_AFTER`) while it is, counted once per attempt
/// (`first`). The chunk stays in the buffer; after 30 minutes the delivery hands it back and
/// a later attempt finds the same job.
pub struct LoadJobSlow<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub job_id: &'a str,
    /// The job's `status.state` as jobs.get last gave it.
    pub state: &'a str,
    pub waited: Duration,
    pub first: bool,
}

impl LoadJobSlow<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        if self.first {
            detail.load_job(self.table, LoadJobEvent::Slow);
        }
        tracing::warn!(output = %self.output, table = %self.table, job = %self.job_id,
            state = %self.state, waited_s = self.waited.as_secs(),
            "load job not done yet; still polling it (jobs.get), the chunk waits in the buffer");
    }
}

/// A chunk's load job ended with an error: `retry` loads the chunk again later under a new
/// job id, otherwise its rows go to `<secondary>`.
pub struct LoadJobFailed<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub job_id: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    pub retry: bool,
}

impl LoadJobFailed<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.load_job(self.table, LoadJobEvent::Failed);
        if self.retry {
            tracing::warn!(output = %self.output, table = %self.table, job = %self.job_id,
                reason = %self.reason, error = %self.message, "load job failed; the chunk is loaded again after the backoff");
        } else {
            tracing::error!(output = %self.output, table = %self.table, job = %self.job_id,
                reason = %self.reason, error = %self.message, "load job failed for good; its rows go to <secondary>");
        }
    }
}

/// Schema evolution added columns to a table (`schema_update_options ALLOW_FIELD_ADDITION`).
pub struct ColumnsAdded<'a> {
    pub output: &'a str,
    pub table: &'a str,
    /// `name TYPE` of each column added (dotted paths for nested ones).
    pub columns: &'a [String],
}

impl ColumnsAdded<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.schema(
            SchemaCount::ColumnsAdded,
            self.table,
            "",
            self.columns.len() as u64,
        );
        tracing::info!(output = %self.output, table = %self.table, columns = ?self.columns,
            "added columns for new fields (schema_update_options ALLOW_FIELD_ADDITION)");
    }
}

/// Rows held because insertAll did not see a column the table has yet ("no such field"
/// for minutes after a schema change); they are sent again.
pub struct RowsHeldForSchema<'a> {
    pub table: &'a str,
    pub rows: u64,
}

impl RowsHeldForSchema<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        detail.schema(SchemaCount::RowsHeld, self.table, "", self.rows);
        detail.rows(RowFate::Retried, self.table, "schema_update", self.rows);
        tracing::debug!(table = %self.table, rows = self.rows,
            "rows held until BigQuery's streaming path sees the new columns");
    }
}

/// Rows a schema change could not take, by reason (`schema_conflict`: a value its column
/// cannot take; `schema_limit`: a column BigQuery cannot have; `schema_rejected`: a column
/// BigQuery refused). They go to the dead letters with the reason.
pub struct SchemaConflicts<'a> {
    pub output: &'a str,
    pub table: &'a str,
    pub reasons: &'a [(&'a str, u64)],
    pub first: &'a str,
}

impl SchemaConflicts<'_> {
    pub fn emit(self, detail: &SinkDetail) {
        for (reason, n) in self.reasons {
            detail.schema(SchemaCount::Conflicts, self.table, reason, *n);
        }
        tracing::warn!(output = %self.output, table = %self.table, reasons = ?self.reasons,
            first = %self.first, "rows conflict with the table's schema; they go to the dead letters");
    }
}
