// Owns the durable side of Storage Write streams: stream records, rows held back in PENDING and
// BUFFERED streams, and the transactions that check an offset or a state and write in one step.
// Must not know gRPC or protobuf: callers map `StreamError` to BigQuery's answers.
//
// Every check that depends on a stream's state runs under the store's writer lock in the same
// redb transaction as the write it guards, so two connections appending to one stream at the same
// offset can never both succeed, and a crash leaves rows and offsets consistent.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    NewRow, STREAM_ROWS, STREAMS, Store, StoreError, StoredRow, backend, decode, encode, stored,
    write_rows,
};

/// The three stream types BigQuery offers (the `_default` stream is COMMITTED and has no record).
/// <https://cloud.google.com/bigquery/docs/write-api#application-created_streams>
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamKind {
    /// Rows are visible as soon as an append is answered.
    Committed,
    /// Rows are visible once the stream is finalized and committed by BatchCommitWriteStreams.
    Pending,
    /// Rows are visible up to the offset FlushRows advanced to.
    Buffered,
}

/// A stream created by CreateWriteStream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Key of the table the stream writes to ("project/dataset/table").
    pub table: String,
    pub kind: StreamKind,
    pub created_us: i64,
    /// Rows appended so far: the next append's offset.
    pub rows: u64,
    /// BUFFERED: rows made visible by FlushRows (offsets `0..flushed`).
    #[serde(default)]
    pub flushed: u64,
    #[serde(default)]
    pub finalized_us: Option<i64>,
    /// PENDING: when BatchCommitWriteStreams made the rows visible.
    #[serde(default)]
    pub committed_us: Option<i64>,
    /// The table's `schema.fields` when the stream was created, to tell a schema change.
    pub schema: Value,
}

impl StreamRecord {
    /// Finalized, or committed (which implies finalized): no more appends.
    pub fn is_closed(&self) -> bool {
        self.finalized_us.is_some() || self.committed_us.is_some()
    }
}

/// Where an append goes.
#[derive(Debug, Clone, Copy)]
pub enum StreamTarget<'a> {
    /// A table's `_default` stream, by table key.
    Default { table: &'a str },
    /// A created stream, by name.
    Named { name: &'a str },
}

/// The result of an append that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAppend {
    /// Offset of the first appended row in the stream (`None` for the `_default` stream).
    pub offset: Option<u64>,
    /// Rows that became visible in the table with this append.
    pub visible: u64,
}

