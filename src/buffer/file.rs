//! Chunks on disk: one file per chunk (`chunk-<id>.log`, a header then CRC-framed entries)
//! and an optional `chunk-<id>.meta` with the entries still pending after a partial delivery.
//! Recovery keeps every complete frame, trims a torn tail, and copies a chunk with a corrupt
//! frame aside before keeping its good prefix. The directory is locked per process.
//!
//! A delivered chunk's file is kept open as a spare, its header marked `DONE` and its bytes
//! left in place, and the next new chunk's file is a spare renamed and written over from its
//! start: creating and deleting a file per chunk, and emptying and refilling the page cache
//! behind each, was most of the file buffer's kernel time. So that the bytes of the file's
//! earlier chunk, past the new chunk's last entry, are never read as the new chunk's, each
//! frame of entries carries the chunk's mark (the 8 random bytes of its id) since format
//! version 2, which also frames the entries of one append together (one CRC per write, not
//! per entry); version 1 files (a frame per entry, no mark, never written over) are still read.
use super::{ChunkId, Entry};
use crate::event::{Event, EventTime};
use bytes::Bytes;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A frame's head: the payload's length and CRC-32.
const FRAME_HEAD: usize = 8;
/// An entry's frame head since format version 2: the length, the CRC and the chunk's mark.
const MARKED_HEAD: usize = FRAME_HEAD + 8;
/// No frame is larger than this (a record is at most a Forward message).
const MAX_FRAME: usize = 256 * 1024 * 1024;
/// A format 2 frame takes an append's entries until its payload is this large.
const BATCH_FRAME: usize = 1024 * 1024;
/// The format new chunk files are written in.
const VERSION: u64 = 2;

/// At most this many done chunks' files are kept for new chunks, holding at most
/// `SPARE_BYTES_MAX` bytes in all (disk space beyond `total_limit_size`, and page cache). A
/// queue that fills and drains (a backlog under `block`) frees and takes many files at a
/// time: 16 left a sixth of the chunks creating and deleting a file at 2,000-event chunks.
const SPARE_FILES_MAX: usize = 64;
const SPARE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// A thread's write buffer above this size is not kept between appends.
const KEPT_WRITE_BUFFER: usize = 1024 * 1024;

thread_local! {
    /// Where a thread encodes an append's frames before writing them (a buffer per chunk
    /// was a large allocation per chunk).
    static WRITE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The 8 bytes every entry frame of a chunk carries (format version 2): the random half
/// of its id, so a file's earlier chunk's bytes read as some other chunk's.
type Mark = [u8; 8];

fn mark(id: &ChunkId) -> Mark {
    let mut mark = [0; 8];
    mark.copy_from_slice(&id.0[8..]);
    mark
}

/// A chunk's file, open for writing while the chunk is staged (so an append is one `write`,
/// not an open, a write and a close). Dropped, it cuts off what is left past its frames of
/// the file's earlier chunk.
#[derive(Debug)]
pub struct ChunkFile {
    file: File,
    mark: Mark,
    /// Bytes in the file that are whole frames of this chunk.
    len: u64,
    /// The file's length when it was taken as a spare: bytes past `len` up to here are its
    /// earlier chunk's.
    spare_len: u64,
}

impl ChunkFile {
    /// Bytes in the file that are this chunk's: where a reopened file is written on from.
    pub fn written(&self) -> u64 {
        self.len
    }
}

impl Drop for ChunkFile {
    fn drop(&mut self) {
        if self.spare_len > self.len {
            // Not needed for correctness (readers stop at the first frame without the mark,
            // and a reopened file is written from `len`): it frees the pages and spares a
            // delivery reading them.
            let _ = self.file.set_len(self.len);
        }
    }
}

/// About how many bytes `entries` take as frames.
fn entries_len(entries: &[Entry]) -> usize {
    let bytes: usize = entries
        .iter()
        .map(|e| 4 + e.tag.len() + 16 + e.event.record.len())
        .sum();
    bytes + (bytes / BATCH_FRAME + 1) * MARKED_HEAD
}

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    fsync: bool,
    _lock: File,
    pub corrupt_chunks: AtomicU64,
    /// Files of delivered chunks, for new chunks to take.
    spares: Mutex<Spares>,
    /// Chunks that have a `.meta` file (most never do: removing one that is not there costs
    /// a path lookup per chunk).
    metas: Mutex<HashSet<ChunkId>>,
    /// Chunks `load` read back mapped: their files are unlinked, never written over, as
    /// records may still point into the mapping.
    mapped: Mutex<HashSet<ChunkId>>,
}

/// Done chunks' files (their headers marked `DONE`), open, with their lengths, and those
/// lengths' sum.
#[derive(Debug, Default)]
struct Spares {
    files: Vec<Spare>,
    bytes: u64,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    file: File,
    len: u64,
}

/// Written over the length of a delivered chunk's header frame, the file kept to be written
/// over: no frame is this long, so it holds no chunk, and a start removes it.
pub(super) const DONE: [u8; 4] = [0xff; 4];

/// A chunk found on disk at start.
#[derive(Debug)]
pub struct Recovered {
    pub id: ChunkId,
    pub key: serde_json::Value,
    pub entries: usize,
    pub bytes: usize,
    pub pending: Option<Vec<u32>>,
}

/// CRC-32 as zlib computes it (crc32fast: for entries of a few hundred bytes several times
/// faster than zlib-rs's, whose folding set-up dominated at that size).
fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// One frame: the payload's length and CRC-32, the chunk's mark if given, then the payload
/// `write` appends in place.
fn frame(out: &mut Vec<u8>, mark: Option<Mark>, write: impl FnOnce(&mut Vec<u8>)) {
    let head = out.len();
    out.extend_from_slice(&[0; FRAME_HEAD]);
    if let Some(mark) = mark {
        out.extend_from_slice(&mark);
    }
    let start = out.len();
    write(out);
    let payload = &out[start..];
    let len = (payload.len() as u32).to_be_bytes();
    let sum = crc(payload).to_be_bytes();
    out[head..head + 4].copy_from_slice(&len);
    out[head + 4..head + FRAME_HEAD].copy_from_slice(&sum);
}

