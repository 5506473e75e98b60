//! Forward protocol v1 messages: where each message ends in the stream (`Decoder`) and what it
//! holds (`decode_message`). Records stay as slices of the received (or inflated) bytes.
//! Spec: fluentd wiki "Forward Protocol Specification v1"; behaviour as fluentd's in_forward.

use super::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head, MsgpackError, ScanStatus, Scanner};
use crate::event::{Event, EventTime};
use bytes::{Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Msgpack(#[from] MsgpackError),
    #[error(
        "the stream starts with '{0}': JSON-encoded Forward streams are not supported, send msgpack"
    )]
    JsonStream(char),
    #[error("message is {0}, expected an array [tag, ...]")]
    NotAnArray(&'static str),
    #[error("message array has {0} elements, expected 2 to 4")]
    Arity(u32),
    #[error("tag is {0}, expected a string")]
    TagNotString(&'static str),
    #[error("tag is not valid UTF-8")]
    TagNotUtf8,
    #[error("message of at least {needed} bytes exceeds the limit of {limit} bytes")]
    TooLarge { needed: usize, limit: usize },
    #[error("bad gzip data in CompressedPackedForward entries: {0}")]
    Gzip(String),
    #[error("compressed entries inflate beyond decompression_size_limit ({0} bytes)")]
    DecompressedTooLarge(usize),
    #[error("bad zstd data in CompressedPackedForward entries: {0}")]
    Zstd(String),
    #[error("unsupported compression '{0}' (supported: gzip, zstd, text)")]
    UnsupportedCompression(String),
    #[error("broken PackedForward entries: {0}")]
    BrokenEntries(MsgpackError),
    #[error("invalid event ({0}) and skip_invalid_event is false")]
    InvalidEvent(InvalidEvent),
}

impl DecodeError {
    /// A short stable name for metrics labels (`bqforward_input_decode_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Msgpack(_) => "msgpack",
            Self::JsonStream(_) => "json_stream",
            Self::NotAnArray(_) | Self::Arity(_) => "message_shape",
            Self::TagNotString(_) | Self::TagNotUtf8 => "tag",
            Self::TooLarge { .. } => "too_large",
            Self::Gzip(_) => "gzip",
            Self::Zstd(_) => "zstd",
            Self::DecompressedTooLarge(_) => "decompressed_too_large",
            Self::UnsupportedCompression(_) => "compression",
            Self::BrokenEntries(_) => "entries",
            Self::InvalidEvent(e) => e.kind(),
        }
    }
}

/// Why one event was skipped (fluentd's `skip_invalid_event`); the rest of its message stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("time is {0}, expected integer, float or EventTime")]
    Time(&'static str),
    #[error("record is {0}, expected a map")]
    Record(&'static str),
    #[error("entry is {0}, expected [time, record]")]
    Entry(&'static str),
}

impl InvalidEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Time(_) => "invalid_event_time",
            Self::Record(_) => "invalid_event_record",
            Self::Entry(_) => "invalid_event_entry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Message,
    Forward,
    PackedForward,
    CompressedPackedForward,
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub max_depth: usize,
    /// fluentd's `decompression_size_limit`: the most one message may inflate to.
    pub decompression_size_limit: usize,
    pub skip_invalid_event: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            decompression_size_limit: 256 * 1024 * 1024,
            skip_invalid_event: true,
        }
    }
}

/// One decoded message. `tag` is valid UTF-8 (checked while decoding).
#[derive(Debug, Clone)]
pub struct Message {
    pub mode: Mode,
    pub tag: Bytes,
    pub events: Vec<Event>,
    /// The `chunk` option: the sender wants `{"ack": chunk}` once the events are accepted.
    pub chunk: Option<Bytes>,
    /// The `size` option when it disagrees with the events found.
    pub size_mismatch: Option<(u64, usize)>,
    pub skipped: u32,
    pub first_skip: Option<InvalidEvent>,
}

impl Message {
    pub fn tag_str(&self) -> &str {
        std::str::from_utf8(&self.tag).unwrap_or_default()
    }
}

/// Finds complete messages in a connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    scanner: Scanner,
    max_depth: usize,
    max_message_size: usize,
    /// Least length the buffer must reach to complete the message being read (0: none open).
    needed: usize,
}

impl Decoder {
    pub fn new(max_message_size: usize, max_depth: usize) -> Self {
        Self {
            scanner: Scanner::new(),
            max_depth,
            max_message_size,
            needed: 0,
        }
    }

