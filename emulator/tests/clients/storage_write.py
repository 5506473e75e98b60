"""Drives bigquery-emulator's Storage Write API with Google's own Python client
(google-cloud-bigquery-storage): BigQueryWriteClient over a plaintext channel and
writer.AppendRowsStream for appends, as its documentation shows them. Prints one JSON object
of what the client saw; the Rust test (emulator/tests/emulator/python_client.rs) judges it.

Usage: storage_write.py REST_PORT GRPC_PORT
"""

import json
import sys
import urllib.request

import grpc
from google.api_core import exceptions
from google.cloud import bigquery_storage_v1
from google.cloud.bigquery_storage_v1 import types, writer
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcTransport,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REST, GRPC = sys.argv[1], sys.argv[2]
PROJECT, DATASET = "proj", "d"
TIMEOUT = 30
F = descriptor_pb2.FieldDescriptorProto


def rest(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{REST}{path}",
        method=method,
        data=data,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def count(table):
    path = f"/_emulator/projects/{PROJECT}/datasets/{DATASET}/tables/{table}/count"
    return rest("GET", path)["rows"]


def table_path(table):
    return f"projects/{PROJECT}/datasets/{DATASET}/tables/{table}"


def create_table(table, fields):
    rest(
        "POST",
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables",
        {
            "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": table},
            "schema": {"fields": fields},
        },
    )


