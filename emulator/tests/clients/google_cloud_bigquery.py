"""Drives bigquery-emulator with Google's own Python client (PyPI google-cloud-bigquery), as a
user who opens the demo's data with the client they already use would.

Usage: google_cloud_bigquery.py PORT SCENARIO
Each scenario asserts what the client reads back and prints one JSON line of facts the Rust test
checks against the emulator's own counters. Any failed assertion or client error exits non-zero.
"""
import base64
import datetime
import decimal
import gzip
import io
import json
import sys

from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

PROJECT = "proj"
UTC = datetime.timezone.utc

SCHEMA = [
    bigquery.SchemaField("s", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("i", "INTEGER"),
    bigquery.SchemaField("f", "FLOAT"),
    bigquery.SchemaField("b", "BOOLEAN"),
    bigquery.SchemaField("ts", "TIMESTAMP"),
    bigquery.SchemaField("d", "DATE"),
    bigquery.SchemaField("dt", "DATETIME"),
    bigquery.SchemaField("t", "TIME"),
    bigquery.SchemaField("n", "NUMERIC"),
    bigquery.SchemaField("by", "BYTES"),
    bigquery.SchemaField(
        "r",
        "RECORD",
        fields=[
            bigquery.SchemaField("x", "INTEGER"),
            bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
            bigquery.SchemaField(
                "kv",
                "RECORD",
                mode="REPEATED",
                fields=[
                    bigquery.SchemaField("k", "STRING"),
                    bigquery.SchemaField("v", "FLOAT"),
                ],
            ),
        ],
    ),
    bigquery.SchemaField("rep", "INTEGER", mode="REPEATED"),
]

ROWS = [
    {
        "s": "first",
        "i": 1,
        "f": 1.5,
        "b": True,
        "ts": "2026-11-25T10:00:00.123456Z",
        "d": "2026-11-25",
        "dt": "2026-11-25T10:00:00.5",
        "t": "10:00:01",
        "n": "12.25",
        "by": base64.b64encode(b"\x00\x01bytes").decode(),
        "r": {"x": 2, "tags": ["p", "q"], "kv": [{"k": "a", "v": 0.5}, {"k": "b"}]},
        "rep": [1, 2, 3],
    },
    {"s": "second", "i": -7, "b": False, "ts": 1795600800, "rep": []},
    {"s": "third", "f": -0.25, "r": {"x": None, "tags": [], "kv": []}},
]

EXPECTED = [
    {
        "s": "first",
        "i": 1,
        "f": 1.5,
        "b": True,
        "ts": datetime.datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC),
        "d": datetime.date(2026, 11, 25),
        "dt": datetime.datetime(2026, 11, 25, 10, 0, 0, 500000),
        "t": datetime.time(10, 0, 1),
        "n": decimal.Decimal("12.25"),
        "by": b"\x00\x01bytes",
        "r": {"x": 2, "tags": ["p", "q"], "kv": [{"k": "a", "v": 0.5}, {"k": "b", "v": None}]},
        "rep": [1, 2, 3],
    },
    {
        "s": "second",
        "i": -7,
        "f": None,
        "b": False,
        "ts": datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC),
        "d": None,
        "dt": None,
        "t": None,
        "n": None,
        "by": None,
        "r": None,
        "rep": [],
    },
    {
        "s": "third",
        "i": None,
        "f": -0.25,
        "b": None,
        "ts": None,
        "d": None,
        "dt": None,
        "t": None,
        "n": None,
        "by": None,
        "r": {"x": None, "tags": [], "kv": []},
        "rep": [],
    },
]


def client(port):
    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{port}"),
    )


def as_dicts(rows):
    return [dict(row.items()) for row in rows]


def check(label, got, want):
    assert got == want, f"{label}:\n got  {got!r}\n want {want!r}"


