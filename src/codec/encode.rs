//! Building Forward protocol messages in every mode, as senders do: used by the load
//! generator, the benchmarks and the tests. Writing into a Vec cannot fail.

use super::forward::Mode;
use crate::event::{Event, EventTime};
use flate2::{Compression, write::GzEncoder};
use std::io::Write;

/// EventTime: msgpack fixext8 of type 0, seconds then nanoseconds, both u32 big-endian.
pub fn write_event_time(out: &mut Vec<u8>, time: EventTime) {
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&(time.secs as u32).to_be_bytes());
    out.extend_from_slice(&time.nanos.to_be_bytes());
}

fn write_entry(out: &mut Vec<u8>, event: &Event) {
    out.push(0x92);
    write_event_time(out, event.time);
    out.extend_from_slice(&event.record);
}

fn write_option(out: &mut Vec<u8>, size: Option<usize>, chunk: Option<&str>, gzip: bool) {
    let len = u32::from(size.is_some()) + u32::from(chunk.is_some()) + u32::from(gzip);
    let _ = rmp::encode::write_map_len(out, len);
    if let Some(size) = size {
        let _ = rmp::encode::write_str(out, "size");
        let _ = rmp::encode::write_uint(out, size as u64);
    }
    if let Some(chunk) = chunk {
        let _ = rmp::encode::write_str(out, "chunk");
        let _ = rmp::encode::write_str(out, chunk);
    }
    if gzip {
        let _ = rmp::encode::write_str(out, "compressed");
        let _ = rmp::encode::write_str(out, "gzip");
    }
}

/// Appends one message carrying `events` in the given mode. Message mode writes one message
/// per event, each with the same `chunk` option when one is given.
pub fn write_message(
    out: &mut Vec<u8>,
    packing: Mode,
    tag: &str,
    events: &[Event],
    chunk: Option<&str>,
) {
    match packing {
        Mode::Message => {
            for event in events {
                out.push(if chunk.is_some() { 0x94 } else { 0x93 });
                let _ = rmp::encode::write_str(out, tag);
                write_event_time(out, event.time);
                out.extend_from_slice(&event.record);
                if chunk.is_some() {
                    write_option(out, None, chunk, false);
                }
            }
        }
        Mode::Forward => {
            out.push(if chunk.is_some() { 0x93 } else { 0x92 });
            let _ = rmp::encode::write_str(out, tag);
            let _ = rmp::encode::write_array_len(out, events.len() as u32);
            events.iter().for_each(|event| write_entry(out, event));
            if chunk.is_some() {
                write_option(out, None, chunk, false);
            }
        }
        Mode::PackedForward | Mode::CompressedPackedForward => {
            let mut entries = Vec::with_capacity(events.iter().map(|e| e.record.len() + 11).sum());
            events
                .iter()
                .for_each(|event| write_entry(&mut entries, event));
            let gzip = packing == Mode::CompressedPackedForward;
            if gzip {
                let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
                let _ = encoder.write_all(&entries);
                entries = encoder.finish().unwrap_or_default();
            }
            out.push(0x93);
            let _ = rmp::encode::write_str(out, tag);
            let _ = rmp::encode::write_bin(out, &entries);
            write_option(out, Some(events.len()), chunk, gzip);
        }
    }
}
