//! Per-output buffers: events staged in chunks keyed by destination, queued when full or
//! old enough, flushed by a bounded set of workers, retried with backoff, handed to the
//! sink's give-up path when retries run out, and bounded in total size (backpressure).
//! Knows nothing of BigQuery: a `Sink` says what a chunk's delivery came to.

pub mod config;
pub mod file;

use crate::event::BoxFuture;
use crate::event::Event;
use crate::internal_events::buffer as events;
use crate::metrics::BufferCounters;
pub use config::{BufferConfig, BufferKind, FlushMode, OverflowAction, RetryPolicy};
use file::FileStore;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Runs blocking work (file I/O, a long conversion) from async code: on a multi-threaded
/// runtime the worker thread is handed over meanwhile, elsewhere it simply runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
/// File-buffer chunks whose `chunk_limit_size` is above this are not kept in memory while
/// staged (their entries are read back from the file at delivery).
const STAGED_IN_MEMORY_MAX: usize = 16 * 1024 * 1024;
/// Queued file-buffer chunks keep their entries in memory (as well as in their files) while
/// those of all queued chunks together stay under this; chunks queued beyond it leave them
/// on disk until delivery reads them back. Below it a queued chunk is delivered without
/// reading its file; above it (a backlog during an outage) memory stays bounded.
const QUEUED_IN_MEMORY_MAX: usize = 64 * 1024 * 1024;
/// At most this many staged chunks of a file buffer keep their file open between appends
/// (one per destination being filled); beyond it an append opens and closes the file.
const OPEN_CHUNK_FILES_MAX: usize = 64;
/// A flush slower than this counts as slow (fluentd's `slow_flush_log_threshold` default).
const SLOW_FLUSH: Duration = Duration::from_secs(20);

/// Bytes one entry is counted as beyond its record: the `Entry` itself (time, tag and
/// record handles), so `total_limit_size` tracks real memory.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// One event in a chunk, with the tag it came with.
#[derive(Debug, Clone)]
pub struct Entry {
    pub tag: Arc<str>,
    pub event: Event,
}

impl Entry {
    fn size(&self) -> usize {
        self.event.record.len() + ENTRY_OVERHEAD
    }
}

/// A chunk's identity: unique across processes, hosts and restarts (time, then 8 random
/// bytes; not the process id, which is 1 in every container), so ids derived from it
/// (BigQuery insertIds) are stable for the chunk's life and never shared by two instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mut random = [0u8; 8];
        if getrandom::getrandom(&mut random).is_err() {
            random = fastrand::u64(..).to_be_bytes();
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&nanos.to_be_bytes());
        id[8..].copy_from_slice(&random);
        Self(id)
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(id))
    }

    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for b in self.0 {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        hex
    }
}

pub struct Chunk<K> {
    pub id: ChunkId,
    pub key: Arc<K>,
    pub entries: Vec<Entry>,
    /// After a partial success: the indices (into `entries`) still to deliver.
    pub pending: Option<Vec<u32>>,
    /// Entries in the chunk (also while `entries` is not loaded from disk).
    len: usize,
    /// The chunk has a file in the store; its entries may be unloaded to save memory.
    on_disk: bool,
    /// While staged: the chunk's file, kept open for the next append.
    file: Option<file::ChunkFile>,
    /// While staged: how many bytes of its file are the chunk's (where a reopened file is
    /// written on from).
    file_len: u64,
    /// Queued with its entries in memory, counted in `State::queued_in_memory`.
    held: bool,
    bytes: usize,
    created: Instant,
    /// The oldest event time staged (Unix seconds), and when (Unix seconds) the timekey
    /// period it falls in has ended and waited `timekey_wait`: time-keyed chunks are due
    /// then, as fluentd flushes a timekey's chunks.
    oldest: i64,
    timekey_due: Option<i64>,
    attempts: u32,
    first_failure: Option<Instant>,
    next_try: Instant,
}

impl<K> Chunk<K> {
    fn new(key: Arc<K>) -> Self {
        let now = Instant::now();
        Self {
            id: ChunkId::new(),
            key,
            entries: Vec::new(),
            pending: None,
            len: 0,
            on_disk: false,
            file: None,
            file_len: 0,
            held: false,
            bytes: 0,
            created: now,
            oldest: i64::MAX,
            timekey_due: None,
            attempts: 0,
            first_failure: None,
            next_try: now,
        }
    }

