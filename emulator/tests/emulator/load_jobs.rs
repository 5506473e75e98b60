//! Load jobs: jobs.insert on the upload endpoint (multipart and resumable, NDJSON and CSV, gzip),
//! jobs.get, jobs.list, jobs.cancel, the job resource, data errors and `maxBadRecords`,
//! dispositions and `schemaUpdateOptions`, 409 for a repeated job id, restarts.
//! References: <https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs>,
//! <https://cloud.google.com/bigquery/docs/reference/api-uploads>.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::jobs::{load_job, ndjson};
use crate::common::{Emulator, PROJECT, error_body, gzip};

fn fields() -> Value {
    json!([{"name": "msg", "type": "STRING", "mode": "REQUIRED"}, {"name": "n", "type": "INTEGER"}])
}

/// An emulator whose jobs finish before jobs.insert answers, with dataset `d` and table `t`.
fn instant() -> Emulator {
    let emu = Emulator::start(&["--job-delay-ms", "0"]);
    emu.with_table(fields());
    emu
}

const ROWS: &[u8] =
    b"{\"msg\": \"a\", \"n\": 1}\n{\"msg\": \"b\"}\n{\"msg\": \"c\", \"n\": \"3\"}\n";

#[test]
fn multipart_load_lands_its_rows_and_answers_bigquerys_job_resource() {
    let emu = instant();
    let (status, job) = emu.load_multipart(&load_job("load-1", ndjson(fields())), ROWS);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["kind"], "bigquery#job");
    assert_eq!(job["id"], format!("{PROJECT}:US.load-1"));
    assert_eq!(
        job["jobReference"],
        json!({"projectId": PROJECT, "jobId": "load-1", "location": "US"})
    );
    assert_eq!(
        job["selfLink"],
        emu.url(&format!(
            "/bigquery/v2/projects/{PROJECT}/jobs/load-1?location=US"
        ))
    );
    assert_eq!(job["status"], json!({"state": "DONE"}));
    assert_eq!(job["configuration"]["jobType"], "LOAD");
    assert_eq!(
        job["configuration"]["load"]["sourceFormat"],
        "NEWLINE_DELIMITED_JSON"
    );
    assert!(job["etag"].as_str().is_some_and(|e| e.len() == 24), "{job}");
    assert!(job["user_email"].is_string());
    let stats = &job["statistics"];
    for t in ["creationTime", "startTime", "endTime"] {
        assert!(
            stats[t].as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
            "{t}: {job}"
        );
    }
    assert_eq!(stats["load"]["inputFiles"], "1");
    assert_eq!(stats["load"]["inputFileBytes"], ROWS.len().to_string());
    assert_eq!(stats["load"]["outputRows"], "3");
    assert_eq!(stats["load"]["badRecords"], "0");
    // The rows are where tabledata.list and the count endpoint read.
    assert_eq!(emu.count("t"), 3);
    let (_, page) = emu.list("t", "");
    assert_eq!(page["rows"][2], json!({"f": [{"v": "c"}, {"v": "3"}]}));
    // Loaded rows are not in the streaming buffer.
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["numRows"], "3");
    assert!(table.get("streamingBuffer").is_none(), "{table}");
    // jobs.get answers the same resource.
    assert_eq!(emu.get_job("load-1"), (200, job));
}

#[test]
fn jobs_go_pending_running_done_and_rows_land_only_when_done() {
    let emu = Emulator::start(&["--job-delay-ms", "2000"]);
    emu.with_table(fields());
    let (status, job) = emu.load_multipart(&load_job("slow", ndjson(fields())), ROWS);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], json!({"state": "PENDING"}));
    assert!(job["statistics"].get("startTime").is_none(), "{job}");
    let mut seen = vec!["PENDING".to_string()];
    loop {
        // The count is read before the state: rows counted while the job, read after them,
        // is still not DONE were visible before it was done. (Read the other way round, a
        // job finishing between the two reads looked like that.)
        let count = emu.count("t");
        let (_, job) = emu.get_job("slow");
        let state = job["status"]["state"].as_str().unwrap().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "DONE" {
            assert_eq!(job["statistics"]["load"]["outputRows"], "3");
            break;
        }
        assert_eq!(count, 0, "rows visible before the job is done");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(seen, ["PENDING", "RUNNING", "DONE"]);
    assert_eq!(emu.count("t"), 3);
}

