//! Rows that cannot go to BigQuery: written to `<secondary>` as one record each
//! (`{"table","reason","location","message","tag","time","record"}`), or, without one, logged
//! and counted. Shared by the BigQuery outputs.

use crate::buffer::{Chunk, Entry};
use crate::codec::msgpack;
use crate::event::{Batch, Event};
use crate::internal_events::bigquery as events;
use crate::metrics::SinkDetail;
use crate::output::Output;
use std::sync::Arc;

/// An entry that cannot be sent: it goes to the dead letters with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: u32,
    pub reason: String,
    pub location: String,
    pub message: String,
}

/// Where one output's dead letters go.
pub struct DeadLetters {
    pub id: String,
    pub secondary: Option<Arc<dyn Output>>,
    pub detail: Arc<SinkDetail>,
}

impl DeadLetters {
    /// Writes dead letters to `<secondary>`; without one, logs and counts them. `false` if
    /// the secondary refused them.
    pub async fn write<K>(&self, chunk: &Chunk<K>, dead: &[Rejected], table: &str) -> bool {
        let reasons = reason_counts(dead);
        let Some(secondary) = &self.secondary else {
            events::RowsDropped {
                output: &self.id,
                table,
                reasons: &reasons,
                first: dead.first().map_or("", |d| d.message.as_str()),
                cause: "rejected and no <secondary> configured",
            }
            .emit(&self.detail);
            return true;
        };
        let mut batches: Vec<Batch> = Vec::new();
        for d in dead {
            let Some(entry) = chunk.entries.get(d.index as usize) else {
                continue;
            };
            let record = dead_letter_record(table, d, entry);
            let event = Event {
                time: entry.event.time,
                record,
            };
            match batches.last_mut() {
                Some(batch) if batch.tag == entry.tag => batch.events.push(event),
                _ => batches.push(Batch {
                    tag: Arc::clone(&entry.tag),
                    events: vec![event],
                }),
            }
        }
        for batch in batches {
            if let Err(err) = secondary.emit(batch).await {
                tracing::error!(output = %self.id, error = %err, "secondary output refused dead letters");
                return false;
            }
        }
        events::RowsDeadLettered {
            output: &self.id,
            table,
            secondary: secondary.id(),
            reasons: &reasons,
        }
        .emit(&self.detail);
        true
    }
}

/// How many of `dead` have each reason, in the order the reasons first appear.
fn reason_counts(dead: &[Rejected]) -> Vec<(&str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for d in dead {
        match counts.iter_mut().find(|(r, _)| *r == d.reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((&d.reason, 1)),
        }
    }
    counts
}

/// `{"table","reason","location","message","tag","time","record"}` as a msgpack map.
fn dead_letter_record(table: &str, dead: &Rejected, entry: &Entry) -> bytes::Bytes {
    let mut out = Vec::with_capacity(entry.event.record.len() + 256);
    msgpack::write_map_len(&mut out, 7);
    for (key, value) in [
        ("table", table),
        ("reason", dead.reason.as_str()),
        ("location", dead.location.as_str()),
        ("message", dead.message.as_str()),
        ("tag", &entry.tag),
    ] {
        msgpack::write_str(&mut out, key);
        msgpack::write_str(&mut out, value);
    }
    msgpack::write_str(&mut out, "time");
    let _ = rmp::encode::write_f64(&mut out, entry.event.time.as_f64());
    msgpack::write_str(&mut out, "record");
    out.extend_from_slice(&entry.event.record);
    out.into()
}

pub fn reject(indices: &[u32], reason: &str, message: &str) -> Vec<Rejected> {
    indices
        .iter()
        .map(|&index| Rejected {
            index,
            reason: reason.into(),
            location: String::new(),
            message: message.into(),
        })
        .collect()
}