    /// Indices of the entries still to deliver.
    pub fn pending_indices(&self) -> Vec<u32> {
        match &self.pending {
            Some(indices) => indices.clone(),
            None => (0..self.len as u32).collect(),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(self.len, Vec::len)
    }
}

/// What one delivery attempt of a chunk came to.
#[derive(Debug)]
pub enum Outcome {
    /// Every pending entry is delivered (or dead-lettered by the sink).
    Done,
    /// Try again later with `keep` (None: all pending entries), after `after` if the sink
    /// knows better than the backoff policy. `quiet`: an expected wait (a table being
    /// created), logged at debug rather than as a failure.
    Retry {
        keep: Option<Vec<u32>>,
        error: String,
        after: Option<Duration>,
        quiet: bool,
    },
}

pub trait Sink<K>: Send + Sync + 'static {
    fn write<'a>(&'a self, chunk: &'a Chunk<K>) -> BoxFuture<'a, Outcome>;
    /// Retries are exhausted (or shutdown left the chunk undelivered): the sink must put the
    /// pending entries somewhere (dead letters) or log and count them; never drop silently.
    fn give_up<'a>(&'a self, chunk: &'a Chunk<K>, reason: &'a str) -> BoxFuture<'a, ()>;
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer full (total_limit_size {0} bytes) and overflow_action is throw_exception")]
    Overflow(usize),
    #[error("cannot write the file buffer: {0}")]
    Store(#[source] std::io::Error),
    #[error("buffer is shut down")]
    Closed,
}

/// Why a buffer could not start: its directory cannot be opened, locked or read.
#[derive(Debug, thiserror::Error)]
#[error("{output}: buffer path {}: {source}", path.display())]
pub struct StartError {
    output: String,
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

struct State<K> {
    staged: HashMap<Arc<K>, Chunk<K>>,
    queue: VecDeque<Chunk<K>>,
    in_flight: usize,
    bytes: usize,
    /// Bytes of queued file-buffer chunks whose entries are also in memory, and their bound
    /// (`QUEUED_IN_MEMORY_MAX`; tests lower it).
    queued_in_memory: usize,
    queued_in_memory_max: usize,
    /// Staged chunks holding their file open.
    open_files: usize,
    closing: bool,
    /// At shutdown: workers start no delivery after this.
    deadline: Option<Instant>,
}

pub struct Buffer<K> {
    name: String,
    config: BufferConfig,
    state: Mutex<State<K>>,
    sink: Arc<dyn Sink<K>>,
    /// Signalled when bytes are freed (blocked appends wait on it).
    space: Notify,
    /// Signalled when a chunk is queued or the buffer closes (idle workers wait on it). A
    /// queued chunk wakes one worker, which wakes the next if more are due (`take_due`):
    /// waking them all per chunk cost thousands of idle wake-ups a second under load.
    work: Notify,
    pub stats: BufferCounters,
    tasks: Mutex<JoinSet<()>>,
    /// `@type file`: every chunk lives on disk. `@type memory` with a `path`: only chunks
    /// spilled at shutdown do.
    store: Option<Arc<FileStore>>,
    persist: bool,
}

impl<K> Buffer<K>
where
    K: Eq + Hash + Send + Sync + std::fmt::Display + Serialize + DeserializeOwned + 'static,
{
    /// Creates the buffer (opening and recovering its directory, if it has one) and starts
    /// its flush workers and interval timer.
    pub fn start(
        name: String,
        config: BufferConfig,
        sink: Arc<dyn Sink<K>>,
    ) -> Result<Arc<Self>, StartError> {
        let (store, persist) = match &config.kind {
            BufferKind::File { path } => (Some(path), true),
            BufferKind::Memory { spill: Some(path) } => (Some(path), false),
            BufferKind::Memory { spill: None } => (None, false),
        };
        let output = name.clone();
        let failed = move |path: &std::path::Path, source| StartError {
            output: output.clone(),
            path: path.to_owned(),
            source,
        };
        let store = store
            .map(|path| {
                FileStore::open(path, config.fsync)
                    .map(Arc::new)
                    .map_err(|e| failed(path, e))
            })
            .transpose()?;
        let buffer = Arc::new(Self {
            name,
            state: Mutex::new(State {
                staged: HashMap::new(),
                queue: VecDeque::new(),
                in_flight: 0,
                bytes: 0,
                queued_in_memory: 0,
                queued_in_memory_max: QUEUED_IN_MEMORY_MAX,
                open_files: 0,
                closing: false,
                deadline: None,
            }),
            sink,
            space: Notify::new(),
            work: Notify::new(),
            stats: BufferCounters::default(),
            tasks: Mutex::new(JoinSet::new()),
            config,
            store,
            persist,
        });
        if let Some(store) = &buffer.store {
            buffer.recover(store).map_err(|e| failed(store.dir(), e))?;
        }
        let mut tasks = JoinSet::new();
        for _ in 0..buffer.config.flush_thread_count {
            tasks.spawn(Arc::clone(&buffer).worker());
        }
        tasks.spawn(Arc::clone(&buffer).timer());
        if let Ok(mut slot) = buffer.tasks.lock() {
            *slot = tasks;
        }
        Ok(buffer)
    }

    /// Queues the chunks a previous run left in the directory.
    fn recover(&self, store: &FileStore) -> std::io::Result<()> {
        let found = store.recover()?;
        let mut state = self.lock();
        let (mut chunks, mut records) = (0u64, 0u64);
        for recovered in found {
            let key: K = match serde_json::from_value(recovered.key.clone()) {
                Ok(key) => key,
                Err(err) => {
                    tracing::error!(output = %self.name, chunk = %recovered.id.hex(), error = %err,
                        "buffer chunk with an unreadable destination left in place");
                    continue;
                }
            };
            let mut chunk = Chunk::new(Arc::new(key));
            chunk.id = recovered.id;
            chunk.len = recovered.entries;
            chunk.pending = recovered.pending;
            chunk.bytes = recovered.bytes;
            chunk.on_disk = true;
            if chunk.pending_len() == 0 {
                store.remove(&chunk.id);
                continue;
            }
            chunks += 1;
            records += chunk.pending_len() as u64;
            state.bytes += chunk.bytes;
            state.queue.push_back(chunk);
        }
        events::ChunksRecovered {
            output: &self.name,
            dir: &store.dir().display(),
            chunks,
            records,
        }
        .emit(&self.stats);
        Ok(())
    }

    pub fn config(&self) -> &BufferConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // loses events, so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes staged and queued.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// (staged chunks, queued chunks incl. in flight, staged bytes, queued bytes).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let state = self.lock();
        let staged_bytes: usize = state.staged.values().map(|c| c.bytes).sum();
        (
            state.staged.len(),
            state.queue.len() + state.in_flight,
            staged_bytes,
            state.bytes - staged_bytes,
        )
    }