def roundtrip(port):
    c = client(port)
    ds = c.create_dataset(bigquery.Dataset(f"{PROJECT}.demo"))
    check("dataset id", ds.dataset_id, "demo")
    assert ds.etag and ds.created, ds._properties
    check("get_dataset", c.get_dataset("demo").full_dataset_id, f"{PROJECT}:demo")

    table = c.create_table(bigquery.Table(f"{PROJECT}.demo.events", schema=SCHEMA))
    check("schema back", table.schema, SCHEMA)
    check("new table num_rows", table.num_rows, 0)
    assert table.etag and table.created and table.self_link, table._properties

    ids = ["row-1", "row-2", "row-3"]
    check("insert errors", c.insert_rows_json(table, ROWS, row_ids=ids), [])
    check("all rows", as_dicts(c.list_rows(table)), EXPECTED)
    check("num_rows", c.get_table("demo.events").num_rows, 3)

    # The same insertIds again (a retry): de-duplicated, nothing new stored.
    check("re-insert errors", c.insert_rows_json(table, ROWS, row_ids=ids), [])
    check("num_rows after re-insert", c.get_table("demo.events").num_rows, 3)
    check("rows after re-insert", as_dicts(c.list_rows(table)), EXPECTED)

    # Paging by pageToken (one row a page), start_index, max_results, selected_fields.
    pages = c.list_rows(table, page_size=1)
    check("paged rows", as_dicts(pages), EXPECTED)
    check("paged total_rows", pages.total_rows, 3)
    check("start_index", as_dicts(c.list_rows(table, start_index=1)), EXPECTED[1:])
    check(
        "start_index with pages",
        as_dicts(c.list_rows(table, start_index=1, page_size=1)),
        EXPECTED[1:],
    )
    check("max_results", as_dicts(c.list_rows(table, max_results=2)), EXPECTED[:2])
    selected = [SCHEMA[0], SCHEMA[4]]
    check(
        "selected_fields",
        as_dicts(c.list_rows(table, selected_fields=selected)),
        [{"s": e["s"], "ts": e["ts"]} for e in EXPECTED],
    )

    # A bad row is reported per row, as BigQuery does, and stores nothing.
    errors = c.insert_rows_json(table, [{"s": "ok"}, {"i": "not a number"}])
    check("bad row indexes", [e["index"] for e in errors], [0, 1])
    check("bad row reason", errors[1]["errors"][0]["reason"], "invalid")

    names = [t.table_id for t in c.list_tables("demo")]
    check("list_tables", names, ["events"])
    print(json.dumps({"num_rows": c.get_table("demo.events").num_rows}))


def expect_error(kind, call, text):
    try:
        call()
    except kind as e:
        assert text in e.message, f"{kind.__name__}: {e.message!r} lacks {text!r}"
        return
    raise AssertionError(f"expected {kind.__name__} with {text!r}")


