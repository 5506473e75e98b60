//! insertAll request bodies built straight from buffered records: rows transcoded from
//! msgpack into the JSON body, split to BigQuery's limits, gzipped. Each row carries an
//! insertId derived from its chunk and position, so a resend is de-duplicated by BigQuery.
//! Limits: "Quotas and limits / Streaming inserts" (10 MB per HTTP request, 50,000 rows).

use super::dead_letter::Rejected;
use super::gzip::gzip;
use super::rows::{Conversion, RowWriter};
use super::schema::Schema;
use crate::buffer::Entry;
use crate::codec::msgpack::{Cursor, Head};
use crate::fluentd::accessor::KeyPath;
use crate::format::json::{append_bytes, write_integer, write_str};
use crate::format::{Extras, Inject};

/// BigQuery's hard row limit per request.
pub const MAX_ROWS: usize = 50_000;
/// BigQuery's 10 MB request limit, less headroom for the envelope and HTTP.
pub const MAX_BODY_BYTES: usize = 9 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    pub skip_invalid_rows: bool,
    pub ignore_unknown_values: bool,
    pub max_rows: usize,
    pub max_body_bytes: usize,
    /// fluentd record_accessor path of the field whose value is the insertId.
    pub insert_id_field: Option<KeyPath>,
    pub conversion: Conversion,
    /// fluent-plugin-bigquery's `add_insert_timestamp`: this field gets the send time.
    pub add_insert_timestamp: Option<String>,
    /// Schema evolution: keys the table lacks whose value is null, `[]` or `{}` are left out
    /// (they make no column; BigQuery would refuse the row for them).
    pub drop_untyped_unknown: bool,
}

/// One request: the gzipped body and, per row in order, the chunk entry it came from.
#[derive(Debug)]
pub struct Request {
    pub body: Vec<u8>,
    pub indices: Vec<u32>,
    pub raw_len: usize,
}

pub struct RequestBuilder<'a> {
    pub chunk_hex: &'a str,
    pub entries: &'a [Entry],
    pub schema: Option<&'a Schema>,
    pub inject: &'a mut Inject,
    pub options: &'a RequestOptions,
    /// insertAll's `templateSuffix` for these rows (rendered from `template_suffix`).
    pub template_suffix: Option<&'a str>,
}