    /// Seconds since the oldest chunk still held was created.
    pub fn oldest_age(&self) -> Option<Duration> {
        let state = self.lock();
        state
            .staged
            .values()
            .chain(state.queue.iter())
            .map(|c| c.created.elapsed())
            .max()
    }

    /// fluentd's `retry_wait` for the chunk furthest into its retries: from its first
    /// failure to its next try. `None` when nothing is waiting to be retried.
    pub fn retry_wait(&self) -> Option<Duration> {
        let state = self.lock();
        state
            .queue
            .iter()
            .filter_map(|c| {
                c.first_failure
                    .map(|first| c.next_try.saturating_duration_since(first))
            })
            .max()
    }

    /// Stages entries grouped by key. Resolves once they are in the buffer; with
    /// `overflow_action block` that waits for room, which is what makes inputs stop reading.
    pub async fn append(&self, groups: Vec<(Arc<K>, Vec<Entry>)>) -> Result<(), BufferError> {
        let incoming: usize = groups
            .iter()
            .flat_map(|(_, entries)| entries.iter().map(Entry::size))
            .sum();
        let records: usize = groups.iter().map(|(_, e)| e.len()).sum();
        self.reserve(incoming).await?;
        let staged = {
            let mut state = self.lock();
            let mut queued = false;
            let mut failure = None;
            for (key, entries) in groups {
                match self.stage(&mut state, key, entries) {
                    Ok(q) => queued |= q,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            if failure.is_none() && self.config.flush_mode == FlushMode::Immediate {
                let keys: Vec<Arc<K>> = state.staged.keys().cloned().collect();
                for key in keys {
                    queued |= self.enqueue_staged(&mut state, &key);
                }
            }
            match failure {
                Some(err) => Err(err),
                None => Ok(queued),
            }
        };
        if matches!(staged, Ok(true)) {
            self.work.notify_one();
        }
        let _ = staged?;
        events::Emitted {
            records: records as u64,
        }
        .emit(&self.stats);
        Ok(())
    }

    /// Waits for (or makes) room for `incoming` bytes per `overflow_action`.
    async fn reserve(&self, incoming: usize) -> Result<(), BufferError> {
        let limit = self.config.total_limit_size;
        let mut blocked_since: Option<Instant> = None;
        loop {
            let notified = self.space.notified();
            {
                let mut state = self.lock();
                if state.closing {
                    return Err(BufferError::Closed);
                }
                // An append larger than the whole limit is let in when the buffer is empty,
                // or it could never be accepted.
                if state.bytes + incoming <= limit || state.bytes == 0 {
                    break;
                }
                match self.config.overflow_action {
                    OverflowAction::ThrowException => {
                        events::OverflowRefused.emit(&self.stats);
                        return Err(BufferError::Overflow(limit));
                    }
                    OverflowAction::DropOldestChunk => {
                        if let Some(mut oldest) = state.queue.pop_front() {
                            state.bytes -= oldest.bytes;
                            Self::unhold(&mut state, &mut oldest);
                            drop(state);
                            self.drop_chunk(oldest);
                            continue;
                        }
                        // Nothing queued to drop (all staged or in flight): wait for room.
                    }
                    OverflowAction::Block => {}
                }
            }
            blocked_since.get_or_insert_with(Instant::now);
            notified.await;
        }
        if let Some(since) = blocked_since {
            events::Blocked {
                waited: since.elapsed(),
            }
            .emit(&self.stats);
        }
        Ok(())
    }

    fn drop_chunk(&self, chunk: Chunk<K>) {
        let records = chunk.pending_len();
        if let (true, Some(store)) = (chunk.on_disk, &self.store) {
            store.remove(&chunk.id);
        }
        events::ChunkDropped {
            output: &self.name,
            key: &chunk.key,
            chunk: &chunk.id.hex(),
            records: records as u64,
        }
        .emit(&self.stats);
    }

    /// Adds entries to the key's staged chunk, queueing it each time it fills; with a file
    /// buffer the entries are written to the chunk's file first, in the order they are
    /// staged (the lock is held, so file order is memory order). Returns whether anything was
    /// queued.
    fn stage(
        &self,
        state: &mut State<K>,
        key: Arc<K>,
        entries: Vec<Entry>,
    ) -> Result<bool, BufferError> {
        let mut queued = false;
        let mut rest = entries;
        while !rest.is_empty() {
            let chunk = state
                .staged
                .entry(Arc::clone(&key))
                .or_insert_with(|| Chunk::new(Arc::clone(&key)));
            let room = self.room(chunk, &rest);
            if self.persist {
                self.write_entries(chunk, &rest[..room], &mut state.open_files)?;
            }
            // Large chunks of a file buffer are read back from their file when delivered
            // rather than held in memory while they fill: bigquery_load's default 1 GiB
            // chunks, flushed hourly, would otherwise hold up to a GiB per table.
            let keep = !(self.persist && self.config.chunk_limit_size > STAGED_IN_MEMORY_MAX);
            if keep {
                chunk.entries.reserve(room);
            }
            let oldest = chunk.oldest;
            for entry in rest.drain(..room) {
                let size = entry.size();
                chunk.bytes += size;
                chunk.len += 1;
                chunk.oldest = chunk.oldest.min(entry.event.time.secs);
                if keep {
                    chunk.entries.push(entry);
                }
                state.bytes += size;
            }
            if let Some(timekey) = self.config.timekey.filter(|_| chunk.oldest < oldest) {
                let start = self.config.time_zone.timekey(chunk.oldest, timekey.period);
                let wait = timekey.wait.as_secs() as i64;
                chunk.timekey_due = Some(start.saturating_add(timekey.period).saturating_add(wait));
            }
            if self.is_full(chunk) {
                queued |= self.enqueue_staged(state, &key);
            }
        }
        Ok(queued)
    }

    /// How many of `entries` fit in `chunk` before it is full (at least one).
    fn room(&self, chunk: &Chunk<K>, entries: &[Entry]) -> usize {
        let by_records = self
            .config
            .chunk_limit_records
            .map_or(usize::MAX, |limit| limit.saturating_sub(chunk.len));
        let mut bytes = chunk.bytes;
        let mut n = 0;
        for entry in entries.iter().take(by_records) {
            if n > 0 && bytes + entry.size() > self.config.chunk_limit_size {
                break;
            }
            bytes += entry.size();
            n += 1;
        }
        n.max(1)
    }

    fn is_full(&self, chunk: &Chunk<K>) -> bool {
        chunk.bytes >= self.config.chunk_limit_size
            || self
                .config
                .chunk_limit_records
                .is_some_and(|limit| chunk.len >= limit)
    }

    /// Writes entries to the chunk's file: the first ones create it (with the destination in
    /// its header), the next ones go to the handle kept open while it is staged. Buffered
    /// writes to the page cache take microseconds and run in place; with `fsync` each write
    /// waits for the disk, so the runtime worker is handed over meanwhile.
    fn write_entries(
        &self,
        chunk: &mut Chunk<K>,
        entries: &[Entry],
        open_files: &mut usize,
    ) -> Result<(), BufferError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        // Returns the file when it was opened here.
        let mut write = || -> std::io::Result<Option<file::ChunkFile>> {
            match (&mut chunk.file, chunk.on_disk) {
                (Some(file), _) => store.append_to(file, entries).map(|()| None),
                (None, true) => {
                    let mut file = store.reopen(&chunk.id, chunk.file_len)?;
                    store.append_to(&mut file, entries)?;
                    Ok(Some(file))
                }
                (None, false) => {
                    let key = serde_json::to_value(&*chunk.key).map_err(std::io::Error::other)?;
                    store.create(&chunk.id, &key, entries).map(Some)
                }
            }
        };
        let opened = if self.config.fsync {
            blocking(write)
        } else {
            write()
        }
        .map_err(BufferError::Store)?;
        chunk.on_disk = true;
        if let Some(file) = opened.as_ref().or(chunk.file.as_ref()) {
            chunk.file_len = file.written();
        }
        if let Some(file) = opened
            && *open_files < OPEN_CHUNK_FILES_MAX
        {
            chunk.file = Some(file);
            *open_files += 1;
        }
        Ok(())
    }

    /// Moves a staged chunk to the queue, closing its file. A chunk on disk keeps its entries
    /// in memory too while the queued ones' stay under `QUEUED_IN_MEMORY_MAX`, and otherwise
    /// leaves them in its file.
    fn enqueue_staged(&self, state: &mut State<K>, key: &Arc<K>) -> bool {
        let Some(mut chunk) = state.staged.remove(key) else {
            return false;
        };
        if chunk.file.take().is_some() {
            state.open_files -= 1;
        }
        if chunk.len == 0 {
            return false;
        }
        Self::hold(state, &mut chunk);
        state.queue.push_back(chunk);
        true
    }

    /// A file-buffer chunk going into the queue: counts its entries as held in memory, or
    /// drops them (delivery reads them back) when the queue holds enough already.
    fn hold(state: &mut State<K>, chunk: &mut Chunk<K>) {
        if !chunk.on_disk || chunk.entries.is_empty() {
            return;
        }
        if state.queued_in_memory + chunk.bytes <= state.queued_in_memory_max {
            state.queued_in_memory += chunk.bytes;
            chunk.held = true;
        } else {
            chunk.entries = Vec::new();
        }
    }

    /// A chunk leaves the queue (to be delivered, or dropped).
    fn unhold(state: &mut State<K>, chunk: &mut Chunk<K>) {
        if std::mem::take(&mut chunk.held) {
            state.queued_in_memory -= chunk.bytes;
        }
    }

    /// Queues staged chunks that are due: old enough (interval mode), or, with a `time`
    /// chunk key, past the end of their oldest event's timekey period and `timekey_wait`
    /// (any mode; the only time-based flush in lazy mode, as fluentd's).
    async fn timer(self: Arc<Self>) {
        let interval = self.config.flush_mode == FlushMode::Interval;
        if !interval && self.config.timekey.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(self.config.flush_thread_interval).await;
            let queued = {
                let mut state = self.lock();
                if state.closing {
                    return;
                }
                let room = self
                    .config
                    .queued_chunks_limit_size
                    .map_or(usize::MAX, |limit| limit.saturating_sub(state.queue.len()));
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let due: Vec<Arc<K>> = state
                    .staged
                    .iter()
                    .filter(|(_, c)| {
                        (interval && c.created.elapsed() >= self.config.flush_interval)
                            || c.timekey_due.is_some_and(|due| now >= due)
                    })
                    .map(|(k, _)| Arc::clone(k))
                    .take(room)
                    .collect();
                let mut queued = false;
                for key in due {
                    queued |= self.enqueue_staged(&mut state, &key);
                }
                queued
            };
            if queued {
                self.work.notify_one();
            }
        }
    }

