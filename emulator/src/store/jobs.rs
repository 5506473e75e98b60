// Owns the durable side of jobs: job records (JSON, by "project/location/jobId"), the data
// uploaded with a load job until it is done, and finishing a load: the job's final record, the
// destination table's new resource and rows, all in one redb transaction.
// Must not decide what a job does; `jobs` and `load` decide, this only writes.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;

use super::{
    JOB_DATA, JOBS, NewRow, ROWS, Store, StoreError, StoredRow, TABLES, TableInfo, backend, decode,
    encode, stored, write_rows,
};
use crate::schema::Schema;

/// What an update makes of a job record: the new record, and whether its uploaded data is no
/// longer needed (the job is done).
pub struct JobUpdate {
    pub job: Value,
    pub drop_data: bool,
}

/// How a load changes the rows of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowsChange {
    Append,
    /// WRITE_TRUNCATE: the table's rows are replaced.
    ReplaceAll,
    /// WRITE_TRUNCATE on `t$partition`: that partition's rows are replaced.
    ReplacePartition(String),
}

/// A load's change to its destination table: the resource and schema the table has afterwards
/// (created if it did not exist) and the rows it gains.
pub struct TableWrite {
    pub key: String,
    pub resource: Value,
    pub schema: Schema,
    pub change: RowsChange,
    pub rows: Vec<NewRow>,
}

impl Store {
    pub fn job(&self, key: &str) -> Option<Value> {
        self.catalog().jobs.get(key).cloned()
    }

