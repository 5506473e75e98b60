//! The Storage Write API (`BigQueryWrite` on `--grpc-port`) through a tonic client: streams,
//! offsets, row decoding for every type, errors as BigQuery signals them, faults, durability.
//! Expected answers: <https://cloud.google.com/bigquery/docs/write-api>, the API reference
//! (storage.proto), <https://cloud.google.com/bigquery/docs/supported-data-types>, and messages
//! observed from BigQuery as cited in `emulator/src/grpc/errors.rs`.

use bq_storage_proto::tonic::Code;
use bq_storage_proto::v1::WriteStreamView;
use bq_storage_proto::v1::storage_error::StorageErrorCode;
use bq_storage_proto::v1::table_field_schema;
use bq_storage_proto::v1::write_stream::Type;
use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type as T};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

use crate::common::Emulator;
use crate::common::write::{
    WriteClient, code_of, default_stream, describe, error_of, message, offset_of, optional,
    request, status_storage_codes, storage_codes, table_path, typed,
};

/// Table `d.t` with a REQUIRED string `name` and a nullable integer `n`.
fn simple_table(emu: &Emulator) {
    emu.with_table(json!([
        {"name": "name", "type": "STRING", "mode": "REQUIRED"},
        {"name": "n", "type": "INTEGER"}
    ]));
}

fn simple_row() -> DescriptorProto {
    message(
        "Row",
        vec![optional("name", 1, T::String), optional("n", 2, T::Int64)],
    )
}

/// The first column of every row, as tabledata.list shows it.
fn names(emu: &Emulator, table: &str) -> Vec<Value> {
    let (status, page) = emu.list(table, "");
    assert_eq!(status, 200, "{page}");
    page["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["f"][0]["v"].clone()).collect())
        .unwrap_or_default()
}

fn rows_named(list: &[&str]) -> Vec<Value> {
    list.iter().map(|n| json!({"name": n})).collect()
}

#[test]
fn default_stream_rows_land_where_tabledata_list_reads() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let stream = default_stream("t");
    let call = client.append(vec![
        request(
            &stream,
            Some(&schema),
            &desc,
            &[json!({"name": "a", "n": 1}), json!({"name": "b"})],
            None,
        ),
        request("", None, &desc, &rows_named(&["c"]), None),
    ]);
    assert!(call.end.is_ok(), "{:?}", call.end);
    assert_eq!(call.responses.len(), 2);
    for response in &call.responses {
        // No offset for the default stream; the target is echoed back.
        assert_eq!(offset_of(response), Some(None), "{response:?}");
        assert_eq!(response.write_stream, stream);
        assert!(response.row_errors.is_empty());
        assert!(response.updated_schema.is_none());
    }
    assert_eq!(emu.count("t"), 3);
    let (_, page) = emu.list("t", "");
    assert_eq!(page["rows"][0], json!({"f": [{"v": "a"}, {"v": "1"}]}));
    assert_eq!(page["rows"][1], json!({"f": [{"v": "b"}, {"v": null}]}));
    let stats = emu.stats();
    assert_eq!(stats["grpc_requests"], 1);
    assert_eq!(stats["append_rows_requests"], 2);
    assert_eq!(stats["rows_inserted"], 3);
    assert_eq!(stats["rows_accepted"], 3);
    // `requests` counts REST API requests only, as before (dataset, table, list).
    assert_eq!(stats["requests"], 3);
}