    /// Takes the first chunk due for a try, or tells how long until one is.
    fn take_due(&self) -> Result<Chunk<K>, Option<Duration>> {
        let mut state = self.lock();
        let now = Instant::now();
        if state.deadline.is_some_and(|d| now >= d) {
            return Err(None);
        }
        let due = state.queue.iter().position(|c| c.next_try <= now);
        if let Some(mut chunk) = due.and_then(|pos| state.queue.remove(pos)) {
            Self::unhold(&mut state, &mut chunk);
            state.in_flight += 1;
            if state.queue.iter().any(|c| c.next_try <= now) {
                // More are due: the next idle worker takes one.
                self.work.notify_one();
            }
            return Ok(chunk);
        }
        if state.closing && state.queue.is_empty() {
            return Err(None);
        }
        let wait = state.queue.iter().map(|c| c.next_try - now).min();
        let wait = wait.unwrap_or(Duration::from_secs(1));
        Err(Some(match state.deadline {
            Some(deadline) => wait.min(deadline - now),
            None => wait,
        }))
    }

    async fn worker(self: Arc<Self>) {
        loop {
            let notified = self.work.notified();
            let chunk = match self.take_due() {
                Ok(chunk) => chunk,
                Err(None) => return,
                Err(Some(wait)) => {
                    let _ = tokio::time::timeout(wait, notified).await;
                    continue;
                }
            };
            let mut chunk = chunk;
            if let Err(err) = self.load(&mut chunk).await {
                tracing::error!(output = %self.name, chunk = %chunk.id.hex(), error = %err,
                    "cannot read buffered chunk; it stays on disk for the next start");
                let mut state = self.lock();
                state.in_flight -= 1;
                state.bytes -= chunk.bytes;
                continue;
            }
            let started = Instant::now();
            let outcome = self.sink.write(&chunk).await;
            let took = started.elapsed();
            events::Flushed {
                took,
                slow: took > SLOW_FLUSH,
            }
            .emit(&self.stats);
            self.settle(chunk, outcome).await;
        }
    }

