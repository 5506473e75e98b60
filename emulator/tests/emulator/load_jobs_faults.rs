//! Fault injection for load jobs: failed jobs (`job_failure_rate`), errors and dropped connections
//! on uploads and on jobs requests (`scope` `upload` / `jobs`), answers lost after the job was
//! created (`drop_response_rate`): the retry paths a load job client must take.

use serde_json::{Value, json};

use crate::common::jobs::{http, load_job, ndjson};
use crate::common::{Emulator, PROJECT, error_body};

fn fields() -> Value {
    json!([{"name": "msg", "type": "STRING"}])
}

const ROWS: &[u8] = b"{\"msg\": \"a\"}\n{\"msg\": \"b\"}\n";

fn setup() -> Emulator {
    let emu = Emulator::start(&["--job-delay-ms", "0"]);
    emu.with_table(fields());
    emu
}

fn set_faults(emu: &Emulator, faults: Value) {
    let (status, body) = emu.post(&emu.url("/_emulator/faults"), &faults);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn failed_jobs_answer_a_retryable_backend_error_and_load_nothing() {
    let emu = setup();
    set_faults(&emu, json!({"job_failure_rate": 0.5}));
    let (status, job) = emu.load_multipart(&load_job("try-1", ndjson(fields())), ROWS);
    assert_eq!(
        (status, &job["status"]),
        (200, &json!({"state": "DONE"})),
        "{job}"
    );
    let (_, job) = emu.load_multipart(&load_job("try-2", ndjson(fields())), ROWS);
    let backend = json!({"reason": "backendError",
        "message": "Error encountered during execution. Retrying may solve the problem."});
    assert_eq!(
        job["status"],
        json!({"state": "DONE", "errorResult": backend, "errors": [backend]})
    );
    // The client retries with a new job id (the failed one exists: 409 for it).
    assert_eq!(
        emu.load_multipart(&load_job("try-2", ndjson(fields())), ROWS)
            .0,
        409
    );
    let (_, job) = emu.load_multipart(&load_job("try-3", ndjson(fields())), ROWS);
    assert_eq!(job["status"], json!({"state": "DONE"}));
    assert_eq!(emu.count("t"), 4);
    let stats = emu.stats();
    assert_eq!(stats["faults_job_failures"], 1, "{stats}");
    assert_eq!(stats["jobs_failed"], 1, "{stats}");
    assert_eq!(stats["jobs_succeeded"], 2, "{stats}");
    assert_eq!(stats["rows_loaded"], 4, "{stats}");
    assert_eq!(stats["faults_injected"], 1, "{stats}");
}

#[test]
fn upload_errors_create_no_job_and_spare_other_requests() {
    let emu = setup();
    set_faults(&emu, json!({"error_503_rate": 1.0, "scope": "upload"}));
    assert_eq!(
        emu.load_multipart(&load_job("unlucky", ndjson(fields())), ROWS),
        (
            503,
            error_body(
                503,
                "backendError",
                "The service is currently unavailable.",
                "UNAVAILABLE"
            )
        )
    );
    assert_eq!(
        emu.resumable_session(&load_job("unlucky", ndjson(fields())), None)
            .unwrap_err()
            .0,
        503
    );
    // jobs.get is out of the `upload` scope: it answers, and there is no job.
    assert_eq!(emu.get_job("unlucky").0, 404);
    set_faults(&emu, json!({}));
    let (status, _) = emu.load_multipart(&load_job("unlucky", ndjson(fields())), ROWS);
    assert_eq!(status, 200);
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn a_lost_answer_leaves_the_job_created_and_the_retry_gets_409() {
    let emu = setup();
    set_faults(&emu, json!({"drop_response_rate": 1.0, "scope": "upload"}));
    let (content_type, body) = Emulator::multipart_body(&load_job("lost", ndjson(fields())), ROWS);
    let sent = http()
        .post(emu.upload_url("multipart"))
        .header("Content-Type", content_type)
        .body(body)
        .send();
    assert!(sent.is_err(), "expected no answer, got {sent:?}");
    // The job ran: the client finds it with jobs.get (not faulted in this scope) ...
    let (job, _) = emu.wait_job("lost");
    assert_eq!(job["statistics"]["load"]["outputRows"], "2");
    assert_eq!(emu.count("t"), 2);
    // ... and a blind retry of the same job id is refused, so nothing is loaded twice.
    set_faults(&emu, json!({}));
    let (status, body) = emu.load_multipart(&load_job("lost", ndjson(fields())), ROWS);
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("Already Exists: Job {PROJECT}:US.lost")
    );
    assert_eq!(emu.count("t"), 2);
    assert_eq!(emu.stats()["faults_response_dropped"], 1);
}

#[test]
fn a_lost_answer_to_the_last_chunk_is_recovered_by_asking_the_session() {
    let emu = setup();
    let session = emu
        .resumable_session(&load_job("chunked", ndjson(fields())), None)
        .expect("session");
    set_faults(&emu, json!({"drop_response_rate": 1.0, "scope": "upload"}));
    let last = ROWS.len() - 1;
    let sent = http()
        .put(&session)
        .header("Content-Range", format!("bytes 0-{last}/{}", ROWS.len()))
        .body(ROWS.to_vec())
        .send();
    assert!(sent.is_err(), "expected no answer, got {sent:?}");
    set_faults(&emu, json!({}));
    // Google's recovery: ask the session how far it got; it is complete and answers the job.
    let (status, _, job) = emu.put_chunk(&session, Some("bytes */*"), b"");
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["jobReference"]["jobId"], "chunked");
    assert_eq!(emu.count("t"), 2);
}

