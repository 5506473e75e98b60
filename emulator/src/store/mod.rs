// Owns durable state: datasets, tables (resource, schema, counters), rows, Storage Write streams
// with their not-yet-visible rows (`streams`), and jobs with the data uploaded for them (`jobs`),
// in one redb file (or redb's in-memory backend). Must not know HTTP, gRPC or BigQuery's wire
// shapes beyond stored JSON.
//
// Why redb: it is pure Rust (no C toolchain, no system library), ACID with copy-on-write B-trees
// so a killed emulator reopens in a consistent state, keeps one file per data dir, and offers an
// in-memory backend so `--data-dir` omitted runs exactly the same code. One write transaction per
// insertAll request (fsync on commit) gives tens of thousands of rows per second with batches of a
// few hundred rows, which is what bqforward sends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::{FieldJson, FieldType, Schema, partition_id};

mod jobs;
mod streams;

pub use jobs::{JobUpdate, RowsChange, TableWrite};
pub use streams::{StreamError, StreamKind, StreamRecord, StreamTarget};

const DATASETS: TableDefinition<&str, &[u8]> = TableDefinition::new("datasets");
const TABLES: TableDefinition<&str, &[u8]> = TableDefinition::new("tables");
const ROWS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("rows");
/// Storage Write streams created by CreateWriteStream, by stream name.
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// Rows appended to PENDING and BUFFERED streams, by (stream name, offset), until they are
/// committed or flushed into `ROWS`.
const STREAM_ROWS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("stream_rows");
/// Job records (JSON) by "project/location/jobId".
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// The data uploaded with a load job, by job key, until the job is done.
const JOB_DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("job_data");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    #[error("corrupt record for {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("no such table {0}")]
    NoTable(String),
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Key of a dataset: "project/dataset". BigQuery ids never contain '/'.
pub fn dataset_key(project: &str, dataset: &str) -> String {
    format!("{project}/{dataset}")
}

/// Key of a table: "project/dataset/table".
pub fn table_key(project: &str, dataset: &str, table: &str) -> String {
    format!("{project}/{dataset}/{table}")
}

/// What is persisted per table besides its rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableRecord {
    resource: Value,
    rows: u64,
    bytes: u64,
    oldest_entry_ms: Option<i64>,
    #[serde(default)]
    partitions: BTreeMap<String, u64>,
    /// Rows written by load jobs: not in the streaming buffer.
    #[serde(default)]
    loaded_rows: u64,
}

/// A table as the routes see it: the stored resource, its checked schema and its counters.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub resource: Value,
    pub schema: Arc<Schema>,
    pub rows: u64,
    pub bytes: u64,
    pub oldest_entry_ms: Option<i64>,
    pub partitions: BTreeMap<String, u64>,
    /// Rows written by load jobs (the rest were streamed and sit in the streaming buffer).
    pub loaded_rows: u64,
}

impl TableInfo {
    fn from_record(key: &str, rec: TableRecord) -> Result<Self, StoreError> {
        let schema = schema_of(&rec.resource).map_err(|reason| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        })?;
        Ok(Self {
            resource: rec.resource,
            schema: Arc::new(schema),
            rows: rec.rows,
            bytes: rec.bytes,
            oldest_entry_ms: rec.oldest_entry_ms,
            partitions: rec.partitions,
            loaded_rows: rec.loaded_rows,
        })
    }

    /// The partition a row lands in: the decorator, else the partitioning column's value, else
    /// the ingestion day for ingestion-time partitioned tables; `None` for unpartitioned tables.
    pub fn partition_for(
        &self,
        decorator: Option<&str>,
        row: &Map<String, Value>,
    ) -> Option<String> {
        if let Some(d) = decorator {
            return Some(d.to_string());
        }
        let tp = self
            .resource
            .get("timePartitioning")
            .filter(|v| !v.is_null())?;
        let unit = tp.get("type").and_then(Value::as_str).unwrap_or("DAY");
        match tp.get("field").and_then(Value::as_str) {
            Some(field) => {
                let f = self.schema.lookup(field)?;
                match row.get(&f.name).and_then(Value::as_str) {
                    Some(v) => partition_id(f.ty, v, unit),
                    None => Some("__NULL__".to_string()),
                }
            }
            None => {
                let micros = chrono::Utc::now().timestamp_micros().to_string();
                partition_id(FieldType::Timestamp, &micros, unit)
            }
        }
    }

    fn record(&self) -> TableRecord {
        TableRecord {
            resource: self.resource.clone(),
            rows: self.rows,
            bytes: self.bytes,
            oldest_entry_ms: self.oldest_entry_ms,
            partitions: self.partitions.clone(),
            loaded_rows: self.loaded_rows,
        }
    }
}