    async fn settle(&self, mut chunk: Chunk<K>, outcome: Outcome) {
        let (keep, error, after, quiet) = match outcome {
            Outcome::Done => {
                self.forget(&chunk);
                self.release(&chunk);
                return;
            }
            Outcome::Retry {
                keep,
                error,
                after,
                quiet,
            } => (keep, error, after, quiet),
        };
        events::DeliveryFailed.emit(&self.stats);
        if let Some(keep) = keep {
            if let (true, Some(store)) = (chunk.on_disk, &self.store) {
                let written = blocking(|| store.write_pending(&chunk.id, &keep));
                if let Err(err) = written {
                    tracing::error!(output = %self.name, chunk = %chunk.id.hex(), error = %err,
                        "cannot record delivered rows; a restart would resend them (insertIds de-duplicate)");
                }
            }
            chunk.pending = Some(keep);
        }
        chunk.attempts += 1;
        let first = *chunk.first_failure.get_or_insert_with(Instant::now);
        let closing = self.lock().closing;
        if self.config.retry.exhausted(chunk.attempts, first.elapsed()) {
            let reason = format!(
                "retries exhausted after {} attempts: {error}",
                chunk.attempts
            );
            events::ChunkGivenUp {
                output: &self.name,
                key: &chunk.key,
                chunk: &chunk.id.hex(),
                reason: &reason,
            }
            .emit();
            self.sink.give_up(&chunk, &reason).await;
            self.forget(&chunk);
            self.release(&chunk);
            return;
        }
        let delay = after.unwrap_or_else(|| self.config.retry.delay(chunk.attempts));
        events::ChunkRetrying {
            output: &self.name,
            key: &chunk.key,
            chunk: &chunk.id.hex(),
            attempt: chunk.attempts,
            delay,
            error: &error,
            quiet,
        }
        .emit(&self.stats);
        chunk.next_try = Instant::now()
            + if closing {
                delay.min(Duration::from_secs(1))
            } else {
                delay
            };
        let mut state = self.lock();
        state.in_flight -= 1;
        Self::hold(&mut state, &mut chunk);
        state.queue.push_back(chunk);
    }

