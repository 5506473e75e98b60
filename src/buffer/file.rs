//! Chunks on disk: one append-only file per chunk (`chunk-<id>.log`, a header then CRC-framed
//! entries) and an optional `chunk-<id>.meta` with the entries still pending after a partial
//! delivery. Recovery keeps every complete frame, trims a torn tail, and copies a chunk with a
//! corrupt frame aside before keeping its good prefix. The directory is locked per process.
//! A delivered chunk's file is emptied and kept as a spare (`spare-<n>`) that the next new
//! chunk is renamed from: creating and deleting an inode per chunk was most of the file
//! buffer's kernel time.

use super::{ChunkId, Entry};
use crate::event::{Event, EventTime};
use bytes::Bytes;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const FRAME_HEAD: usize = 8;
/// No frame is larger than this (a record is at most a Forward message).
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// At most this many emptied chunk files are kept for new chunks.
const SPARE_FILES_MAX: usize = 16;

/// A chunk file's write buffer above this size is not kept between appends.
const KEPT_WRITE_BUFFER: usize = 1024 * 1024;

/// A chunk's file, open for appending while the chunk is staged (so an append is one
/// `write`, not an open, a write and a close), with the buffer its frames are encoded in.
#[derive(Debug)]
pub struct ChunkFile {
    file: File,
    out: Vec<u8>,
    /// Bytes in the file that are whole frames.
    len: u64,
}

/// About how many bytes `entries` take as frames.
fn entries_len(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| FRAME_HEAD + 2 + e.tag.len() + 12 + e.event.record.len())
        .sum()
}

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    fsync: bool,
    _lock: File,
    pub corrupt_chunks: AtomicU64,
    /// Emptied files of delivered chunks, for new chunks to take.
    spares: Mutex<Vec<PathBuf>>,
    /// Chunks that have a `.meta` file (most never do: removing one that is not there costs
    /// a path lookup per chunk).
    metas: Mutex<HashSet<ChunkId>>,
    /// Chunks `load` read back mapped: their files are unlinked, never emptied and reused,
    /// as records may still point into the mapping.
    mapped: Mutex<HashSet<ChunkId>>,
    spare_names: AtomicU64,
}

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

/// One frame: the payload's length and CRC-32, then the payload `write` appends in place.
fn frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let head = out.len();
    out.extend_from_slice(&[0; FRAME_HEAD]);
    write(out);
    let payload = &out[head + FRAME_HEAD..];
    let len = (payload.len() as u32).to_be_bytes();
    let sum = crc(payload).to_be_bytes();
    out[head..head + 4].copy_from_slice(&len);
    out[head + 4..head + FRAME_HEAD].copy_from_slice(&sum);
}

/// One entry's frame: its payload is the tag, the time and the record.
fn encode_entry(out: &mut Vec<u8>, entry: &Entry) {
    let tag = entry.tag.as_bytes();
    frame(out, |out| {
        out.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        out.extend_from_slice(tag);
        out.extend_from_slice(&entry.event.time.secs.to_be_bytes());
        out.extend_from_slice(&entry.event.time.nanos.to_be_bytes());
        out.extend_from_slice(&entry.event.record);
    });
}

/// Entries from frame payloads; consecutive entries of one tag share its `Arc`.
fn decode_entries<'a>(payloads: impl Iterator<Item = &'a Bytes>) -> Vec<Entry> {
    let mut last_tag: Option<Arc<str>> = None;
    payloads
        .filter_map(|payload| decode_entry(payload, 0, payload.len(), &mut last_tag))
        .collect()
}

/// The entry in `data[start..end]` (a frame's payload); its record is a slice of `data`.
fn decode_entry(
    data: &Bytes,
    start: usize,
    end: usize,
    last_tag: &mut Option<Arc<str>>,
) -> Option<Entry> {
    let payload = data.get(start..end)?;
    let tag_len = usize::from(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
    let tag = std::str::from_utf8(payload.get(2..2 + tag_len)?).ok()?;
    let at = 2 + tag_len;
    let secs = i64::from_be_bytes(payload.get(at..at + 8)?.try_into().ok()?);
    let nanos = u32::from_be_bytes(payload.get(at + 8..at + 12)?.try_into().ok()?);
    let tag = match last_tag {
        Some(last) if **last == *tag => Arc::clone(last),
        _ => last_tag.insert(Arc::from(tag)).clone(),
    };
    Some(Entry {
        tag,
        event: Event {
            time: EventTime::new(secs, nanos),
            record: data.slice(start + at + 12..end),
        },
    })
}

/// A chunk file's entries (the frames after the header) in one pass: each frame checked and
/// decoded in place, up to the first frame that is not whole and sound (as `frames` reads).
fn decode_chunk(data: &Bytes) -> Vec<Entry> {
    // Room for entries of 128 bytes and up; a chunk of smaller ones grows it.
    let mut entries = Vec::with_capacity(data.len() / 128);
    let mut last_tag: Option<Arc<str>> = None;
    let mut pos = 0;
    let mut header = true;
    while let Some(head) = data.get(pos..pos + FRAME_HEAD) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let sum = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let start = pos + FRAME_HEAD;
        let end = start + len;
        let Some(payload) = data.get(start..end).filter(|_| len <= MAX_FRAME) else {
            break;
        };
        if crc(payload) != sum {
            break;
        }
        if !header && let Some(entry) = decode_entry(data, start, end, &mut last_tag) {
            entries.push(entry);
        }
        header = false;
        pos = end;
    }
    entries
}