/// Every type from its preferred proto type and from the alternatives BigQuery documents.
#[test]
fn every_bigquery_type_decodes_from_its_documented_proto_types() {
    let emu = Emulator::start_grpc(&[]);
    emu.with_table(json!([
        {"name": "s", "type": "STRING"},
        {"name": "b", "type": "BYTES"},
        {"name": "i", "type": "INTEGER"},
        {"name": "f", "type": "FLOAT"},
        {"name": "n", "type": "NUMERIC"},
        {"name": "bn", "type": "BIGNUMERIC"},
        {"name": "ok", "type": "BOOLEAN"},
        {"name": "ts", "type": "TIMESTAMP"},
        {"name": "d", "type": "DATE"},
        {"name": "t", "type": "TIME"},
        {"name": "dt", "type": "DATETIME"},
        {"name": "g", "type": "GEOGRAPHY"},
        {"name": "j", "type": "JSON"},
        {"name": "r", "type": "RECORD", "fields": [
            {"name": "x", "type": "INTEGER"}, {"name": "y", "type": "STRING"}]},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "recs", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "x", "type": "INTEGER"}]}
    ]));
    let client = WriteClient::connect(&emu);
    let nested = |name: &str, fields| DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..DescriptorProto::default()
    };
    let preferred = DescriptorProto {
        nested_type: vec![
            nested(
                "R",
                vec![optional("x", 1, T::Int64), optional("y", 2, T::String)],
            ),
            nested("X", vec![optional("x", 1, T::Int64)]),
        ],
        ..message(
            "Preferred",
            vec![
                optional("s", 1, T::String),
                optional("b", 2, T::Bytes),
                optional("i", 3, T::Int64),
                optional("f", 4, T::Double),
                optional("n", 5, T::String),
                optional("bn", 6, T::Bytes),
                optional("ok", 7, T::Bool),
                optional("ts", 8, T::Int64),
                optional("d", 9, T::Int32),
                optional("t", 10, T::String),
                optional("dt", 11, T::Int64),
                optional("g", 12, T::String),
                optional("j", 13, T::String),
                typed("r", 14, T::Message, ".test.Preferred.R", Label::Optional),
                crate::common::write::field("tags", 15, T::String, Label::Repeated),
                typed("recs", 16, T::Message, ".test.Preferred.X", Label::Repeated),
            ],
        )
    };
    let wrapper = |name: &str, n, wk: &str| typed(name, n, T::Message, wk, Label::Optional);
    let alternative = DescriptorProto {
        enum_type: vec![prost_types::EnumDescriptorProto {
            name: Some("Color".into()),
            value: vec![
                prost_types::EnumValueDescriptorProto {
                    name: Some("RED".into()),
                    number: Some(0),
                    ..Default::default()
                },
                prost_types::EnumValueDescriptorProto {
                    name: Some("BLUE".into()),
                    number: Some(7),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..message(
            "Alternative",
            vec![
                typed("s", 1, T::Enum, "Color", Label::Optional),
                optional("b", 2, T::String),
                wrapper("i", 3, ".google.protobuf.Int64Value"),
                optional("f", 4, T::Float),
                optional("n", 5, T::Bytes),
                optional("bn", 6, T::String),
                optional("ok", 7, T::Int64),
                wrapper("ts", 8, ".google.protobuf.Timestamp"),
                optional("d", 9, T::String),
                optional("t", 10, T::Int64),
                optional("dt", 11, T::String),
                typed(
                    "tags",
                    15,
                    T::Enum,
                    ".test.Alternative.Color",
                    Label::Repeated,
                ),
            ],
        )
    };
    let p = describe(&preferred);
    let a = describe(&alternative);
    let stream = default_stream("t");
    let call = client.append(vec![
        request(
            &stream,
            Some(&preferred),
            &p,
            &[json!({
                "s": "hello", "b": "hi", "i": -5, "f": 2.5, "n": "123.4500",
                // BigDecimalByteStringEncoder.encodeToBigNumericByteString(1.5)
                "bn": [0,0,0,0,96,51,79,14,183,38,202,135,252,242,216,112,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],
                "ok": true, "ts": 1_795_600_800_000_000i64, "d": 20782, "t": "10:11:12.5",
                // CivilTimeEncoder.encodePacked64DatetimeMicros(2020-10-01T12:00)
                "dt": 142_189_032_682_553_344i64,
                "g": "POINT(1 2)", "j": "{\"a\": 1}", "r": {"x": 1, "y": "z"},
                "tags": ["a", "b"], "recs": [{"x": 1}, {"x": 2}]
            })],
            None,
        ),
        request(
            "",
            Some(&alternative),
            &a,
            &[json!({
                "s": 7, "b": "hi", "i": {"value": 42}, "f": 0.5,
                // encodeToNumericByteString(-1.5): -1.5e9 little-endian
                "n": [0, 209, 151, 166, 255, 255, 255, 255],
                "bn": "-0.000000000000000000000000000000000000001e1",
                "ok": 0, "ts": {"seconds": 1_795_600_800i64, "nanos": 123_456_000},
                "d": "2026-11-25", "t": 43_700_953_376i64, "dt": "2020-10-01 12:00:00.25",
                "tags": [0, 7]
            })],
            None,
        ),
    ]);
    assert!(call.end.is_ok(), "{:?}", call.end);
    for r in &call.responses {
        assert_eq!(offset_of(r), Some(None), "{r:?}");
    }
    let (_, page) = emu.list("t", "?formatOptions.useInt64Timestamp=true");
    let v = |s: &str| json!({"v": s});
    assert_eq!(
        page["rows"][0]["f"],
        json!([
            v("hello"), v("aGk="), v("-5"), v("2.5"), v("123.45"), v("1.5"), v("true"),
            v("1795600800000000"), v("2026-11-25"), v("10:11:12.500000"),
            v("2020-10-01T12:00:00"), v("POINT(1 2)"), v("{\"a\":1}"),
            {"v": {"f": [v("1"), v("z")]}},
            {"v": [v("a"), v("b")]},
            {"v": [{"v": {"f": [v("1")]}}, {"v": {"f": [v("2")]}}]}
        ])
    );
    assert_eq!(
        page["rows"][1]["f"],
        json!([
            v("BLUE"), v("aGk="), v("42"), v("0.5"), v("-1.5"),
            v("-0.00000000000000000000000000000000000001"), v("false"),
            v("1795600800123456"), v("2026-11-25"), v("10:11:12.500000"),
            v("2020-10-01T12:00:00.250000"), {"v": null}, {"v": null}, {"v": null},
            {"v": [v("RED"), v("BLUE")]},
            {"v": []}
        ])
    );
}

#[test]
fn committed_stream_offsets_give_exactly_once() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let stream = client.create("t", Type::Committed).unwrap();
    assert_eq!(stream.r#type, Type::Committed as i32);
    assert!(
        stream
            .name
            .starts_with(&format!("{}/streams/", table_path("t")))
    );
    // COMMITTED: commit_time equals create_time; the create answer is the FULL view.
    assert_eq!(stream.commit_time, stream.create_time);
    assert_eq!(
        stream.table_schema.as_ref().map(|s| s.fields.len()),
        Some(2)
    );
    let schema = simple_row();
    let desc = describe(&schema);
    let name = stream.name.as_str();
    let call = client.append(vec![
        request(
            name,
            Some(&schema),
            &desc,
            &rows_named(&["a", "b"]),
            Some(0),
        ),
        // A re-sent batch: already there.
        request("", None, &desc, &rows_named(&["a", "b"]), Some(0)),
        // Past the end.
        request("", None, &desc, &rows_named(&["x"]), Some(5)),
        // The connection is still usable; no offset appends at the end.
        request("", None, &desc, &rows_named(&["c"]), Some(2)),
        request("", None, &desc, &rows_named(&["d"]), None),
    ]);
    assert!(call.end.is_ok(), "{:?}", call.end);
    let r = &call.responses;
    assert_eq!(offset_of(&r[0]), Some(Some(0)));
    let exists = error_of(&r[1]);
    assert_eq!(code_of(exists), Code::AlreadyExists);
    assert!(
        exists
            .message
            .starts_with("The offset is within stream, expected offset 2, received 0"),
        "{exists:?}"
    );
    assert_eq!(
        storage_codes(&exists.details),
        [StorageErrorCode::OffsetAlreadyExists]
    );
    let beyond = error_of(&r[2]);
    assert_eq!(code_of(beyond), Code::OutOfRange);
    assert!(
        beyond
            .message
            .starts_with("The offset is beyond stream, expected offset 2, received 5"),
        "{beyond:?}"
    );
    assert_eq!(
        storage_codes(&beyond.details),
        [StorageErrorCode::OffsetOutOfRange]
    );
    assert_eq!(offset_of(&r[3]), Some(Some(2)));
    assert_eq!(offset_of(&r[4]), Some(Some(3)));
    assert_eq!(names(&emu, "t"), ["a", "b", "c", "d"]);
    // A new connection continues at the stream's end.
    let again = client.append(vec![request(
        name,
        Some(&schema),
        &desc,
        &rows_named(&["d"]),
        Some(3),
    )]);
    assert_eq!(code_of(error_of(&again.responses[0])), Code::AlreadyExists);
    assert_eq!(emu.count("t"), 4);
}

#[test]
fn an_offset_on_the_default_stream_is_invalid_argument() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let call = client.append(vec![request(
        &default_stream("t"),
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        Some(0),
    )]);
    assert_eq!(code_of(error_of(&call.responses[0])), Code::InvalidArgument);
    assert_eq!(emu.count("t"), 0);
}

#[test]
fn pending_rows_land_only_on_batch_commit() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let stream = client.create("t", Type::Pending).unwrap();
    assert!(stream.commit_time.is_none());
    let other = client.create("t", Type::Pending).unwrap();
    let schema = simple_row();
    let desc = describe(&schema);
    let call = client.append(vec![
        request(
            &stream.name,
            Some(&schema),
            &desc,
            &rows_named(&["a", "b"]),
            Some(0),
        ),
        request(&other.name, Some(&schema), &desc, &rows_named(&["c"]), None),
    ]);
    assert_eq!(offset_of(&call.responses[0]), Some(Some(0)));
    assert_eq!(offset_of(&call.responses[1]), Some(Some(0)));
    assert_eq!(emu.count("t"), 0, "pending rows are invisible");
    // Not finalized: refused, and atomically nothing is committed.
    assert_eq!(client.finalize(&stream.name).unwrap(), 2);
    let refused = client.commit("t", &[&stream.name, &other.name]).unwrap();
    assert!(refused.commit_time.is_none());
    assert_eq!(refused.stream_errors.len(), 1);
    assert_eq!(
        refused.stream_errors[0].code,
        StorageErrorCode::InvalidStreamState as i32
    );
    assert_eq!(refused.stream_errors[0].entity, other.name);
    assert_eq!(emu.count("t"), 0);
    // Finalized streams take no more rows.
    let late = client.append(vec![request(
        &stream.name,
        Some(&schema),
        &desc,
        &rows_named(&["x"]),
        None,
    )]);
    let finalized = error_of(&late.responses[0]);
    assert_eq!(code_of(finalized), Code::InvalidArgument);
    assert!(
        finalized
            .message
            .starts_with("Stream has been finalized and cannot be appended")
    );
    assert_eq!(
        storage_codes(&finalized.details),
        [StorageErrorCode::StreamFinalized]
    );
    assert_eq!(client.finalize(&other.name).unwrap(), 1);
    let committed = client.commit("t", &[&stream.name, &other.name]).unwrap();
    assert!(committed.commit_time.is_some(), "{committed:?}");
    assert!(committed.stream_errors.is_empty());
    assert_eq!(names(&emu, "t"), ["a", "b", "c"]);
    let again = client.commit("t", &[&stream.name]).unwrap();
    assert_eq!(
        again.stream_errors[0].code,
        StorageErrorCode::StreamAlreadyCommitted as i32
    );
    let shown = client.get(&stream.name, WriteStreamView::Basic).unwrap();
    assert_eq!(shown.commit_time, committed.commit_time);
    assert!(shown.table_schema.is_none(), "BASIC view has no schema");
    // Only PENDING streams commit.
    let committed_type = client.create("t", Type::Committed).unwrap();
    client.finalize(&committed_type.name).unwrap();
    let wrong = client.commit("t", &[&committed_type.name]).unwrap();
    assert_eq!(
        wrong.stream_errors[0].code,
        StorageErrorCode::InvalidStreamType as i32
    );
    assert_eq!(emu.count("t"), 3);
}

#[test]
fn buffered_rows_land_up_to_the_flushed_offset() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let stream = client.create("t", Type::Buffered).unwrap();
    let schema = simple_row();
    let desc = describe(&schema);
    let call = client.append(vec![request(
        &stream.name,
        Some(&schema),
        &desc,
        &rows_named(&["a", "b", "c"]),
        None,
    )]);
    assert_eq!(offset_of(&call.responses[0]), Some(Some(0)));
    assert_eq!(emu.count("t"), 0);
    assert_eq!(client.flush(&stream.name, Some(1)).unwrap(), 1);
    assert_eq!(names(&emu, "t"), ["a", "b"]);
    let beyond = client.flush(&stream.name, Some(3)).unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);
    assert_eq!(
        status_storage_codes(&beyond),
        [StorageErrorCode::OffsetOutOfRange]
    );
    // Flushing behind the flushed offset changes nothing; finalized streams still flush.
    assert_eq!(client.flush(&stream.name, Some(0)).unwrap(), 0);
    client.finalize(&stream.name).unwrap();
    assert_eq!(client.flush(&stream.name, Some(2)).unwrap(), 2);
    assert_eq!(names(&emu, "t"), ["a", "b", "c"]);
    // Only BUFFERED streams flush; the default stream never does.
    let committed = client.create("t", Type::Committed).unwrap();
    let wrong = client.flush(&committed.name, Some(0)).unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert_eq!(
        status_storage_codes(&wrong),
        [StorageErrorCode::InvalidStreamType]
    );
    assert_eq!(
        client
            .flush(&default_stream("t"), Some(0))
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

#[test]
fn row_errors_reject_the_whole_batch_with_their_index() {
    let emu = Emulator::start_grpc(&[]);
    emu.with_table(json!([
        {"name": "name", "type": "STRING", "mode": "REQUIRED", "maxLength": "5"},
        {"name": "day", "type": "DATE"},
        {"name": "at", "type": "TIMESTAMP"}
    ]));
    let client = WriteClient::connect(&emu);
    let schema = message(
        "Row",
        vec![
            optional("name", 1, T::String),
            optional("day", 2, T::Int32),
            typed(
                "at",
                3,
                T::Message,
                ".google.protobuf.Timestamp",
                Label::Optional,
            ),
        ],
    );
    let desc = describe(&schema);
    let stream = default_stream("t");
    let call = client.append(vec![
        request(
            &stream,
            Some(&schema),
            &desc,
            &[
                json!({"name": "ok"}),
                json!({"day": 1}),
                json!({"name": "toolong"}),
                json!({"name": "x", "day": 2_932_897}),
                json!({"name": "x", "at": {"seconds": i64::MIN}}),
            ],
            None,
        ),
        request("", None, &desc, &[json!({"name": "fine"})], None),
    ]);
    assert!(
        call.end.is_ok(),
        "a bad batch does not end the call: {:?}",
        call.end
    );
    let rejected = &call.responses[0];
    let error = error_of(rejected);
    assert_eq!(code_of(error), Code::InvalidArgument);
    assert!(error.message.starts_with(
        "Errors found while processing rows. Please refer to the row_errors field for details."
    ));
    let errors: Vec<(i64, i32, &str)> = rejected
        .row_errors
        .iter()
        .map(|e| (e.index, e.code, e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, 1, "Missing required field: name."),
            (
                2,
                1,
                "Field name: STRING(5) has maximum length 5 but got a value with length 7 on field name."
            ),
            (
                3,
                1,
                "Date field value is out of range: 2932897 on field day."
            ),
            (
                4,
                1,
                "Timestamp field value is out of range: -9223372036854775808 on field at."
            ),
        ]
    );
    assert_eq!(offset_of(&call.responses[1]), Some(None));
    assert_eq!(names(&emu, "t"), ["fine"]);
    let stats = emu.stats();
    assert_eq!(stats["rows_invalid"], 4);
    assert_eq!(stats["rows_stopped"], 1);
}