def row_class(name, fields, nested=()):
    """A proto2 message class made at run time, as an application with a dynamic schema does."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{name.lower()}.proto", package="bqtest", syntax="proto2"
    )
    message = file.message_type.add(name=name)
    for nested_name, nested_fields in nested:
        inner = message.nested_type.add(name=nested_name)
        for number, (field_name, field_type) in enumerate(nested_fields, 1):
            inner.field.add(name=field_name, number=number, type=field_type, label=F.LABEL_OPTIONAL)
    for number, spec in enumerate(fields, 1):
        field_name, field_type = spec[0], spec[1]
        label = F.LABEL_REPEATED if "repeated" in spec[2:] else F.LABEL_OPTIONAL
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if field_type == F.TYPE_MESSAGE:
            field.type_name = f".bqtest.{name}.{spec[2]}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bqtest.{name}"))


def descriptor_of(cls):
    proto = descriptor_pb2.DescriptorProto()
    cls.DESCRIPTOR.CopyToProto(proto)
    return proto


def open_stream(client, stream_name, cls):
    template = types.AppendRowsRequest(
        write_stream=stream_name,
        proto_rows=types.AppendRowsRequest.ProtoData(
            writer_schema=types.ProtoSchema(proto_descriptor=descriptor_of(cls))
        ),
    )
    return writer.AppendRowsStream(client, template)


def rows_request(cls, rows, offset=None):
    request = types.AppendRowsRequest(
        proto_rows=types.AppendRowsRequest.ProtoData(
            rows=types.ProtoRows(serialized_rows=[cls(**r).SerializeToString() for r in rows])
        )
    )
    if offset is not None:
        request.offset = offset
    return request


def outcome(future):
    """What one append came back with: its offset, or the exception the client raised."""
    try:
        response = future.result(timeout=TIMEOUT)
    except Exception as e:  # the class and message are what the test checks
        found = {"error": type(e).__name__, "message": str(getattr(e, "message", e))}
        response = getattr(e, "response", None)
        if getattr(response, "row_errors", None):
            found["row_errors"] = [
                {"index": r.index, "code": int(r.code), "message": r.message}
                for r in response.row_errors
            ]
        return found
    # proto-plus gives an Int64Value field as an int, or None when unset.
    found = {"offset": response.append_result.offset}
    if response.updated_schema.fields:
        found["updated_schema"] = [f.name for f in response.updated_schema.fields]
    return found


def error_of(call):
    try:
        call()
    except Exception as e:
        return type(e).__name__
    return None


def set_faults(faults):
    rest("POST", "/_emulator/faults", faults)


def main():
    rest(
        "POST",
        f"/bigquery/v2/projects/{PROJECT}/datasets",
        {"datasetReference": {"projectId": PROJECT, "datasetId": DATASET}},
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC}")
    client = bigquery_storage_v1.BigQueryWriteClient(
        transport=BigQueryWriteGrpcTransport(channel=channel)
    )
    seen = {}

    # Every type, in the preferred proto type, through the default stream.
    create_table(
        "types",
        [
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
            {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "INTEGER"}]},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        ],
    )
    Types = row_class(
        "Types",
        [
            ("s", F.TYPE_STRING),
            ("b", F.TYPE_BYTES),
            ("i", F.TYPE_INT64),
            ("f", F.TYPE_DOUBLE),
            ("n", F.TYPE_STRING),
            ("bn", F.TYPE_BYTES),
            ("ok", F.TYPE_BOOL),
            ("ts", F.TYPE_INT64),
            ("d", F.TYPE_INT32),
            ("t", F.TYPE_STRING),
            ("dt", F.TYPE_STRING),
            ("g", F.TYPE_STRING),
            ("j", F.TYPE_STRING),
            ("r", F.TYPE_MESSAGE, "R"),
            ("tags", F.TYPE_STRING, "repeated"),
        ],
        nested=[("R", [("x", F.TYPE_INT64)])],
    )
    stream = open_stream(client, table_path("types") + "/streams/_default", Types)
    first = stream.send(
        rows_request(
            Types,
            [
                {
                    "s": "héllo",
                    "b": b"\x00\xff",
                    "i": -7,
                    "f": 0.25,
                    "n": "-12.340",
                    # BigDecimalByteStringEncoder: 2.5 * 10^38, little-endian two's complement.
                    "bn": (25 * 10**37).to_bytes(32, "little", signed=True),
                    "ok": True,
                    "ts": 1_795_600_800_000_001,
                    "d": 20782,
                    "t": "23:59:59.999999",
                    "dt": "2026-11-25T10:00:00",
                    "g": "POINT(-122.35 47.62)",
                    "j": '{"k": [1, 2]}',
                    "r": {"x": 3},
                    "tags": ["x", "y"],
                }
            ],
        )
    )
    second = stream.send(rows_request(Types, [{"s": "second"}]))
    seen["types"] = [outcome(first), outcome(second)]
    stream.close()

    # A PENDING stream: offsets, row errors, finalize, atomic commit.
    create_table(
        "pending",
        [{"name": "name", "type": "STRING", "mode": "REQUIRED"}, {"name": "n", "type": "INTEGER"}],
    )
    Row = row_class("Row", [("name", F.TYPE_STRING), ("n", F.TYPE_INT64)])
    pending = client.create_write_stream(
        parent=table_path("pending"),
        write_stream=types.WriteStream(type_=types.WriteStream.Type.PENDING),
    )
    seen["pending_created"] = {
        "type": pending.type_.name,
        "schema": [f.name for f in pending.table_schema.fields],
    }
    stream = open_stream(client, pending.name, Row)
    futures = [
        stream.send(rows_request(Row, [{"name": "a", "n": 1}, {"name": "b"}], offset=0)),
        stream.send(rows_request(Row, [{"name": "a"}], offset=0)),
        stream.send(rows_request(Row, [{"name": "z"}], offset=10)),
        stream.send(rows_request(Row, [{"name": "ok"}, {"n": 5}], offset=2)),
        stream.send(rows_request(Row, [{"name": "c"}], offset=2)),
    ]
    seen["pending"] = [outcome(f) for f in futures]
    stream.close()
    seen["pending_count_before_commit"] = count("pending")
    seen["finalized_rows"] = client.finalize_write_stream(name=pending.name).row_count
    committed = client.batch_commit_write_streams(
        request=types.BatchCommitWriteStreamsRequest(
            parent=table_path("pending"), write_streams=[pending.name]
        )
    )
    seen["commit"] = {
        "has_commit_time": "commit_time" in committed,
        "stream_errors": len(committed.stream_errors),
    }
    seen["pending_count_after_commit"] = count("pending")
    shown = client.get_write_stream(
        request=types.GetWriteStreamRequest(name=pending.name, view=types.WriteStreamView.FULL)
    )
    seen["pending_shown"] = {
        "committed": "commit_time" in shown,
        "schema": [f.name for f in shown.table_schema.fields],
    }

    # A BUFFERED stream: rows become visible as FlushRows advances.
    buffered = client.create_write_stream(
        parent=table_path("pending"),
        write_stream=types.WriteStream(type_=types.WriteStream.Type.BUFFERED),
    )
    stream = open_stream(client, buffered.name, Row)
    seen["buffered_append"] = outcome(
        stream.send(rows_request(Row, [{"name": "x"}, {"name": "y"}, {"name": "z"}]))
    )
    stream.close()
    before = count("pending")
    flushed = client.flush_rows(
        request=types.FlushRowsRequest(write_stream=buffered.name, offset=1)
    ).offset
    seen["buffered"] = {"flushed": flushed, "visible": count("pending") - before}

    # Errors BigQuery signals through the client's exception types.
    stream = open_stream(client, table_path("pending") + "/streams/_default", Row)
    seen["default_offset"] = outcome(stream.send(rows_request(Row, [{"name": "x"}], offset=0)))
    stream.close()
    seen["create_missing_table"] = error_of(
        lambda: client.create_write_stream(
            parent=table_path("missing"),
            write_stream=types.WriteStream(type_=types.WriteStream.Type.COMMITTED),
        )
    )
    seen["get_missing_stream"] = error_of(
        lambda: client.get_write_stream(name=table_path("pending") + "/streams/nope")
    )
    # The call ends with NOT_FOUND before any response, which this client reports from send()
    # while opening the connection.
    stream = open_stream(client, table_path("missing") + "/streams/_default", Row)
    seen["append_missing_table"] = error_of(lambda: stream.send(rows_request(Row, [{"name": "x"}])))

    # Faults: a dropped connection after the append landed, then UNAVAILABLE.
    create_table("faults", [{"name": "name", "type": "STRING"}])
    Name = row_class("Name", [("name", F.TYPE_STRING)])
    exact = client.create_write_stream(
        parent=table_path("faults"),
        write_stream=types.WriteStream(type_=types.WriteStream.Type.COMMITTED),
    )
    stream = open_stream(client, exact.name, Name)
    first = outcome(stream.send(rows_request(Name, [{"name": "first"}], offset=0)))
    set_faults({"grpc_drop_rate": 1.0})
    dropped = outcome(stream.send(rows_request(Name, [{"name": "once"}], offset=1)))
    set_faults({})
    # The client retries on a new connection, with the same offset.
    stream = open_stream(client, exact.name, Name)
    resent = outcome(stream.send(rows_request(Name, [{"name": "once"}], offset=1)))
    set_faults({"grpc_unavailable_rate": 1.0})
    unavailable = outcome(stream.send(rows_request(Name, [{"name": "never"}], offset=2)))
    set_faults({})
    seen["faults"] = {
        "first": first,
        "dropped": dropped,
        "resent": resent,
        "unavailable": unavailable,
        "rows": count("faults"),
    }

    # updated_schema once the table gains a column.
    stream = open_stream(client, table_path("faults") + "/streams/_default", Name)
    before = outcome(stream.send(rows_request(Name, [{"name": "before"}])))
    rest(
        "PATCH",
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/faults",
        {"schema": {"fields": [{"name": "name", "type": "STRING"}, {"name": "more", "type": "INTEGER"}]}},
    )
    after = outcome(stream.send(rows_request(Name, [{"name": "after"}])))
    stream.close()
    seen["updated_schema"] = {"before": before, "after": after}

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
