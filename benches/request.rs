//! insertAll request building for one chunk: rows with insertIds and `<inject>` fields into
//! the JSON body, then gzip; and gzip alone, to see its share.

mod common;

use bqforward::config::parse_str;
use bqforward::format::Inject;
use bqforward::metrics::SinkDetail;
use bqforward::output::bigquery::evolve::{Evolution, Rows, TypeRules};
use bqforward::output::bigquery::gzip::gzip;
use bqforward::output::bigquery::request_builder::{
    MAX_BODY_BYTES, RequestBuilder, RequestOptions,
};
use bqforward::output::bigquery::schema::Schema;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compression, write::GzEncoder};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

fn inject() -> Inject {
    let root = parse_str(
        "<inject>\n  time_key time\n  tag_key tag\n</inject>\n",
        Path::new("bench.conf"),
    )
    .unwrap();
    Inject::from_config(root.elements.first()).unwrap().0
}

fn request(c: &mut Criterion) {
    let entries = common::entries(common::CHUNK);
    let indices: Vec<u32> = (0..entries.len() as u32).collect();
    let schema = Schema::from_json(&serde_json::from_str(common::SCHEMA_JSON).unwrap()).unwrap();
    let options = RequestOptions {
        max_rows: 500,
        max_body_bytes: MAX_BODY_BYTES,
        ..RequestOptions::default()
    };
    let mut inject = inject();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(entries.len() as u64));
    let mut raw_body = Vec::new();
    for (name, schema) in [
        ("json_gzip_no_schema", None),
        ("json_gzip_schema", Some(&schema)),
    ] {
        let mut builder = RequestBuilder {
            chunk_hex: "0123456789abcdef0123456789abcdef",
            entries: &entries,
            schema,
            inject: &mut inject,
            options: &options,
            template_suffix: None,
        };
        let (requests, rejected) = builder.build(&indices);
        assert!(rejected.is_empty() && requests.len() == 1);
        raw_body.clear();
        flate2::read::GzDecoder::new(&requests[0].body[..])
            .read_to_end(&mut raw_body)
            .unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(builder.build(&indices))));
    }
    // Schema evolution's extra walk over the rows (no new field: the usual case).
    let evolution = Evolution::new(
        "bench".into(),
        TypeRules::default(),
        Arc::new(SinkDetail::default()),
    );
    group.bench_function("evolve_probe_schema", |b| {
        b.iter(|| {
            let rows = Rows {
                entries: &entries,
                indices: &indices,
                inject: &mut inject,
                conversion: Default::default(),
            };
            black_box(evolution.new_fields(&schema, rows))
        })
    });
    // The body's gzip alone: ISA-L as the output uses, and zlib-rs (flate2) level 1 beside it.
    group.bench_function("gzip_only", |b| b.iter(|| black_box(gzip(&raw_body))));
    group.bench_function("gzip_only_zlib_rs", |b| {
        b.iter(|| {
            let mut gz =
                GzEncoder::new(Vec::with_capacity(raw_body.len() / 4), Compression::fast());
            gz.write_all(&raw_body).unwrap();
            black_box(gz.finish().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, request);
criterion_main!(benches);
