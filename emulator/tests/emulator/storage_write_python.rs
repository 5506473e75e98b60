//! Google's own Python client (google-cloud-bigquery-storage, pinned in
//! tests/clients/requirements.txt) against the emulator's Storage Write API:
//! `BigQueryWriteClient` over `grpc.insecure_channel` and `writer.AppendRowsStream`, as Google's
//! samples use them. The script reports what the client saw; this test judges it.

use serde_json::{Value, json};

use crate::common::{Emulator, run_client};

fn error(class: &str) -> Value {
    json!(class)
}

#[test]
fn googles_python_client_appends_commits_flushes_and_sees_bigquerys_errors() {
    // Schema changes reach the write path at once here; the delay has its own test.
    let emu = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    let grpc = emu.grpc_port.expect("grpc port").to_string();
    let seen = run_client("storage_write.py", emu.port, &[&grpc]);

    // Every type through the default stream (no offsets there), read back over REST.
    assert_eq!(seen["types"], json!([{"offset": null}, {"offset": null}]));
    let (_, page) = emu.list("types", "?formatOptions.useInt64Timestamp=true");
    let v = |s: &str| json!({"v": s});
    assert_eq!(
        page["rows"][0]["f"],
        json!([
            v("héllo"), v("AP8="), v("-7"), v("0.25"), v("-12.34"), v("2.5"), v("true"),
            v("1795600800000001"), v("2026-11-25"), v("23:59:59.999999"),
            v("2026-11-25T10:00:00"), v("POINT(-122.35 47.62)"), v("{\"k\":[1,2]}"),
            {"v": {"f": [v("3")]}}, {"v": [v("x"), v("y")]}
        ])
    );
    assert_eq!(page["rows"][1]["f"][0], v("second"));

    // PENDING: offsets, BigQuery's exceptions through the client, rows only after the commit.
    assert_eq!(
        seen["pending_created"],
        json!({"type": "PENDING", "schema": ["name", "n"]})
    );
    let pending = seen["pending"].as_array().expect("pending outcomes");
    assert_eq!(pending[0], json!({"offset": 0}));
    assert_eq!(pending[1]["error"], error("AlreadyExists"));
    assert!(
        pending[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("The offset is within stream, expected offset 2, received 0")
    );
    assert_eq!(pending[2]["error"], error("OutOfRange"));
    assert_eq!(pending[3]["error"], error("InvalidArgument"));
    assert_eq!(
        pending[3]["row_errors"],
        json!([{"index": 1, "code": 1, "message": "Missing required field: name."}])
    );
    assert_eq!(pending[4], json!({"offset": 2}));
    assert_eq!(seen["pending_count_before_commit"], 0);
    assert_eq!(seen["finalized_rows"], 3);
    assert_eq!(
        seen["commit"],
        json!({"has_commit_time": true, "stream_errors": 0})
    );
    assert_eq!(seen["pending_count_after_commit"], 3);
    assert_eq!(
        seen["pending_shown"],
        json!({"committed": true, "schema": ["name", "n"]})
    );

    // BUFFERED: FlushRows to offset 1 makes two rows visible.
    assert_eq!(seen["buffered_append"], json!({"offset": 0}));
    assert_eq!(seen["buffered"], json!({"flushed": 1, "visible": 2}));

    assert_eq!(seen["default_offset"]["error"], error("InvalidArgument"));
    assert_eq!(seen["create_missing_table"], error("NotFound"));
    assert_eq!(seen["get_missing_stream"], error("NotFound"));
    // The call ends with NOT_FOUND while the client opens it; it reports that as Unknown
    // ("There was a problem opening the stream").
    assert_eq!(seen["append_missing_table"], error("Unknown"));

    // A dropped connection after the append landed: the client sees the socket close, its
    // retry with the same offset is ALREADY_EXISTS, and the row is there once.
    let faults = &seen["faults"];
    assert_eq!(faults["first"], json!({"offset": 0}));
    assert_eq!(faults["dropped"]["error"], error("ServiceUnavailable"));
    assert_eq!(faults["resent"]["error"], error("AlreadyExists"));
    assert_eq!(
        faults["unavailable"],
        json!({"error": "ServiceUnavailable", "message": "The service is currently unavailable."})
    );
    assert_eq!(faults["rows"], 2);

    assert_eq!(
        seen["updated_schema"],
        json!({"before": {"offset": null}, "after": {"offset": null, "updated_schema": ["name", "more"]}})
    );
}
