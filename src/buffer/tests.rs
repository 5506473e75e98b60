//! Buffer scheduling with a scripted sink: what gets delivered, when, and what happens to
//! what cannot be.

use super::*;
use crate::event::EventTime;
use bytes::Bytes;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::Ordering;

type Script = Box<dyn Fn(&Chunk<String>, usize) -> Outcome + Send + Sync>;

/// Records every write (pending entry seqs) and give-up; answers per `script(chunk, call#)`.
struct TestSink {
    writes: StdMutex<Vec<Vec<u64>>>,
    given_up: StdMutex<Vec<(Vec<u64>, String)>>,
    script: Script,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

fn seqs(chunk: &Chunk<String>) -> Vec<u64> {
    chunk
        .pending_indices()
        .iter()
        .map(|&i| chunk.entries[i as usize].event.time.secs as u64)
        .collect()
}

impl Sink<String> for TestSink {
    fn write<'a>(&'a self, chunk: &'a Chunk<String>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                let _permit = gate.acquire().await;
            }
            let call = {
                let mut writes = self.writes.lock().unwrap();
                writes.push(seqs(chunk));
                writes.len()
            };
            (self.script)(chunk, call)
        })
    }

    fn give_up<'a>(&'a self, chunk: &'a Chunk<String>, reason: &'a str) -> BoxFuture<'a, ()> {
        self.given_up
            .lock()
            .unwrap()
            .push((seqs(chunk), reason.to_owned()));
        Box::pin(async {})
    }
}

fn sink(script: Script, gate: Option<Arc<tokio::sync::Semaphore>>) -> Arc<TestSink> {
    Arc::new(TestSink {
        writes: StdMutex::new(Vec::new()),
        given_up: StdMutex::new(Vec::new()),
        script,
        gate,
    })
}

fn entries(range: std::ops::Range<u64>, record_len: usize) -> Vec<Entry> {
    range
        .map(|i| Entry {
            tag: Arc::from("t"),
            event: Event {
                time: EventTime::new(i as i64, 0),
                record: Bytes::from(vec![0x80; record_len.max(1)]),
            },
        })
        .collect()
}

fn config() -> BufferConfig {
    BufferConfig {
        flush_interval: Duration::from_millis(50),
        flush_thread_interval: Duration::from_millis(5),
        retry: RetryPolicy {
            wait: Duration::from_millis(1),
            randomize: false,
            ..RetryPolicy::default()
        },
        ..BufferConfig::bigquery_insert_defaults()
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached");
}

fn key(name: &str) -> Arc<String> {
    Arc::new(name.to_owned())
}

#[tokio::test]
async fn chunks_are_cut_at_the_record_limit_and_old_ones_flushed() {
    let s = sink(Box::new(|_, _| Outcome::Done), None);
    let buffer = Buffer::start("t".into(), config(), s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..1200, 10))])
        .await
        .unwrap();
    wait_until(|| s.writes.lock().unwrap().len() == 3).await;
    let sizes: Vec<usize> = s.writes.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 200]);
    let all: Vec<u64> = s.writes.lock().unwrap().concat();
    assert_eq!(all, (0..1200).collect::<Vec<_>>());
    wait_until(|| buffer.bytes() == 0).await;
}

#[tokio::test]
async fn keys_get_separate_chunks() {
    let s = sink(Box::new(|_, _| Outcome::Done), None);
    let buffer = Buffer::start("t".into(), config(), s.clone()).unwrap();
    buffer
        .append(vec![
            (key("a"), entries(0..3, 10)),
            (key("b"), entries(3..5, 10)),
        ])
        .await
        .unwrap();
    wait_until(|| s.writes.lock().unwrap().len() == 2).await;
    let mut writes = s.writes.lock().unwrap().clone();
    writes.sort();
    assert_eq!(writes, vec![vec![0, 1, 2], vec![3, 4]]);
}