/// An entry: its tag (after its length: 2 bytes in format 1, 4 in format 2), its time and
/// (format 2: after its length) its record.
fn encode_entry(out: &mut Vec<u8>, entry: &Entry, format_2: bool) {
    let tag = entry.tag.as_bytes();
    if format_2 {
        out.extend_from_slice(&(tag.len() as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&(tag.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(tag);
    out.extend_from_slice(&entry.event.time.secs.to_be_bytes());
    out.extend_from_slice(&entry.event.time.nanos.to_be_bytes());
    if format_2 {
        out.extend_from_slice(&(entry.event.record.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(&entry.event.record);
}

/// Entries' frames in format 2: the entries of one append in one frame marked with the
/// chunk's mark (a new frame after each `BATCH_FRAME` bytes), so that a write has one CRC to
/// compute, not one per entry (an append of more than a frame, torn, keeps its whole frames:
/// never acked, they may be delivered as well as sent again).
fn encode_entries(out: &mut Vec<u8>, mark: Mark, entries: &[Entry]) {
    let mut rest = entries;
    while !rest.is_empty() {
        frame(out, Some(mark), |out| {
            let start = out.len();
            while let Some((entry, after)) = rest.split_first() {
                encode_entry(out, entry, true);
                rest = after;
                if out.len() - start >= BATCH_FRAME {
                    break;
                }
            }
        });
    }
}

/// The entry at `data[start..end]` (in a frame's payload) and where the next one starts;
/// its record is a slice of `data`, the rest of the payload in format 1, its length's worth
/// in format 2.
fn decode_entry(
    data: &Bytes,
    start: usize,
    end: usize,
    format_2: bool,
    last_tag: &mut Option<Arc<str>>,
) -> Option<(Entry, usize)> {
    let payload = data.get(start..end)?;
    let (tag_len, tag_at) = if format_2 {
        let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
        (usize::try_from(len).ok()?, 4usize)
    } else {
        (
            usize::from(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?)),
            2,
        )
    };
    let at = tag_at.checked_add(tag_len)?;
    let tag = std::str::from_utf8(payload.get(tag_at..at)?).ok()?;
    let secs = i64::from_be_bytes(payload.get(at..at + 8)?.try_into().ok()?);
    let nanos = u32::from_be_bytes(payload.get(at + 8..at + 12)?.try_into().ok()?);
    let (record, next) = if format_2 {
        let len = u32::from_be_bytes(payload.get(at + 12..at + 16)?.try_into().ok()?) as usize;
        let record = start + at + 16;
        let next = record.checked_add(len).filter(|&next| next <= end)?;
        (record, next)
    } else {
        (start + at + 12, end)
    };
    let tag = match last_tag {
        Some(last) if **last == *tag => Arc::clone(last),
        _ => last_tag.insert(Arc::from(tag)).clone(),
    };
    let entry = Entry {
        tag,
        event: Event {
            time: EventTime::new(secs, nanos),
            record: data.slice(record..next),
        },
    };
    Some((entry, next))
}

/// What follows a chunk file's last whole, sound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: the file ends there.
    None,
    /// A frame of this chunk cut short, or whose CRC fails with nothing of the chunk after
    /// it: a write a crash interrupted, never acked.
    Torn,
    /// Bytes without the chunk's mark: the file's earlier chunk's (format 2).
    Earlier,
    /// A frame that fails its CRC with more of the chunk after it: corruption.
    Corrupt,
}

/// The frame head at `pos` (`head` bytes: the length, the CRC, and a mark if the format has
/// one): the payload's length, its CRC and where it starts; `None` if it is cut short.
fn frame_head(data: &[u8], pos: usize, head: usize) -> Option<(usize, u32, usize)> {
    let bytes = data.get(pos..pos + head)?;
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let sum = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Some((len, sum, pos + head))
}

/// Where the payload of a frame that starts at `start` ends, if it is whole and its CRC holds.
fn sound_payload(data: &[u8], len: usize, sum: u32, start: usize) -> Option<usize> {
    let end = start.checked_add(len).filter(|_| len <= MAX_FRAME)?;
    (crc(data.get(start..end)?) == sum).then_some(end)
}

/// The payload range of the frame at `pos`, if it is whole, sound and (given a mark) marked
/// with it.
fn sound_frame(data: &[u8], pos: usize, mark: Option<Mark>) -> Option<(usize, usize)> {
    let head = if mark.is_some() {
        MARKED_HEAD
    } else {
        FRAME_HEAD
    };
    let (len, sum, start) = frame_head(data, pos, head)?;
    if let Some(mark) = mark
        && data[pos + FRAME_HEAD..start] != mark
    {
        return None;
    }
    Some((start, sound_payload(data, len, sum, start)?))
}

/// Why the walk of a chunk's frames stopped at `pos`, the first frame that is not whole and
/// sound. Format 1 (no mark) files are never written over: a bad frame is corrupt unless it
/// runs to the file's end (a torn write). Format 2 files may go on with an earlier chunk's
/// bytes (whose frames may even line up with the chunk's): a bad or unmarked frame is corrupt
/// only when a sound frame with the chunk's mark follows it; otherwise the chunk ends there,
/// in a torn write if the frame has its mark, else in the earlier chunk's bytes.
fn tail(data: &[u8], pos: usize, mark: Option<Mark>) -> Tail {
    if pos >= data.len() {
        return Tail::None;
    }
    let head = if mark.is_some() {
        MARKED_HEAD
    } else {
        FRAME_HEAD
    };
    let Some((len, _, start)) = frame_head(data, pos, head) else {
        return Tail::Torn;
    };
    let end = start.checked_add(len).filter(|_| len <= MAX_FRAME);
    let Some(mark) = mark else {
        return match end {
            Some(end) if end < data.len() => Tail::Corrupt,
            _ => Tail::Torn,
        };
    };
    if end.is_some_and(|end| sound_frame(data, end, Some(mark)).is_some())
        || sound_frame_after(data, pos, mark)
    {
        Tail::Corrupt
    } else if data[pos + FRAME_HEAD..start] == mark {
        Tail::Torn
    } else {
        Tail::Earlier
    }
}

/// Whether a sound frame with the chunk's mark starts anywhere after `pos` (found by its
/// mark: a frame whose length was damaged does not lead to the next one).
fn sound_frame_after(data: &[u8], pos: usize, mark: Mark) -> bool {
    let from = pos + FRAME_HEAD + 1;
    let Some(rest) = data.get(from..) else {
        return false;
    };
    memchr::memmem::find_iter(rest, &mark)
        .any(|at| sound_frame(data, from + at - FRAME_HEAD, Some(mark)).is_some())
}

/// A chunk's entries from `pos` on, each frame checked and decoded in place, up to the first
/// frame that is not whole, sound and marked; with where that is and what follows.
fn decode_entries(data: &Bytes, mut pos: usize, mark: Option<Mark>) -> (Vec<Entry>, usize, Tail) {
    // Room for entries of 128 bytes and up; a chunk of smaller ones grows it.
    let mut entries = Vec::with_capacity(data.len().saturating_sub(pos) / 128);
    let mut last_tag: Option<Arc<str>> = None;
    let batched = mark.is_some();
    while let Some((start, end)) = sound_frame(data, pos, mark) {
        let mut at = start;
        while at < end
            && let Some((entry, next)) = decode_entry(data, at, end, batched, &mut last_tag)
        {
            entries.push(entry);
            at = next;
        }
        pos = end;
    }
    (entries, pos, tail(data, pos, mark))
}

/// A chunk file's header (the first frame: JSON naming the chunk and its destination) and
/// where its entries start. `Err` with what follows when the header frame is not sound.
fn header_frame(data: &[u8]) -> Result<(&[u8], usize), Tail> {
    match sound_frame(data, 0, None) {
        Some((start, end)) => Ok((&data[start..end], end)),
        None => Err(tail(data, 0, None)),
    }
}

/// The chunk's id and the mark its entry frames carry, by the header's format version.
fn header_id(header: &serde_json::Value) -> Result<(ChunkId, Option<Mark>), String> {
    let id = header["id"]
        .as_str()
        .and_then(ChunkId::from_hex)
        .ok_or("header without a chunk id")?;
    match header["version"].as_u64() {
        Some(1) => Ok((id, None)),
        Some(2) => Ok((id, Some(mark(&id)))),
        version => Err(format!(
            "chunk format version {} is not one this bqforward reads (1 or 2)",
            version.map_or_else(|| header["version"].to_string(), |v| v.to_string())
        )),
    }
}

impl FileStore {
    /// Opens (creating) the directory and takes its lock; a second process fails here.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "buffer directory {} is locked by another process",
                    dir.display()
                ),
            )
        })?;
        // Spares that versions before format 2 left: empty or not, they hold nothing to
        // deliver (the spares of format 2 are chunk files marked `DONE`).
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("spare-"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            fsync,
            _lock: lock,
            corrupt_chunks: AtomicU64::new(0),
            spares: Mutex::new(Spares::default()),
            metas: Mutex::new(HashSet::new()),
            mapped: Mutex::new(HashSet::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A chunk's file (Storage Write's exactly-once tickets are kept while it exists).
    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(format!("chunk-{}.log", id.hex()))
    }

    fn meta_path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(format!("chunk-{}.meta", id.hex()))
    }

    /// Creates a chunk's file with its header (naming the destination `key`) and its first
    /// entries, in one write. Returns once the bytes are written (and, with `fsync`, on disk,
    /// the directory entry too), with the file kept open for the chunk's next appends.
    pub fn create(
        &self,
        id: &ChunkId,
        key: &serde_json::Value,
        entries: &[Entry],
    ) -> io::Result<ChunkFile> {
        let header = serde_json::json!({"version": VERSION, "id": id.hex(), "key": key});
        let header = header.to_string();
        let path = self.chunk_path(id);
        let (file, spare_len) = match self.take_spare(&path) {
            Some(spare) => spare,
            None => (
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)?,
                0,
            ),
        };
        let mut chunk = ChunkFile {
            file,
            mark: mark(id),
            len: 0,
            spare_len,
        };
        if let Err(err) = self.write(&mut chunk, Some(header.as_bytes()), entries) {
            let _ = std::fs::remove_file(&path);
            return Err(err);
        }
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(chunk)
    }

    /// Opens a chunk's file again to write on after its first `len` bytes, the chunk's
    /// frames (its handle was not kept).
    pub fn reopen(&self, id: &ChunkId, len: u64) -> io::Result<ChunkFile> {
        let file = OpenOptions::new().write(true).open(self.chunk_path(id))?;
        Ok(ChunkFile {
            file,
            mark: mark(id),
            len,
            spare_len: 0,
        })
    }

    /// Appends entries to a chunk's open file. Returns once the bytes are written (and, with
    /// `fsync`, on disk).
    pub fn append_to(&self, chunk: &mut ChunkFile, entries: &[Entry]) -> io::Result<()> {
        self.write(chunk, None, entries)
    }

    /// Encodes the header's frame if given, then the entries', and writes it all at the
    /// chunk's end (`len`, not the file's position). A write that fails part-way is cut off
    /// again, and the next append writes over it anyway.
    fn write(
        &self,
        chunk: &mut ChunkFile,
        header: Option<&[u8]>,
        entries: &[Entry],
    ) -> io::Result<()> {
        let (written, len) = WRITE_BUFFER.with_borrow_mut(|out| {
            out.clear();
            out.reserve(entries_len(entries) + header.map_or(0, |h| FRAME_HEAD + h.len()));
            if let Some(header) = header {
                frame(out, None, |out| out.extend_from_slice(header));
            }
            encode_entries(out, chunk.mark, entries);
            let written = chunk.file.write_all_at(out, chunk.len);
            let len = out.len() as u64;
            if out.capacity() > KEPT_WRITE_BUFFER {
                *out = Vec::new();
            }
            (written, len)
        });
        if let Err(err) = written {
            let _ = chunk.file.set_len(chunk.len);
            chunk.spare_len = 0;
            return Err(err);
        }
        chunk.len += len;
        if self.fsync {
            chunk.file.sync_data()?;
        }
        Ok(())
    }

    /// Records which entries are still pending (atomically: write then rename).
    pub fn write_pending(&self, id: &ChunkId, pending: &[u32]) -> io::Result<()> {
        let tmp = self.dir.join(format!("chunk-{}.meta.tmp", id.hex()));
        let mut file = File::create(&tmp)?;
        file.write_all(
            serde_json::json!({ "pending": pending })
                .to_string()
                .as_bytes(),
        )?;
        if self.fsync {
            file.sync_data()?;
        }
        if let Ok(mut metas) = self.metas.lock() {
            metas.insert(*id);
        }
        std::fs::rename(tmp, self.meta_path(id))
    }

    /// The chunk is done with: its files go (the chunk file is kept as a spare while there
    /// are fewer than `SPARE_FILES_MAX`, unless it was read back mapped).
    pub fn remove(&self, id: &ChunkId) {
        if self.metas.lock().map_or(true, |mut metas| metas.remove(id)) {
            let _ = std::fs::remove_file(self.meta_path(id));
        }
        let path = self.chunk_path(id);
        let mapped = self
            .mapped
            .lock()
            .map_or(true, |mut mapped| mapped.remove(id));
        if mapped || !self.keep_spare(&path) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Keeps a done chunk's file, open, as a spare: its header marked `DONE`, its bytes left
    /// in place, its name unchanged (a file that holds no chunk). The next chunk written over
    /// them finds their pages in the page cache, where emptying the file would free them and
    /// the next chunk's writes allocate them again (and ext4 would force the next chunk's
    /// data to disk when the emptied file is closed, `auto_da_alloc`).
    fn keep_spare(&self, path: &Path) -> bool {
        let Ok(mut spares) = self.spares.lock() else {
            return false;
        };
        if spares.files.len() >= SPARE_FILES_MAX {
            return false;
        }
        let Ok(file) = OpenOptions::new().write(true).open(path) else {
            return false;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return false;
        };
        if spares.bytes + len > SPARE_BYTES_MAX || file.write_all_at(&DONE, 0).is_err() {
            return false;
        }
        spares.files.push(Spare {
            path: path.to_path_buf(),
            file,
            len,
        });
        spares.bytes += len;
        true
    }

    /// A spare renamed to `path`, open for writing at its start, and its length (its earlier
    /// chunk's bytes), if there is one.
    fn take_spare(&self, path: &Path) -> Option<(File, u64)> {
        let spare = {
            let mut spares = self.spares.lock().ok()?;
            let spare = spares.files.pop()?;
            spares.bytes -= spare.len;
            spare
        };
        if std::fs::rename(&spare.path, path).is_err() {
            let _ = std::fs::remove_file(&spare.path);
            return None;
        }
        Some((spare.file, spare.len))
    }

    /// Reads a chunk's entries back (their records are slices of the file's bytes, mapped
    /// when the file is large: see `read_back`).
    pub fn load(&self, id: &ChunkId) -> io::Result<Vec<Entry>> {
        let data = read_back(&self.chunk_path(id))?;
        if data.len() as u64 >= MAP_MIN
            && let Ok(mut mapped) = self.mapped.lock()
        {
            // Its entries may outlive `remove`: the file must be unlinked, not reused.
            mapped.insert(*id);
        }
        let unreadable = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
        let (header, start) =
            header_frame(&data).map_err(|_| unreadable("no readable header".into()))?;
        let header: serde_json::Value =
            serde_json::from_slice(header).map_err(|e| unreadable(format!("bad header: {e}")))?;
        let (_, mark) = header_id(&header).map_err(unreadable)?;
        Ok(decode_entries(&data, start, mark).0)
    }

    /// Every chunk left by a previous run, repaired as needed. Unreadable chunks are moved to
    /// `corrupt/` and counted.
    pub fn recover(&self) -> io::Result<Vec<Recovered>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("chunk-") && n.ends_with(".log"))
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for path in names {
            match self.recover_one(&path) {
                Ok(Some(chunk)) => out.push(chunk),
                Ok(None) => {}
                Err(reason) => self.set_aside(&path, &reason),
            }
        }
        Ok(out)
    }

    fn recover_one(&self, path: &Path) -> Result<Option<Recovered>, String> {
        let data = read(path).map_err(|e| e.to_string())?;
        if data.starts_with(&DONE) {
            // A delivered chunk's file kept as a spare.
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        let (header, start) = match header_frame(&data) {
            Ok(header) => header,
            Err(Tail::Corrupt) => return Err("no readable header".into()),
            Err(_) => {
                // Torn while its header was written: nothing was acked from it.
                let _ = std::fs::remove_file(path);
                return Ok(None);
            }
        };
        let header: serde_json::Value =
            serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
        let (id, mark) = header_id(&header)?;
        let named = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.strip_prefix("chunk-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(ChunkId::from_hex)
                .is_none_or(|named| named == id)
        });
        if !named {
            // A spare renamed for a new chunk whose own bytes never reached the disk (a power
            // loss): it holds the delivered chunk it was, and the new one was never acked.
            tracing::warn!(chunk = %path.display(), holds = %id.hex(),
                "chunk file holds another, delivered chunk (its new chunk's bytes were lost before any ack); removed");
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        let (entries, good, tail) = decode_entries(&data, start, mark);
        match tail {
            Tail::None => {}
            Tail::Corrupt => {
                self.copy_aside(path, "corrupt frame; the entries before it are kept");
            }
            Tail::Torn => {
                tracing::warn!(chunk = %path.display(), kept_bytes = good, dropped_bytes = data.len() - good,
                    "chunk ends in a torn write (never acked); trimmed");
            }
            Tail::Earlier => {
                tracing::debug!(chunk = %path.display(), kept_bytes = good, dropped_bytes = data.len() - good,
                    "chunk file's earlier chunk's bytes after its entries; trimmed");
            }
        }
        if good < data.len() {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| e.to_string())?;
            file.set_len(good as u64).map_err(|e| e.to_string())?;
        }
        let meta = std::fs::read(self.meta_path(&id)).ok();
        if meta.is_some()
            && let Ok(mut metas) = self.metas.lock()
        {
            metas.insert(id);
        }
        let pending = meta
            .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
            .and_then(|m| serde_json::from_value::<Vec<u32>>(m["pending"].clone()).ok())
            .map(|p| {
                p.into_iter()
                    .filter(|i| (*i as usize) < entries.len())
                    .collect()
            });
        let bytes = entries.iter().map(Entry::size).sum();
        Ok(Some(Recovered {
            id,
            key: header["key"].clone(),
            entries: entries.len(),
            bytes,
            pending,
        }))
    }

    fn set_aside(&self, path: &Path, reason: &str) {
        self.copy_aside(path, reason);
        let _ = std::fs::remove_file(path);
    }

    fn copy_aside(&self, path: &Path, reason: &str) {
        self.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
        let aside = self.dir.join("corrupt");
        let _ = std::fs::create_dir_all(&aside);
        let target = aside.join(path.file_name().unwrap_or_default());
        let copied = std::fs::copy(path, &target);
        tracing::error!(chunk = %path.display(), moved_to = %target.display(), %reason, copied = copied.is_ok(),
            "corrupt buffer chunk set aside");
    }
}