    /// Every job record, in key order.
    pub fn jobs(&self) -> Vec<(String, Value)> {
        self.catalog()
            .jobs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Stores a new job with its uploaded data (if any) in one transaction; `Ok(false)` when a
    /// job with this key exists (it is left unchanged).
    pub fn insert_job(
        &self,
        key: &str,
        job: Value,
        data: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let _w = self.writer();
        if self.catalog().jobs.contains_key(key) {
            return Ok(false);
        }
        let bytes = encode(&job)?;
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(JOBS)
            .map_err(backend)?
            .insert(key, bytes.as_slice())
            .map_err(backend)?;
        if let Some(data) = data {
            txn.open_table(JOB_DATA)
                .map_err(backend)?
                .insert(key, data)
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.catalog_mut().jobs.insert(key.to_string(), job);
        Ok(true)
    }

    /// The data uploaded with a job that is not done yet.
    pub fn job_data(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(backend)?;
        let table = read.open_table(JOB_DATA).map_err(backend)?;
        Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    /// Replaces a job record with what `change` makes of it (`None`: leave it as it is), under
    /// the writer lock so that a cancel and a job's completion never both win. Returns the record
    /// afterwards; `Ok(None)` when there is no such job.
    pub fn update_job_with<E: From<StoreError>>(
        &self,
        key: &str,
        change: impl FnOnce(&Value) -> Result<Option<JobUpdate>, E>,
    ) -> Result<Option<Value>, E> {
        let _w = self.writer();
        let Some(current) = self.job(key) else {
            return Ok(None);
        };
        let Some(update) = change(&current)? else {
            return Ok(Some(current));
        };
        let bytes = encode(&update.job)?;
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(JOBS)
            .map_err(backend)?
            .insert(key, bytes.as_slice())
            .map_err(backend)?;
        if update.drop_data {
            txn.open_table(JOB_DATA)
                .map_err(backend)?
                .remove(key)
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.catalog_mut()
            .jobs
            .insert(key.to_string(), update.job.clone());
        Ok(Some(update.job))
    }

    /// Finishes a job: `decide` sees the job record and the destination table as they are (under
    /// the writer lock, so nothing changes in between) and returns the job's final record with
    /// the table change, or `None` to leave everything as it is. The job record, the table and
    /// its rows are written in one transaction and the job's data is dropped: a load lands whole
    /// or not at all, and a restart never finds a done job without its rows or rows without it.
    pub fn finish_job<E: From<StoreError>>(
        &self,
        job_key: &str,
        table_key: &str,
        now_ms: i64,
        decide: impl FnOnce(
            &Value,
            Option<&TableInfo>,
        ) -> Result<Option<(Value, Option<TableWrite>)>, E>,
    ) -> Result<Option<Value>, E> {
        let _w = self.writer();
        let Some(job) = self.job(job_key) else {
            return Ok(None);
        };
        let table = self.table(table_key);
        let Some((job, write)) = decide(&job, table.as_ref())? else {
            return Ok(None);
        };
        let bytes = encode(&job)?;
        let txn = self.db.begin_write().map_err(backend)?;
        let info = match write {
            Some(w) => Some((w.key.clone(), apply_write(&txn, table, w, now_ms)?)),
            None => None,
        };
        txn.open_table(JOBS)
            .map_err(backend)?
            .insert(job_key, bytes.as_slice())
            .map_err(backend)?;
        txn.open_table(JOB_DATA)
            .map_err(backend)?
            .remove(job_key)
            .map_err(backend)?;
        txn.commit().map_err(backend)?;
        let mut catalog = self.catalog_mut();
        if let Some((key, info)) = info {
            catalog.tables.insert(key, info);
        }
        catalog.jobs.insert(job_key.to_string(), job.clone());
        Ok(Some(job))
    }
}

/// Writes a load's table change inside `txn` and returns the table as it is afterwards.
fn apply_write(
    txn: &redb::WriteTransaction,
    table: Option<TableInfo>,
    write: TableWrite,
    now_ms: i64,
) -> Result<TableInfo, StoreError> {
    let key = write.key.as_str();
    let mut info = table.unwrap_or_else(|| TableInfo {
        resource: Value::Null,
        schema: Arc::new(Schema::default()),
        rows: 0,
        bytes: 0,
        oldest_entry_ms: None,
        partitions: Default::default(),
        loaded_rows: 0,
    });
    info.resource = write.resource;
    info.schema = Arc::new(write.schema);
    // Rows kept from before a truncation, with whether each was loaded or streamed unknown:
    // those of a replaced partition count as streamed only as far as streamed rows remain.
    let kept: Vec<StoredRow> = match &write.change {
        RowsChange::Append => Vec::new(),
        RowsChange::ReplaceAll | RowsChange::ReplacePartition(_) => {
            let mut rows = txn.open_table(ROWS).map_err(backend)?;
            let mut kept = Vec::new();
            if let RowsChange::ReplacePartition(p) = &write.change {
                for item in rows.range((key, 0)..=(key, u64::MAX)).map_err(backend)? {
                    let (_, v) = item.map_err(backend)?;
                    let row: StoredRow = decode(key, v.value())?;
                    if row.partition.as_deref() != Some(p.as_str()) {
                        kept.push(row);
                    }
                }
            }
            rows.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
                .map_err(backend)?;
            let streamed_before = info.rows - info.loaded_rows.min(info.rows);
            info.loaded_rows = (kept.len() as u64).saturating_sub(streamed_before);
            info.rows = 0;
            info.bytes = 0;
            info.partitions.clear();
            if streamed_before == 0 || kept.is_empty() {
                info.oldest_entry_ms = None;
            }
            kept
        }
    };
    let oldest = info.oldest_entry_ms;
    write_rows(txn, key, &mut info, kept, now_ms)?;
    let loaded = write_rows(
        txn,
        key,
        &mut info,
        write.rows.into_iter().map(stored),
        now_ms,
    )?;
    info.loaded_rows += loaded;
    // Loaded rows go to managed storage, not the streaming buffer.
    info.oldest_entry_ms = if info.rows > info.loaded_rows {
        oldest.or(Some(now_ms))
    } else {
        None
    };
    let meta = encode(&info.record())?;
    txn.open_table(TABLES)
        .map_err(backend)?
        .insert(key, meta.as_slice())
        .map_err(backend)?;
    Ok(info)
}