/// Parses `resource.schema.fields` into a checked schema.
pub fn schema_of(resource: &Value) -> Result<Schema, String> {
    let fields = resource
        .pointer("/schema/fields")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let fields: Vec<FieldJson> = serde_json::from_value(fields).map_err(|e| e.to_string())?;
    Schema::from_json(&fields).map_err(|e| e.0)
}

/// One row to append: the partition it belongs to and the normalized row.
pub struct NewRow {
    pub partition: Option<String>,
    pub row: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct StoredRow {
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    partition: Option<String>,
    #[serde(rename = "r")]
    row: Map<String, Value>,
}

/// A page of rows read back.
pub struct Page {
    pub total: u64,
    pub rows: Vec<Map<String, Value>>,
    pub next_index: Option<u64>,
}

#[derive(Default)]
struct Catalog {
    datasets: BTreeMap<String, Value>,
    tables: BTreeMap<String, TableInfo>,
    streams: BTreeMap<String, StreamRecord>,
    jobs: BTreeMap<String, Value>,
}

pub struct Store {
    db: Database,
    catalog: RwLock<Catalog>,
    /// Serializes writers so the in-memory counters and the committed file never disagree.
    write_lock: Mutex<()>,
}

impl Store {
    /// Opens (or creates) `dir/emulator.redb`, or an in-memory database when `dir` is `None`.
    pub fn open(dir: Option<&Path>) -> Result<Self, StoreError> {
        let db = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(backend)?;
                Database::create(dir.join("emulator.redb")).map_err(backend)?
            }
            None => Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(backend)?,
        };
        let store = Self {
            db,
            catalog: RwLock::new(Catalog::default()),
            write_lock: Mutex::new(()),
        };
        store.init_and_load()?;
        Ok(store)
    }

    fn init_and_load(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(DATASETS).map_err(backend)?;
        txn.open_table(TABLES).map_err(backend)?;
        txn.open_table(ROWS).map_err(backend)?;
        txn.open_table(STREAMS).map_err(backend)?;
        txn.open_table(STREAM_ROWS).map_err(backend)?;
        txn.open_table(JOBS).map_err(backend)?;
        txn.open_table(JOB_DATA).map_err(backend)?;
        txn.commit().map_err(backend)?;

        let read = self.db.begin_read().map_err(backend)?;
        let mut catalog = Catalog::default();
        for item in read
            .open_table(DATASETS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let value = decode::<Value>(k.value(), v.value())?;
            catalog.datasets.insert(k.value().to_string(), value);
        }
        for item in read
            .open_table(TABLES)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let rec = decode::<TableRecord>(k.value(), v.value())?;
            let info = TableInfo::from_record(k.value(), rec)?;
            catalog.tables.insert(k.value().to_string(), info);
        }
        for item in read
            .open_table(STREAMS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let record = decode::<StreamRecord>(k.value(), v.value())?;
            catalog.streams.insert(k.value().to_string(), record);
        }
        for item in read
            .open_table(JOBS)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let job = decode::<Value>(k.value(), v.value())?;
            catalog.jobs.insert(k.value().to_string(), job);
        }
        *self.catalog_mut() = catalog;
        Ok(())
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dataset(&self, key: &str) -> Option<Value> {
        self.catalog().datasets.get(key).cloned()
    }

    /// Stores a new dataset; `Ok(false)` when it already exists.
    pub fn create_dataset(&self, key: &str, resource: Value) -> Result<bool, StoreError> {
        let _w = self.writer();
        if self.catalog().datasets.contains_key(key) {
            return Ok(false);
        }
        let bytes = encode(&resource)?;
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(DATASETS)
            .map_err(backend)?
            .insert(key, bytes.as_slice())
            .map_err(backend)?;
        txn.commit().map_err(backend)?;
        self.catalog_mut()
            .datasets
            .insert(key.to_string(), resource);
        Ok(true)
    }

    /// Names of the tables in a dataset.
    pub fn tables_in(&self, dataset_key: &str) -> Vec<String> {
        let prefix = format!("{dataset_key}/");
        self.catalog()
            .tables
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Deletes a dataset and (the caller has checked it may) all its tables and rows.
    pub fn delete_dataset(&self, key: &str) -> Result<(), StoreError> {
        for table in self.tables_in(key) {
            self.delete_table(&table)?;
        }
        let _w = self.writer();
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(DATASETS)
            .map_err(backend)?
            .remove(key)
            .map_err(backend)?;
        txn.commit().map_err(backend)?;
        self.catalog_mut().datasets.remove(key);
        Ok(())
    }

    pub fn table(&self, key: &str) -> Option<TableInfo> {
        self.catalog().tables.get(key).cloned()
    }

    /// Stores a new table; `Ok(false)` when it already exists.
    pub fn create_table(
        &self,
        key: &str,
        resource: Value,
        schema: Schema,
    ) -> Result<bool, StoreError> {
        let _w = self.writer();
        if self.catalog().tables.contains_key(key) {
            return Ok(false);
        }
        let info = TableInfo {
            resource,
            schema: Arc::new(schema),
            rows: 0,
            bytes: 0,
            oldest_entry_ms: None,
            partitions: BTreeMap::new(),
            loaded_rows: 0,
        };
        self.put_table(key, &info)?;
        self.catalog_mut().tables.insert(key.to_string(), info);
        Ok(true)
    }

    /// Replaces a table's resource and schema with what `change` makes of the current table,
    /// keeping its rows and counters. `change` runs under the writer lock, so two concurrent
    /// updates see each other's result (what an etag precondition needs). `Ok(None)`: no table.
    pub fn update_table_with<E: From<StoreError>>(
        &self,
        key: &str,
        change: impl FnOnce(&TableInfo) -> Result<(Value, Schema), E>,
    ) -> Result<Option<TableInfo>, E> {
        let _w = self.writer();
        let Some(mut info) = self.table(key) else {
            return Ok(None);
        };
        let (resource, schema) = change(&info)?;
        info.resource = resource;
        info.schema = Arc::new(schema);
        self.put_table(key, &info)?;
        self.catalog_mut()
            .tables
            .insert(key.to_string(), info.clone());
        Ok(Some(info))
    }

    fn put_table(&self, key: &str, info: &TableInfo) -> Result<(), StoreError> {
        let bytes = encode(&info.record())?;
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(TABLES)
            .map_err(backend)?
            .insert(key, bytes.as_slice())
            .map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(())
    }

    /// Deletes a table with its rows and its write streams (BigQuery's streams die with it).
    pub fn delete_table(&self, key: &str) -> Result<bool, StoreError> {
        let _w = self.writer();
        if !self.catalog().tables.contains_key(key) {
            return Ok(false);
        }
        let streams = self.streams_of(key);
        let txn = self.db.begin_write().map_err(backend)?;
        txn.open_table(TABLES)
            .map_err(backend)?
            .remove(key)
            .map_err(backend)?;
        txn.open_table(ROWS)
            .map_err(backend)?
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(backend)?;
        {
            let mut records = txn.open_table(STREAMS).map_err(backend)?;
            let mut pending = txn.open_table(STREAM_ROWS).map_err(backend)?;
            for name in &streams {
                records.remove(name.as_str()).map_err(backend)?;
                pending
                    .retain_in((name.as_str(), 0)..=(name.as_str(), u64::MAX), |_, _| false)
                    .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        let mut catalog = self.catalog_mut();
        catalog.tables.remove(key);
        for name in &streams {
            catalog.streams.remove(name);
        }
        Ok(true)
    }

    /// Appends rows in one transaction (all or nothing) and returns how many were written.
    pub fn append(&self, key: &str, rows: Vec<NewRow>, now_ms: i64) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let _w = self.writer();
        let mut info = self
            .table(key)
            .ok_or_else(|| StoreError::NoTable(key.to_string()))?;
        let txn = self.db.begin_write().map_err(backend)?;
        let written = write_rows(&txn, key, &mut info, rows.into_iter().map(stored), now_ms)?;
        txn.commit().map_err(backend)?;
        self.catalog_mut().tables.insert(key.to_string(), info);
        Ok(written)
    }

    /// Reads up to `max` rows from index `start`, optionally only those of one partition
    /// (indices then count rows of that partition only).
    pub fn list(
        &self,
        key: &str,
        start: u64,
        max: usize,
        partition: Option<&str>,
    ) -> Result<Page, StoreError> {
        let info = self
            .table(key)
            .ok_or_else(|| StoreError::NoTable(key.to_string()))?;
        let total = match partition {
            Some(p) => info.partitions.get(p).copied().unwrap_or(0),
            None => info.rows,
        };
        if max == 0 {
            // maxResults=0 asks for the count only: no rows, no next page.
            return Ok(Page {
                total,
                rows: Vec::new(),
                next_index: None,
            });
        }
        let read = self.db.begin_read().map_err(backend)?;
        let table = read.open_table(ROWS).map_err(backend)?;
        let mut rows = Vec::new();
        let range_start = if partition.is_some() { 0 } else { start };
        let mut index = 0u64;
        for item in table
            .range((key, range_start)..=(key, u64::MAX))
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let stored: StoredRow = decode(key, v.value())?;
            if let Some(p) = partition {
                if stored.partition.as_deref() != Some(p) {
                    continue;
                }
                index += 1;
                if index <= start {
                    continue;
                }
            }
            if rows.len() == max {
                let next = if partition.is_some() {
                    index - 1
                } else {
                    k.value().1
                };
                return Ok(Page {
                    total,
                    rows,
                    next_index: Some(next),
                });
            }
            rows.push(stored.row);
        }
        Ok(Page {
            total,
            rows,
            next_index: None,
        })
    }
}