#[test]
fn writer_schemas_that_do_not_fit_the_table_are_refused() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let extra = message(
        "Row",
        vec![
            optional("name", 1, T::String),
            optional("bar", 3, T::String),
        ],
    );
    let desc = describe(&extra);
    let call = client.append(vec![request(
        &default_stream("t"),
        Some(&extra),
        &desc,
        &[json!({"name": "a"})],
        None,
    )]);
    let error = error_of(&call.responses[0]);
    assert_eq!(code_of(error), Code::InvalidArgument);
    assert!(
        error
            .message
            .starts_with("Input schema has more fields than BigQuery schema, extra fields: 'bar'"),
        "{error:?}"
    );
    assert_eq!(
        storage_codes(&error.details),
        [StorageErrorCode::SchemaMismatchExtraFields]
    );

    let mismatch = message("Row", vec![optional("name", 1, T::Bool)]);
    let desc = describe(&mismatch);
    let call = client.append(vec![request(
        &default_stream("t"),
        Some(&mismatch),
        &desc,
        &[json!({"name": true})],
        None,
    )]);
    assert!(
        error_of(&call.responses[0]).message.starts_with(
            "The proto field mismatched with BigQuery field at Row.name, the proto field type bool, BigQuery field type STRING"
        ),
        "{:?}",
        call.responses[0]
    );
    // The first request for a stream must carry the writer schema.
    let schema = simple_row();
    let desc = describe(&schema);
    let call = client.append(vec![request(
        &default_stream("t"),
        None,
        &desc,
        &rows_named(&["a"]),
        None,
    )]);
    assert_eq!(code_of(error_of(&call.responses[0])), Code::InvalidArgument);
    // And the first request on a connection must name the stream: that ends the call.
    let call = client.append(vec![request(
        "",
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        None,
    )]);
    assert_eq!(call.end.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(emu.count("t"), 0);
}