#[tokio::test]
async fn partial_retry_resends_only_kept_entries() {
    let s = sink(
        Box::new(|_, call| match call {
            1 => Outcome::Retry {
                keep: Some(vec![1, 3]),
                error: "stopped rows".into(),
                after: None,
                quiet: false,
            },
            _ => Outcome::Done,
        }),
        None,
    );
    let buffer = Buffer::start("t".into(), config(), s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..5, 10))])
        .await
        .unwrap();
    wait_until(|| s.writes.lock().unwrap().len() == 2).await;
    assert_eq!(s.writes.lock().unwrap()[1], vec![1, 3]);
    wait_until(|| buffer.bytes() == 0).await;
    assert_eq!(buffer.stats.retry_count.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn exhausted_retries_hand_the_chunk_to_give_up() {
    let s = sink(
        Box::new(|_, _| Outcome::Retry {
            keep: None,
            error: "503".into(),
            after: None,
            quiet: false,
        }),
        None,
    );
    let mut c = config();
    c.retry.max_times = Some(2);
    let buffer = Buffer::start("t".into(), c, s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..4, 10))])
        .await
        .unwrap();
    wait_until(|| !s.given_up.lock().unwrap().is_empty()).await;
    let (given, reason) = s.given_up.lock().unwrap()[0].clone();
    assert_eq!(given, vec![0, 1, 2, 3]);
    assert!(
        reason.contains("retries exhausted after 3 attempts: 503"),
        "{reason}"
    );
    assert_eq!(s.writes.lock().unwrap().len(), 3);
    wait_until(|| buffer.bytes() == 0).await;
}

fn small_buffer(action: OverflowAction) -> BufferConfig {
    BufferConfig {
        total_limit_size: 10_000,
        chunk_limit_records: Some(10),
        overflow_action: action,
        ..config()
    }
}

#[tokio::test]
async fn throw_exception_refuses_when_full() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = sink(Box::new(|_, _| Outcome::Done), Some(gate.clone()));
    let buffer = Buffer::start(
        "t".into(),
        small_buffer(OverflowAction::ThrowException),
        s.clone(),
    )
    .unwrap();
    buffer
        .append(vec![(key("a"), entries(0..50, 150))])
        .await
        .unwrap();
    let err = buffer
        .append(vec![(key("a"), entries(50..60, 150))])
        .await
        .unwrap_err();
    assert!(matches!(err, BufferError::Overflow(10_000)));
    gate.add_permits(1000);
    wait_until(|| buffer.bytes() == 0).await;
    buffer
        .append(vec![(key("a"), entries(50..60, 150))])
        .await
        .unwrap();
}

#[tokio::test]
async fn block_waits_for_room_then_accepts() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = sink(Box::new(|_, _| Outcome::Done), Some(gate.clone()));
    let buffer = Buffer::start("t".into(), small_buffer(OverflowAction::Block), s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..50, 150))])
        .await
        .unwrap();
    let blocked = {
        let buffer = Arc::clone(&buffer);
        tokio::spawn(async move { buffer.append(vec![(key("a"), entries(50..60, 150))]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !blocked.is_finished(),
        "append must wait while the buffer is full"
    );
    gate.add_permits(1000);
    blocked.await.unwrap().unwrap();
    wait_until(|| s.writes.lock().unwrap().concat().len() == 60).await;
    assert!(buffer.stats.blocked_nanos.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn drop_oldest_chunk_makes_room_and_counts() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = sink(Box::new(|_, _| Outcome::Done), Some(gate.clone()));
    let buffer = Buffer::start(
        "t".into(),
        small_buffer(OverflowAction::DropOldestChunk),
        s.clone(),
    )
    .unwrap();
    buffer
        .append(vec![(key("a"), entries(0..50, 150))])
        .await
        .unwrap();
    buffer
        .append(vec![(key("a"), entries(50..60, 150))])
        .await
        .unwrap();
    assert!(buffer.stats.dropped_chunks.load(Ordering::Relaxed) >= 1);
    assert_eq!(buffer.stats.dropped_records.load(Ordering::Relaxed) % 10, 0);
    gate.add_permits(1000);
}

#[tokio::test]
async fn shutdown_flushes_staged_and_gives_up_on_the_undeliverable() {
    let s = sink(
        Box::new(|chunk, _| {
            if *chunk.key == "bad" {
                Outcome::Retry {
                    keep: None,
                    error: "down".into(),
                    after: None,
                    quiet: false,
                }
            } else {
                Outcome::Done
            }
        }),
        None,
    );
    let c = BufferConfig {
        flush_interval: Duration::from_secs(3600),
        ..config()
    };
    let buffer = Buffer::start("t".into(), c, s.clone()).unwrap();
    buffer
        .append(vec![
            (key("good"), entries(0..3, 10)),
            (key("bad"), entries(3..5, 10)),
        ])
        .await
        .unwrap();
    let undelivered = buffer
        .shutdown(Instant::now() + Duration::from_millis(200))
        .await;
    assert_eq!(undelivered, 2);
    assert!(s.writes.lock().unwrap().contains(&vec![0, 1, 2]));
    let given = s.given_up.lock().unwrap().clone();
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].0, vec![3, 4]);
    assert!(matches!(
        buffer.append(vec![(key("good"), entries(9..10, 10))]).await,
        Err(BufferError::Closed)
    ));
}

#[tokio::test]
async fn immediate_mode_flushes_every_append_and_lazy_only_full_chunks() {
    let s = sink(Box::new(|_, _| Outcome::Done), None);
    let c = BufferConfig {
        flush_mode: FlushMode::Immediate,
        flush_interval: Duration::from_secs(3600),
        ..config()
    };
    let buffer = Buffer::start("t".into(), c, s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..3, 10))])
        .await
        .unwrap();
    wait_until(|| s.writes.lock().unwrap().len() == 1).await;

    let s = sink(Box::new(|_, _| Outcome::Done), None);
    let c = BufferConfig {
        flush_mode: FlushMode::Lazy,
        flush_interval: Duration::from_millis(1),
        chunk_limit_records: Some(10),
        ..config()
    };
    let buffer = Buffer::start("t".into(), c, s.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..13, 10))])
        .await
        .unwrap();
    wait_until(|| s.writes.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The 3 left over stay staged: lazy flushes only full chunks (and at shutdown).
    assert_eq!(s.writes.lock().unwrap().len(), 1);
    assert_eq!(buffer.sizes().0, 1);
    buffer
        .shutdown(Instant::now() + Duration::from_secs(1))
        .await;
    assert_eq!(s.writes.lock().unwrap().concat().len(), 13);
}

