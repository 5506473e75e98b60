//! tabledata.list (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/list>)
//! and the cheap row counts (tables.get numRows / streamingBuffer, admin count).

use serde_json::{Value, json};

use crate::common::{Emulator, error_body, rows};

fn numbered(emu: &Emulator, n: usize) {
    emu.with_table(json!([{"name": "i", "type": "INTEGER"}]));
    let all: Vec<Value> = (0..n).map(|i| json!({"i": i})).collect();
    assert_eq!(emu.insert_all("t", rows(&all)).0, 200);
}

fn values(page: &Value) -> Vec<String> {
    page["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["f"][0]["v"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pages_follow_page_tokens_until_the_end() {
    let emu = Emulator::start(&[]);
    numbered(&emu, 5);
    let (status, first) = emu.list("t", "?maxResults=2");
    assert_eq!(status, 200);
    assert_eq!(first["kind"], "bigquery#tableDataList");
    assert_eq!(first["totalRows"], "5");
    assert_eq!(values(&first), ["0", "1"]);
    let token = first["pageToken"].as_str().unwrap().to_string();
    let (_, second) = emu.list("t", &format!("?maxResults=2&pageToken={token}"));
    assert_eq!(values(&second), ["2", "3"]);
    let token = second["pageToken"].as_str().unwrap().to_string();
    let (_, last) = emu.list("t", &format!("?maxResults=2&pageToken={token}"));
    assert_eq!(values(&last), ["4"]);
    assert!(last.get("pageToken").is_none());
}

#[test]
fn start_index_skips_rows() {
    let emu = Emulator::start(&[]);
    numbered(&emu, 5);
    let (_, page) = emu.list("t", "?startIndex=3");
    assert_eq!(values(&page), ["3", "4"]);
    assert_eq!(page["totalRows"], "5");
}

#[test]
fn empty_table_lists_no_rows() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "i", "type": "INTEGER"}]));
    let (status, page) = emu.list("t", "");
    assert_eq!(status, 200);
    assert_eq!(page["totalRows"], "0");
    assert!(page.get("rows").is_none());
}

#[test]
fn cells_are_strings_records_nest_and_repeated_values_wrap() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([
        {"name": "s", "type": "STRING"},
        {"name": "n", "type": "INTEGER"},
        {"name": "b", "type": "BOOLEAN"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "rec", "type": "RECORD", "fields": [
            {"name": "x", "type": "FLOAT"},
            {"name": "kv", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "k", "type": "STRING"}]}
        ]},
        {"name": "missing", "type": "STRING"}
    ]));
    let row = json!({"s": "hi", "n": 7, "b": false, "tags": ["a", "b"],
                     "rec": {"x": 0.5, "kv": [{"k": "one"}, {"k": "two"}]}});
    assert_eq!(emu.insert_all("t", rows(&[row])).0, 200);
    let (_, page) = emu.list("t", "");
    assert_eq!(
        page["rows"][0],
        json!({"f": [
            {"v": "hi"},
            {"v": "7"},
            {"v": "false"},
            {"v": [{"v": "a"}, {"v": "b"}]},
            {"v": {"f": [
                {"v": "0.5"},
                {"v": [{"v": {"f": [{"v": "one"}]}}, {"v": {"f": [{"v": "two"}]}}]}
            ]}},
            {"v": null}
        ]})
    );
}

#[test]
fn timestamps_read_back_as_float_seconds_or_int64_micros() {
    let emu = Emulator::start(&[]);
    emu.with_table(json!([{"name": "ts", "type": "TIMESTAMP"}]));
    emu.insert_all("t", rows(&[json!({"ts": "2026-11-25 10:00:00.250 UTC"})]));
    let (_, page) = emu.list("t", "");
    assert_eq!(page["rows"][0]["f"][0]["v"], "1.79560080025E9");
    let (_, page) = emu.list("t", "?formatOptions.useInt64Timestamp=true");
    assert_eq!(page["rows"][0]["f"][0]["v"], "1795600800250000");
}

#[test]
fn listing_a_missing_table_is_404() {
    let emu = Emulator::start(&[]);
    emu.create_dataset("d");
    let (status, body) = emu.list("nope", "");
    assert_eq!(status, 404);
    assert_eq!(
        body,
        error_body(404, "notFound", "Not found: Table proj:d.nope", "NOT_FOUND")
    );
}

#[test]
fn table_get_and_admin_count_report_rows() {
    let emu = Emulator::start(&[]);
    numbered(&emu, 3);
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["numRows"], "3");
    assert_eq!(table["streamingBuffer"]["estimatedRows"], "3");
    assert!(table["streamingBuffer"]["oldestEntryTime"].is_string());
    assert_eq!(emu.count("t"), 3);
    let (status, body) = emu.get(&emu.url("/_emulator/projects/proj/datasets/d/tables/zz/count"));
    assert_eq!(status, 404, "{body}");
}