#[test]
fn missing_tables_and_streams_are_not_found() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let missing = client.create("nope", Type::Committed).unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing
            .message()
            .starts_with("Requested entity was not found.")
    );
    assert_eq!(
        status_storage_codes(&missing),
        [StorageErrorCode::TableNotFound]
    );
    let schema = simple_row();
    let desc = describe(&schema);
    let call = client.append(vec![request(
        &default_stream("nope"),
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        None,
    )]);
    assert!(call.responses.is_empty());
    assert_eq!(call.end.unwrap_err().code(), Code::NotFound);
    let unknown = format!("{}/streams/unknown", table_path("t"));
    let call = client.append(vec![request(
        &unknown,
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        None,
    )]);
    let ended = call.end.unwrap_err();
    assert_eq!(ended.code(), Code::NotFound);
    assert_eq!(
        status_storage_codes(&ended),
        [StorageErrorCode::StreamNotFound]
    );
    assert_eq!(
        client
            .get(&unknown, WriteStreamView::Basic)
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client.finalize(&unknown).unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.finalize(&default_stream("t")).unwrap_err().code(),
        Code::InvalidArgument,
        "Finalize is not supported on the _default stream"
    );
    // The default stream exists with its table: COMMITTED, created with the table.
    let default = client
        .get(&default_stream("t"), WriteStreamView::Full)
        .unwrap();
    assert_eq!(default.r#type, Type::Committed as i32);
    let fields = &default.table_schema.unwrap().fields;
    assert_eq!(fields[0].name, "name");
    assert_eq!(fields[0].mode, table_field_schema::Mode::Required as i32);
    assert_eq!(fields[1].r#type, table_field_schema::Type::Int64 as i32);
}

#[test]
fn requests_over_the_size_limit_are_refused_and_the_connection_goes_on() {
    let emu = Emulator::start_grpc(&["--max-request-bytes", "2000"]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let big: Vec<Value> = (0..300)
        .map(|i| json!({"name": format!("row-{i:04}")}))
        .collect();
    let call = client.append(vec![
        request(
            &default_stream("t"),
            Some(&schema),
            &desc,
            &rows_named(&["first"]),
            None,
        ),
        request("", None, &desc, &big, None),
        request("", None, &desc, &rows_named(&["last"]), None),
    ]);
    assert_eq!(offset_of(&call.responses[0]), Some(None));
    let error = error_of(&call.responses[1]);
    assert_eq!(code_of(error), Code::InvalidArgument);
    assert!(
        error.message.starts_with("AppendRows request too large: "),
        "{error:?}"
    );
    assert!(error.message.ends_with(" limit 2000"), "{error:?}");
    assert_eq!(offset_of(&call.responses[2]), Some(None));
    assert_eq!(names(&emu, "t"), ["first", "last"]);
}

#[test]
fn updated_schema_is_sent_once_the_table_changes() {
    let emu = Emulator::start_grpc(&["--schema-update-delay-ms", "0"]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let stream = client.create("t", Type::Committed).unwrap();
    let first = client.append(vec![request(
        &stream.name,
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        None,
    )]);
    assert!(first.responses[0].updated_schema.is_none());
    let (status, body) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"schema": {"fields": [
            {"name": "name", "type": "STRING", "mode": "REQUIRED"},
            {"name": "n", "type": "INTEGER"},
            {"name": "extra", "type": "STRING"}
        ]}}),
    );
    assert_eq!(status, 200, "{body}");
    let wider = message(
        "Row",
        vec![
            optional("name", 1, T::String),
            optional("extra", 3, T::String),
        ],
    );
    let wide = describe(&wider);
    let call = client.append(vec![
        request(
            &stream.name,
            Some(&schema),
            &desc,
            &rows_named(&["b"]),
            None,
        ),
        // A client that saw the new schema sends a writer schema with the new column.
        request(
            "",
            Some(&wider),
            &wide,
            &[json!({"name": "c", "extra": "e"})],
            None,
        ),
    ]);
    let updated = call.responses[0]
        .updated_schema
        .as_ref()
        .expect("updated_schema");
    let columns: Vec<&str> = updated.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(columns, ["name", "n", "extra"]);
    assert_eq!(offset_of(&call.responses[1]), Some(Some(2)));
    assert!(call.responses[1].updated_schema.is_none());
    let (_, page) = emu.list("t", "?startIndex=2");
    assert_eq!(
        page["rows"][0],
        json!({"f": [{"v": "c"}, {"v": null}, {"v": "e"}]})
    );
}