def schema_update(port):
    """Schema evolution as bqforward will do it: update_table with the table's etag."""
    c = client(port)
    c.create_dataset("evo")
    status = bigquery.SchemaField("status", "INTEGER")
    c.create_table(
        bigquery.Table(
            f"{PROJECT}.evo.logs",
            schema=[
                bigquery.SchemaField("msg", "STRING", mode="REQUIRED"),
                bigquery.SchemaField("http", "RECORD", fields=[status]),
            ],
        )
    )
    stale = c.get_table("evo.logs")
    table = c.get_table("evo.logs")
    check("same etag", table.etag, stale.etag)

    # Add a top-level and a nested column, a repeated one, and relax REQUIRED.
    evolved = [
        bigquery.SchemaField("msg", "STRING", mode="NULLABLE"),
        bigquery.SchemaField(
            "http", "RECORD", fields=[status, bigquery.SchemaField("path", "STRING")]
        ),
        bigquery.SchemaField("user", "STRING"),
        bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
    ]
    table.schema = evolved
    updated = c.update_table(table, ["schema"])
    check("evolved schema", updated.schema, evolved)
    assert updated.etag != stale.etag, (updated.etag, stale.etag)
    check("get after update", c.get_table("evo.logs").schema, evolved)

    # update_table sends If-Match with the etag it read: a stale one is 412.
    stale.description = "written late"
    expect_error(
        exceptions.PreconditionFailed,
        lambda: c.update_table(stale, ["description"]),
        "Precondition check failed.",
    )
    check("description unchanged", c.get_table("evo.logs").description, None)

    # Retyping or removing a column is refused with BigQuery's message.
    retyped = c.get_table("evo.logs")
    retyped.schema = [bigquery.SchemaField("msg", "INTEGER")] + evolved[1:]
    expect_error(
        exceptions.BadRequest,
        lambda: c.update_table(retyped, ["schema"]),
        "Field msg has changed type from STRING to INTEGER",
    )
    removed = c.get_table("evo.logs")
    removed.schema = evolved[:3]
    expect_error(
        exceptions.BadRequest,
        lambda: c.update_table(removed, ["schema"]),
        "Field tags is missing in new schema",
    )

    # Rows use the new columns (this scenario runs with no propagation delay).
    rows = [{"http": {"status": 200, "path": "/"}, "user": "u", "tags": ["a", "b"]}]
    check("insert with new columns", c.insert_rows_json("evo.logs", rows, row_ids=["n1"]), [])
    check(
        "rows with new columns",
        as_dicts(c.list_rows("evo.logs")),
        [{"msg": None, "http": {"status": 200, "path": "/"}, "user": "u", "tags": ["a", "b"]}],
    )
    final = c.get_table("evo.logs")
    final.description = "evolved"
    check("update with fresh etag", c.update_table(final, ["description"]).description, "evolved")
    print(json.dumps({"columns": len(c.get_table("evo.logs").schema)}))