#[test]
fn resumable_upload_takes_chunks_answers_308_and_gzip_is_detected() {
    let emu = instant();
    let data = gzip(ROWS);
    let session = emu
        .resumable_session(&load_job("resumable-1", ndjson(fields())), None)
        .expect("session");
    assert!(
        session.contains("uploadType=resumable&upload_id="),
        "{session}"
    );
    // Nothing received yet: 308 without Range.
    assert_eq!(
        emu.put_chunk(&session, Some("bytes */*"), b""),
        (308, None, Value::Null)
    );
    let (first, rest) = data.split_at(10);
    let (status, range, _) = emu.put_chunk(&session, Some("bytes 0-9/*"), first);
    assert_eq!((status, range.as_deref()), (308, Some("bytes=0-9")));
    // A chunk sent again (its answer was lost) changes nothing.
    let (status, range, _) = emu.put_chunk(&session, Some("bytes 0-9/*"), first);
    assert_eq!((status, range.as_deref()), (308, Some("bytes=0-9")));
    let (status, range, _) = emu.put_chunk(&session, Some("bytes */*"), b"");
    assert_eq!((status, range.as_deref()), (308, Some("bytes=0-9")));
    // A chunk that does not continue where the upload is: 400.
    let (status, _, body) = emu.put_chunk(&session, Some("bytes 20-21/*"), b"xx");
    assert_eq!(status, 400, "{body}");
    let last = data.len() - 1;
    let (status, _, job) = emu.put_chunk(
        &session,
        Some(&format!("bytes 10-{last}/{}", data.len())),
        rest,
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"]["state"], "DONE");
    assert_eq!(
        job["statistics"]["load"]["inputFileBytes"],
        data.len().to_string()
    );
    assert_eq!(job["statistics"]["load"]["outputRows"], "3");
    assert_eq!(emu.count("t"), 3);
    // Asking again after the end answers the job (a client whose last answer was lost).
    let (status, _, again) = emu.put_chunk(&session, Some(&format!("bytes */{}", data.len())), b"");
    assert_eq!(
        (status, again["jobReference"]["jobId"].as_str()),
        (200, Some("resumable-1"))
    );
    assert_eq!(emu.count("t"), 3);
    // An unknown session is 404.
    let (status, _, _) = emu.put_chunk(&emu.upload_url("resumable&upload_id=nope"), None, b"x");
    assert_eq!(status, 404);
}

#[test]
fn resumable_upload_in_one_put_and_an_empty_upload() {
    let emu = instant();
    let session = emu
        .resumable_session(
            &load_job("one-put", ndjson(fields())),
            Some(ROWS.len() as u64),
        )
        .expect("session");
    let (status, _, job) = emu.put_chunk(&session, None, ROWS);
    assert_eq!(
        (status, job["statistics"]["load"]["outputRows"].clone()),
        (200, json!("3"))
    );
    // google-resumable-media finishes an empty stream with `bytes */0`.
    let session = emu
        .resumable_session(&load_job("empty", ndjson(fields())), None)
        .expect("session");
    let (status, _, job) = emu.put_chunk(&session, Some("bytes */0"), b"");
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["statistics"]["load"]["outputRows"], "0");
    assert_eq!(emu.count("t"), 3);
}