/// Why a stream operation was refused; each maps to one documented BigQuery answer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no such table {0}")]
    NoTable(String),
    #[error("no such stream {0}")]
    NoStream(String),
    #[error("stream {0} has been finalized")]
    Finalized(String),
    #[error("offset {received} is already in the stream (next offset {expected})")]
    OffsetAlreadyExists { expected: u64, received: u64 },
    #[error("offset {received} is beyond the stream's end (next offset {expected})")]
    OffsetOutOfRange { expected: u64, received: u64 },
    #[error("stream {name} is {kind:?}, not {wanted:?}")]
    WrongType {
        name: String,
        kind: StreamKind,
        wanted: StreamKind,
    },
    #[error("stream {0} is not finalized")]
    NotFinalized(String),
    #[error("stream {0} is already committed")]
    AlreadyCommitted(String),
    #[error("stream {stream} does not belong to table {table}")]
    OtherTable { stream: String, table: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Names of the streams of a table.
    pub(super) fn streams_of(&self, table: &str) -> Vec<String> {
        self.catalog()
            .streams
            .iter()
            .filter(|(_, r)| r.table == table)
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn stream(&self, name: &str) -> Option<StreamRecord> {
        self.catalog().streams.get(name).cloned()
    }

    /// Stores a new stream of an existing table.
    pub fn create_stream(&self, name: &str, record: StreamRecord) -> Result<(), StreamError> {
        let _w = self.writer();
        if !self.catalog().tables.contains_key(&record.table) {
            return Err(StreamError::NoTable(record.table));
        }
        let txn = self.db.begin_write().map_err(backend)?;
        put_stream(&txn, name, &record)?;
        txn.commit().map_err(backend)?;
        self.catalog_mut().streams.insert(name.to_string(), record);
        Ok(())
    }

    /// Appends rows, all or nothing, after checking the stream's state and `offset` (if given)
    /// against its end in the same transaction.
    pub fn append_stream(
        &self,
        target: StreamTarget<'_>,
        offset: Option<u64>,
        rows: Vec<NewRow>,
        now_ms: i64,
    ) -> Result<StreamAppend, StreamError> {
        let _w = self.writer();
        let name = match target {
            StreamTarget::Default { table } => {
                let mut info = self
                    .table(table)
                    .ok_or_else(|| StreamError::NoTable(table.to_string()))?;
                let txn = self.db.begin_write().map_err(backend)?;
                let visible =
                    write_rows(&txn, table, &mut info, rows.into_iter().map(stored), now_ms)?;
                txn.commit().map_err(backend)?;
                self.catalog_mut().tables.insert(table.to_string(), info);
                return Ok(StreamAppend {
                    offset: None,
                    visible,
                });
            }
            StreamTarget::Named { name } => name,
        };
        let mut record = self
            .stream(name)
            .ok_or_else(|| StreamError::NoStream(name.to_string()))?;
        if record.is_closed() {
            return Err(StreamError::Finalized(name.to_string()));
        }
        let start = record.rows;
        match offset {
            Some(o) if o < start => {
                return Err(StreamError::OffsetAlreadyExists {
                    expected: start,
                    received: o,
                });
            }
            Some(o) if o > start => {
                return Err(StreamError::OffsetOutOfRange {
                    expected: start,
                    received: o,
                });
            }
            _ => {}
        }
        let count = rows.len() as u64;
        let txn = self.db.begin_write().map_err(backend)?;
        let mut table_info = None;
        let visible = if record.kind == StreamKind::Committed {
            let mut info = self
                .table(&record.table)
                .ok_or_else(|| StreamError::NoTable(record.table.clone()))?;
            let visible = write_rows(
                &txn,
                &record.table,
                &mut info,
                rows.into_iter().map(stored),
                now_ms,
            )?;
            table_info = Some(info);
            visible
        } else {
            let mut held = txn.open_table(STREAM_ROWS).map_err(backend)?;
            for (offset, row) in (start..).zip(rows) {
                let bytes = encode(&stored(row))?;
                held.insert((name, offset), bytes.as_slice())
                    .map_err(backend)?;
            }
            0
        };
        record.rows += count;
        put_stream(&txn, name, &record)?;
        txn.commit().map_err(backend)?;
        let mut catalog = self.catalog_mut();
        if let Some(info) = table_info {
            catalog.tables.insert(record.table.clone(), info);
        }
        catalog.streams.insert(name.to_string(), record);
        Ok(StreamAppend {
            offset: Some(start),
            visible,
        })
    }

    /// Closes a stream to appends and returns its row count; finalizing twice is harmless.
    pub fn finalize_stream(&self, name: &str, now_us: i64) -> Result<u64, StreamError> {
        let _w = self.writer();
        let mut record = self
            .stream(name)
            .ok_or_else(|| StreamError::NoStream(name.to_string()))?;
        if record.finalized_us.is_none() {
            record.finalized_us = Some(now_us);
            let txn = self.db.begin_write().map_err(backend)?;
            put_stream(&txn, name, &record)?;
            txn.commit().map_err(backend)?;
        }
        let rows = record.rows;
        self.catalog_mut().streams.insert(name.to_string(), record);
        Ok(rows)
    }

    /// Makes a BUFFERED stream's rows visible up to and including `offset` (all appended rows
    /// when `None`); returns the offset flushed to and how many rows became visible.
    pub fn flush_stream(
        &self,
        name: &str,
        offset: Option<u64>,
        now_ms: i64,
    ) -> Result<(u64, u64), StreamError> {
        let _w = self.writer();
        let mut record = self
            .stream(name)
            .ok_or_else(|| StreamError::NoStream(name.to_string()))?;
        if record.kind != StreamKind::Buffered {
            return Err(StreamError::WrongType {
                name: name.to_string(),
                kind: record.kind,
                wanted: StreamKind::Buffered,
            });
        }
        let last = match offset {
            Some(o) if o >= record.rows => {
                return Err(StreamError::OffsetOutOfRange {
                    expected: record.rows,
                    received: o,
                });
            }
            Some(o) => o,
            None if record.rows == 0 => return Ok((0, 0)),
            None => record.rows - 1,
        };
        if last < record.flushed {
            return Ok((last, 0));
        }
        let mut info = self
            .table(&record.table)
            .ok_or_else(|| StreamError::NoTable(record.table.clone()))?;
        let txn = self.db.begin_write().map_err(backend)?;
        let rows = take_held(&txn, name, record.flushed, last)?;
        let visible = write_rows(&txn, &record.table, &mut info, rows, now_ms)?;
        record.flushed = last + 1;
        put_stream(&txn, name, &record)?;
        txn.commit().map_err(backend)?;
        let mut catalog = self.catalog_mut();
        catalog.tables.insert(record.table.clone(), info);
        catalog.streams.insert(name.to_string(), record);
        Ok((last, visible))
    }

    /// Commits finalized PENDING streams of one table atomically: either every stream's rows
    /// become visible (`Ok(rows made visible)`) or none do and every refused stream is listed.
    pub fn commit_streams(
        &self,
        table: &str,
        names: &[String],
        now_us: i64,
        now_ms: i64,
    ) -> Result<Result<u64, Vec<(String, StreamError)>>, StreamError> {
        let _w = self.writer();
        let mut info = self
            .table(table)
            .ok_or_else(|| StreamError::NoTable(table.to_string()))?;
        let mut records = Vec::new();
        let mut refused = Vec::new();
        for name in names {
            if records
                .iter()
                .any(|(n, _): &(&String, StreamRecord)| *n == name)
            {
                continue;
            }
            match self.check_committable(table, name) {
                Ok(record) => records.push((name, record)),
                Err(e) => refused.push((name.clone(), e)),
            }
        }
        if !refused.is_empty() {
            return Ok(Err(refused));
        }
        let txn = self.db.begin_write().map_err(backend)?;
        let mut visible = 0;
        for (name, record) in &mut records {
            if record.rows > 0 {
                let rows = take_held(&txn, name, 0, record.rows - 1)?;
                visible += write_rows(&txn, table, &mut info, rows, now_ms)?;
            }
            record.committed_us = Some(now_us);
            put_stream(&txn, name, record)?;
        }
        txn.commit().map_err(backend)?;
        let mut catalog = self.catalog_mut();
        catalog.tables.insert(table.to_string(), info);
        for (name, record) in records {
            catalog.streams.insert(name.clone(), record);
        }
        Ok(Ok(visible))
    }

    fn check_committable(&self, table: &str, name: &str) -> Result<StreamRecord, StreamError> {
        let record = self
            .stream(name)
            .ok_or_else(|| StreamError::NoStream(name.to_string()))?;
        if record.table != table {
            return Err(StreamError::OtherTable {
                stream: name.to_string(),
                table: table.to_string(),
            });
        }
        if record.kind != StreamKind::Pending {
            return Err(StreamError::WrongType {
                name: name.to_string(),
                kind: record.kind,
                wanted: StreamKind::Pending,
            });
        }
        if record.committed_us.is_some() {
            return Err(StreamError::AlreadyCommitted(name.to_string()));
        }
        if record.finalized_us.is_none() {
            return Err(StreamError::NotFinalized(name.to_string()));
        }
        Ok(record)
    }
}

fn put_stream(
    txn: &redb::WriteTransaction,
    name: &str,
    record: &StreamRecord,
) -> Result<(), StoreError> {
    let bytes = encode(record)?;
    txn.open_table(STREAMS)
        .map_err(backend)?
        .insert(name, bytes.as_slice())
        .map_err(backend)?;
    Ok(())
}

/// Removes the held rows `first..=last` of a stream and returns them in offset order.
fn take_held(
    txn: &redb::WriteTransaction,
    name: &str,
    first: u64,
    last: u64,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut held = txn.open_table(STREAM_ROWS).map_err(backend)?;
    let mut rows = Vec::with_capacity((last - first + 1) as usize);
    for item in held.range((name, first)..=(name, last)).map_err(backend)? {
        let (_, v) = item.map_err(backend)?;
        rows.push(decode::<StoredRow>(name, v.value())?);
    }
    held.retain_in((name, first)..=(name, last), |_, _| false)
        .map_err(backend)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema_of;
    use serde_json::{Map, json};

    fn store_with_table(dir: Option<&std::path::Path>) -> Store {
        let store = Store::open(dir).unwrap();
        let r = json!({"schema": {"fields": [{"name": "a", "type": "STRING"}]}});
        store
            .create_table("p/d/t", r.clone(), schema_of(&r).unwrap())
            .unwrap();
        store
    }

    fn rows(values: &[&str]) -> Vec<NewRow> {
        values
            .iter()
            .map(|v| {
                let mut m = Map::new();
                m.insert("a".into(), json!(v));
                NewRow {
                    partition: None,
                    row: m,
                }
            })
            .collect()
    }

    fn record(kind: StreamKind) -> StreamRecord {
        StreamRecord {
            table: "p/d/t".into(),
            kind,
            created_us: 1,
            rows: 0,
            flushed: 0,
            finalized_us: None,
            committed_us: None,
            schema: json!([]),
        }
    }

    #[test]
    fn offsets_are_checked_against_the_end_of_the_stream() {
        let store = store_with_table(None);
        store
            .create_stream("s", record(StreamKind::Committed))
            .unwrap();
        let named = StreamTarget::Named { name: "s" };
        let first = store
            .append_stream(named, Some(0), rows(&["x", "y"]), 1)
            .unwrap();
        assert_eq!(
            first,
            StreamAppend {
                offset: Some(0),
                visible: 2
            }
        );
        assert!(matches!(
            store.append_stream(named, Some(1), rows(&["z"]), 1),
            Err(StreamError::OffsetAlreadyExists {
                expected: 2,
                received: 1
            })
        ));
        assert!(matches!(
            store.append_stream(named, Some(3), rows(&["z"]), 1),
            Err(StreamError::OffsetOutOfRange {
                expected: 2,
                received: 3
            })
        ));
        assert_eq!(store.table("p/d/t").unwrap().rows, 2);
    }

    #[test]
    fn pending_rows_survive_reopen_and_land_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store_with_table(Some(dir.path()));
            store
                .create_stream("s", record(StreamKind::Pending))
                .unwrap();
            let named = StreamTarget::Named { name: "s" };
            store
                .append_stream(named, None, rows(&["x", "y"]), 1)
                .unwrap();
            assert_eq!(store.table("p/d/t").unwrap().rows, 0);
        }
        let store = Store::open(Some(dir.path())).unwrap();
        let names = vec!["s".to_string()];
        let refused = store
            .commit_streams("p/d/t", &names, 5, 5)
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused[0].1, StreamError::NotFinalized(_)));
        assert_eq!(store.finalize_stream("s", 4).unwrap(), 2);
        assert_eq!(
            store
                .commit_streams("p/d/t", &names, 5, 5)
                .unwrap()
                .unwrap(),
            2
        );
        let page = store.list("p/d/t", 0, 10, None).unwrap();
        assert_eq!(page.rows.len(), 2);
        assert_eq!(page.rows[1]["a"], json!("y"));
        let again = store
            .commit_streams("p/d/t", &names, 6, 6)
            .unwrap()
            .unwrap_err();
        assert!(matches!(again[0].1, StreamError::AlreadyCommitted(_)));
    }

    #[test]
    fn buffered_rows_are_visible_up_to_the_flushed_offset() {
        let store = store_with_table(None);
        store
            .create_stream("s", record(StreamKind::Buffered))
            .unwrap();
        let named = StreamTarget::Named { name: "s" };
        store
            .append_stream(named, None, rows(&["a", "b", "c"]), 1)
            .unwrap();
        assert_eq!(store.flush_stream("s", Some(1), 1).unwrap(), (1, 2));
        assert_eq!(store.table("p/d/t").unwrap().rows, 2);
        assert_eq!(store.flush_stream("s", Some(0), 1).unwrap(), (0, 0));
        assert!(matches!(
            store.flush_stream("s", Some(3), 1),
            Err(StreamError::OffsetOutOfRange {
                expected: 3,
                received: 3
            })
        ));
        assert_eq!(store.flush_stream("s", None, 1).unwrap(), (2, 1));
        assert_eq!(store.table("p/d/t").unwrap().rows, 3);
    }

    #[test]
    fn deleting_the_table_deletes_its_streams() {
        let store = store_with_table(None);
        store
            .create_stream("s", record(StreamKind::Pending))
            .unwrap();
        store
            .append_stream(StreamTarget::Named { name: "s" }, None, rows(&["a"]), 1)
            .unwrap();
        assert!(store.delete_table("p/d/t").unwrap());
        assert!(store.stream("s").is_none());
    }
}