/// As for insertAll, a schema change reaches the write path only after
/// `--schema-update-delay-ms`: until then a writer schema with the new column has extra fields
/// and no response carries `updated_schema`.
#[test]
fn a_new_column_reaches_the_write_path_after_the_schema_update_delay() {
    let delay = Duration::from_millis(1_500);
    let emu = Emulator::start_grpc(&["--schema-update-delay-ms", "1500"]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let stream = default_stream("t");
    let mut session = client.session();
    let before = session
        .send(request(
            &stream,
            Some(&schema),
            &desc,
            &rows_named(&["before"]),
            None,
        ))
        .unwrap();
    assert_eq!(offset_of(&before), Some(None));
    let (status, body) = emu.patch(
        &emu.api("/datasets/d/tables/t"),
        &json!({"schema": {"fields": [
            {"name": "name", "type": "STRING", "mode": "REQUIRED"},
            {"name": "n", "type": "INTEGER"},
            {"name": "extra", "type": "STRING"}
        ]}}),
    );
    assert_eq!(status, 200, "{body}");
    let patched = Instant::now();
    let wider = message(
        "Row",
        vec![
            optional("name", 1, T::String),
            optional("extra", 2, T::String),
        ],
    );
    let wide = describe(&wider);
    let wide_row = [json!({"name": "w", "extra": "e"})];
    let early = client.append(vec![request(&stream, Some(&wider), &wide, &wide_row, None)]);
    let extra = error_of(&early.responses[0]);
    assert!(
        extra.message.starts_with(
            "Input schema has more fields than BigQuery schema, extra fields: 'extra'"
        ),
        "{extra:?}"
    );
    assert_eq!(
        storage_codes(&extra.details),
        [StorageErrorCode::SchemaMismatchExtraFields]
    );
    // The open connection, writing with the old schema, learns of the new column once it has
    // propagated, and not before.
    let updated = loop {
        let response = session
            .send(request("", None, &desc, &rows_named(&["old"]), None))
            .unwrap();
        assert_eq!(offset_of(&response), Some(None));
        if let Some(updated) = response.updated_schema {
            break updated;
        }
        assert!(
            patched.elapsed() < delay * 4,
            "no updated_schema after {:?}",
            patched.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        patched.elapsed() >= delay,
        "updated_schema after {:?}",
        patched.elapsed()
    );
    assert_eq!(updated.fields.len(), 3);
    let late = client.append(vec![request(&stream, Some(&wider), &wide, &wide_row, None)]);
    assert_eq!(offset_of(&late.responses[0]), Some(None), "{late:?}");
}

#[test]
fn a_connection_can_write_to_the_default_streams_of_two_tables() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    emu.create_table(
        "d",
        "u",
        json!({"schema": {"fields": [{"name": "name", "type": "STRING"}]}}),
    );
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let only_name = message("Row", vec![optional("name", 1, T::String)]);
    let name_desc = describe(&only_name);
    let call = client.append(vec![
        request(
            &default_stream("t"),
            Some(&schema),
            &desc,
            &rows_named(&["t1"]),
            None,
        ),
        request(
            &default_stream("u"),
            Some(&only_name),
            &name_desc,
            &rows_named(&["u1"]),
            None,
        ),
        request(
            &default_stream("t"),
            Some(&schema),
            &desc,
            &rows_named(&["t2"]),
            None,
        ),
    ]);
    assert!(
        call.responses.iter().all(|r| offset_of(r) == Some(None)),
        "{call:?}"
    );
    assert_eq!(call.responses[1].write_stream, default_stream("u"));
    assert_eq!(names(&emu, "t"), ["t1", "t2"]);
    assert_eq!(names(&emu, "u"), ["u1"]);
}

#[test]
fn unavailable_ends_the_call_before_anything_is_appended() {
    let emu = Emulator::start_grpc(&["--grpc-unavailable-rate", "0.5"]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let stream = default_stream("t");
    let append = |name: &str| {
        client.append(vec![request(
            &stream,
            Some(&schema),
            &desc,
            &rows_named(&[name]),
            None,
        )])
    };
    assert!(append("a").end.is_ok());
    let failed = append("b");
    assert!(failed.responses.is_empty());
    let status = failed.end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(append("c").end.is_ok());
    assert_eq!(names(&emu, "t"), ["a", "c"]);
    // Unary RPCs are outside the default (data-path) scope.
    assert!(client.create("t", Type::Pending).is_ok());
    let stats = emu.stats();
    assert_eq!(stats["faults_unavailable"], 1);
    assert_eq!(stats["faults_injected"], 1);
}

#[test]
fn a_dropped_stream_loses_the_answer_of_an_append_that_landed() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    let stream = client.create("t", Type::Committed).unwrap();
    let (status, _) = emu.post(
        &emu.url("/_emulator/faults"),
        &json!({"grpc_drop_rate": 1.0}),
    );
    assert_eq!(status, 200);
    let lost = client.append(vec![request(
        &stream.name,
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        Some(0),
    )]);
    assert!(lost.responses.is_empty());
    let status = lost.end.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "a transport failure, got {status:?}"
    );
    emu.delete(&emu.url("/_emulator/faults"));
    // The append landed: a retry with the same offset is told so, and nothing lands twice.
    let client = WriteClient::connect(&emu);
    let retry = client.append(vec![request(
        &stream.name,
        Some(&schema),
        &desc,
        &rows_named(&["a"]),
        Some(0),
    )]);
    assert_eq!(code_of(error_of(&retry.responses[0])), Code::AlreadyExists);
    assert_eq!(names(&emu, "t"), ["a"]);
    assert_eq!(emu.stats()["faults_grpc_dropped"], 1);
}

