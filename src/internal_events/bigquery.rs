//! A BigQuery output's rows, requests, tables and datasets. Counted per table and reason in
//! `SinkDetail` (one short lock per request or chunk, never per row).

use crate::metrics::{RequestOutcome, RowFate, SchemaCount, SinkDetail};
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
            "rows held until insertAll sees the new columns");
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
