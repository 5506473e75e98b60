//! Realistic records for the load: an HTTP access-log line of 11 fields, about 300 bytes as
//! JSON, varied per event so compression and caches see realistic data. Pure; no I/O.

use bqforward::event::{Event, EventTime};
use bytes::Bytes;

const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const PATHS: [&str; 6] = [
    "/api/v1/orders",
    "/api/v1/orders/items",
    "/api/v1/users/profile",
    "/healthz",
    "/api/v2/search",
    "/static/app.js",
];
const STATUS: [u64; 8] = [200, 200, 200, 200, 201, 304, 404, 500];
const LEVELS: [&str; 4] = ["info", "info", "warn", "error"];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.11.0",
];

/// The msgpack map of record number `seq` sent on connection `conn`.
pub fn record(conn: u32, seq: u64) -> Vec<u8> {
    let s = seq as usize;
    let mut out = Vec::with_capacity(320);
    let _ = rmp::encode::write_map_len(&mut out, 11);
    str_field(
        &mut out,
        "host",
        &format!("10.{}.{}.{}", conn % 250, s % 251, s % 13),
    );
    str_field(&mut out, "method", METHODS[s % METHODS.len()]);
    let path = format!(
        "{}/{}?page={}",
        PATHS[s % PATHS.len()],
        seq % 100_000,
        s % 7
    );
    str_field(&mut out, "path", &path);
    uint_field(&mut out, "status", STATUS[s % STATUS.len()]);
    uint_field(&mut out, "bytes", 512 + (seq * 7919) % 65_536);
    let _ = rmp::encode::write_str(&mut out, "latency_ms");
    let _ = rmp::encode::write_f64(&mut out, (seq % 10_000) as f64 / 7.0);
    str_field(&mut out, "user_agent", AGENTS[s % AGENTS.len()]);
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        seq ^ 0x5bd1_e995,
        conn,
        s % 4096,
        (s / 7) % 4096,
        seq.wrapping_mul(2_654_435_761)
    );
    str_field(&mut out, "request_id", &id);
    str_field(&mut out, "level", LEVELS[s % LEVELS.len()]);
    uint_field(&mut out, "seq", seq);
    uint_field(&mut out, "conn", u64::from(conn));
    out
}

fn str_field(out: &mut Vec<u8>, key: &str, value: &str) {
    let _ = rmp::encode::write_str(out, key);
    let _ = rmp::encode::write_str(out, value);
}

fn uint_field(out: &mut Vec<u8>, key: &str, value: u64) {
    let _ = rmp::encode::write_str(out, key);
    let _ = rmp::encode::write_uint(out, value);
}

/// `count` events starting at `first`, all stamped `time`.
pub fn events(conn: u32, first: u64, count: usize, time: EventTime) -> Vec<Event> {
    (first..first + count as u64)
        .map(|seq| Event {
            time,
            record: Bytes::from(record(conn, seq)),
        })
        .collect()
}

/// The BigQuery schema matching `record` (plus the injected `time` and `tag`), as JSON.
pub const SCHEMA_JSON: &str = include_str!("../schema.json");

#[cfg(test)]
mod tests {

    #[test]
    fn records_are_about_300_bytes_of_json_with_11_fields() {
        for seq in [0, 1, 999, 123_456_789] {
            let rec = super::record(3, seq);
            let mut json = Vec::new();
            bqforward::format::json::write_record(&rec, &[], &mut json).unwrap();
            let text = String::from_utf8(json).unwrap();
            assert!(
                (200..=400).contains(&text.len()),
                "{} bytes: {text}",
                text.len()
            );
            assert_eq!(text.matches("\":").count(), 11, "{text}");
        }
    }
}