#[test]
fn scope_all_faults_unary_rpcs_too() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    emu.post(
        &emu.url("/_emulator/faults"),
        &json!({"grpc_resource_exhausted_rate": 1.0, "scope": "all"}),
    );
    let client = WriteClient::connect(&emu);
    let status = client.create("t", Type::Pending).unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("Exceeds 'AppendRows throughput' quota")
    );
    // The REST side keeps its own settings: none here.
    assert_eq!(emu.get(&emu.api("/datasets/d/tables/t")).0, 200);
}

#[test]
fn streams_and_held_rows_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let schema = simple_row();
    let desc = describe(&schema);
    let (committed, pending) = {
        let emu = Emulator::start_grpc(&["--data-dir", path]);
        simple_table(&emu);
        let client = WriteClient::connect(&emu);
        let committed = client.create("t", Type::Committed).unwrap().name;
        let pending = client.create("t", Type::Pending).unwrap().name;
        client.append(vec![
            request(
                &committed,
                Some(&schema),
                &desc,
                &rows_named(&["c0", "c1"]),
                Some(0),
            ),
            request(
                &pending,
                Some(&schema),
                &desc,
                &rows_named(&["p0"]),
                Some(0),
            ),
        ]);
        emu.stop();
        (committed, pending)
    };
    let emu = Emulator::start_grpc(&["--data-dir", path]);
    let client = WriteClient::connect(&emu);
    assert_eq!(names(&emu, "t"), ["c0", "c1"]);
    let call = client.append(vec![
        request(
            &committed,
            Some(&schema),
            &desc,
            &rows_named(&["c1"]),
            Some(1),
        ),
        request(
            &committed,
            Some(&schema),
            &desc,
            &rows_named(&["c2"]),
            Some(2),
        ),
        request(
            &pending,
            Some(&schema),
            &desc,
            &rows_named(&["p1"]),
            Some(1),
        ),
    ]);
    assert_eq!(code_of(error_of(&call.responses[0])), Code::AlreadyExists);
    assert_eq!(offset_of(&call.responses[1]), Some(Some(2)));
    assert_eq!(offset_of(&call.responses[2]), Some(Some(1)));
    assert_eq!(client.finalize(&pending).unwrap(), 2);
    assert!(
        client
            .commit("t", &[&pending])
            .unwrap()
            .commit_time
            .is_some()
    );
    assert_eq!(names(&emu, "t"), ["c0", "c1", "c2", "p0", "p1"]);
}

