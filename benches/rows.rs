//! msgpack record → BigQuery JSON row transcoding, without a schema (the `<format> json`
//! mapping) and with the benchmark's table schema (strict conversion), with `<inject>` extras;
//! and the same records → protobuf rows for the Storage Write API (`proto`); and a chunk of
//! them → `bigquery_load`'s NDJSON upload (`load_ndjson`: plain and gzipped, no `<inject>`).

mod common;

use bqforward::config::parse_str;
use bqforward::event::EventTime;
use bqforward::format::json::Extra;
use bqforward::format::{Extras, Inject};
use bqforward::output::bigquery::load::ndjson::{self, Encoding};
use bqforward::output::bigquery::rows::{Conversion, RowWriter};
use bqforward::output::bigquery::schema::Schema;
use bqforward::output::bigquery::storage_write::encoder::ProtoRowWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

fn rows(c: &mut Criterion) {
    let records: Vec<_> = common::events(0, 0, common::CHUNK, common::time());
    let schema = Schema::from_json(&serde_json::from_str(common::SCHEMA_JSON).unwrap()).unwrap();
    let extras = [
        ("time", Extra::Time(common::time())),
        ("tag", Extra::Str("app.web")),
    ];
    let bytes: usize = records.iter().map(|e| e.record.len()).sum();
    let mut group = c.benchmark_group("write_row");
    group.throughput(Throughput::Elements(records.len() as u64));
    for (name, schema) in [("no_schema", None), ("schema", Some(&schema))] {
        let mut out = Vec::with_capacity(bytes * 2);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                // One writer per chunk, as a request is built.
                let mut writer = RowWriter::new(schema, Conversion::Strict);
                for event in &records {
                    writer
                        .write(&event.record, &extras, &mut out)
                        .expect("row converts");
                }
                black_box(out.len())
            })
        });
    }
    // As fluent-plugin-bigquery's README injects the time: a string with nanoseconds, into
    // the TIMESTAMP column, formatted per event (the events of a chunk within one second).
    let conf = "<inject>\n time_key time\n time_type string\n \
                time_format %Y-%m-%dT%H:%M:%S.%NZ\n tag_key tag\n</inject>\n";
    let root = parse_str(conf, Path::new("bench.conf")).unwrap();
    let (mut inject, _) = Inject::from_config(root.elements.first()).unwrap();
    let mut out = Vec::with_capacity(bytes * 2);
    group.bench_function("schema_time_string", |b| {
        b.iter(|| {
            out.clear();
            let mut writer = RowWriter::new(Some(&schema), Conversion::Strict);
            for (i, event) in records.iter().enumerate() {
                let time = EventTime::new(common::time().secs, 1_000 * i as u32 + 7);
                let mut extras = Extras::default();
                inject.extras_into("app.web", time, &mut extras);
                writer
                    .write(&event.record, &extras, &mut out)
                    .expect("row converts");
            }
            black_box(out.len())
        })
    });
    let mut out = Vec::with_capacity(bytes * 2);
    group.bench_function("proto", |b| {
        b.iter(|| {
            out.clear();
            let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, false);
            for event in &records {
                writer
                    .write(&event.record, &extras, &mut out)
                    .expect("row converts");
            }
            black_box(out.len())
        })
    });
    group.finish();
}

/// A chunk of 20,000 events (about 6 MB of NDJSON) written as one load job's upload. Without
/// `<inject>` the records carry no `time`: the schema's REQUIRED is relaxed, so every row
/// converts (a refused row would measure the dead-letter path instead).
fn load_ndjson(c: &mut Criterion) {
    let relaxed = common::SCHEMA_JSON.replace("REQUIRED", "NULLABLE");
    let schema = Schema::from_json(&serde_json::from_str(&relaxed).unwrap()).unwrap();
    let entries = common::entries(20_000);
    let indices: Vec<u32> = (0..entries.len() as u32).collect();
    let inject = Inject::default();
    let mut group = c.benchmark_group("load_ndjson");
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.sample_size(20);
    for (name, encoding) in [("plain", Encoding::Plain), ("gzip", Encoding::Gzip)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let data = ndjson::build(
                    &entries,
                    &indices,
                    Some(&schema),
                    &inject,
                    Conversion::Strict,
                    false,
                    encoding,
                )
                .expect("rows convert");
                assert!(data.rejected.is_empty());
                black_box(data.body.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rows, load_ndjson);
criterion_main!(benches);