impl RequestBuilder<'_> {
    /// Builds requests for the entries at `indices`, splitting by rows and bytes. Rows are
    /// written straight into the body; a row that does not fit is moved to the next request.
    pub fn build(&mut self, indices: &[u32]) -> (Vec<Request>, Vec<Rejected>) {
        let mut requests = Vec::new();
        let mut rejected = Vec::new();
        let mut rows: Vec<u32> = Vec::with_capacity(indices.len().min(MAX_ROWS));
        let mut writer = RowWriter::new(self.schema, self.options.conversion);
        if self.options.drop_untyped_unknown {
            writer.drop_untyped_unknown();
        }
        let insert_time = self.options.add_insert_timestamp.as_ref().map(|_| {
            chrono::Utc::now()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string()
        });
        let envelope = self.envelope();
        let max_rows = self.options.max_rows.clamp(1, MAX_ROWS);
        let max_bytes = self.options.max_body_bytes.clamp(1024, MAX_BODY_BYTES);
        // Room for the whole body up front (a JSON row is about 1.3 times its msgpack record,
        // plus the insertId), so it is not copied as it grows.
        let records: usize = indices
            .iter()
            .filter_map(|&i| self.entries.get(i as usize))
            .map(|entry| entry.event.record.len() * 3 / 2 + 64)
            .sum();
        let mut body = Vec::with_capacity((envelope.len() + records).min(max_bytes) + 1024);
        for &index in indices {
            let Some(entry) = self.entries.get(index as usize) else {
                continue;
            };
            let mark = body.len();
            if rows.is_empty() {
                body.extend_from_slice(&envelope);
            } else {
                body.push(b',');
            }
            let row_start = body.len();
            let written =
                self.write_row(&mut writer, index, entry, insert_time.as_deref(), &mut body);
            if let Err(reason) = written {
                body.truncate(mark);
                rejected.push(reason);
                continue;
            }
            let row_len = body.len() - row_start;
            if envelope.len() + row_len + 2 > max_bytes {
                body.truncate(mark);
                rejected.push(Rejected {
                    index,
                    reason: "row_too_large".into(),
                    location: String::new(),
                    message: format!(
                        "row of {row_len} bytes cannot fit in a {max_bytes}-byte request (BigQuery's limit is 10 MB)"
                    ),
                });
                continue;
            }
            // `+ 2`: the closing `]}`.
            if !rows.is_empty() && (rows.len() >= max_rows || body.len() + 2 > max_bytes) {
                let row = body[row_start..].to_vec();
                body.truncate(mark);
                requests.push(finish(&mut body, std::mem::take(&mut rows)));
                body.extend_from_slice(&envelope);
                body.extend_from_slice(&row);
            }
            rows.push(index);
        }
        if !rows.is_empty() {
            requests.push(finish(&mut body, rows));
        }
        (requests, rejected)
    }

    /// `{"kind":..., options..., "rows":[` — the part before the first row.
    fn envelope(&self) -> Vec<u8> {
        let o = self.options;
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(br#"{"kind":"bigquery#tableDataInsertAllRequest""#);
        if o.skip_invalid_rows {
            out.extend_from_slice(br#","skipInvalidRows":true"#);
        }
        if o.ignore_unknown_values {
            out.extend_from_slice(br#","ignoreUnknownValues":true"#);
        }
        if let Some(suffix) = self.template_suffix {
            out.extend_from_slice(br#","templateSuffix":"#);
            write_str(suffix, &mut out);
        }
        out.extend_from_slice(br#","rows":["#);
        out
    }

    /// `{"insertId":"...","json":{...}}` for one entry.
    fn write_row(
        &mut self,
        writer: &mut RowWriter<'_>,
        index: u32,
        entry: &Entry,
        insert_time: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<(), Rejected> {
        out.extend_from_slice(br#"{"insertId":"#);
        match self.field_insert_id(&entry.event.record) {
            Some(id) => write_str(&id, out),
            None => {
                out.extend_from_slice(b"\"");
                append_bytes(self.chunk_hex.as_bytes(), out);
                out.push(b'-');
                write_integer(index, out);
                out.extend_from_slice(b"\"");
            }
        }
        out.extend_from_slice(br#","json":"#);
        let mut extras = Extras::default();
        self.inject
            .extras_into(&entry.tag, entry.event.time, &mut extras);
        if let (Some(field), Some(time)) = (&self.options.add_insert_timestamp, insert_time) {
            extras.push((field.as_str(), crate::format::json::Extra::Str(time)));
        }
        writer
            .write(&entry.event.record, &extras, out)
            .map_err(|err| Rejected {
                index,
                reason: "conversion_error".into(),
                location: err.field.clone(),
                message: err.to_string(),
            })?;
        out.push(b'}');
        Ok(())
    }

    /// The insertId from `insert_id_field`: strings as they are, other scalars as text.
    fn field_insert_id(&self, record: &[u8]) -> Option<String> {
        let value = self.options.insert_id_field.as_ref()?.get(record)?;
        let mut cur = Cursor::new(value);
        match cur.head().ok()? {
            Head::Str(n) | Head::Bin(n) => {
                let r = cur.take(n as usize).ok()?;
                Some(String::from_utf8_lossy(cur.slice(r)).into_owned())
            }
            Head::Uint(n) => Some(n.to_string()),
            Head::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

fn finish(body: &mut Vec<u8>, indices: Vec<u32>) -> Request {
    body.extend_from_slice(b"]}");
    let raw_len = body.len();
    let gz = gzip(body);
    body.clear();
    Request {
        body: gz,
        indices,
        raw_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventTime};
    use flate2::read::GzDecoder;
    use serde_json::{Value, json};
    use std::io::Read;
    use std::sync::Arc;

    fn entries(records: &[Value]) -> Vec<Entry> {
        records
            .iter()
            .map(|r| Entry {
                tag: Arc::from("app.web"),
                event: Event {
                    time: EventTime::new(1_700_000_000, 0),
                    record: rmp_serde::to_vec(r).unwrap().into(),
                },
            })
            .collect()
    }

    fn body(request: &Request) -> Value {
        let mut text = String::new();
        GzDecoder::new(&request.body[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.len(), request.raw_len);
        serde_json::from_str(&text).unwrap()
    }

    fn options() -> RequestOptions {
        RequestOptions {
            max_rows: 500,
            max_body_bytes: MAX_BODY_BYTES,
            ..RequestOptions::default()
        }
    }

    #[test]
    fn body_has_documented_shape_and_stable_insert_ids() {
        let entries = entries(&[
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"id": "x-1", "a": 3}),
        ]);
        let mut inject = Inject::default();
        let opts = RequestOptions {
            skip_invalid_rows: true,
            ..options()
        };
        let mut b = RequestBuilder {
            chunk_hex: "abcd",
            entries: &entries,
            schema: None,
            inject: &mut inject,
            options: &opts,
            template_suffix: Some("_20261125"),
        };
        let (requests, rejected) = b.build(&[0, 2]);
        assert!(rejected.is_empty());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].indices, [0, 2]);
        assert_eq!(
            body(&requests[0]),
            json!({
                "kind": "bigquery#tableDataInsertAllRequest",
                "skipInvalidRows": true,
                "templateSuffix": "_20261125",
                "rows": [
                    {"insertId": "abcd-0", "json": {"a": 1}},
                    {"insertId": "abcd-2", "json": {"id": "x-1", "a": 3}},
                ]
            })
        );
        let opts = RequestOptions {
            insert_id_field: Some(KeyPath::parse("id").unwrap()),
            ..options()
        };
        let mut b = RequestBuilder {
            chunk_hex: "abcd",
            entries: &entries,
            schema: None,
            inject: &mut inject,
            options: &opts,
            template_suffix: None,
        };
        let (requests, _) = b.build(&[2]);
        assert_eq!(body(&requests[0])["rows"][0]["insertId"], "x-1");
    }

    #[test]
    fn requests_split_by_rows_and_bytes_and_oversized_rows_are_rejected() {
        let records: Vec<Value> = (0..10)
            .map(|i| json!({"i": i, "pad": "x".repeat(300)}))
            .collect();
        let mut big = records.clone();
        big.push(json!({"huge": "y".repeat(5000)}));
        let entries = entries(&big);
        let mut inject = Inject::default();
        let opts = RequestOptions {
            max_rows: 4,
            max_body_bytes: 2048,
            ..options()
        };
        let mut b = RequestBuilder {
            chunk_hex: "c",
            entries: &entries,
            schema: None,
            inject: &mut inject,
            options: &opts,
            template_suffix: None,
        };
        let all: Vec<u32> = (0..11).collect();
        let (requests, rejected) = b.build(&all);
        let sent: Vec<u32> = requests.iter().flat_map(|r| r.indices.clone()).collect();
        assert_eq!(sent, (0..10).collect::<Vec<_>>());
        assert!(
            requests
                .iter()
                .all(|r| r.indices.len() <= 4 && r.raw_len <= 2048)
        );
        assert!(requests.len() >= 3);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 10);
        assert_eq!(rejected[0].reason, "row_too_large");
        for r in &requests {
            let rows = body(r)["rows"].as_array().unwrap().len();
            assert_eq!(rows, r.indices.len());
        }
    }
}
