//! A chunk as a load job's data: one JSON row per line (newline-delimited JSON), written by
//! the shared converter and JSON encoder (`rows.rs`, as insertAll rows are), gzipped as it is
//! written so a 1 GiB chunk never sits uncompressed in memory. Rows the converter refuses are
//! returned as dead letters; the others are the job's.

use super::super::dead_letter::Rejected;
use super::super::rows::{Conversion, RowWriter};
use super::super::schema::Schema;
use crate::buffer::Entry;
use crate::format::{Extras, Inject};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

/// Rows are gathered to this size before they go through the compressor.
const BLOCK: usize = 1024 * 1024;

/// A chunk's load data.
#[derive(Debug)]
pub struct LoadData {
    pub gzipped: Vec<u8>,
    /// Uncompressed NDJSON bytes.
    pub raw_len: u64,
    /// Rows in the data.
    pub rows: u64,
    /// Entries that could not be converted: dead letters.
    pub rejected: Vec<Rejected>,
}

pub fn build(
    entries: &[Entry],
    indices: &[u32],
    schema: Option<&Schema>,
    inject: &mut Inject,
    conversion: Conversion,
    drop_untyped_unknown: bool,
) -> std::io::Result<LoadData> {
    let records: usize = indices
        .iter()
        .filter_map(|&i| entries.get(i as usize))
        .map(|e| e.event.record.len())
        .sum();
    // Level 1: log lines compress about 8 to 1 at it, and the CPU is the aggregator's.
    let mut gz = GzEncoder::new(Vec::with_capacity(records / 4 + 64), Compression::fast());
    let mut writer = RowWriter::new(schema, conversion);
    if drop_untyped_unknown {
        // Schema evolution: a key without a typed value makes no column (see `evolve`).
        writer.drop_untyped_unknown();
    }
    let mut block = Vec::with_capacity(BLOCK + BLOCK / 4);
    let mut scratch = String::new();
    let mut data = LoadData {
        gzipped: Vec::new(),
        raw_len: 0,
        rows: 0,
        rejected: Vec::new(),
    };
    for &index in indices {
        let Some(entry) = entries.get(index as usize) else {
            continue;
        };
        let mut extras = Extras::default();
        inject.extras_into(&entry.tag, entry.event.time, &mut scratch, &mut extras);
        match writer.write(&entry.event.record, &extras, &mut block) {
            Ok(()) => {
                block.push(b'\n');
                data.rows += 1;
            }
            Err(err) => data.rejected.push(Rejected {
                index,
                reason: "conversion_error".into(),
                location: err.field.clone(),
                message: err.to_string(),
            }),
        }
        if block.len() >= BLOCK {
            data.raw_len += block.len() as u64;
            gz.write_all(&block)?;
            block.clear();
        }
    }
    data.raw_len += block.len() as u64;
    gz.write_all(&block)?;
    data.gzipped = gz.finish()?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventTime};
    use flate2::read::GzDecoder;
    use serde_json::{Value, json};
    use std::io::Read;
    use std::sync::Arc;

    fn entry(record: &Value) -> Entry {
        Entry {
            tag: Arc::from("app"),
            event: Event {
                time: EventTime::new(1_700_000_000, 0),
                record: rmp_serde::to_vec(record).unwrap().into(),
            },
        }
    }

    #[test]
    fn lines_are_rows_and_unconvertible_records_are_rejected() {
        let schema = Schema::from_json(&json!([{"name": "n", "type": "INTEGER"}])).unwrap();
        let mut entries: Vec<Entry> = (0..30_000).map(|i| entry(&json!({"n": i}))).collect();
        entries.push(entry(&json!({"n": "not a number"})));
        let indices: Vec<u32> = (0..entries.len() as u32).filter(|i| i % 3 != 1).collect();
        let mut inject = Inject::default();
        let data = build(
            &entries,
            &indices,
            Some(&schema),
            &mut inject,
            Conversion::Strict,
            false,
        )
        .unwrap();
        let mut text = String::new();
        GzDecoder::new(&data.gzipped[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.len() as u64, data.raw_len);
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len() as u64, data.rows);
        let expected: Vec<Value> = (0..30_000)
            .filter(|i| i % 3 != 1)
            .map(|i| json!({"n": i}))
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(data.rejected.len(), 1);
        assert_eq!(data.rejected[0].index, 30_000);
        assert_eq!(data.rejected[0].reason, "conversion_error");
    }
}
