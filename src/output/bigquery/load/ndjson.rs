//! A chunk as a load job's data: one JSON row per line (newline-delimited JSON), written by
//! the shared converter and JSON encoder (`rows.rs`, as insertAll rows are). Plain by default,
//! as fluent-plugin-bigquery uploads it; with `<buffer> compress gzip` gzipped as it is
//! written (a stage at a time, so the uncompressed NDJSON never sits whole in memory). Rows
//! the converter refuses are returned as dead letters; the others are the job's.
//!
//! Rows are written into a small stage that stays in the CPU's cache and keeps its length
//! (`RowWriter::write_at`: no room zero-filled per row), then copied into the upload, or
//! through the compressor, a stage at a time.

use super::super::dead_letter::Rejected;
use super::super::rows::{Conversion, RowWriter};
use super::super::schema::Schema;
use crate::buffer::Entry;
use crate::format::{Extras, Inject};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

/// Rows are gathered to this size before they are copied into the upload or compressed.
const STAGE: usize = 64 * 1024;
/// What `drain` converts at a time.
const BLOCK: usize = 1024 * 1024;

/// How the NDJSON is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// As written (fluent-plugin-bigquery's upload): no CPU beyond the conversion, about
    /// 5 times the bytes of gzip on the wire (docs/bigquery-load.md).
    #[default]
    Plain,
    /// `<buffer> compress gzip`: level 1.
    Gzip,
}

/// A chunk's load data.
#[derive(Debug)]
pub struct LoadData {
    /// The upload: NDJSON, gzipped with `Encoding::Gzip`.
    pub body: Vec<u8>,
    /// Uncompressed NDJSON bytes.
    pub raw_len: u64,
    /// Rows in the data.
    pub rows: u64,
    /// Entries that could not be converted: dead letters.
    pub rejected: Vec<Rejected>,
}

/// A chunk's rows written as the upload's bytes a piece at a time, so a large chunk's upload
/// never sits whole in memory (`sink` sends each piece as it is written).
pub struct Ndjson<'a> {
    entries: &'a [Entry],
    indices: std::slice::Iter<'a, u32>,
    writer: RowWriter<'a>,
    inject: Inject,
    /// Rows written and not yet in the upload: `stage[..staged]` (its length past that is
    /// room already zero-filled).
    stage: Vec<u8>,
    staged: usize,
    /// `Encoding::Gzip`: the compressor, writing into its own `Vec`, emptied into the
    /// caller's after each stage.
    gzip: Option<GzEncoder<Vec<u8>>>,
    finished: bool,
    /// Uncompressed NDJSON bytes written so far.
    pub raw_len: u64,
    /// Rows written so far.
    pub rows: u64,
    /// Entries that could not be converted so far: dead letters.
    pub rejected: Vec<Rejected>,
}

impl<'a> Ndjson<'a> {
    pub fn new(
        entries: &'a [Entry],
        indices: &'a [u32],
        schema: Option<&'a Schema>,
        inject: Inject,
        conversion: Conversion,
        drop_untyped_unknown: bool,
        encoding: Encoding,
    ) -> Self {
        let mut writer = RowWriter::new(schema, conversion);
        if drop_untyped_unknown {
            // Schema evolution: a key without a typed value makes no column (see `evolve`).
            writer.drop_untyped_unknown();
        }
        // Level 1: the benchmark's log rows compress about 5.5 to 1 at it.
        let gzip = (encoding == Encoding::Gzip)
            .then(|| GzEncoder::new(Vec::with_capacity(STAGE / 2), Compression::fast()));
        Self {
            entries,
            indices: indices.iter(),
            writer,
            inject,
            stage: Vec::new(),
            staged: 0,
            gzip,
            finished: false,
            raw_len: 0,
            rows: 0,
            rejected: Vec::new(),
        }
    }

    /// Appends the upload's next bytes to `out` until it holds more than `want` bytes or the
    /// rows (and, gzipped, the stream) have ended: then `true`, and every later call adds
    /// nothing and answers `true`.
    pub fn fill(&mut self, out: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
        while !self.finished && self.wants_more(out, want) {
            let Some(&index) = self.indices.next() else {
                self.unstage(out)?;
                if let Some(gz) = &mut self.gzip {
                    gz.try_finish()?;
                    out.append(gz.get_mut());
                }
                self.finished = true;
                break;
            };
            let Some(entry) = self.entries.get(index as usize) else {
                continue;
            };
            let mut extras = Extras::default();
            self.inject
                .extras_into(&entry.tag, entry.event.time, &mut extras);
            match self
                .writer
                .write_at(&entry.event.record, &extras, &mut self.stage, self.staged)
            {
                Ok(end) => {
                    match self.stage.get_mut(end) {
                        Some(b) => *b = b'\n',
                        None => self.stage.push(b'\n'),
                    }
                    self.staged = end + 1;
                    self.rows += 1;
                }
                Err(err) => self.rejected.push(Rejected {
                    index,
                    reason: "conversion_error".into(),
                    location: err.field.clone(),
                    message: err.to_string(),
                }),
            }
            if self.staged >= STAGE {
                self.unstage(out)?;
            }
        }
        // The caller sees every row written so far.
        self.unstage(out)?;
        Ok(self.finished)
    }

