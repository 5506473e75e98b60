//! Inputs shared by the benches: the load generator's realistic records (one source of truth,
//! included from loadgen/src/records.rs) and Forward frames built from them.

#![allow(dead_code, unused_imports)] // each bench uses part of this module

#[path = "../../loadgen/src/records.rs"]
mod records;

pub use records::{SCHEMA_JSON, events};

use bqforward::buffer::Entry;
use bqforward::codec::Mode;
use bqforward::codec::encode::write_message;
use bqforward::event::{Event, EventTime};
use std::sync::Arc;

/// Events per chunk, as fluentd's and Fluent Bit's forward outputs commonly send.
pub const CHUNK: usize = 500;

pub fn time() -> EventTime {
    EventTime::new(1_795_600_800, 123_456_789)
}

/// `chunks` messages of `CHUNK` events in `packing`, each asking for an ack.
pub fn stream(packing: Mode, chunks: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    for c in 0..chunks {
        let list: Vec<Event> = events(0, (c * CHUNK) as u64, CHUNK, time());
        let id = format!("{c:024}");
        match packing {
            // One ack per event would be unusual; Message mode senders rarely ask for acks.
            Mode::Message => write_message(&mut out, packing, "app.web", &list, None),
            _ => write_message(&mut out, packing, "app.web", &list, Some(&id)),
        }
    }
    (out, chunks * CHUNK)
}

/// `count` events of the tag `app.web` as an output's chunk holds them.
pub fn entries(count: usize) -> Vec<Entry> {
    let tag: Arc<str> = Arc::from("app.web");
    events(0, 0, count, time())
        .into_iter()
        .map(|event| Entry {
            tag: tag.clone(),
            event,
        })
        .collect()
}