LOAD_SCHEMA = [
    bigquery.SchemaField("msg", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("n", "INTEGER"),
    bigquery.SchemaField("ts", "TIMESTAMP"),
]


def load_jobs(port):
    """Load jobs as bqforward's bigquery_load output will run them, through Google's client:
    load_table_from_file (resumable without a size, multipart with one), load_table_from_json,
    polling with result(), get_job, list_jobs, cancel_job, errors read back, a repeated job id."""
    c = client(port)
    c.create_dataset("loads")
    c.create_table(bigquery.Table(f"{PROJECT}.loads.events", schema=LOAD_SCHEMA))
    ndjson = b'{"msg": "a", "n": 1, "ts": "2026-11-25T10:00:00Z"}\n{"msg": "b"}\n'
    compressed = gzip.compress(ndjson)
    ndjson_config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        schema=LOAD_SCHEMA,
        write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
    )
    # No size: the client uses a resumable upload. The data is gzip; BigQuery detects it.
    job = c.load_table_from_file(
        io.BytesIO(compressed), "loads.events", job_id="py-ndjson", job_config=ndjson_config
    )
    check("new job state", job.state, "PENDING")
    check("result", job.result(timeout=30), job)
    check("state", job.state, "DONE")
    check("output_rows", job.output_rows, 2)
    check("input_file_bytes", job.input_file_bytes, len(compressed))
    check("input_files", job.input_files, 1)
    check("job location", job.location, "US")
    assert job.created and job.started and job.ended, job._properties

    # With a size below 5 MB: a multipart upload. CSV with a header row.
    csv = b"msg,n,ts\nc,3,2026-11-25 11:00:00\n"
    csv_config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV, skip_leading_rows=1, schema=LOAD_SCHEMA
    )
    job = c.load_table_from_file(
        io.BytesIO(csv), "loads.events", size=len(csv), job_id="py-csv", job_config=csv_config
    )
    job.result(timeout=30)
    check("csv output_rows", job.output_rows, 1)
    check(
        "loaded rows",
        sorted(as_dicts(c.list_rows("loads.events")), key=lambda r: r["msg"]),
        [
            {"msg": "a", "n": 1, "ts": datetime.datetime(2026, 11, 25, 10, tzinfo=UTC)},
            {"msg": "b", "n": None, "ts": None},
            {"msg": "c", "n": 3, "ts": datetime.datetime(2026, 11, 25, 11, tzinfo=UTC)},
        ],
    )
    table = c.get_table("loads.events")
    check("num_rows", table.num_rows, 3)
    check("no streaming buffer", table.streaming_buffer, None)

    # load_table_from_json into a new table: the client asks for autodetect.
    job = c.load_table_from_json([{"k": "x", "v": 1}], "loads.auto", job_id="py-json")
    job.result(timeout=30)
    check("autodetected", [(f.name, f.field_type) for f in c.get_table("loads.auto").schema],
          [("k", "STRING"), ("v", "INTEGER")])

    got = c.get_job("py-ndjson")
    check("get_job type", type(got).__name__, "LoadJob")
    check("get_job state", got.state, "DONE")
    check("get_job output_rows", got.output_rows, 2)
    check("get_job destination", got.destination.table_id, "events")
    check("get_job format", got.source_format, "NEWLINE_DELIMITED_JSON")

    # Bad rows within maxBadRecords are skipped and listed; beyond it the job fails whole.
    bad = b'{"msg": "ok"}\n{"n": "not a number"}\n'
    tolerant = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON, max_bad_records=1
    )
    job = c.load_table_from_file(
        io.BytesIO(bad), "loads.events", job_id="py-tolerant", job_config=tolerant
    )
    job.result(timeout=30)
    check("tolerant rows", job.output_rows, 1)
    check("tolerant error", job.errors[0]["message"],
          "Error while reading data, error message: JSON parsing error in row starting at "
          "position 14: Missing required field: msg.")
    strict = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON)
    job = c.load_table_from_file(
        io.BytesIO(bad), "loads.events", job_id="py-strict", job_config=strict
    )
    try:
        job.result(timeout=30)
        raise AssertionError("a job with a bad row and maxBadRecords 0 succeeded")
    except exceptions.BadRequest as e:
        assert "JSON table encountered too many errors, giving up. Rows: 2; errors: 1." in e.message, e.message
    check("error_result", job.error_result["reason"], "invalid")
    check("errors", len(job.errors), 3)
    assert "Missing required field: msg." in job.errors[2]["message"], job.errors
    check("rows after failure", c.get_table("loads.events").num_rows, 4)

    # The same job id again: 409, whichever upload the client uses; the job is unchanged.
    expect_error(
        exceptions.Conflict,
        lambda: c.load_table_from_file(
            io.BytesIO(ndjson), "loads.events", job_id="py-ndjson", job_config=ndjson_config
        ),
        f"Already Exists: Job {PROJECT}:US.py-ndjson",
    )
    expect_error(
        exceptions.Conflict,
        lambda: c.load_table_from_file(
            io.BytesIO(csv), "loads.events", size=len(csv), job_id="py-csv", job_config=csv_config
        ),
        f"Already Exists: Job {PROJECT}:US.py-csv",
    )
    check("rows after conflicts", c.get_table("loads.events").num_rows, 4)

    # Cancelling a done job changes nothing.
    cancelled = c.cancel_job("py-csv")
    check("cancelled state", cancelled.state, "DONE")
    check("cancelled error", cancelled.error_result, None)

    ids = [j.job_id for j in c.list_jobs()]
    check("list_jobs", sorted(ids), sorted(["py-ndjson", "py-csv", "py-json", "py-tolerant", "py-strict"]))
    check("list_jobs newest first", ids[0], "py-strict")
    check("list_jobs types", {type(j).__name__ for j in c.list_jobs()}, {"LoadJob"})
    paged = c.list_jobs(page_size=2)
    check("paged", len(list(paged)), 5)
    check("state_filter", len(list(c.list_jobs(state_filter="running"))), 0)
    print(json.dumps({"rows": c.get_table("loads.events").num_rows, "jobs": len(ids)}))


SCENARIOS = {"roundtrip": roundtrip, "schema_update": schema_update, "load_jobs": load_jobs}

if __name__ == "__main__":
    SCENARIOS[sys.argv[2]](int(sys.argv[1]))