/// Chunk files from this size on are mapped rather than read when delivered.
const MAP_MIN: u64 = 1024 * 1024;

/// A chunk file's bytes for delivery. A large one is mapped, its pages populated at once: the
/// page cache's pages serve the records, with no copy into fresh (zeroed) memory and nothing
/// to free but the mapping once the last entry is dropped (a 64 MiB chunk read into a `Vec`
/// cost more CPU than its conversion to JSON).
fn read_back(path: &Path) -> io::Result<Bytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() < MAP_MIN {
        return read(path);
    }
    // SAFETY: the mapping is read-only and the file is not changed while it lives: a chunk
    // is read back only once it is queued, when nothing writes to its file any more; the
    // only truncations are `recover_one`'s (of a torn tail), at start before any delivery,
    // and a `ChunkFile`'s drop (of a spare's earlier bytes), done when its chunk stops being
    // staged, before it is queued; the directory is locked against other processes; `remove`
    // unlinks a chunk `load` mapped (never keeps it as a spare to write over), which leaves
    // a mapping's pages in place.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    Ok(Bytes::from_owner(map))
}

fn read(path: &Path) -> io::Result<Bytes> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    Ok(Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, i: u32) -> Entry {
        Entry {
            tag: Arc::from(tag),
            event: Event {
                time: EventTime::new(1_700_000_000, i),
                record: Bytes::from(vec![0x81, 0xa1, b'i', i as u8]),
            },
        }
    }

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                tag: Arc::from(format!("tag.{i}").as_str()),
                event: Event {
                    time: EventTime::new(1_700_000_000 + i as i64, i as u32),
                    record: Bytes::from(rmp_serde::to_vec(&serde_json::json!({"i": i})).unwrap()),
                },
            })
            .collect()
    }

    fn same(a: &[Entry], b: &[Entry]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.tag == y.tag && x.event == y.event)
    }

    /// A chunk written in parts (each an append), its file closed after.
    fn write_chunk(store: &FileStore, id: &ChunkId, parts: &[&[Entry]]) {
        let key = serde_json::json!({"table": "t"});
        let mut file = store.create(id, &key, parts[0]).unwrap();
        for part in &parts[1..] {
            store.append_to(&mut file, part).unwrap();
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != ".lock")
            .collect();
        names.sort();
        names
    }

    /// An entry's frame as format 1 wrote it.
    fn encode_v1(out: &mut Vec<u8>, entry: &Entry) {
        frame(out, None, |out| encode_entry(out, entry, false));
    }

    /// Where a chunk file's second frame of entries starts (after the header's frame and the
    /// first append's).
    fn second_frame(data: &[u8]) -> usize {
        let len = |pos: usize| u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let first = FRAME_HEAD + len(0);
        first + MARKED_HEAD + len(first)
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// The frame layout and checksum of format 2: length, zlib's CRC-32 of the payload
    /// (checked with flate2's, an independent implementation), the chunk's mark, then the
    /// append's entries (tag length u32, tag, time, record length, record); read back,
    /// entries of one tag share its `Arc`. Format 1 (a frame per entry, no mark, tag length
    /// u16, no record length) reads the same.
    #[test]
    fn entry_frames_keep_the_on_disk_format() {
        let written = [entry("a.b", 1), entry("a.b", 2), entry("c", 3)];
        let mark = *b"MARKMARK";
        let mut out = Vec::new();
        encode_entries(&mut out, mark, &written[..2]);
        encode_entries(&mut out, mark, &written[2..]);
        let payload = &out[MARKED_HEAD..MARKED_HEAD + 2 * (4 + 3 + 16 + 4)];
        assert_eq!(out[..4], (payload.len() as u32).to_be_bytes());
        let mut zlib = flate2::Crc::new();
        zlib.update(payload);
        assert_eq!(out[4..8], zlib.sum().to_be_bytes());
        assert_eq!(out[8..16], *b"MARKMARK");
        assert_eq!(payload[..7], [0, 0, 0, 3, b'a', b'.', b'b']);
        assert_eq!(payload[19..23], 4u32.to_be_bytes());
        let second = &out[MARKED_HEAD + payload.len()..];
        assert_eq!(second[..4], (4 + 1 + 16 + 4u32).to_be_bytes());
        let data = Bytes::from(out.clone());
        let (read, good, tail) = decode_entries(&data, 0, Some(mark));
        assert_eq!((read.len(), good, tail), (3, out.len(), Tail::None));
        assert!(Arc::ptr_eq(&read[0].tag, &read[1].tag));
        assert!(same(&read, &written));
        // Another chunk's mark: none of it is this chunk's.
        let (read, good, tail) = decode_entries(&data, 0, Some(*b"markmark"));
        assert_eq!((read.len(), good, tail), (0, 0, Tail::Earlier));

        let mut v1 = Vec::new();
        written.iter().for_each(|e| encode_v1(&mut v1, e));
        assert_eq!(
            v1.len(),
            out.len() - 2 * MARKED_HEAD - 3 * (2 + 4) + 3 * FRAME_HEAD
        );
        let (read, good, tail) = decode_entries(&Bytes::from(v1.clone()), 0, None);
        assert_eq!((good, tail), (v1.len(), Tail::None));
        assert!(same(&read, &written));
    }

    /// A chunk file written by an earlier version (format 1: no mark) is recovered and
    /// delivered; new chunks are written in format 2.
    #[test]
    fn format_1_chunk_files_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let id = ChunkId::new();
        let mut v1 = Vec::new();
        let header = serde_json::json!({"version": 1, "id": id.hex(), "key": "k"});
        frame(&mut v1, None, |out| {
            out.extend_from_slice(header.to_string().as_bytes())
        });
        let all = entries(4);
        all.iter().for_each(|e| encode_v1(&mut v1, e));
        std::fs::write(dir.path().join(format!("chunk-{}.log", id.hex())), &v1).unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 4));
        assert_eq!(found[0].key, "k");
        assert!(same(&store.load(&id).unwrap(), &all));

        let new = ChunkId::new();
        write_chunk(&store, &new, &[&all]);
        let data = std::fs::read(store.chunk_path(&new)).unwrap();
        let (header, _) = header_frame(&data).unwrap();
        let header: serde_json::Value = serde_json::from_slice(header).unwrap();
        assert_eq!(header["version"], 2);
    }

    #[test]
    fn chunks_round_trip_and_pending_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let all = entries(5);
        write_chunk(&store, &id, &[&all[..2], &all[2..]]);
        assert!(same(&store.load(&id).unwrap(), &all));
        store.write_pending(&id, &[1, 4]).unwrap();
        drop(store);
        let store = FileStore::open(dir.path(), false).unwrap();
        let found = store.recover().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, id);
        assert_eq!(found[0].key, serde_json::json!({"table": "t"}));
        assert_eq!(found[0].entries, 5);
        assert_eq!(found[0].pending, Some(vec![1, 4]));
        store.remove(&id);
        assert!(store.recover().unwrap().is_empty());
    }

    /// A done chunk's file becomes a spare, marked `DONE`, with its bytes in place; the next
    /// chunk is written over it from its start (the file renamed for it), reads back as only
    /// its own entries while its file still holds the earlier chunk's bytes past them, has
    /// them cut off when its file is closed, and a chunk reopened after its handle was
    /// dropped is written on after its own entries. A start removes spares.
    #[test]
    fn done_chunk_files_are_written_over_by_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let key = serde_json::json!({"table": "t"});
        let (old, new) = (ChunkId::new(), ChunkId::new());
        write_chunk(&store, &old, &[&entries(50)]);
        let old_path = store.chunk_path(&old);
        let old_len = file_len(&old_path);
        store.remove(&old);
        assert_eq!(names(dir.path()), [format!("chunk-{}.log", old.hex())]);
        assert_eq!(file_len(&old_path), old_len);
        assert_eq!(std::fs::read(&old_path).unwrap()[..4], DONE);

        let all = entries(3);
        let mut file = store.create(&new, &key, &all[..2]).unwrap();
        assert_eq!(names(dir.path()), [format!("chunk-{}.log", new.hex())]);
        assert_eq!(file_len(&store.chunk_path(&new)), old_len);
        assert!(same(&store.load(&new).unwrap(), &all[..2]));
        store.append_to(&mut file, &all[2..]).unwrap();
        assert!(same(&store.load(&new).unwrap(), &all));
        let len = file.written();
        drop(file);
        assert_eq!(file_len(&store.chunk_path(&new)), len);
        let more = entries(5);
        let mut file = store.reopen(&new, len).unwrap();
        store.append_to(&mut file, &more[3..]).unwrap();
        drop(file);
        assert!(same(&store.load(&new).unwrap(), &more));

        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 5));
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 0);
        store.remove(&new);
        assert_eq!(names(dir.path()), [format!("chunk-{}.log", new.hex())]);
        drop(store);
        let store = FileStore::open(dir.path(), false).unwrap();
        assert!(store.recover().unwrap().is_empty());
        assert!(names(dir.path()).is_empty(), "a start removes spares");
    }

    /// A crash while a chunk written over a spare is staged leaves the earlier chunk's bytes
    /// after its entries: the next start recovers exactly its entries, trims the rest, and
    /// counts nothing corrupt. A torn last write of it there is trimmed the same way; a
    /// damaged frame of it followed by sound ones is corruption, as in format 1.
    #[test]
    fn a_crash_over_a_spare_recovers_exactly_the_new_chunk() {
        let key = serde_json::json!({"table": "t"});
        // A staged chunk over a larger spare, its handle never closed (the crash). The spare's
        // chunk began with the same appends: its next frame starts right where the staged
        // chunk's last one ends, sound but for its mark.
        let staged = |dir: &Path| {
            let store = FileStore::open(dir, false).unwrap();
            let old = ChunkId::new();
            let all = entries(200);
            write_chunk(
                &store,
                &old,
                &[&all[..1], &all[1..3], &all[3..5], &all[5..]],
            );
            store.remove(&old);
            let new = ChunkId::new();
            let five = entries(5);
            let mut file = store.create(&new, &key, &five[..1]).unwrap();
            store.append_to(&mut file, &five[1..3]).unwrap();
            store.append_to(&mut file, &five[3..]).unwrap();
            let len = file.written();
            std::mem::forget(file);
            let path = store.chunk_path(&new);
            assert!(file_len(&path) > len);
            (path, len)
        };

        let dir = tempfile::tempdir().unwrap();
        let (path, len) = staged(dir.path());
        let store = FileStore::open(dir.path(), false).unwrap();
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 5));
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 0);
        assert_eq!(file_len(&path), len);
        assert!(same(&store.load(&found[0].id).unwrap(), &entries(5)));
        drop(store);

        // Its last frame torn: the earlier chunk's bytes after half of it.
        let dir = tempfile::tempdir().unwrap();
        let (path, len) = staged(dir.path());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mut torn = Vec::new();
        let id = ChunkId::from_hex(&path.file_name().unwrap().to_str().unwrap()[6..38]).unwrap();
        encode_entries(&mut torn, mark(&id), &[entry("torn", 99)]);
        file.write_all_at(&torn[..torn.len() / 2], len).unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 5));
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 0);
        assert_eq!(file_len(&path), len);
        drop(store);

        // A byte of its second frame flipped, or its mark: corrupt, the first entry kept.
        for at in [MARKED_HEAD + 3, FRAME_HEAD + 1] {
            let dir = tempfile::tempdir().unwrap();
            let (path, _) = staged(dir.path());
            let mut data = std::fs::read(&path).unwrap();
            let at_byte = second_frame(&data) + at;
            data[at_byte] ^= 0xff;
            std::fs::write(&path, &data).unwrap();
            let store = FileStore::open(dir.path(), false).unwrap();
            let found = store.recover().unwrap();
            assert_eq!((found.len(), found[0].entries), (1, 1), "byte {at}");
            assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 1);
            assert!(
                dir.path()
                    .join("corrupt")
                    .join(path.file_name().unwrap())
                    .exists()
            );
        }
    }

    /// Tags of any length (a Forward message may carry one over 64 KiB) read back whole,
    /// with the entries after them.
    #[test]
    fn long_tags_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let long = "t".repeat(70_000);
        let all = [entry(&long, 1), entry("a", 2), entry(&long, 3)];
        write_chunk(&store, &id, &[&all]);
        assert!(same(&store.load(&id).unwrap(), &all));
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 3));
    }

    /// A frame whose length is damaged does not lead to the next frame: the sound frames of
    /// the chunk after it still make it corruption (set aside and counted), not a torn write.
    #[test]
    fn a_damaged_frame_length_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let all = entries(3);
        write_chunk(&store, &id, &[&all[..1], &all[1..2], &all[2..]]);
        let path = store.chunk_path(&id);
        let mut data = std::fs::read(&path).unwrap();
        let at_byte = second_frame(&data) + 3;
        data[at_byte] ^= 0x01;
        std::fs::write(&path, &data).unwrap();
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 1));
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 1);
    }

    /// A spare renamed for a new chunk whose bytes never reached the disk (a power loss)
    /// holds the delivered chunk it was, under the new chunk's name: removed, not delivered.
    #[test]
    fn a_file_holding_another_chunk_than_its_name_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let (old, new) = (ChunkId::new(), ChunkId::new());
        write_chunk(&store, &old, &[&entries(3)]);
        std::fs::rename(store.chunk_path(&old), store.chunk_path(&new)).unwrap();
        assert!(store.recover().unwrap().is_empty());
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 0);
        assert!(names(dir.path()).is_empty());
    }

    /// A chunk past `MAP_MIN` is read back mapped, with the same entries; a torn tail ends
    /// it as recovery would trim it.
    #[test]
    fn large_chunks_are_read_back_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let all = entries(60_000);
        write_chunk(&store, &id, &[&all]);
        let size = file_len(&store.chunk_path(&id));
        assert!(size >= MAP_MIN, "{size}");
        assert!(same(&store.load(&id).unwrap(), &all));
        let mut partial = Vec::new();
        encode_entries(&mut partial, mark(&id), &all[..1]);
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.chunk_path(&id))
            .unwrap();
        f.write_all(&partial[..partial.len() - 1]).unwrap();
        let loaded = store.load(&id).unwrap();
        assert!(same(&loaded, &all));
        // Its records point into the mapping: the file is unlinked, not kept to write over.
        store.remove(&id);
        assert!(same(&loaded, &all));
        assert!(names(dir.path()).is_empty(), "only .lock is left");
    }

    #[test]
    fn second_process_cannot_open_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileStore::open(dir.path(), false).unwrap();
        let err = FileStore::open(dir.path(), false).unwrap_err();
        assert!(
            err.to_string().contains("locked by another process"),
            "{err}"
        );
    }

    #[test]
    fn torn_tail_is_trimmed_and_corrupt_middle_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let torn = ChunkId::new();
        let corrupt = ChunkId::new();
        write_chunk(&store, &torn, &[&entries(3)]);
        let three = entries(3);
        write_chunk(&store, &corrupt, &[&three[..1], &three[1..2], &three[2..]]);
        // Torn: half of a fourth frame.
        let mut partial = Vec::new();
        encode_entries(&mut partial, mark(&torn), &entries(4)[3..]);
        let torn_path = store.chunk_path(&torn);
        let mut f = OpenOptions::new().append(true).open(&torn_path).unwrap();
        f.write_all(&partial[..partial.len() / 2]).unwrap();
        // Corrupt: flip a byte inside the second entry's payload.
        let corrupt_path = store.chunk_path(&corrupt);
        let mut data = std::fs::read(&corrupt_path).unwrap();
        // A payload byte of the second frame of entries (entry 1).
        let at_byte = second_frame(&data) + MARKED_HEAD + 3;
        data[at_byte] ^= 0xff;
        std::fs::write(&corrupt_path, &data).unwrap();
        // A header torn by a crash during the first append: nothing in it was acked.
        std::fs::write(
            dir.path().join("chunk-zz.log"),
            b"\x00\x00\x00\x05\x00\x00\x00\x00hello",
        )
        .unwrap();
        // A format this version does not know: set aside, not read.
        let future = ChunkId::new();
        let mut data = Vec::new();
        let header = serde_json::json!({"version": 3, "id": future.hex(), "key": "k"});
        frame(&mut data, None, |out| {
            out.extend_from_slice(header.to_string().as_bytes())
        });
        std::fs::write(store.chunk_path(&future), &data).unwrap();

        let mut found = store.recover().unwrap();
        found.sort_by_key(|c| c.entries);
        let by_id = |id: &ChunkId| found.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(by_id(&torn).entries, 3);
        assert_eq!(by_id(&corrupt).entries, 1, "good prefix kept");
        assert_eq!(found.len(), 2);
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 2);
        let aside = dir.path().join("corrupt");
        assert!(aside.join(corrupt_path.file_name().unwrap()).exists());
        assert!(aside.join(format!("chunk-{}.log", future.hex())).exists());
        assert!(!dir.path().join("chunk-zz.log").exists());
        // Trimmed files recover the same way again.
        assert_eq!(store.recover().unwrap().len(), 2);
    }

    /// What happens to a chunk's file on disk in `damaged_files_recover_a_prefix`.
    #[derive(Debug, Clone)]
    enum Damage {
        /// Cut off at this byte (modulo the file's length): a crash during a write.
        Cut(usize),
        /// These bytes written over the file from this one on (modulo its length).
        Overwrite(usize, Vec<u8>),
        /// Bytes after the chunk's end: a spare's earlier chunk, or garbage.
        Append(Vec<u8>),
        /// The chunk's `.meta` (its pending entries) is these bytes.
        Meta(Vec<u8>),
    }

    fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
        use proptest::prelude::*;
        prop_oneof![
            any::<usize>().prop_map(Damage::Cut),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..24)
            )
                .prop_map(|(at, bytes)| Damage::Overwrite(at, bytes)),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Meta),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever a chunk file on disk suffered (cut off anywhere, bytes written over, bytes
        /// after it, a garbage `.meta`), recovery neither panics nor errs, and it keeps
        /// exactly a prefix of the chunk's entries (CRC-framed, nothing after a bad frame is
        /// believed), or removes the file (a torn header: nothing was acked) or sets it aside;
        /// a recovered chunk reads back as recovered, its pending entries within it, and a
        /// second recovery finds the same.
        #[test]
        fn damaged_files_recover_a_prefix(
            parts in proptest::collection::vec(1usize..12, 1..5),
            damages in proptest::collection::vec(damage(), 1..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = FileStore::open(dir.path(), false).unwrap();
            let id = ChunkId::new();
            let all = entries(parts.iter().sum());
            let mut split = Vec::new();
            let mut at = 0;
            for n in &parts {
                split.push(&all[at..at + n]);
                at += n;
            }
            write_chunk(&store, &id, &split);
            let path = store.chunk_path(&id);
            for damage in &damages {
                let mut data = std::fs::read(&path).unwrap();
                match damage {
                    Damage::Cut(at) => data.truncate(at % (data.len() + 1)),
                    Damage::Overwrite(at, bytes) => {
                        let at = at % data.len().max(1);
                        for (i, b) in bytes.iter().enumerate() {
                            match data.get_mut(at + i) {
                                Some(d) => *d = *b,
                                None => data.push(*b),
                            }
                        }
                    }
                    Damage::Append(bytes) => data.extend_from_slice(bytes),
                    Damage::Meta(bytes) => std::fs::write(store.meta_path(&id), bytes).unwrap(),
                }
                std::fs::write(&path, &data).unwrap();
            }

            let found = store.recover().unwrap();
            proptest::prop_assert!(found.len() <= 1);
            match found.first() {
                Some(chunk) => {
                    proptest::prop_assert_eq!(chunk.id, id);
                    let back = store.load(&id).unwrap();
                    proptest::prop_assert_eq!(back.len(), chunk.entries);
                    proptest::prop_assert!(same(&back, &all[..chunk.entries]), "not a prefix");
                    if let Some(pending) = &chunk.pending {
                        proptest::prop_assert!(pending.iter().all(|&i| (i as usize) < chunk.entries));
                    }
                    let again = store.recover().unwrap();
                    proptest::prop_assert_eq!(again.len(), 1);
                    proptest::prop_assert_eq!(again[0].entries, chunk.entries);
                }
                None => {
                    proptest::prop_assert!(!path.exists(), "a chunk file neither recovered nor removed");
                }
            }
        }
    }
}