/// Splits a chunk file into frame payloads; the second value is the length of the good
/// prefix, the third whether anything after it was not a torn tail (corruption).
fn frames(data: &Bytes) -> (Vec<Bytes>, usize, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(head) = data.get(pos..pos + FRAME_HEAD) else {
            return (out, pos, false);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let sum = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let end = pos + FRAME_HEAD + len;
        if len > MAX_FRAME || end > data.len() {
            return (out, pos, false);
        }
        let payload = data.slice(pos + FRAME_HEAD..end);
        if crc(&payload) != sum {
            // A bad frame at the very end is a torn write; anywhere else it is corruption.
            return (out, pos, end < data.len());
        }
        out.push(payload);
        pos = end;
    }
    (out, pos, false)
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
        // Spares a previous run left: empty or not, they hold nothing to deliver.
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
            spares: Mutex::new(Vec::new()),
            metas: Mutex::new(HashSet::new()),
            mapped: Mutex::new(HashSet::new()),
            spare_names: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

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
        let mut out = Vec::with_capacity(entries_len(entries) + 256);
        let header = serde_json::json!({"version": 1, "id": id.hex(), "key": key});
        frame(&mut out, |out| {
            out.extend_from_slice(header.to_string().as_bytes())
        });
        let path = self.chunk_path(id);
        let file = match self.take_spare(&path) {
            Some(file) => file,
            None => OpenOptions::new().create(true).append(true).open(&path)?,
        };
        let mut chunk = ChunkFile { file, out, len: 0 };
        self.write(&mut chunk, entries)?;
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(chunk)
    }

    /// Opens an existing chunk's file for appending (its handle was not kept).
    pub fn reopen(&self, id: &ChunkId) -> io::Result<ChunkFile> {
        let file = OpenOptions::new().append(true).open(self.chunk_path(id))?;
        let len = file.metadata()?.len();
        Ok(ChunkFile {
            file,
            out: Vec::new(),
            len,
        })
    }

    /// Appends entries to a chunk's open file. Returns once the bytes are written (and, with
    /// `fsync`, on disk).
    pub fn append_to(&self, chunk: &mut ChunkFile, entries: &[Entry]) -> io::Result<()> {
        chunk.out.clear();
        chunk.out.reserve(entries_len(entries));
        self.write(chunk, entries)
    }

    /// Encodes `entries` after what `chunk.out` holds and writes it all. A write that fails
    /// part-way is cut off again, so that the next append does not follow a torn frame
    /// (which recovery would take for corruption).
    fn write(&self, chunk: &mut ChunkFile, entries: &[Entry]) -> io::Result<()> {
        entries.iter().for_each(|e| encode_entry(&mut chunk.out, e));
        let written = chunk.file.write_all(&chunk.out);
        let len = chunk.out.len() as u64;
        if chunk.out.capacity() > KEPT_WRITE_BUFFER {
            chunk.out = Vec::new();
        }
        if let Err(err) = written {
            let _ = chunk.file.set_len(chunk.len);
            let _ = chunk.file.seek(io::SeekFrom::Start(chunk.len));
            return Err(err);
        }
        chunk.len += len;
        if self.fsync {
            chunk.file.sync_data()?;
        }
        Ok(())
    }

    /// Appends entries to a chunk's file, creating it with its header if it does not exist.
    pub fn append(
        &self,
        id: &ChunkId,
        key: &serde_json::Value,
        entries: &[Entry],
    ) -> io::Result<()> {
        if self.chunk_path(id).exists() {
            self.append_to(&mut self.reopen(id)?, entries)
        } else {
            self.create(id, key, entries).map(drop)
        }
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

    /// The chunk is done with: its files go (the chunk file is kept as an empty spare while
    /// there are fewer than `SPARE_FILES_MAX`, unless it was read back mapped).
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

    /// Empties a done chunk's file and renames it to a spare. Emptied through an open and a
    /// close of its own: ext4 flushes a file truncated to zero when it is next closed
    /// (`auto_da_alloc`), which here finds nothing to write; the new chunk's data written
    /// later is then not forced to disk when its file closes.
    fn keep_spare(&self, path: &Path) -> bool {
        let Ok(mut spares) = self.spares.lock() else {
            return false;
        };
        if spares.len() >= SPARE_FILES_MAX {
            return false;
        }
        let emptied = OpenOptions::new().write(true).truncate(true).open(path);
        if emptied.is_err() {
            return false;
        }
        drop(emptied);
        let n = self.spare_names.fetch_add(1, Ordering::Relaxed);
        let spare = self.dir.join(format!("spare-{n}"));
        if std::fs::rename(path, &spare).is_err() {
            return false;
        }
        spares.push(spare);
        true
    }

    /// An emptied spare renamed to `path` and open for writing at its start, if there is one.
    fn take_spare(&self, path: &Path) -> Option<File> {
        let spare = self.spares.lock().ok()?.pop()?;
        let file = OpenOptions::new().write(true).open(&spare).ok();
        match file {
            Some(file) if std::fs::rename(&spare, path).is_ok() => Some(file),
            _ => {
                let _ = std::fs::remove_file(&spare);
                None
            }
        }
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
        Ok(decode_chunk(&data))
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
        let (payloads, good, corrupt) = frames(&data);
        let Some(header) = payloads.first() else {
            if corrupt {
                return Err("no readable header".into());
            }
            // Torn while its header was written: nothing was acked from it.
            let _ = std::fs::remove_file(path);
            return Ok(None);
        };
        let header: serde_json::Value =
            serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
        let id = header["id"]
            .as_str()
            .and_then(ChunkId::from_hex)
            .ok_or("header without a chunk id")?;
        if good < data.len() {
            if corrupt {
                self.copy_aside(path, "corrupt frame; the entries before it are kept");
            } else {
                tracing::warn!(chunk = %path.display(), kept_bytes = good, dropped_bytes = data.len() - good,
                    "chunk ends in a torn write (never acked); trimmed");
            }
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| e.to_string())?;
            file.set_len(good as u64).map_err(|e| e.to_string())?;
        }
        let entries = decode_entries(payloads.iter().skip(1));
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
    // is read back only once it is queued, when nothing appends to its file any more; the
    // only truncation (`recover_one`, of a torn tail) runs at start, before any delivery;
    // the directory is locked against other processes; `remove` unlinks a chunk `load`
    // mapped (never empties it into a spare), which leaves a mapping's pages in place.
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

    /// The frame layout and checksum chunk files of earlier versions have: length, zlib's
    /// CRC-32 of the payload (checked with flate2's, an independent implementation), payload;
    /// read back, entries of one tag share its `Arc`.
    #[test]
    fn entry_frames_keep_the_on_disk_format() {
        let entry = |tag: &str, i: u32| Entry {
            tag: Arc::from(tag),
            event: Event {
                time: EventTime::new(1_700_000_000, i),
                record: Bytes::from(vec![0x81, 0xa1, b'i', i as u8]),
            },
        };
        let written = [entry("a.b", 1), entry("a.b", 2), entry("c", 3)];
        let mut out = Vec::new();
        written.iter().for_each(|e| encode_entry(&mut out, e));
        let payload = &out[FRAME_HEAD..FRAME_HEAD + 2 + 3 + 12 + 4];
        assert_eq!(out[..4], (payload.len() as u32).to_be_bytes());
        let mut zlib = flate2::Crc::new();
        zlib.update(payload);
        assert_eq!(out[4..8], zlib.sum().to_be_bytes());
        assert_eq!(payload[..5], [0, 3, b'a', b'.', b'b']);
        let (payloads, good, corrupt) = frames(&Bytes::from(out.clone()));
        assert_eq!((payloads.len(), good, corrupt), (3, out.len(), false));
        let read = decode_entries(payloads.iter());
        assert!(Arc::ptr_eq(&read[0].tag, &read[1].tag));
        for (read, written) in read.iter().zip(&written) {
            assert_eq!(read.tag, written.tag);
            assert_eq!(read.event.time, written.event.time);
            assert_eq!(read.event.record, written.event.record);
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

    #[test]
    fn chunks_round_trip_and_pending_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let key = serde_json::json!({"table": "t"});
        let all = entries(5);
        store.append(&id, &key, &all[..2]).unwrap();
        store.append(&id, &key, &all[2..]).unwrap();
        assert!(same(&store.load(&id).unwrap(), &all));
        store.write_pending(&id, &[1, 4]).unwrap();
        drop(store);
        let store = FileStore::open(dir.path(), false).unwrap();
        let found = store.recover().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, id);
        assert_eq!(found[0].key, key);
        assert_eq!(found[0].entries, 5);
        assert_eq!(found[0].pending, Some(vec![1, 4]));
        store.remove(&id);
        assert!(store.recover().unwrap().is_empty());
    }

    /// A done chunk's file becomes an empty spare, the next chunk is written into it from its
    /// start (nothing of the old chunk left behind it), and a restart removes spares.
    #[test]
    fn done_chunk_files_are_emptied_and_reused_by_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let key = serde_json::json!({"table": "t"});
        let (old, new) = (ChunkId::new(), ChunkId::new());
        store.append(&old, &key, &entries(50)).unwrap();
        store.remove(&old);
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n != ".lock")
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(), ["spare-0"]);
        assert_eq!(
            std::fs::metadata(dir.path().join("spare-0")).unwrap().len(),
            0
        );
        let mut file = store.create(&new, &key, &entries(2)).unwrap();
        store.append_to(&mut file, &entries(3)[2..]).unwrap();
        drop(file);
        assert_eq!(names(), [format!("chunk-{}.log", new.hex())]);
        assert!(same(&store.load(&new).unwrap(), &entries(3)));
        let found = store.recover().unwrap();
        assert_eq!((found.len(), found[0].entries), (1, 3));
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 0);
        store.remove(&new);
        drop(store);
        FileStore::open(dir.path(), false).unwrap();
        assert!(names().is_empty());
    }

    /// A chunk past `MAP_MIN` is read back mapped, with the same entries; a torn tail ends
    /// it as recovery would trim it.
    #[test]
    fn large_chunks_are_read_back_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), false).unwrap();
        let id = ChunkId::new();
        let key = serde_json::json!("k");
        let all = entries(60_000);
        store.append(&id, &key, &all).unwrap();
        let size = std::fs::metadata(store.chunk_path(&id)).unwrap().len();
        assert!(size >= MAP_MIN, "{size}");
        assert!(same(&store.load(&id).unwrap(), &all));
        let mut partial = Vec::new();
        encode_entry(&mut partial, &all[0]);
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.chunk_path(&id))
            .unwrap();
        f.write_all(&partial[..partial.len() - 1]).unwrap();
        let loaded = store.load(&id).unwrap();
        assert!(same(&loaded, &all));
        // Its records point into the mapping: the file is unlinked, not emptied for reuse.
        store.remove(&id);
        assert!(same(&loaded, &all));
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 1, "only .lock is left");
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
        let key = serde_json::json!("k");
        store.append(&torn, &key, &entries(3)).unwrap();
        store.append(&corrupt, &key, &entries(3)).unwrap();
        // Torn: half of a fourth frame.
        let mut partial = Vec::new();
        encode_entry(&mut partial, &entries(4)[3]);
        let torn_path = store.chunk_path(&torn);
        let mut f = OpenOptions::new().append(true).open(&torn_path).unwrap();
        f.write_all(&partial[..partial.len() / 2]).unwrap();
        // Corrupt: flip a byte inside the second entry's payload.
        let corrupt_path = store.chunk_path(&corrupt);
        let mut data = std::fs::read(&corrupt_path).unwrap();
        // Walk to the third frame (header, entry 0, entry 1) and flip a payload byte.
        let mut pos = 0;
        for _ in 0..2 {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            pos += FRAME_HEAD + len;
        }
        data[pos + FRAME_HEAD + 3] ^= 0xff;
        std::fs::write(&corrupt_path, &data).unwrap();
        // A header torn by a crash during the first append: nothing in it was acked.
        std::fs::write(
            dir.path().join("chunk-zz.log"),
            b"\x00\x00\x00\x05\x00\x00\x00\x00hello",
        )
        .unwrap();

        let mut found = store.recover().unwrap();
        found.sort_by_key(|c| c.entries);
        let by_id = |id: &ChunkId| found.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(by_id(&torn).entries, 3);
        assert_eq!(by_id(&corrupt).entries, 1, "good prefix kept");
        assert_eq!(store.corrupt_chunks.load(Ordering::Relaxed), 1);
        assert!(
            dir.path()
                .join("corrupt")
                .join(corrupt_path.file_name().unwrap())
                .exists()
        );
        assert!(!dir.path().join("chunk-zz.log").exists());
        // Trimmed files recover the same way again.
        assert_eq!(store.recover().unwrap().len(), 2);
    }
}