    /// Bytes still to come for the message being read, as far as its heads tell (never past
    /// the size limit): a reader can make room for them at once instead of growing by steps.
    pub fn still_needed(&self, buffered: usize) -> usize {
        self.needed.saturating_sub(buffered)
    }

    /// Splits the next complete message off the front of `buf`, or `Ok(None)` until more bytes
    /// arrive. A message that is known to exceed the size limit is an error before it is read,
    /// so a peer cannot make the buffer grow past the limit.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if let (0, Some(&first @ (b'{' | b'['))) = (self.scanner.position(), buf.first()) {
            return Err(DecodeError::JsonStream(first as char));
        }
        match self.scanner.scan(buf, self.max_depth)? {
            ScanStatus::Complete(len) if len > self.max_message_size => {
                Err(DecodeError::TooLarge {
                    needed: len,
                    limit: self.max_message_size,
                })
            }
            ScanStatus::Complete(len) => {
                self.needed = 0;
                Ok(Some(buf.split_to(len).freeze()))
            }
            ScanStatus::Incomplete { needed } if needed > self.max_message_size => {
                Err(DecodeError::TooLarge {
                    needed,
                    limit: self.max_message_size,
                })
            }
            ScanStatus::Incomplete { needed } => {
                self.needed = needed;
                Ok(None)
            }
        }
    }
}

/// Decodes one complete message: `frame` is exactly one msgpack value, as
/// `Decoder::next_frame` returns it. `Ok(None)` for a nil message, which fluentd ignores.
pub fn decode_message(frame: &Bytes, opts: &DecodeOptions) -> Result<Option<Message>, DecodeError> {
    let mut cur = Cursor::new(frame);
    let len = match cur.head()? {
        Head::Nil => return Ok(None),
        Head::Array(n) if (2..=4).contains(&n) => n,
        Head::Array(n) => return Err(DecodeError::Arity(n)),
        other => return Err(DecodeError::NotAnArray(kind(other))),
    };
    let tag = match cur.head()? {
        Head::Str(n) => frame.slice(cur.take(n as usize)?),
        other => return Err(DecodeError::TagNotString(kind(other))),
    };
    if std::str::from_utf8(&tag).is_err() {
        return Err(DecodeError::TagNotUtf8);
    }
    let mut msg = Message {
        mode: Mode::Message,
        tag,
        events: Vec::new(),
        chunk: None,
        size_mismatch: None,
        skipped: 0,
        first_skip: None,
    };
    let second = cur.position();
    match cur.head()? {
        Head::Array(count) => {
            msg.mode = Mode::Forward;
            msg.events.reserve((count as usize).min(1024));
            for _ in 0..count {
                let entry = decode_entry(&mut cur, frame, opts)?;
                msg.push(entry, opts)?;
            }
            let option = read_option(&mut cur, len >= 3, frame)?;
            msg.chunk = option.chunk;
        }
        Head::Str(n) | Head::Bin(n) => {
            let entries = cur.take(n as usize)?;
            let option = read_option(&mut cur, len >= 3, frame)?;
            let entries = match option.compressed.as_deref() {
                None | Some(b"text") => {
                    msg.mode = Mode::PackedForward;
                    frame.slice(entries)
                }
                Some(b"gzip") => {
                    msg.mode = Mode::CompressedPackedForward;
                    gunzip(&frame[entries], opts.decompression_size_limit)?
                }
                Some(b"zstd") => {
                    msg.mode = Mode::CompressedPackedForward;
                    unzstd(&frame[entries], opts.decompression_size_limit)?
                }
                Some(other) => {
                    return Err(DecodeError::UnsupportedCompression(
                        String::from_utf8_lossy(other).into_owned(),
                    ));
                }
            };
            msg.decode_packed(&entries, opts)?;
            let found = msg.events.len() as u64 + u64::from(msg.skipped);
            if let Some(size) = option.size.filter(|size| *size != found) {
                msg.size_mismatch = Some((size, msg.events.len()));
            }
            msg.chunk = option.chunk;
        }
        _ => {
            if len < 3 {
                return Err(DecodeError::Arity(len));
            }
            cur.set_position(second);
            let event = decode_time_and_record(&mut cur, frame, opts, len == 3)?;
            msg.push(event, opts)?;
            let option = read_option(&mut cur, len == 4, frame)?;
            msg.chunk = option.chunk;
        }
    }
    Ok(Some(msg))
}