#[tokio::test]
async fn file_buffer_chunks_survive_a_restart_with_their_pending_rows() {
    let dir = tempfile::tempdir().unwrap();
    let c = BufferConfig {
        kind: BufferKind::File {
            path: dir.path().to_path_buf(),
        },
        flush_interval: Duration::from_secs(3600),
        ..config()
    };
    // First run: BigQuery keeps only rows 1 and 3 pending, then the process dies.
    let first = sink(
        Box::new(|_, _| Outcome::Retry {
            keep: Some(vec![1, 3]),
            error: "stopped".into(),
            after: Some(Duration::from_secs(3600)),
            quiet: false,
        }),
        None,
    );
    let buffer = Buffer::start(
        "t".into(),
        BufferConfig {
            flush_mode: FlushMode::Immediate,
            ..c.clone()
        },
        first.clone(),
    )
    .unwrap();
    buffer
        .append(vec![(key("a"), entries(0..5, 10))])
        .await
        .unwrap();
    wait_until(|| first.writes.lock().unwrap().len() == 1).await;
    // Stop: the chunk is on disk with its pending rows, so nothing is given up.
    let undelivered = buffer.shutdown(Instant::now()).await;
    assert_eq!(undelivered, 0);
    assert!(first.given_up.lock().unwrap().is_empty());
    drop(buffer);
    let second = sink(Box::new(|_, _| Outcome::Done), None);
    let reopened = Buffer::start("t".into(), c.clone(), second.clone()).unwrap();
    wait_until(|| !second.writes.lock().unwrap().is_empty()).await;
    assert_eq!(second.writes.lock().unwrap()[0], vec![1, 3]);
    assert_eq!(reopened.stats.recovered_records.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_buffer_chunks_fill_on_disk_and_are_read_back_to_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let c = BufferConfig {
        kind: BufferKind::File {
            path: dir.path().to_path_buf(),
        },
        chunk_limit_size: 64 * 1024 * 1024,
        chunk_limit_records: None,
        flush_interval: Duration::from_millis(300),
        ..config()
    };
    let delivered = sink(Box::new(|_, _| Outcome::Done), None);
    let buffer = Buffer::start("t".into(), c, delivered.clone()).unwrap();
    buffer
        .append(vec![(key("a"), entries(0..100, 1000))])
        .await
        .unwrap();
    buffer
        .append(vec![(key("a"), entries(100..200, 1000))])
        .await
        .unwrap();
    // Staged, the chunk's entries are only in its file.
    {
        let state = buffer.lock();
        let chunk = state.staged.get(&key("a")).unwrap();
        assert_eq!((chunk.len, chunk.entries.len()), (200, 0));
    }
    wait_until(|| !delivered.writes.lock().unwrap().is_empty()).await;
    assert_eq!(
        delivered.writes.lock().unwrap()[0],
        (0..200).collect::<Vec<u64>>()
    );
}

fn file_config(dir: &std::path::Path) -> BufferConfig {
    BufferConfig {
        kind: BufferKind::File {
            path: dir.to_path_buf(),
        },
        chunk_limit_records: Some(5),
        flush_interval: Duration::from_secs(3600),
        ..config()
    }
}

/// Files in `dir` that hold a chunk (not a done chunk's file kept to be written over).
fn chunk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let entry = e.as_ref().unwrap();
            entry.file_name().to_str().unwrap().ends_with(".log")
                && !std::fs::read(entry.path())
                    .unwrap()
                    .starts_with(&file::DONE)
        })
        .count()
}

