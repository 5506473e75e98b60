//! Frame decoding per Forward mode: scanning message boundaries in a read buffer and decoding
//! each message into events, as a connection does for every read.

mod common;

use bqforward::codec::Mode;
use bqforward::codec::{DecodeOptions, Decoder, decode_message};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn decode_all(stream: &[u8], opts: &DecodeOptions) -> usize {
    let mut buf = BytesMut::from(stream);
    let mut decoder = Decoder::new(64 * 1024 * 1024, 64);
    let mut events = 0;
    while let Some(frame) = decoder.next_frame(&mut buf).expect("valid stream") {
        if let Some(msg) = decode_message(&frame, opts).expect("valid message") {
            events += msg.events.len();
        }
    }
    events
}

fn decode(c: &mut Criterion) {
    let opts = DecodeOptions::default();
    let mut group = c.benchmark_group("decode");
    for (name, packing) in [
        ("message", Mode::Message),
        ("forward", Mode::Forward),
        ("packed_forward", Mode::PackedForward),
        ("compressed_packed_forward", Mode::CompressedPackedForward),
    ] {
        let (stream, events) = common::stream(packing, 8);
        assert_eq!(decode_all(&stream, &opts), events);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_function(name, |b| b.iter(|| decode_all(black_box(&stream), &opts)));
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
