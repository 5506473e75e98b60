//! One loaded connection: writes pre-built Forward frames (only the chunk ids change between
//! sends), keeps at most `window` chunks unacknowledged, and times each chunk from the write
//! to its ack. Frames are built once, so the generator costs little next to the server.

use bqforward::codec::Mode;
use bqforward::codec::encode::write_message;
use bqforward::event::EventTime;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Chunk ids are 24 characters, like fluentd's base64 of 16 random bytes.
const PLACEHOLDER: &str = "XXXXXXXXXXXXXXXXXXXXXXXX";
/// Distinct batches per connection, reused in turn.
const DISTINCT_BATCHES: u64 = 8;

pub struct Plan {
    pub port: u16,
    pub conn: u32,
    pub packing: Mode,
    pub tag: String,
    pub events: u64,
    pub batch: usize,
    pub ack: bool,
    pub window: usize,
    /// Events per second for this connection; `None` sends as fast as acks allow.
    pub rate: Option<f64>,
    /// No new batch is written after this.
    pub send_until: Instant,
    /// Waiting for acks ends here, with an error.
    pub give_up: Instant,
    pub time: EventTime,
}

#[derive(Default)]
pub struct Outcome {
    pub events: u64,
    pub bytes: u64,
    /// Write-to-ack times of every acked data chunk, microseconds.
    pub latencies_us: Vec<u32>,
}

/// A frame (one or several messages) whose chunk ids sit at `slots`.
struct Frame {
    bytes: Vec<u8>,
    slots: Vec<usize>,
    events: u64,
}

impl Frame {
    /// `events` in `packing`; with `every_chunk` each message asks for an ack, else only the
    /// last one (the fence that tells when the server has read everything before it).
    fn build(plan: &Plan, first: u64, events: usize, every_chunk: bool) -> Self {
        let list = crate::records::events(plan.conn, first, events, plan.time);
        let mut bytes = Vec::with_capacity(events * 340 + 64);
        let (unacked, acked) = if every_chunk {
            (&list[..0], &list[..])
        } else {
            list.split_at(list.len().saturating_sub(1))
        };
        if !unacked.is_empty() {
            write_message(&mut bytes, plan.packing, &plan.tag, unacked, None);
        }
        write_message(
            &mut bytes,
            plan.packing,
            &plan.tag,
            acked,
            Some(PLACEHOLDER),
        );
        let slots = bytes
            .windows(PLACEHOLDER.len())
            .enumerate()
            .filter(|(_, w)| *w == PLACEHOLDER.as_bytes())
            .map(|(i, _)| i)
            .collect();
        Self {
            bytes,
            slots,
            events: events as u64,
        }
    }

    fn set_ids(&mut self, conn: u32, first_chunk: u64) {
        for (i, &at) in self.slots.iter().enumerate() {
            let id = chunk_id(conn, first_chunk + i as u64);
            self.bytes[at..at + PLACEHOLDER.len()].copy_from_slice(id.as_bytes());
        }
    }
}

fn chunk_id(conn: u32, seq: u64) -> String {
    format!("{conn:08x}{seq:016x}")
}

/// Chunks written and not yet acked, oldest first, with their write time.
#[derive(Default)]
struct InFlight {
    queue: Mutex<VecDeque<(u64, Instant, bool)>>,
    freed: Condvar,
}

pub fn run(plan: Plan) -> Result<Outcome, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", plan.port))
        .map_err(|e| format!("connect 127.0.0.1:{}: {e}", plan.port))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // A server that stops reading cannot hold the generator past its deadline.
    let left = plan.give_up.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_secs(1))))
        .map_err(|e| e.to_string())?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let inflight = Arc::new(InFlight::default());
    let total_chunks = Arc::new(AtomicU64::new(u64::MAX));
    let acks = {
        let (inflight, total, conn, give_up) = (
            inflight.clone(),
            total_chunks.clone(),
            plan.conn,
            plan.give_up,
        );
        std::thread::spawn(move || read_acks(reader, conn, &inflight, &total, give_up))
    };
    let written = write_all(&plan, &mut stream, &inflight, &total_chunks);
    let latencies = acks.join().map_err(|_| "ack reader panicked".to_string())?;
    let (events, bytes) = written?;
    Ok(Outcome {
        events,
        bytes,
        latencies_us: latencies?,
    })
}

/// Writes every batch, then the last partial batch (or the fence); returns events and bytes.
fn write_all(
    plan: &Plan,
    stream: &mut TcpStream,
    inflight: &InFlight,
    total_chunks: &AtomicU64,
) -> Result<(u64, u64), String> {
    let mut frames: Vec<Frame> = (0..DISTINCT_BATCHES)
        .map(|k| Frame::build(plan, k * plan.batch as u64, plan.batch, plan.ack))
        .collect();
    let window = plan.window.max(1) * frames[0].slots.len().max(1);
    let batch = plan.batch as u64;
    let (mut sent, mut bytes, mut chunks) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    // Without acks the last events are held back to carry the fence.
    let more = |sent: u64| {
        if plan.ack {
            sent + batch <= plan.events
        } else {
            sent + batch < plan.events
        }
    };
    while more(sent) && Instant::now() < plan.send_until {
        if let Some(rate) = plan.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let frame = &mut frames[((sent / batch) % DISTINCT_BATCHES) as usize];
        frame.set_ids(plan.conn, chunks);
        send(stream, frame, chunks, inflight, window, plan)?;
        chunks += frame.slots.len() as u64;
        sent += frame.events;
        bytes += frame.bytes.len() as u64;
    }
    let rest = (plan.events - sent).min(batch);
    if rest > 0 && (!plan.ack || Instant::now() < plan.send_until) {
        let mut last = Frame::build(plan, sent, rest as usize, plan.ack);
        last.set_ids(plan.conn, chunks);
        send(stream, &last, chunks, inflight, window, plan)?;
        chunks += last.slots.len() as u64;
        sent += last.events;
        bytes += last.bytes.len() as u64;
    }
    total_chunks.store(chunks, Ordering::SeqCst);
    Ok((sent, bytes))
}