impl Message {
    fn push(
        &mut self,
        event: Result<Option<Event>, InvalidEvent>,
        opts: &DecodeOptions,
    ) -> Result<(), DecodeError> {
        match event {
            Ok(Some(event)) => self.events.push(event),
            Ok(None) => {}
            Err(invalid) if opts.skip_invalid_event => {
                self.skipped += 1;
                self.first_skip.get_or_insert(invalid);
            }
            Err(invalid) => return Err(DecodeError::InvalidEvent(invalid)),
        }
        Ok(())
    }

    fn decode_packed(&mut self, entries: &Bytes, opts: &DecodeOptions) -> Result<(), DecodeError> {
        let mut cur = Cursor::new(entries);
        self.events.reserve((entries.len() / 64).min(1024));
        while !cur.is_empty() {
            let entry = decode_entry(&mut cur, entries, opts).map_err(|err| match err {
                DecodeError::Msgpack(inner) => DecodeError::BrokenEntries(inner),
                other => other,
            })?;
            self.push(entry, opts)?;
        }
        Ok(())
    }
}

type EventResult = Result<Option<Event>, InvalidEvent>;

/// `[time, record]` (extra elements ignored). The cursor always ends after the whole entry.
fn decode_entry(
    cur: &mut Cursor<'_>,
    base: &Bytes,
    opts: &DecodeOptions,
) -> Result<EventResult, DecodeError> {
    match cur.head()? {
        Head::Array(n) if n >= 2 => {
            let event = decode_time_and_record(cur, base, opts, false)?;
            for _ in 2..n {
                cur.skip_value(opts.max_depth)?;
            }
            Ok(event)
        }
        other => {
            cur.skip_payload(other, opts.max_depth)?;
            Ok(Err(InvalidEvent::Entry(kind(other))))
        }
    }
}

/// `ends_base`: the record is the last value in `base` (a `[tag, time, record]` message,
/// whose end the stream scanner has already found), so its extent needs no second walk.
fn decode_time_and_record(
    cur: &mut Cursor<'_>,
    base: &Bytes,
    opts: &DecodeOptions,
    ends_base: bool,
) -> Result<EventResult, DecodeError> {
    let time = read_time(cur, opts.max_depth, true)?;
    let start = cur.position();
    let record = match cur.head()? {
        Head::Map(_) if ends_base => {
            cur.set_position(base.len());
            Some(base.slice(start..))
        }
        Head::Map(_) => {
            cur.set_position(start);
            Some(base.slice(cur.skip_value(opts.max_depth)?))
        }
        // fluentd skips a nil record silently.
        Head::Nil => None,
        other => {
            cur.skip_payload(other, opts.max_depth)?;
            return Ok(Err(InvalidEvent::Record(kind(other))));
        }
    };
    Ok(match (time, record) {
        (Err(invalid), _) => Err(invalid),
        (Ok(_), None) => Ok(None),
        (Ok(time), Some(record)) => Ok(Some(Event { time, record })),
    })
}

/// A time of 0 or nil means "now", as in fluentd. `[time, metadata]` (Fluent Bit ≥ 2) uses
/// its first element.
fn read_time(
    cur: &mut Cursor<'_>,
    max_depth: usize,
    allow_array: bool,
) -> Result<Result<EventTime, InvalidEvent>, MsgpackError> {
    let head = cur.head()?;
    let time = match head {
        Head::Nil => Some(EventTime::now()),
        Head::Uint(n) => i64::try_from(n).ok().map(|s| EventTime::new(s, 0)),
        Head::Int(n) => Some(EventTime::new(n, 0)),
        Head::F32(f) => EventTime::from_f64(f64::from(f)),
        Head::F64(f) => EventTime::from_f64(f),
        Head::Ext(0, 8) => {
            let range = cur.take(8)?;
            let bytes = cur.slice(range);
            let secs = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let nanos = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            (nanos < 1_000_000_000).then(|| EventTime::new(i64::from(secs), nanos))
        }
        Head::Array(n) if n >= 1 && allow_array => {
            let first = read_time(cur, max_depth, false)?;
            for _ in 1..n {
                cur.skip_value(max_depth)?;
            }
            return Ok(first);
        }
        other => {
            cur.skip_payload(other, max_depth)?;
            None
        }
    };
    Ok(match time {
        Some(t) if t.is_zero() => Ok(EventTime::now()),
        Some(t) => Ok(t),
        None => Err(InvalidEvent::Time(kind(head))),
    })
}