/// Queued chunks of a file buffer keep their entries in memory up to the cap, so delivery
/// does not read their files; the ones queued past it are read back, and every chunk is
/// delivered whole and in order either way.
#[tokio::test]
async fn queued_file_chunks_are_held_in_memory_up_to_the_cap_and_the_rest_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = sink(Box::new(|_, _| Outcome::Done), Some(Arc::clone(&gate)));
    let buffer = Buffer::start("t".into(), file_config(dir.path()), s.clone()).unwrap();
    let chunk_bytes = 5 * (1000 + ENTRY_OVERHEAD);
    buffer.lock().queued_in_memory_max = 3 * chunk_bytes;
    // Six full chunks, all queued within one append.
    buffer
        .append(vec![(key("a"), entries(0..30, 1000))])
        .await
        .unwrap();
    assert_eq!(chunk_files(dir.path()), 6);
    // The one worker takes the first chunk (and waits at the gate): it no longer counts.
    wait_until(|| buffer.lock().in_flight == 1).await;
    {
        let state = buffer.lock();
        let held: Vec<usize> = state.queue.iter().map(|c| c.entries.len()).collect();
        assert_eq!(held, [5, 5, 0, 0, 0]);
        assert_eq!(state.queued_in_memory, 2 * chunk_bytes);
    }
    gate.add_permits(100);
    wait_until(|| s.writes.lock().unwrap().len() == 6).await;
    let writes = s.writes.lock().unwrap().clone();
    assert_eq!(writes.concat(), (0..30).collect::<Vec<u64>>());
    assert!(writes.iter().all(|w| w.len() == 5));
    wait_until(|| buffer.bytes() == 0).await;
    assert_eq!(buffer.lock().queued_in_memory, 0);
    assert_eq!(chunk_files(dir.path()), 0);
}

/// A staged chunk's file stays open between appends (up to `OPEN_CHUNK_FILES_MAX` chunks;
/// the others open it per append), and either way every append is in the file in order:
/// the next start delivers each chunk whole.
#[tokio::test]
async fn staged_chunk_files_stay_open_up_to_the_limit_and_every_append_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let c = BufferConfig {
        chunk_limit_records: Some(1000),
        flush_at_shutdown: false,
        ..file_config(dir.path())
    };
    let first = sink(Box::new(|_, _| Outcome::Done), None);
    let buffer = Buffer::start("t".into(), c.clone(), first.clone()).unwrap();
    let keys = OPEN_CHUNK_FILES_MAX + 6;
    for round in 0..3u64 {
        let groups = (0..keys)
            .map(|k| {
                let base = k as u64 * 100 + round * 10;
                (key(&format!("k{k:03}")), entries(base..base + 4, 20))
            })
            .collect();
        buffer.append(groups).await.unwrap();
    }
    {
        let state = buffer.lock();
        assert_eq!(state.open_files, OPEN_CHUNK_FILES_MAX);
        let open = state.staged.values().filter(|c| c.file.is_some()).count();
        assert_eq!(open, OPEN_CHUNK_FILES_MAX);
    }
    assert_eq!(buffer.shutdown(Instant::now()).await, 0);
    assert!(first.writes.lock().unwrap().is_empty());
    drop(buffer);
    let second = sink(Box::new(|_, _| Outcome::Done), None);
    let _reopened = Buffer::start("t".into(), c, second.clone()).unwrap();
    wait_until(|| second.writes.lock().unwrap().len() == keys).await;
    let mut writes = second.writes.lock().unwrap().clone();
    writes.sort();
    for (k, write) in writes.iter().enumerate() {
        let base = k as u64 * 100;
        let want: Vec<u64> = (0..3)
            .flat_map(|round| base + round * 10..base + round * 10 + 4)
            .collect();
        assert_eq!(*write, want);
    }
}

#[test]
fn chunk_ids_are_written_as_lowercase_hex_and_read_back() {
    let id = ChunkId([
        0x00, 0x01, 0x0a, 0x10, 0x7f, 0x80, 0xab, 0xff, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde,
        0xf0,
    ]);
    assert_eq!(id.hex(), "00010a107f80abff123456789abcdef0");
    assert_eq!(ChunkId::from_hex(&id.hex()), Some(id));
    let random = ChunkId::new();
    assert_eq!(ChunkId::from_hex(&random.hex()), Some(random));
}
