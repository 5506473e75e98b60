// Owns the insertAll request itself: body decoding (gzip), BigQuery's request limits, per-row
// validation outcomes and the `insertErrors` answer. Pure over bytes and schemas: no store, no I/O.

use std::io::Read;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::schema::{Problem, RowError, Schema, ValidateOptions, validate_row};

/// insertAll limits (<https://cloud.google.com/bigquery/quotas#streaming_inserts>): defaults are
/// BigQuery's, overridable by flags so tests can use small numbers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub max_request_bytes: usize,
    pub max_row_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_request_bytes: 10 * 1024 * 1024,
            max_row_bytes: 10 * 1024 * 1024,
        }
    }
}

/// BigQuery's answer to an oversized body; observed answer quoted in
/// googleapis/google-cloud-go#2855: 400, reason `badRequest`, status INVALID_ARGUMENT.
pub fn payload_too_large(limit: usize) -> ApiError {
    ApiError::bad_request(format!(
        "Request payload size exceeds the limit: {limit} bytes."
    ))
}

/// Returns the uncompressed body. Gzip is recognised by `Content-Encoding: gzip` or by its magic
/// bytes; the size limit applies to the uncompressed request, read no further than the limit so a
/// gzip bomb costs nothing.
pub fn decode_body(gzip_header: bool, body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let is_gzip = gzip_header || body.starts_with(&[0x1f, 0x8b]);
    if !is_gzip {
        if body.len() > limit {
            return Err(payload_too_large(limit));
        }
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit + 1));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("Invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(payload_too_large(limit));
    }
    Ok(out)
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InsertAllRequest {
    #[serde(default)]
    pub skip_invalid_rows: Option<bool>,
    #[serde(default)]
    pub ignore_unknown_values: Option<bool>,
    #[serde(default)]
    pub template_suffix: Option<String>,
    #[serde(default)]
    pub rows: Option<Vec<InsertRow>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsertRow {
    #[serde(default)]
    pub insert_id: Option<String>,
    #[serde(default)]
    pub json: Value,
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid(format!("Invalid JSON payload received. {e}"))
}

/// Parses the body and applies the request-level limits (row count, empty request).
pub fn parse_request(body: &[u8], limits: &Limits) -> Result<InsertAllRequest, ApiError> {
    let req: InsertAllRequest = serde_json::from_slice(body).map_err(|e| invalid_json(&e))?;
    let n = req.rows.as_ref().map_or(0, Vec::len);
    check_row_count(n, limits)?;
    Ok(req)
}

fn check_row_count(n: usize, limits: &Limits) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid("No rows present in the request."));
    }
    if n > limits.max_rows {
        return Err(ApiError::invalid(format!(
            "too many rows present in the request, limit: {} row count: {n}.",
            limits.max_rows
        )));
    }
    Ok(())
}

/// Null mode: parse just enough to count rows (values are skipped, not built).
pub fn count_rows(body: &[u8], limits: &Limits) -> Result<usize, ApiError> {
    #[derive(Deserialize)]
    struct Counting {
        #[serde(default)]
        rows: Option<Vec<IgnoredAny>>,
    }
    let req: Counting = serde_json::from_slice(body).map_err(|e| invalid_json(&e))?;
    let n = req.rows.as_ref().map_or(0, Vec::len);
    check_row_count(n, limits)?;
    Ok(n)
}

/// Serialized size of a row's `json`, which is what BigQuery's row-size limit measures.
fn row_size(v: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Validates every row: `Ok(normalized)` or the row's errors.
pub fn check_rows(
    schema: &Schema,
    rows: &[InsertRow],
    opts: ValidateOptions,
    limits: &Limits,
) -> Vec<Result<Map<String, Value>, Vec<RowError>>> {
    rows.iter()
        .map(|row| {
            let size = row_size(&row.json);
            if size > limits.max_row_bytes {
                // Observed answer (googleapis/google-cloud-go#2855): reason invalid, no location.
                return Err(vec![RowError {
                    location: String::new(),
                    message: format!(
                        "Maximum allowed row size exceeded. Allowed: {} Row size: {size}",
                        limits.max_row_bytes
                    ),
                    problem: Problem::Shape,
                }]);
            }
            validate_row(schema, &row.json, opts)
        })
        .collect()
}

fn error_entry(reason: &str, e: &RowError) -> Value {
    json!({"reason": reason, "location": e.location, "debugInfo": "", "message": e.message})
}

/// Builds the 200 answer. Without skipInvalidRows one bad row fails the request: bad rows get
/// reason `invalid`, every other row one `stopped` error (not inserted, safe to resend). With it,
/// only bad rows are listed. <https://cloud.google.com/bigquery/docs/error-messages#streaming-success>
pub fn response(
    outcomes: &[Result<Map<String, Value>, Vec<RowError>>],
    skip_invalid: bool,
) -> Value {
    let any_invalid = outcomes.iter().any(Result::is_err);
    let mut insert_errors = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        let errors: Vec<Value> = match outcome {
            Err(errs) => errs.iter().map(|e| error_entry("invalid", e)).collect(),
            Ok(_) if any_invalid && !skip_invalid => vec![error_entry(
                "stopped",
                &RowError {
                    location: String::new(),
                    message: String::new(),
                    problem: Problem::Shape,
                },
            )],
            Ok(_) => continue,
        };
        insert_errors.push(json!({"index": index, "errors": errors}));
    }
    let mut body = json!({"kind": "bigquery#tableDataInsertAllResponse"});
    if !insert_errors.is_empty() {
        body["insertErrors"] = Value::Array(insert_errors);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bodies_are_measured_uncompressed() {
        let plain = vec![b' '; 2000];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1000);
        assert!(decode_body(true, &gz, 1000).is_err());
        assert_eq!(decode_body(false, &gz, 5000).unwrap().len(), 2000);
    }
}