#[derive(Default)]
struct OptionMap {
    chunk: Option<Bytes>,
    size: Option<u64>,
    compressed: Option<Vec<u8>>,
}

/// The option map; unknown keys and a nil option are ignored, as fluentd does.
fn read_option(
    cur: &mut Cursor<'_>,
    present: bool,
    frame: &Bytes,
) -> Result<OptionMap, DecodeError> {
    let mut option = OptionMap::default();
    if !present {
        return Ok(option);
    }
    let head = cur.head()?;
    let Head::Map(pairs) = head else {
        cur.skip_payload(head, DEFAULT_MAX_DEPTH)?;
        return Ok(option);
    };
    for _ in 0..pairs {
        let key = match cur.head()? {
            Head::Str(n) => Some(cur.take(n as usize)?),
            other => {
                cur.skip_payload(other, DEFAULT_MAX_DEPTH)?;
                None
            }
        };
        let key = key.map(|range| cur.slice(range));
        let value = cur.head()?;
        match (key, value) {
            (Some(b"chunk"), Head::Str(n) | Head::Bin(n)) => {
                option.chunk = Some(frame.slice(cur.take(n as usize)?));
            }
            (Some(b"size"), Head::Uint(n)) => option.size = Some(n),
            (Some(b"compressed"), Head::Str(n)) => {
                let range: Range<usize> = cur.take(n as usize)?;
                option.compressed = Some(cur.slice(range).to_vec());
            }
            (_, other) => cur.skip_payload(other, DEFAULT_MAX_DEPTH)?,
        }
    }
    Ok(option)
}

/// Inflates gzip data (several concatenated members too) up to `limit` bytes.
/// The inflated events are buffered as slices of one allocation, so it is sized to what the
/// gzip trailer declares (ISIZE, the last member's length; believed only as far as deflate's
/// 1032:1 bound and `limit` allow) and trimmed when growth left much room unused.
fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let declared = data
        .last_chunk::<4>()
        .map_or(0, |isize| u32::from_le_bytes(*isize) as usize);
    let expected = declared.min(data.len().saturating_mul(1032));
    let mut out = Vec::with_capacity(expected.max(data.len().saturating_mul(4)).min(limit) + 1);
    MultiGzDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| DecodeError::Gzip(err.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::DecompressedTooLarge(limit));
    }
    Ok(trimmed(out))
}

/// `out` as `Bytes`, without keeping much unused capacity alive with the events sliced from it.
fn trimmed(mut out: Vec<u8>) -> Bytes {
    if out.capacity() > out.len() + out.len() / 8 + 4096 {
        out.shrink_to_fit();
    }
    Bytes::from(out)
}

/// Inflates zstd data (several concatenated frames too, as fluentd >= 1.19 and Fluent Bit
/// send) up to `limit` bytes.
fn unzstd(mut data: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    while !data.is_empty() {
        let decoder = ruzstd::decoding::StreamingDecoder::new(&mut data)
            .map_err(|err| DecodeError::Zstd(err.to_string()))?;
        let room = (limit + 1).saturating_sub(out.len()) as u64;
        decoder
            .take(room)
            .read_to_end(&mut out)
            .map_err(|err| DecodeError::Zstd(err.to_string()))?;
        if out.len() > limit {
            return Err(DecodeError::DecompressedTooLarge(limit));
        }
    }
    Ok(trimmed(out))
}

/// The `{"ack": chunk}` answer, appended to `out`.
pub fn write_ack(out: &mut Vec<u8>, chunk: &[u8]) {
    out.push(0x81);
    super::msgpack::write_str(out, "ack");
    // The chunk id is echoed as a str, whatever type it came as.
    let _ = rmp::encode::write_str_len(out, chunk.len() as u32);
    out.extend_from_slice(chunk);
}

fn kind(head: Head) -> &'static str {
    match head {
        Head::Nil => "nil",
        Head::Bool(_) => "a boolean",
        Head::Uint(_) | Head::Int(_) => "an integer",
        Head::F32(_) | Head::F64(_) => "a float",
        Head::Str(_) => "a string",
        Head::Bin(_) => "binary",
        Head::Array(_) => "an array",
        Head::Map(_) => "a map",
        Head::Ext(_, _) => "an extension value",
    }
}