#[test]
fn csv_loads_with_header_quotes_delimiters_and_null_marker() {
    let emu = instant();
    let load = json!({
        "sourceFormat": "CSV", "skipLeadingRows": 1, "fieldDelimiter": "|", "nullMarker": "NULL",
        "allowQuotedNewlines": true,
        "schema": {"fields": fields()}
    });
    let data = b"msg|n\n\"quoted | pipe\"|7\n\"two\nlines\"|NULL\n";
    let (status, job) = emu.load_multipart(&load_job("csv", load.clone()), &gzip(data));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    let (_, page) = emu.list("t", "");
    assert_eq!(
        page["rows"],
        json!([
            {"f": [{"v": "quoted | pipe"}, {"v": "7"}]},
            {"f": [{"v": "two\nlines"}, {"v": null}]},
        ])
    );
    // With a custom null marker an empty INTEGER cell is not NULL but a value that does not
    // parse; without allowQuotedNewlines a quoted line break is an unterminated quote.
    let (_, job) = emu.load_multipart(&load_job("csv-empty", load), b"msg|n\nplain|\n");
    assert_eq!(
        job["status"]["errors"][2]["message"],
        "Error while reading data, error message: Unable to parse; line_number: 2 byte_offset_to_start_of_line: 6 column_index: 1 column_name: \"n\" column_type: INT64 value: \"\""
    );
    let load = json!({"sourceFormat": "CSV", "schema": {"fields": fields()}});
    let (_, job) = emu.load_multipart(&load_job("csv-newline", load), b"\"a\nb\",1\n");
    assert_eq!(
        job["status"]["errors"][2]["message"],
        "Error while reading data, error message: Error detected while parsing row starting at position: 0. Error: Missing close double quote (\") character."
    );
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn bad_rows_within_max_bad_records_are_skipped_and_listed() {
    let emu = instant();
    let mut load = ndjson(fields());
    load["maxBadRecords"] = json!(2);
    let data =
        b"{\"msg\": \"ok\"}\n{\"n\": 1}\n{\"msg\": \"x\", \"n\": \"one\"}\n{\"msg\": \"ok2\"}\n";
    let (status, job) = emu.load_multipart(&load_job("tolerant", load), data);
    assert_eq!(status, 200, "{job}");
    assert!(job["status"].get("errorResult").is_none(), "{job}");
    assert_eq!(
        job["status"]["errors"],
        json!([
            {"reason": "invalid", "location": "file-00000000",
             "message": "Error while reading data, error message: JSON parsing error in row starting at position 14: Missing required field: msg."},
            {"reason": "invalid", "location": "file-00000000",
             "message": "Error while reading data, error message: JSON parsing error in row starting at position 23: Could not convert value 'string_value: \"one\"' to integer. Field: n; Value: one"},
        ])
    );
    assert_eq!(job["statistics"]["load"]["badRecords"], "2");
    assert_eq!(job["statistics"]["load"]["outputRows"], "2");
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn too_many_bad_rows_fail_the_job_and_load_nothing() {
    let emu = instant();
    let mut load = ndjson(fields());
    load["maxBadRecords"] = json!(1);
    let data = b"{\"msg\": \"ok\"}\n{\"msg\": [1]}\n{\"msg\": \"ok\"}\n{\"msg\": \"x\", \"extra\": true}\n{\"msg\": \"never read\"}\n";
    let (status, job) = emu.load_multipart(&load_job("strict", load), data);
    assert_eq!(status, 200, "{job}");
    let prefix = "Error while reading data, error message: ";
    let summary = json!({"reason": "invalid", "message": format!(
        "{prefix}JSON table encountered too many errors, giving up. Rows: 4; errors: 2. Please look into the errors[] collection for more details.")});
    assert_eq!(
        job["status"],
        json!({
            "state": "DONE",
            "errorResult": summary,
            "errors": [
                summary,
                {"reason": "invalid", "message": format!(
                    "{prefix}JSON processing encountered too many errors, giving up. Rows: 4; errors: 2; max bad: 1; error percent: 0")},
                {"reason": "invalid", "location": "file-00000000", "message": format!(
                    "{prefix}JSON parsing error in row starting at position 14: Array specified for non-repeated field: msg.")},
                {"reason": "invalid", "location": "file-00000000", "message": format!(
                    "{prefix}JSON parsing error in row starting at position 41: No such field: extra.")},
            ]
        })
    );
    assert!(job["statistics"].get("load").is_none(), "{job}");
    assert_eq!(emu.count("t"), 0, "a failed load is all or nothing");
}

#[test]
fn ignore_unknown_values_skips_unknown_members() {
    let emu = instant();
    let mut load = ndjson(fields());
    load["ignoreUnknownValues"] = json!(true);
    let data = b"{\"msg\": \"x\", \"extra\": {\"deep\": 1}}\n";
    let (_, job) = emu.load_multipart(&load_job("lenient", load), data);
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    assert_eq!(emu.count("t"), 1);
}

#[test]
fn schema_update_options_add_a_column_and_relax_one() {
    let emu = instant();
    let wider = json!([
        {"name": "msg", "type": "STRING"},
        {"name": "n", "type": "INTEGER"},
        {"name": "tag", "type": "STRING"}
    ]);
    let added = json!([
        {"name": "msg", "type": "STRING", "mode": "REQUIRED"},
        {"name": "n", "type": "INTEGER"},
        {"name": "tag", "type": "STRING"}
    ]);
    let data = b"{\"msg\": \"x\", \"tag\": \"new\"}\n";
    // Without the options the job's schema must be the table's.
    let (_, job) = emu.load_multipart(&load_job("no-options", ndjson(added)), data);
    assert_eq!(
        job["status"]["errorResult"],
        json!({"reason": "invalid", "message": format!(
            "Provided Schema does not match Table {PROJECT}:d.t. Cannot add fields (field: tag)")}),
        "{job}"
    );
    let mut load = ndjson(wider.clone());
    load["schemaUpdateOptions"] = json!(["ALLOW_FIELD_ADDITION"]);
    let (_, job) = emu.load_multipart(&load_job("add-only", load), data);
    assert_eq!(
        job["status"]["errorResult"]["message"],
        format!(
            "Provided Schema does not match Table {PROJECT}:d.t. Field msg has changed mode from REQUIRED to NULLABLE"
        )
    );
    let mut load = ndjson(wider.clone());
    load["schemaUpdateOptions"] = json!(["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"]);
    let (_, job) = emu.load_multipart(&load_job("add-and-relax", load), data);
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(table["schema"]["fields"], wider);
    let (_, page) = emu.list("t", "");
    assert_eq!(
        page["rows"][0],
        json!({"f": [{"v": "x"}, {"v": null}, {"v": "new"}]})
    );
}

#[test]
fn dispositions_truncate_refuse_non_empty_and_never_create() {
    let emu = instant();
    emu.load_multipart(&load_job("first", ndjson(fields())), ROWS);
    // WRITE_TRUNCATE replaces the rows, and with a schema the schema too.
    let mut load = ndjson(json!([{"name": "only", "type": "STRING"}]));
    load["writeDisposition"] = json!("WRITE_TRUNCATE");
    let (_, job) = emu.load_multipart(&load_job("truncate", load), b"{\"only\": \"z\"}\n");
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    assert_eq!(emu.count("t"), 1);
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/t"));
    assert_eq!(
        table["schema"]["fields"],
        json!([{"name": "only", "type": "STRING"}])
    );
    // WRITE_EMPTY on a table with rows: the job fails with `duplicate`.
    let mut load =
        json!({"sourceFormat": "NEWLINE_DELIMITED_JSON", "writeDisposition": "WRITE_EMPTY"});
    load["destinationTable"] = json!({"projectId": PROJECT, "datasetId": "d", "tableId": "t"});
    let (_, job) = emu.load_multipart(&load_job("empty-only", load), b"{\"only\": \"y\"}\n");
    assert_eq!(
        job["status"]["errorResult"],
        json!({"reason": "duplicate", "message": format!("Already Exists: Table {PROJECT}:d.t")})
    );
    // CREATE_NEVER on a missing table, and a missing dataset: notFound.
    let mut load = ndjson(fields());
    load["createDisposition"] = json!("CREATE_NEVER");
    load["destinationTable"] =
        json!({"projectId": PROJECT, "datasetId": "d", "tableId": "missing"});
    let (_, job) = emu.load_multipart(&load_job("never", load), ROWS);
    assert_eq!(
        job["status"]["errorResult"],
        json!({"reason": "notFound", "message": format!("Not found: Table {PROJECT}:d.missing")})
    );
    let mut load = ndjson(fields());
    load["destinationTable"] = json!({"projectId": PROJECT, "datasetId": "nodata", "tableId": "t"});
    let (_, job) = emu.load_multipart(&load_job("no-dataset", load), ROWS);
    assert_eq!(
        job["status"]["errorResult"],
        json!({"reason": "notFound", "message": format!("Not found: Dataset {PROJECT}:nodata")})
    );
}

#[test]
fn create_if_needed_makes_the_table_with_partitioning_and_autodetect() {
    let emu = Emulator::start(&["--job-delay-ms", "0"]);
    emu.create_dataset("d");
    let load = json!({
        "sourceFormat": "NEWLINE_DELIMITED_JSON", "autodetect": true,
        "timePartitioning": {"type": "DAY", "field": "ts"},
        "destinationTable": {"projectId": PROJECT, "datasetId": "d", "tableId": "auto"},
        "destinationTableProperties": {"description": "made by a load"}
    });
    let data = b"{\"ts\": \"2026-11-25 10:00:00\", \"n\": 1, \"ok\": true}\n{\"ts\": \"2026-11-26 10:00:00\", \"n\": 2.5}\n";
    let (_, job) = emu.load_multipart(&load_job("auto", load), data);
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    let (_, table) = emu.get(&emu.api("/datasets/d/tables/auto"));
    assert_eq!(
        table["schema"]["fields"],
        json!([
            {"name": "ts", "type": "TIMESTAMP", "mode": "NULLABLE"},
            {"name": "n", "type": "FLOAT", "mode": "NULLABLE"},
            {"name": "ok", "type": "BOOLEAN", "mode": "NULLABLE"},
        ])
    );
    assert_eq!(table["description"], "made by a load");
    assert_eq!(
        table["timePartitioning"],
        json!({"type": "DAY", "field": "ts"})
    );
    let (_, partition) = emu.list("auto$20261126", "");
    assert_eq!(partition["totalRows"], "1");
}

#[test]
fn a_repeated_job_id_is_409_before_and_after_a_restart_and_the_job_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let conflict = error_body(
        409,
        "duplicate",
        &format!("Already Exists: Job {PROJECT}:US.once"),
        "ALREADY_EXISTS",
    );
    let job = load_job("once", ndjson(fields()));
    let first = {
        let emu = Emulator::start(&["--job-delay-ms", "0", "--data-dir", path]);
        emu.with_table(fields());
        let (status, first) = emu.load_multipart(&job, ROWS);
        assert_eq!(status, 200, "{first}");
        assert_eq!(
            emu.load_multipart(&job, b"{\"msg\": \"other\"}\n"),
            (409, conflict.clone())
        );
        assert_eq!(emu.count("t"), 3);
        emu.stop();
        first
    };
    let emu = Emulator::start(&["--job-delay-ms", "0", "--data-dir", path]);
    let (status, mut after) = emu.get_job("once");
    assert_eq!(status, 200);
    // Everything but the selfLink, which names the emulator's new port.
    let (mut first, port) = (first, emu.port.to_string());
    assert!(after["selfLink"].as_str().unwrap().contains(&port));
    first.as_object_mut().unwrap().remove("selfLink");
    after.as_object_mut().unwrap().remove("selfLink");
    assert_eq!(after, first);
    assert_eq!(emu.load_multipart(&job, ROWS), (409, conflict.clone()));
    // A resumable session for the same id is refused before any data is sent; the metadata
    // URI answers the same.
    assert_eq!(
        emu.resumable_session(&job, None),
        Err((409, conflict.clone()))
    );
    assert_eq!(emu.post(&emu.api("/jobs"), &job), (409, conflict));
    assert_eq!(emu.count("t"), 3);
    let stats = emu.stats();
    assert_eq!(stats["jobs_duplicate"], 3, "{stats}");
}

#[test]
fn a_job_left_pending_by_a_restart_finishes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    {
        let emu = Emulator::start(&["--job-delay-ms", "1500", "--data-dir", path]);
        emu.with_table(fields());
        let (_, job) = emu.load_multipart(&load_job("survivor", ndjson(fields())), &gzip(ROWS));
        assert_eq!(job["status"]["state"], "PENDING");
        emu.stop();
    }
    let emu = Emulator::start(&["--job-delay-ms", "1500", "--data-dir", path]);
    let (job, _) = emu.wait_job("survivor");
    assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    assert_eq!(emu.count("t"), 3);
}

