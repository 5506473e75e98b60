//! The Forward decoder on arbitrary bytes, delivered in two reads split at a point the input
//! chooses: it may reject, never panic, and never loop.
#![no_main]

include!("common.rs");

use bytes::BytesMut;
use codec::{DecodeOptions, Decoder, decode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let opts = DecodeOptions {
        decompression_size_limit: 1 << 20,
        ..DecodeOptions::default()
    };
    let mut decoder = Decoder::new(1 << 20, opts.max_depth);
    let mut buf = BytesMut::from(&data[..split]);
    for more in [&data[split..], &[][..]] {
        loop {
            match decoder.next_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = decode_message(&frame, &opts);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        buf.extend_from_slice(more);
    }
});