fn send(
    stream: &mut TcpStream,
    frame: &Frame,
    first_chunk: u64,
    inflight: &InFlight,
    window: usize,
    plan: &Plan,
) -> Result<(), String> {
    let mut queue = inflight.queue.lock().map_err(|_| "poisoned")?;
    while !queue.is_empty() && queue.len() + frame.slots.len() > window {
        // Bounded even if the ack reader has stopped (connection closed, bad answer).
        if Instant::now() > plan.give_up {
            return Err(format!(
                "connection {}: no ack before the deadline",
                plan.conn
            ));
        }
        let (guard, _) = inflight
            .freed
            .wait_timeout(queue, Duration::from_millis(100))
            .map_err(|_| "poisoned")?;
        queue = guard;
    }
    let timed = plan.ack;
    let now = Instant::now();
    for i in 0..frame.slots.len() as u64 {
        queue.push_back((first_chunk + i, now, timed));
    }
    drop(queue);
    stream
        .write_all(&frame.bytes)
        .map_err(|e| format!("write: {e}"))
}

/// Reads `{"ack": id}` answers until every chunk written is acked; they must come in order.
fn read_acks(
    mut stream: TcpStream,
    conn: u32,
    inflight: &InFlight,
    total: &AtomicU64,
    give_up: Instant,
) -> Result<Vec<u32>, String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut read = vec![0u8; 64 * 1024];
    let mut acked = 0u64;
    while acked < total.load(Ordering::SeqCst) {
        if Instant::now() > give_up {
            return Err(format!(
                "connection {conn}: only {acked} chunks acked before the deadline"
            ));
        }
        match stream.read(&mut read) {
            Ok(0) => return Err(format!("connection {conn}: closed by the server")),
            Ok(n) => buf.extend_from_slice(&read[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("connection {conn}: read: {e}")),
        }
        let mut at = 0;
        while let Some((used, id)) = parse_ack(&buf[at..])? {
            let now = Instant::now();
            let mut queue = inflight.queue.lock().map_err(|_| "poisoned")?;
            let (seq, sent, timed) = queue
                .pop_front()
                .ok_or_else(|| format!("connection {conn}: ack for a chunk never sent"))?;
            inflight.freed.notify_one();
            drop(queue);
            if id != chunk_id(conn, seq).as_bytes() {
                return Err(format!(
                    "connection {conn}: ack {} where {} was expected",
                    String::from_utf8_lossy(id),
                    chunk_id(conn, seq)
                ));
            }
            if timed {
                latencies.push(now.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
            }
            acked += 1;
            at += used;
        }
        buf.drain(..at);
    }
    Ok(latencies)
}

/// One `{"ack": id}` map from the front of `buf`: bytes used and the id, `None` if incomplete.
fn parse_ack(buf: &[u8]) -> Result<Option<(usize, &[u8])>, String> {
    let Some(&head) = buf.first() else {
        return Ok(None);
    };
    if head != 0x81 {
        return Err(format!(
            "unexpected answer byte {head:#04x} (not an ack map)"
        ));
    }
    let Some((key_end, key)) = string(buf, 1)? else {
        return Ok(None);
    };
    if key != b"ack" {
        return Err("answer map without \"ack\"".into());
    }
    string(buf, key_end)
}

/// A msgpack str or bin at `at`: where it ends and its bytes.
fn string(buf: &[u8], at: usize) -> Result<Option<(usize, &[u8])>, String> {
    let Some(&head) = buf.get(at) else {
        return Ok(None);
    };
    let (start, len) = match head {
        0xa0..=0xbf => (at + 1, usize::from(head & 0x1f)),
        0xd9 | 0xc4 => match buf.get(at + 1) {
            Some(&n) => (at + 2, usize::from(n)),
            None => return Ok(None),
        },
        0xda | 0xc5 => match buf.get(at + 1..at + 3) {
            Some(n) => (at + 3, usize::from(u16::from_be_bytes([n[0], n[1]]))),
            None => return Ok(None),
        },
        other => return Err(format!("unexpected byte {other:#04x} in an ack")),
    };
    Ok(buf.get(start..start + len).map(|s| (start + len, s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_parsed_across_partial_reads() {
        let mut buf = Vec::new();
        bqforward::codec::forward::write_ack(&mut buf, chunk_id(1, 2).as_bytes());
        for cut in 0..buf.len() {
            assert_eq!(parse_ack(&buf[..cut]).unwrap(), None);
        }
        let (used, id) = parse_ack(&buf).unwrap().unwrap();
        assert_eq!((used, id), (buf.len(), chunk_id(1, 2).as_bytes()));
    }

    #[test]
    fn frames_carry_one_chunk_id_per_acked_message() {
        let plan = Plan {
            port: 0,
            conn: 0,
            packing: Mode::Message,
            tag: "t".into(),
            events: 10,
            batch: 5,
            ack: true,
            window: 1,
            rate: None,
            send_until: Instant::now(),
            give_up: Instant::now(),
            time: EventTime::new(1, 0),
        };
        assert_eq!(Frame::build(&plan, 0, 5, true).slots.len(), 5);
        assert_eq!(Frame::build(&plan, 0, 5, false).slots.len(), 1);
        let packed = Plan {
            packing: Mode::CompressedPackedForward,
            ..plan
        };
        assert_eq!(Frame::build(&packed, 0, 5, true).slots.len(), 1);
    }
}
