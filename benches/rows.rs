//! msgpack record → BigQuery JSON row transcoding, without a schema (the `<format> json`
//! mapping) and with the benchmark's table schema (strict conversion), with `<inject>` extras;
//! and the same records → protobuf rows for the Storage Write API (`proto`).

mod common;

use bqforward::format::json::Extra;
use bqforward::output::bigquery::rows::{Conversion, RowWriter};
use bqforward::output::bigquery::schema::Schema;
use bqforward::output::bigquery::storage_write::encoder::ProtoRowWriter;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

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

criterion_group!(benches, rows);
criterion_main!(benches);