#[test]
fn cancel_stops_a_running_job_and_leaves_a_done_one() {
    let emu = Emulator::start(&["--job-delay-ms", "800"]);
    emu.with_table(fields());
    emu.load_multipart(&load_job("doomed", ndjson(fields())), ROWS);
    let (status, answer) = emu.post(&emu.api("/jobs/doomed/cancel"), &json!({}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["kind"], "bigquery#jobCancelResponse");
    let stopped = json!({"reason": "stopped", "message": "Job execution was cancelled: User requested cancellation"});
    assert_eq!(
        answer["job"]["status"],
        json!({"state": "DONE", "errorResult": stopped, "errors": [stopped]})
    );
    // Past the time the job would have finished, nothing was loaded.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(emu.count("t"), 0);
    assert_eq!(emu.get_job("doomed").1["status"]["errorResult"], stopped);
    // Cancelling a done job answers it unchanged.
    emu.load_multipart(&load_job("done", ndjson(fields())), ROWS);
    let (done, _) = emu.wait_job("done");
    let (status, answer) = emu.post(&emu.api("/jobs/done/cancel?location=US"), &json!({}));
    assert_eq!((status, &answer["job"]), (200, &done));
    assert_eq!(emu.count("t"), 3);
    assert_eq!(emu.stats()["jobs_cancelled"], 1);
}

#[test]
fn jobs_list_pages_filters_and_projects() {
    let emu = instant();
    for id in ["j1", "j2", "j3"] {
        emu.load_multipart(&load_job(id, ndjson(fields())), ROWS);
    }
    emu.post(
        &emu.url("/_emulator/faults"),
        &json!({"job_delay_ms": 60000}),
    );
    emu.load_multipart(&load_job("j4", ndjson(fields())), ROWS);
    let ids = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .map(|j| j["jobReference"]["jobId"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, page) = emu.get(&emu.api("/jobs?maxResults=3&allUsers=true&projection=full"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["kind"], "bigquery#jobList");
    assert_eq!(ids(&page), ["j4", "j3", "j2"], "newest first");
    assert_eq!(page["jobs"][0]["state"], "PENDING");
    assert!(page["jobs"][0]["configuration"]["load"].is_object());
    let token = page["nextPageToken"].as_str().unwrap().to_string();
    let (_, next) = emu.get(&emu.api(&format!("/jobs?maxResults=3&pageToken={token}")));
    assert_eq!(ids(&next), ["j1"]);
    assert!(next.get("nextPageToken").is_none());
    let (_, pending) = emu.get(&emu.api("/jobs?stateFilter=pending"));
    assert_eq!(ids(&pending), ["j4"]);
    let (_, settled) = emu.get(&emu.api("/jobs?stateFilter=done&stateFilter=running"));
    assert_eq!(ids(&settled), ["j3", "j2", "j1"]);
    let (_, minimal) = emu.get(&emu.api("/jobs?projection=minimal&maxResults=1"));
    let item = &minimal["jobs"][0];
    assert!(
        item.get("configuration").is_none() && item.get("user_email").is_none(),
        "{item}"
    );
    assert_eq!(item["id"], format!("{PROJECT}:US.j4"));
    let (_, none) = emu.get(&emu.api("/jobs?parentJobId=j1"));
    assert!(none.get("jobs").is_none(), "{none}");
    let (status, _) = emu.get(&emu.api("/jobs?stateFilter=sleeping"));
    assert_eq!(status, 400);
}

#[test]
fn unknown_jobs_and_unsupported_loads_get_clear_errors() {
    let emu = instant();
    assert_eq!(
        emu.get_job("ghost"),
        (
            404,
            error_body(
                404,
                "notFound",
                &format!("Not found: Job {PROJECT}:ghost"),
                "NOT_FOUND"
            )
        )
    );
    assert_eq!(
        emu.get(&emu.api("/jobs/ghost?location=us")).1["error"]["message"],
        format!("Not found: Job {PROJECT}:US.ghost")
    );
    let (status, body) = emu.load_multipart(
        &load_job("avro", json!({"sourceFormat": "AVRO"})),
        b"Obj\x01",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["errors"][0]["reason"], "invalid");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("AVRO"),
        "{body}"
    );
    let (status, body) = emu.load_multipart(&load_job("bad id!", ndjson(fields())), ROWS);
    assert_eq!(status, 400, "{body}");
    // Loads from Cloud Storage and query jobs are not run: a clear 400, no job.
    let (status, body) = emu.post(
        &emu.api("/jobs"),
        &json!({"configuration": {"query": {"query": "SELECT 1"}}}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = emu.post(
        &emu.api("/jobs"),
        &load_job("metadata-only", ndjson(fields())),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/upload/bigquery/v2"),
        "{body}"
    );
    let (status, _) = emu.get(&emu.api("/jobs?bogus=1"));
    assert_eq!(status, 400);
    // A multipart upload without its data part.
    let boundary = "b0undary";
    let only_metadata = format!(
        "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{}\r\n--{boundary}--",
        load_job("half", ndjson(fields()))
    );
    let resp = crate::common::jobs::http()
        .post(emu.upload_url("multipart"))
        .header(
            "Content-Type",
            format!("multipart/related; boundary={boundary}"),
        )
        .body(only_metadata)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(emu.get_job("half").0, 404);
    let (status, _) = emu.post(&emu.upload_url("media"), &json!({}));
    assert_eq!(status, 400);
}

#[test]
fn load_jobs_per_table_per_day_run_out_with_quota_exceeded() {
    let emu = Emulator::start(&[
        "--job-delay-ms",
        "0",
        "--max-load-jobs-per-table-per-day",
        "2",
    ]);
    emu.with_table(fields());
    for id in ["q1", "q2"] {
        let (_, job) = emu.load_multipart(&load_job(id, ndjson(fields())), ROWS);
        assert_eq!(job["status"], json!({"state": "DONE"}), "{job}");
    }
    let (status, job) = emu.load_multipart(&load_job("q3", ndjson(fields())), ROWS);
    assert_eq!(status, 200);
    let quota = json!({
        "reason": "quotaExceeded", "location": "load_job_per_table.long",
        "message": "Quota exceeded: Your table exceeded quota for imports or query appends per table. For more information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas"
    });
    assert_eq!(
        job["status"],
        json!({"state": "DONE", "errorResult": quota, "errors": [quota]})
    );
    assert_eq!(emu.count("t"), 6);
}