#[test]
fn jobs_scope_faults_jobs_get_and_dropped_polls_can_be_retried() {
    let emu = setup();
    emu.load_multipart(&load_job("polled", ndjson(fields())), ROWS);
    set_faults(&emu, json!({"error_500_rate": 0.5, "scope": "jobs"}));
    let statuses: Vec<u16> = (0..4).map(|_| emu.get_job("polled").0).collect();
    assert_eq!(statuses, [200, 500, 200, 500]);
    // Table requests are out of the `jobs` scope.
    assert_eq!(emu.get(&emu.api("/datasets/d/tables/t")).0, 200);
    set_faults(&emu, json!({"drop_rate": 1.0, "scope": "jobs"}));
    let dropped = http().get(emu.api("/jobs/polled")).send();
    assert!(dropped.is_err(), "expected no answer, got {dropped:?}");
    set_faults(&emu, json!({}));
    assert_eq!(emu.get_job("polled").0, 200);
    let stats = emu.stats();
    assert_eq!(stats["faults_500"], 2, "{stats}");
    assert_eq!(stats["faults_dropped"], 1, "{stats}");
}

/// Rows enough that creating their job takes a while: the client is gone before it is made.
fn many_rows() -> Vec<u8> {
    (0..60_000)
        .flat_map(|i| {
            format!("{{\"msg\": \"row {i:08} of a client that hung up\"}}\n").into_bytes()
        })
        .collect()
}

/// Sends `head` and `body` on a connection of its own and closes it without reading the answer,
/// as a client killed (kill -9) or timed out while it waits does.
fn send_and_hang_up(emu: &Emulator, head: String, body: &[u8]) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", emu.port)).expect("connect");
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    stream.flush().expect("flush");
    drop(stream);
}

/// Polls jobs.get until the job exists and is DONE (BigQuery runs a job it received, whatever
/// became of the connection that brought it).
fn wait_done(emu: &Emulator, job_id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, job) = emu.get_job(job_id);
        if status == 200 && job["status"]["state"] == "DONE" {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job_id} not DONE 30 s after its client hung up: {status} {job}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_job_whose_client_hung_up_before_the_answer_still_runs() {
    let emu = Emulator::start(&["--job-delay-ms", "200"]);
    emu.with_table(fields());
    let data = many_rows();
    let (content_type, body) =
        Emulator::multipart_body(&load_job("orphan", ndjson(fields())), &data);
    let head = format!(
        "POST /upload/bigquery/v2/projects/{PROJECT}/jobs?uploadType=multipart HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    send_and_hang_up(&emu, head, &body);
    let job = wait_done(&emu, "orphan");
    assert!(job["status"].get("errorResult").is_none(), "{job}");
    assert_eq!(emu.count("t"), 60_000);

    // The last piece of a resumable upload: the job runs, and the session, asked again after
    // the lost answer, answers with it.
    let session = emu
        .resumable_session(&load_job("orphan-2", ndjson(fields())), None)
        .unwrap();
    let path = session
        .split_once("127.0.0.1")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| format!("/{path}"))
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\nContent-Range: bytes 0-{}/{}\r\nContent-Length: {}\r\n\r\n",
        data.len() - 1,
        data.len(),
        data.len()
    );
    send_and_hang_up(&emu, head, &data);
    wait_done(&emu, "orphan-2");
    let (status, _, job) = emu.put_chunk(&session, Some(&format!("bytes */{}", data.len())), &[]);
    assert_eq!(
        (status, &job["jobReference"]["jobId"]),
        (200, &json!("orphan-2")),
        "{job}"
    );
    assert_eq!(emu.count("t"), 120_000);
}