    /// Whether `out` can take more rows: plain, counting those staged; gzipped, once the
    /// compressor has given it its output.
    fn wants_more(&self, out: &[u8], want: usize) -> bool {
        match self.gzip {
            None => out.len() + self.staged <= want,
            Some(_) => out.len() <= want,
        }
    }

    /// The staged rows into the upload (or through the compressor, whose output so far is
    /// appended to it).
    fn unstage(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let rows = &self.stage[..self.staged];
        self.raw_len += rows.len() as u64;
        match &mut self.gzip {
            None => out.extend_from_slice(rows),
            Some(gz) if !rows.is_empty() => {
                gz.write_all(rows)?;
                out.append(gz.get_mut());
            }
            Some(_) => {}
        }
        self.staged = 0;
        Ok(())
    }

    /// Converts the rest without keeping it: what `rows`, `raw_len` and `rejected` count in
    /// the end (a job made by an earlier attempt is judged against them).
    pub fn drain(&mut self) -> std::io::Result<()> {
        let mut sink = Vec::new();
        while !self.fill(&mut sink, BLOCK)? {
            sink.clear();
        }
        Ok(())
    }

    /// What was written, with `body` as the upload.
    pub fn into_data(self, body: Vec<u8>) -> LoadData {
        LoadData {
            body,
            raw_len: self.raw_len,
            rows: self.rows,
            rejected: self.rejected,
        }
    }
}

/// A chunk's whole load data at once.
pub fn build(
    entries: &[Entry],
    indices: &[u32],
    schema: Option<&Schema>,
    inject: &Inject,
    conversion: Conversion,
    drop_untyped_unknown: bool,
    encoding: Encoding,
) -> std::io::Result<LoadData> {
    let records: usize = indices
        .iter()
        .filter_map(|&i| entries.get(i as usize))
        .map(|e| e.event.record.len())
        .sum();
    let mut body = match encoding {
        // JSON of a typical msgpack record is about 1.3 times its size, plus the injected
        // fields; a body that outgrows it doubles once.
        Encoding::Plain => Vec::with_capacity(records + records / 2 + indices.len() * 64),
        Encoding::Gzip => Vec::with_capacity(records / 4 + 64),
    };
    let mut ndjson = Ndjson::new(
        entries,
        indices,
        schema,
        inject.clone(),
        conversion,
        drop_untyped_unknown,
        encoding,
    );
    ndjson.fill(&mut body, usize::MAX)?;
    Ok(ndjson.into_data(body))
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
        for encoding in [Encoding::Plain, Encoding::Gzip] {
            rows_of(encoding);
        }
    }

    /// Written a piece at a time, the upload is the same bytes as written at once, and every
    /// piece but the last holds more than it was asked for.
    #[test]
    fn pieces_make_the_same_upload() {
        // About 2.5 MiB of NDJSON: gzip writes its output a 1 MiB block of rows at a time.
        let entries: Vec<Entry> = (0..50_000)
            .map(|i| {
                entry(&json!({"n": i, "text": format!("line {i} of some log {}", i * 7919 % 1000)}))
            })
            .collect();
        let indices: Vec<u32> = (0..entries.len() as u32).collect();
        for encoding in [Encoding::Plain, Encoding::Gzip] {
            let inject = Inject::default();
            let whole = build(
                &entries,
                &indices,
                None,
                &inject,
                Conversion::Strict,
                false,
                encoding,
            )
            .unwrap();
            let mut ndjson = Ndjson::new(
                &entries,
                &indices,
                None,
                inject,
                Conversion::Strict,
                false,
                encoding,
            );
            let (mut upload, mut piece, mut pieces) = (Vec::new(), Vec::new(), 0);
            loop {
                let done = ndjson.fill(&mut piece, 4096).unwrap();
                assert!(done || piece.len() > 4096);
                upload.append(&mut piece);
                pieces += 1;
                if done {
                    break;
                }
            }
            assert!(ndjson.fill(&mut piece, 4096).unwrap() && piece.is_empty());
            assert!(pieces > 2, "{pieces}");
            assert_eq!(upload, whole.body, "{encoding:?}");
            assert_eq!((ndjson.rows, ndjson.raw_len), (whole.rows, whole.raw_len));
        }
    }

    fn rows_of(encoding: Encoding) {
        let schema = Schema::from_json(&json!([{"name": "n", "type": "INTEGER"}])).unwrap();
        let mut entries: Vec<Entry> = (0..30_000).map(|i| entry(&json!({"n": i}))).collect();
        entries.push(entry(&json!({"n": "not a number"})));
        let indices: Vec<u32> = (0..entries.len() as u32).filter(|i| i % 3 != 1).collect();
        let inject = Inject::default();
        let data = build(
            &entries,
            &indices,
            Some(&schema),
            &inject,
            Conversion::Strict,
            false,
            encoding,
        )
        .unwrap();
        let mut text = String::new();
        match encoding {
            Encoding::Gzip => {
                GzDecoder::new(&data.body[..])
                    .read_to_string(&mut text)
                    .unwrap();
            }
            Encoding::Plain => text = String::from_utf8(data.body.clone()).unwrap(),
        }
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
        let gzipped = data.body.starts_with(&[0x1f, 0x8b]);
        assert_eq!(gzipped, encoding == Encoding::Gzip);
    }
}