    /// Loads a chunk's entries from its file if they are not in memory.
    async fn load(&self, chunk: &mut Chunk<K>) -> std::io::Result<()> {
        if !chunk.entries.is_empty() || !chunk.on_disk {
            return Ok(());
        }
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let id = chunk.id;
        let entries = tokio::task::spawn_blocking(move || store.load(&id))
            .await
            .map_err(std::io::Error::other)??;
        if entries.len() < chunk.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("chunk file has {} of {} entries", entries.len(), chunk.len),
            ));
        }
        chunk.entries = entries;
        Ok(())
    }

    /// The chunk is delivered or handed on: remove its file.
    fn forget(&self, chunk: &Chunk<K>) {
        if let (true, Some(store)) = (chunk.on_disk, &self.store) {
            store.remove(&chunk.id);
        }
    }

    fn release(&self, chunk: &Chunk<K>) {
        {
            let mut state = self.lock();
            state.in_flight -= 1;
            state.bytes -= chunk.bytes;
        }
        self.space.notify_waiters();
    }

    /// Stops accepting, queues what is staged (with `flush_at_shutdown`), lets the workers
    /// deliver until `deadline` (a delivery under way finishes, bounded by the sink's request
    /// timeout), and gives up on what is left: the sink decides where it goes. Returns the
    /// number of entries not delivered.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        {
            let mut state = self.lock();
            state.closing = true;
            state.deadline = Some(deadline);
            if self.config.flush_at_shutdown {
                let keys: Vec<Arc<K>> = state.staged.keys().cloned().collect();
                for key in keys {
                    self.enqueue_staged(&mut state, &key);
                }
            }
        }
        self.work.notify_waiters();
        self.space.notify_waiters();
        let mut tasks = match self.tasks.lock() {
            Ok(mut slot) => std::mem::take(&mut *slot),
            Err(_) => JoinSet::new(),
        };
        while tasks.join_next().await.is_some() {}
        let leftovers: Vec<Chunk<K>> = {
            let mut state = self.lock();
            let staged: Vec<Chunk<K>> = state.staged.drain().map(|(_, c)| c).collect();
            state.open_files = 0;
            state.queued_in_memory = 0;
            state.queue.drain(..).chain(staged).collect()
        };
        let mut undelivered = 0;
        let (mut kept, mut kept_records) = (0u64, 0usize);
        for mut chunk in leftovers {
            if chunk.pending_len() == 0 {
                continue;
            }
            if self.keep_for_next_start(&mut chunk) {
                kept += 1;
                kept_records += chunk.pending_len();
                continue;
            }
            undelivered += chunk.pending_len();
            if let Err(err) = self.load(&mut chunk).await {
                tracing::error!(output = %self.name, chunk = %chunk.id.hex(), error = %err, "cannot read chunk at shutdown");
                continue;
            }
            self.sink
                .give_up(&chunk, "not delivered before the shutdown deadline")
                .await;
        }
        if kept > 0 {
            tracing::info!(output = %self.name, chunks = kept, records = kept_records,
                "undelivered chunks kept on disk for the next start");
        }
        undelivered
    }

    /// At shutdown: a chunk already on disk stays there; a memory chunk is spilled when the
    /// buffer has a directory. `false` when the chunk has nowhere to go.
    fn keep_for_next_start(&self, chunk: &mut Chunk<K>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if chunk.on_disk {
            return true;
        }
        let Ok(key) = serde_json::to_value(&*chunk.key) else {
            return false;
        };
        let written =
            store
                .create(&chunk.id, &key, &chunk.entries)
                .and_then(|_| match &chunk.pending {
                    Some(pending) => store.write_pending(&chunk.id, pending),
                    None => Ok(()),
                });
        match written {
            Ok(()) => {
                events::ChunkSpilled {
                    records: chunk.pending_len() as u64,
                }
                .emit(&self.stats);
                true
            }
            Err(err) => {
                tracing::error!(output = %self.name, chunk = %chunk.id.hex(), error = %err, "cannot spill chunk at shutdown");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
