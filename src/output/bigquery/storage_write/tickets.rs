//! Exactly-once bookkeeping: each chunk's "ticket" (which rows were appended to which
//! app-created stream at which offset) in a file beside the chunk in the file buffer
//! (`chunk-<id>.append`), written and synced before the append it records; and the table's
//! current stream with its next offset. A ticket outlives its chunk's delivery until the
//! buffer has removed the chunk file (swept then), so a chunk re-sent after a crash finds it.
//! Must not decide what an answer means (the sink does).

use crate::buffer::ChunkId;
use crate::metrics::SinkDetail;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often delivered chunks' tickets are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Rows appended (or about to be) at `offset` of `stream`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketBatch {
    pub stream: String,
    pub offset: i64,
    pub rows: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub batches: Vec<TicketBatch>,
}

/// The table's current stream and the offset of its next row.
pub type Current = Option<(String, i64)>;

pub struct ExactlyOnce {
    dir: PathBuf,
    fsync: bool,
    streams: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Current>>>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl ExactlyOnce {
    /// Tickets in `dir`, the file buffer's directory.
    pub fn new(dir: PathBuf, fsync: bool) -> Self {
        Self {
            dir,
            fsync,
            streams: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
        }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(format!("chunk-{}.append", id.hex()))
    }

    /// The chunk's ticket; an empty one if it has none. An unreadable ticket is set aside and
    /// logged: its rows are then sent as new ones (they may land twice).
    pub fn load(&self, id: &ChunkId) -> Ticket {
        let path = self.path(id);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(_) => return Ticket::default(),
        };
        match serde_json::from_slice(&data) {
            Ok(ticket) => ticket,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    "unreadable exactly-once ticket set aside: its rows are sent again as new rows");
                let _ = std::fs::rename(&path, path.with_extension("append.corrupt"));
                Ticket::default()
            }
        }
    }

    /// Writes the ticket (a new file renamed over the old, synced when the buffer syncs).
    pub fn save(&self, id: &ChunkId, ticket: &Ticket) -> std::io::Result<()> {
        let path = self.path(id);
        let tmp = path.with_extension("append.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(ticket).map_err(std::io::Error::other)?)?;
        if self.fsync {
            file.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        if self.fsync {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The chunk is delivered: its ticket goes once the buffer has removed the chunk (a
    /// crash before that re-sends the chunk, and the ticket makes it land once).
    pub fn delivered(&self, _id: &ChunkId) {
        let due = match self.last_sweep.lock() {
            Ok(mut last) if last.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) => {
                *last = Some(Instant::now());
                true
            }
            _ => false,
        };
        if due {
            sweep(&self.dir);
        }
    }

    /// The lock and current stream of a table (`projects/P/datasets/D/tables/T`): appends to
    /// one stream go one at a time, in offset order.
    pub fn slot(&self, table: &str) -> Arc<tokio::sync::Mutex<Current>> {
        match self.streams.lock() {
            Ok(mut streams) => Arc::clone(streams.entry(table.to_owned()).or_default()),
            Err(_) => Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// A table's stream was left for a new one.
    pub fn replaced(&self, detail: &SinkDetail, table: &str) {
        crate::internal_events::bigquery::StreamReplaced { table }.emit(detail);
    }
}

/// Removes tickets whose chunk file is gone.
pub fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".append")
            && !dir.join(format!("{stem}.log")).exists()
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_survives_until_its_chunk_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let eo = ExactlyOnce::new(dir.path().to_owned(), true);
        let id = ChunkId([7; 16]);
        assert_eq!(eo.load(&id), Ticket::default());
        let ticket = Ticket {
            batches: vec![TicketBatch {
                stream: "projects/p/datasets/d/tables/t/streams/s1".into(),
                offset: 500,
                rows: vec![0, 1, 3],
            }],
        };
        std::fs::write(dir.path().join(format!("chunk-{}.log", id.hex())), b"x").unwrap();
        eo.save(&id, &ticket).unwrap();
        assert_eq!(eo.load(&id), ticket);
        sweep(dir.path());
        assert_eq!(eo.load(&id), ticket, "kept while the chunk exists");
        std::fs::remove_file(dir.path().join(format!("chunk-{}.log", id.hex()))).unwrap();
        sweep(dir.path());
        assert_eq!(eo.load(&id), Ticket::default());
    }

    #[test]
    fn an_unreadable_ticket_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let eo = ExactlyOnce::new(dir.path().to_owned(), false);
        let id = ChunkId([1; 16]);
        std::fs::write(eo.path(&id), b"{not json").unwrap();
        assert_eq!(eo.load(&id), Ticket::default());
        assert!(!eo.path(&id).exists());
    }
}