#[test]
fn null_mode_counts_appends_and_stores_nothing() {
    let emu = Emulator::start_grpc(&["--null-mode"]);
    let client = WriteClient::connect(&emu);
    let schema = simple_row();
    let desc = describe(&schema);
    // No table needed: null mode skips lookups, as it does for insertAll.
    let call = client.append(vec![
        request(
            &default_stream("t"),
            Some(&schema),
            &desc,
            &rows_named(&["a", "b"]),
            None,
        ),
        request("", None, &desc, &rows_named(&["c"]), None),
    ]);
    assert!(
        call.responses.iter().all(|r| offset_of(r) == Some(None)),
        "{call:?}"
    );
    let stats = emu.stats();
    assert_eq!(stats["rows_discarded"], 3);
    assert_eq!(stats["rows_inserted"], 0);
}

#[test]
fn dropping_a_table_drops_its_streams() {
    let emu = Emulator::start_grpc(&[]);
    simple_table(&emu);
    let client = WriteClient::connect(&emu);
    let stream = client.create("t", Type::Pending).unwrap();
    assert_eq!(emu.delete(&emu.api("/datasets/d/tables/t")).0, 204);
    // A table of the same name later is a new table: the old streams are gone.
    emu.create_table(
        "d",
        "t",
        json!({"schema": {"fields": [{"name": "name", "type": "STRING"}]}}),
    );
    let gone = client
        .get(&stream.name, WriteStreamView::Basic)
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}