fn stored(new: NewRow) -> StoredRow {
    StoredRow {
        partition: new.partition,
        row: new.row,
    }
}

/// Writes rows at the end of a table inside `txn` and updates its counters and stored record;
/// the caller commits and then puts `info` in the catalog (under the writer lock).
fn write_rows(
    txn: &redb::WriteTransaction,
    key: &str,
    info: &mut TableInfo,
    rows: impl IntoIterator<Item = StoredRow>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let before = info.rows;
    {
        let mut table = txn.open_table(ROWS).map_err(backend)?;
        for row in rows {
            let bytes = encode(&row)?;
            table
                .insert((key, info.rows), bytes.as_slice())
                .map_err(backend)?;
            info.rows += 1;
            info.bytes += bytes.len() as u64;
            if let Some(p) = row.partition {
                *info.partitions.entry(p).or_default() += 1;
            }
        }
    }
    if info.rows > before {
        info.oldest_entry_ms.get_or_insert(now_ms);
    }
    let meta = encode(&info.record())?;
    txn.open_table(TABLES)
        .map_err(backend)?
        .insert(key, meta.as_slice())
        .map_err(backend)?;
    Ok(info.rows - before)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(backend)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table_resource() -> Value {
        json!({"schema": {"fields": [{"name": "a", "type": "STRING"}]}})
    }

    fn row(a: &str, partition: Option<&str>) -> NewRow {
        let mut m = Map::new();
        m.insert("a".into(), json!(a));
        NewRow {
            partition: partition.map(str::to_string),
            row: m,
        }
    }

    #[test]
    fn rows_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(Some(dir.path())).unwrap();
            let r = table_resource();
            store
                .create_table("p/d/t", r.clone(), schema_of(&r).unwrap())
                .unwrap();
            store
                .append("p/d/t", vec![row("x", None), row("y", None)], 1)
                .unwrap();
        }
        let store = Store::open(Some(dir.path())).unwrap();
        assert_eq!(store.table("p/d/t").unwrap().rows, 2);
        let page = store.list("p/d/t", 1, 10, None).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.rows[0]["a"], json!("y"));
    }

    #[test]
    fn partition_listing_pages_within_the_partition() {
        let store = Store::open(None).unwrap();
        let r = table_resource();
        store
            .create_table("p/d/t", r.clone(), schema_of(&r).unwrap())
            .unwrap();
        let rows = vec![
            row("a", Some("20261124")),
            row("b", Some("20261125")),
            row("c", Some("20261124")),
            row("d", Some("20261124")),
        ];
        store.append("p/d/t", rows, 1).unwrap();
        let first = store.list("p/d/t", 0, 2, Some("20261124")).unwrap();
        assert_eq!(first.total, 3);
        assert_eq!(first.rows.len(), 2);
        let next = first.next_index.unwrap();
        let second = store.list("p/d/t", next, 2, Some("20261124")).unwrap();
        assert_eq!(second.rows.len(), 1);
        assert_eq!(second.rows[0]["a"], json!("d"));
        assert!(second.next_index.is_none());
    }
}
