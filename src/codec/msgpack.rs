//! Low-level MessagePack reading over byte slices: value heads, a resumable scanner that finds
//! where a value ends in a stream, and a cursor for complete values. It never allocates by a
//! length the input declares and never builds a value tree.

use std::ops::Range;

/// How deep arrays and maps may nest before input is rejected. Real records are shallow; the
/// bound keeps the scanner's stack small against hostile input.
pub const DEFAULT_MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    #[error("invalid msgpack: reserved marker byte 0xc1 at offset {0}")]
    ReservedMarker(usize),
    #[error("invalid msgpack: value truncated at offset {0}")]
    Truncated(usize),
    #[error("msgpack value nested deeper than {0} levels")]
    TooDeep(usize),
}

/// What a value's marker and length fields say, before any payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(u32),
    Bin(u32),
    Array(u32),
    Map(u32),
    Ext(i8, u32),
}

impl Head {
    /// Payload bytes that follow the head (strings, binaries, extensions).
    pub fn payload_len(self) -> usize {
        match self {
            Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => n as usize,
            _ => 0,
        }
    }

    /// Child values that follow (array elements, map keys and values).
    pub fn children(self) -> u64 {
        match self {
            Head::Array(n) => u64::from(n),
            Head::Map(n) => 2 * u64::from(n),
            _ => 0,
        }
    }
}

/// The big-endian number in the `N` bytes after the marker, or `None` when they are not all
/// there yet.
#[inline(always)]
fn be<const N: usize>(buf: &[u8]) -> Option<u64> {
    let bytes: [u8; N] = buf.get(1..1 + N)?.try_into().ok()?;
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads the head at the start of `buf`: `Ok(None)` when more bytes are needed, otherwise the
/// head and how many bytes it took. `offset` only labels errors.
#[inline]
pub fn read_head(buf: &[u8], offset: usize) -> Result<Option<(Head, usize)>, MsgpackError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match one_byte_head(first) {
        Some(head) => Ok(Some((head, 1))),
        None => read_wide_head(buf, first, offset),
    }
}

/// The heads that are only their marker byte (small integers, short strings, small maps and
/// arrays, nil, booleans): decided inline, as they are most of what records hold.
#[inline(always)]
fn one_byte_head(first: u8) -> Option<Head> {
    Some(match first {
        0x00..=0x7f => Head::Uint(u64::from(first)),
        0x80..=0x8f => Head::Map(u32::from(first & 0x0f)),
        0x90..=0x9f => Head::Array(u32::from(first & 0x0f)),
        0xa0..=0xbf => Head::Str(u32::from(first & 0x1f)),
        0xc0 => Head::Nil,
        0xc2 => Head::Bool(false),
        0xc3 => Head::Bool(true),
        0xe0..=0xff => Head::Int(i64::from(first as i8)),
        _ => return None,
    })
}

/// A scalar's whole length (head and payload) where its marker alone gives it: integers, nil,
/// booleans, floats, short strings, fixed-size extensions; 0 for every other marker.
const FIXED_LEN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut marker = 0usize;
    while marker < 256 {
        let b = marker as u8;
        table[marker] = match b {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => 1,
            0xa0..=0xbf => 1 + (b & 0x1f),
            0xcc | 0xd0 => 2,
            0xcd | 0xd1 => 3,
            0xca | 0xce | 0xd2 => 5,
            0xcb | 0xcf | 0xd3 => 9,
            0xd4..=0xd8 => 2 + (1 << (b - 0xd4)),
            _ => 0,
        };
        marker += 1;
    }
    table
};

/// The whole length (head and payload) of the scalar at the start of `buf`, from its marker
/// and length bytes; `None` for containers, the reserved marker, or too few bytes to tell.
/// Most of a record's scalars are looked up in `FIXED_LEN`, one load instead of a jump per
/// marker kind.
#[inline(always)]
fn scalar_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    match FIXED_LEN[usize::from(first)] {
        0 => {
            let n8 = || buf.get(1).map(|&n| usize::from(n));
            let n16 = || be::<2>(buf).map(|n| n as usize);
            let n32 = || be::<4>(buf).map(|n| n as usize);
            match first {
                0xd9 | 0xc4 => Some(2 + n8()?),
                0xda | 0xc5 => Some(3 + n16()?),
                0xdb | 0xc6 => Some(5 + n32()?),
                0xc7 => Some(3 + n8()?),
                0xc8 => Some(4 + n16()?),
                0xc9 => Some(6 + n32()?),
                _ => None,
            }
        }
        len => Some(usize::from(len)),
    }
}

/// Heads whose marker is followed by length, number or extension-type bytes.
#[inline(always)]
fn read_wide_head(
    buf: &[u8],
    first: u8,
    offset: usize,
) -> Result<Option<(Head, usize)>, MsgpackError> {
    let with =
        |n: Option<u64>, width: usize, make: fn(u64) -> Head| n.map(|n| (make(n), 1 + width));
    Ok(match first {
        0xc4 => with(be::<1>(buf), 1, |n| Head::Bin(n as u32)),
        0xc5 => with(be::<2>(buf), 2, |n| Head::Bin(n as u32)),
        0xc6 => with(be::<4>(buf), 4, |n| Head::Bin(n as u32)),
        0xc7 => be::<1>(buf).and_then(|n| ext_head(buf, 1, n as usize)),
        0xc8 => be::<2>(buf).and_then(|n| ext_head(buf, 2, n as usize)),
        0xc9 => be::<4>(buf).and_then(|n| ext_head(buf, 4, n as usize)),
        0xca => with(be::<4>(buf), 4, |n| Head::F32(f32::from_bits(n as u32))),
        0xcb => with(be::<8>(buf), 8, |n| Head::F64(f64::from_bits(n))),
        0xcc => with(be::<1>(buf), 1, Head::Uint),
        0xcd => with(be::<2>(buf), 2, Head::Uint),
        0xce => with(be::<4>(buf), 4, Head::Uint),
        0xcf => with(be::<8>(buf), 8, Head::Uint),
        0xd0 => with(be::<1>(buf), 1, |n| Head::Int(i64::from(n as u8 as i8))),
        0xd1 => with(be::<2>(buf), 2, |n| Head::Int(i64::from(n as u16 as i16))),
        0xd2 => with(be::<4>(buf), 4, |n| Head::Int(i64::from(n as u32 as i32))),
        0xd3 => with(be::<8>(buf), 8, |n| Head::Int(n as i64)),
        0xd4..=0xd7 => ext_head(buf, 0, 1usize << (first - 0xd4)),
        0xd8 => ext_head(buf, 0, 16),
        0xd9 => with(be::<1>(buf), 1, |n| Head::Str(n as u32)),
        0xda => with(be::<2>(buf), 2, |n| Head::Str(n as u32)),
        0xdb => with(be::<4>(buf), 4, |n| Head::Str(n as u32)),
        0xdc => with(be::<2>(buf), 2, |n| Head::Array(n as u32)),
        0xdd => with(be::<4>(buf), 4, |n| Head::Array(n as u32)),
        0xde => with(be::<2>(buf), 2, |n| Head::Map(n as u32)),
        0xdf => with(be::<4>(buf), 4, |n| Head::Map(n as u32)),
        // 0xc1 is reserved; every other byte is a one-byte head handled by `read_head`.
        _ => return Err(MsgpackError::ReservedMarker(offset)),
    })
}

/// An extension head: marker, `width` length bytes, then the type byte.
fn ext_head(buf: &[u8], width: usize, len: usize) -> Option<(Head, usize)> {
    let kind = *buf.get(1 + width)? as i8;
    Some((Head::Ext(kind, len as u32), 2 + width))
}

/// Finds where one msgpack value ends in a growing buffer without re-reading what it has
/// already passed: feed it the same buffer (with more bytes appended) until it returns the
/// value's length. Memory is bounded by nesting depth, never by declared lengths.
#[derive(Debug, Default)]
pub struct Scanner {
    pos: usize,
    /// Children still expected by each open array or map, innermost last.
    open: Vec<u64>,
    started: bool,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the scanner has passed so far (for size limits while incomplete).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// `Complete(len)` once the first value in `buf` is complete (the scanner then resets),
    /// `Incomplete { needed }` while more bytes are needed, with the least total length known
    /// to be needed so far, which lets callers reject oversized values before reading them.
    pub fn scan(&mut self, buf: &[u8], max_depth: usize) -> Result<ScanStatus, MsgpackError> {
        loop {
            if self.started && self.open.is_empty() {
                let len = self.pos;
                *self = Self::default();
                return Ok(ScanStatus::Complete(len));
            }
            let Some((head, head_len)) = read_head(&buf[self.pos..], self.pos)? else {
                return Ok(ScanStatus::Incomplete {
                    needed: self.pos + 1,
                });
            };
            let end = self.pos + head_len + head.payload_len();
            if end > buf.len() {
                return Ok(ScanStatus::Incomplete { needed: end });
            }
            self.pos = end;
            self.started = true;
            let children = head.children();
            if children > 0 {
                if self.open.len() >= max_depth {
                    return Err(MsgpackError::TooDeep(max_depth));
                }
                self.open.push(children);
            } else {
                self.close_finished();
            }
        }
    }

    /// One value ended: count it against its parent, closing every container it completes.
    fn close_finished(&mut self) {
        while let Some(remaining) = self.open.last_mut() {
            *remaining -= 1;
            if *remaining > 0 {
                return;
            }
            self.open.pop();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStatus {
    Complete(usize),
    Incomplete { needed: usize },
}

/// Reads values from a slice that holds complete data; running out is `Truncated`.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Moves back to a position this cursor has already passed.
    pub fn set_position(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    pub fn head(&mut self) -> Result<Head, MsgpackError> {
        let Some(&first) = self.buf.get(self.pos) else {
            return Err(MsgpackError::Truncated(self.pos));
        };
        if let Some(head) = one_byte_head(first) {
            self.pos += 1;
            return Ok(head);
        }
        self.wide_head(first)
    }

    #[inline(always)]
    fn wide_head(&mut self, first: u8) -> Result<Head, MsgpackError> {
        match read_wide_head(&self.buf[self.pos..], first, self.pos)? {
            Some((head, len)) => {
                self.pos += len;
                Ok(head)
            }
            None => Err(MsgpackError::Truncated(self.pos)),
        }
    }

    /// The next `len` payload bytes, as a range of the underlying slice.
    pub fn take(&mut self, len: usize) -> Result<Range<usize>, MsgpackError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or(MsgpackError::Truncated(self.pos))?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    /// Skips one whole value, returning its range.
    #[inline(always)]
    pub fn skip_value(&mut self, max_depth: usize) -> Result<Range<usize>, MsgpackError> {
        // A scalar (a record's keys and most of its values, skipped one at a time by the
        // filters' lookups) by its marker alone, inline and before the container stack of
        // `skip_container` is set up (a 512-byte memset per call).
        let start = self.pos;
        if let Some(len) = scalar_len(&self.buf[start..])
            && len <= self.buf.len() - start
        {
            self.pos += len;
            return Ok(start..self.pos);
        }
        self.skip_container(max_depth)
    }

    /// Skips a map key: a fixstr (most keys) by arithmetic on its marker, without the table
    /// load `skip_value` puts on the chain from one value to the next; else as `skip_value`.
    #[inline(always)]
    pub fn skip_key(&mut self, max_depth: usize) -> Result<Range<usize>, MsgpackError> {
        let start = self.pos;
        if let Some(&first) = self.buf.get(start)
            && first & 0xe0 == 0xa0
        {
            let len = 1 + usize::from(first & 0x1f);
            if len <= self.buf.len() - start {
                self.pos += len;
                return Ok(start..self.pos);
            }
        }
        self.skip_value(max_depth)
    }

    /// `skip_value` for what is not a complete scalar: containers, and errors.
    #[inline(never)]
    fn skip_container(&mut self, max_depth: usize) -> Result<Range<usize>, MsgpackError> {
        /// Depth kept on the stack; deeper limits fall back to the scanner's heap stack.
        const INLINE_DEPTH: usize = 64;
        let start = self.pos;
        if max_depth > INLINE_DEPTH {
            return match Scanner::new().scan(&self.buf[start..], max_depth)? {
                ScanStatus::Complete(len) => {
                    self.pos += len;
                    Ok(start..self.pos)
                }
                ScanStatus::Incomplete { .. } => Err(MsgpackError::Truncated(self.buf.len())),
            };
        }
        if max_depth > 0 && self.skip_flat() {
            return Ok(start..self.pos);
        }
        let result = self.skip_inline::<INLINE_DEPTH>(max_depth);
        if result.is_err() {
            self.pos = start;
        }
        result.map(|()| start..self.pos).map_err(|e| match e {
            // As the scanner reports it: the value runs past the end of the buffer.
            MsgpackError::Truncated(_) => MsgpackError::Truncated(self.buf.len()),
            other => other,
        })
    }

    /// Skips a map or array of scalars only (most records), which needs no stack of open
    /// containers; false, with the cursor where it was, for anything else.
    #[inline]
    fn skip_flat(&mut self) -> bool {
        let start = self.pos;
        let children = match self.head() {
            Ok(head @ (Head::Map(_) | Head::Array(_))) => head.children(),
            _ => 0,
        };
        let flat = children > 0
            && (0..children).all(|_| match scalar_len(&self.buf[self.pos..]) {
                Some(len) if self.pos + len <= self.buf.len() => {
                    self.pos += len;
                    true
                }
                _ => false,
            });
        if !flat {
            self.pos = start;
        }
        flat
    }

    /// `skip_value` for depths up to `D`, with its stack of open containers on the stack.
    fn skip_inline<const D: usize>(&mut self, max_depth: usize) -> Result<(), MsgpackError> {
        // Children still expected by each open container, innermost last.
        let mut open = [0u64; D];
        let mut depth = 0usize;
        loop {
            // Scalars (most of a record) are stepped over by their marker alone.
            let children = match scalar_len(&self.buf[self.pos..]) {
                Some(len) if self.pos + len <= self.buf.len() => {
                    self.pos += len;
                    0
                }
                _ => {
                    let head = self.head()?;
                    self.take(head.payload_len())?;
                    head.children()
                }
            };
            if children > 0 {
                if depth >= max_depth.min(D) {
                    return Err(MsgpackError::TooDeep(max_depth));
                }
                open[depth] = children;
                depth += 1;
                continue;
            }
            // A scalar or empty container ended: close every container it completes.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                open[depth - 1] -= 1;
                if open[depth - 1] > 0 {
                    break;
                }
                depth -= 1;
            }
        }
    }

    /// Skips the payload that follows `head` (used after reading a head that is not wanted).
    pub fn skip_payload(&mut self, head: Head, max_depth: usize) -> Result<(), MsgpackError> {
        self.take(head.payload_len())?;
        for _ in 0..head.children() {
            self.skip_value(max_depth.saturating_sub(1))?;
        }
        Ok(())
    }

    pub fn slice(&self, range: Range<usize>) -> &'a [u8] {
        &self.buf[range]
    }
}

/// The range of the value at `path` (map keys, outermost first) in the msgpack map `record`
/// (a complete value, as the decoder cuts records).
pub fn lookup<K: AsRef<str>>(record: &[u8], path: &[K]) -> Option<Range<usize>> {
    let mut range = 0..record.len();
    for key in path {
        let map = &record[range.clone()];
        let found = find_key(map, key.as_ref().as_bytes())?;
        range = range.start + found.start..range.start + found.end;
    }
    Some(range)
}

/// The range in `map` of the value of `key`. The last of repeated keys wins, as in the Hash
/// a Ruby msgpack decoder builds. (Stopping at a match when the key's text does not occur
/// further on cost more than it saved: a one-shot memmem per match.)
#[inline]
fn find_key(map: &[u8], key: &[u8]) -> Option<Range<usize>> {
    let mut cur = Cursor::new(map);
    let Ok(Head::Map(pairs)) = cur.head() else {
        return None;
    };
    let mut found = None;
    for _ in 0..pairs {
        let key_range = cur.skip_key(DEFAULT_MAX_DEPTH).ok()?;
        let value_range = cur.skip_value(DEFAULT_MAX_DEPTH).ok()?;
        if str_bytes(&map[key_range]) == Some(key) {
            found = Some(value_range);
        }
    }
    found
}

/// The bytes of an encoded string or binary (exactly one value), `None` for other values.
#[inline(always)]
pub fn str_bytes(encoded: &[u8]) -> Option<&[u8]> {
    if let [0xa0..=0xbf, text @ ..] = encoded {
        return Some(text);
    }
    let mut cur = Cursor::new(encoded);
    match cur.head() {
        Ok(Head::Str(n) | Head::Bin(n)) => cur.take(n as usize).ok().map(|r| cur.slice(r)),
        _ => None,
    }
}

/// Writes a map header for `len` entries (used when records are extended with extra keys):
/// fixmap, map 16 or map 32, as `rmp::encode::write_map_len` writes it, but inline (the
/// filters write one per record).
#[inline]
pub fn write_map_len(out: &mut Vec<u8>, len: u32) {
    if len < 16 {
        out.push(0x80 | len as u8);
    } else if len <= u32::from(u16::MAX) {
        out.push(0xde);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = rmp::encode::write_str(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec(value).unwrap()
    }

    #[test]
    fn map_headers_are_rmps_at_every_width() {
        for len in [0, 1, 15, 16, 255, 256, 65_535, 65_536, u32::MAX] {
            let mut ours = Vec::new();
            write_map_len(&mut ours, len);
            let mut theirs = Vec::new();
            rmp::encode::write_map_len(&mut theirs, len).unwrap();
            assert_eq!(ours, theirs, "map of {len}");
        }
    }

    /// Values of every marker kind: each width of integer, float, string, binary, extension,
    /// array and map, nested.
    fn arb_msgpack() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            any::<i64>().prop_map(|n| encode(&n)),
            any::<u64>().prop_map(|n| encode(&n)),
            any::<f32>().prop_map(|f| encode(&f)),
            any::<f64>().prop_map(|f| encode(&f)),
            any::<bool>().prop_map(|b| encode(&b)),
            Just(vec![0xc0]),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
                let mut out = Vec::new();
                rmp::encode::write_bin(&mut out, &b).unwrap();
                out
            }),
            "[a-z]{0,70}".prop_map(|s| encode(&s)),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, d)| {
                let mut out = Vec::new();
                rmp::encode::write_ext_meta(&mut out, d.len() as u32, t).unwrap();
                out.extend(d);
                out
            }),
        ];
        scalar.prop_recursive(3, 40, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(|items| {
                    let mut out = Vec::new();
                    rmp::encode::write_array_len(&mut out, items.len() as u32).unwrap();
                    items.into_iter().for_each(|i| out.extend(i));
                    out
                }),
                proptest::collection::vec(("[a-z]{1,8}", inner), 0..8).prop_map(|pairs| {
                    let mut out = Vec::new();
                    rmp::encode::write_map_len(&mut out, pairs.len() as u32).unwrap();
                    for (k, v) in pairs {
                        out.extend(encode(&k));
                        out.extend(v);
                    }
                    out
                }),
            ]
        })
    }

    proptest::proptest! {
        /// `Cursor::skip_value` (markers stepped over directly) and the resumable scanner
        /// agree on where a value ends, and on every truncation of it being an error.
        #[test]
        fn skip_value_agrees_with_the_scanner(value in arb_msgpack(), trailing in 0usize..3) {
            let mut bytes = value.clone();
            bytes.extend(std::iter::repeat_n(0xc0, trailing));
            let mut cur = Cursor::new(&bytes);
            proptest::prop_assert_eq!(cur.skip_value(DEFAULT_MAX_DEPTH), Ok(0..value.len()));
            proptest::prop_assert_eq!(
                Scanner::new().scan(&bytes, DEFAULT_MAX_DEPTH),
                Ok(ScanStatus::Complete(value.len()))
            );
            for cut in 0..value.len() {
                let mut cur = Cursor::new(&value[..cut]);
                proptest::prop_assert_eq!(
                    cur.skip_value(DEFAULT_MAX_DEPTH),
                    Err(MsgpackError::Truncated(cut))
                );
                proptest::prop_assert_eq!(cur.position(), 0);
            }
        }
    }

    /// Every marker: the table-driven scalar length is the head's length plus its payload.
    #[test]
    fn scalar_len_agrees_with_read_head_for_every_marker() {
        for first in 0..=255u8 {
            let mut buf = vec![first, 0, 0, 0, 3];
            buf.resize(64, 7);
            let want = match read_head(&buf, 0) {
                Ok(Some((head, len))) if head.children() == 0 => match head {
                    Head::Array(_) | Head::Map(_) => None,
                    _ => Some(len + head.payload_len()),
                },
                _ => None,
            };
            assert_eq!(scalar_len(&buf), want, "marker {first:#04x}");
            // The marker alone: enough for the fixed lengths, not for a length field.
            let alone = if FIXED_LEN[usize::from(first)] > 0 {
                want
            } else {
                None
            };
            assert_eq!(scalar_len(&buf[..1]), alone, "marker {first:#04x} alone");
        }
    }

    /// Flat containers past 15 elements (map16, array16) are skipped whole, every truncation
    /// of them is an error, and a container still counts as one level of depth.
    #[test]
    fn wide_flat_containers_skip_like_the_scanner() {
        let map: std::collections::BTreeMap<String, u32> =
            (0..20).map(|i| (format!("key{i}"), i * 1000)).collect();
        let array: Vec<String> = (0..20).map(|i| "x".repeat(i)).collect();
        for value in [encode(&map), encode(&array)] {
            assert!(matches!(value[0], 0xde | 0xdc));
            assert_eq!(
                Cursor::new(&value).skip_value(DEFAULT_MAX_DEPTH),
                Ok(0..value.len())
            );
            for cut in 0..value.len() {
                let mut cur = Cursor::new(&value[..cut]);
                assert_eq!(
                    cur.skip_value(DEFAULT_MAX_DEPTH),
                    Err(MsgpackError::Truncated(cut)),
                    "cut {cut}"
                );
                assert_eq!(cur.position(), 0);
            }
            assert_eq!(
                Cursor::new(&value).skip_value(0),
                Err(MsgpackError::TooDeep(0))
            );
        }
    }

    #[test]
    fn scanner_finds_value_end_across_any_split() {
        let mut bytes = encode(&("tag", 1u32, std::collections::BTreeMap::from([("k", "v")])));
        let first_len = bytes.len();
        bytes.extend(encode(&[1, 2, 3]));
        for split in 0..first_len {
            let mut scanner = Scanner::new();
            let partial = scanner.scan(&bytes[..split], DEFAULT_MAX_DEPTH).unwrap();
            assert!(
                matches!(partial, ScanStatus::Incomplete { .. }),
                "split {split}"
            );
            assert_eq!(
                scanner.scan(&bytes, DEFAULT_MAX_DEPTH).unwrap(),
                ScanStatus::Complete(first_len)
            );
        }
    }

    #[test]
    fn scanner_reports_declared_length_without_allocating_it() {
        // bin32 declaring 4 GiB with 3 bytes present.
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let status = Scanner::new().scan(&bytes, DEFAULT_MAX_DEPTH).unwrap();
        assert_eq!(
            status,
            ScanStatus::Incomplete {
                needed: 5 + 0xffff_ffff
            }
        );
    }

    #[test]
    fn scanner_rejects_deep_nesting_and_reserved_marker() {
        let deep = vec![0x91u8; 100];
        assert_eq!(
            Scanner::new().scan(&deep, 64),
            Err(MsgpackError::TooDeep(64))
        );
        assert_eq!(
            Scanner::new().scan(&[0x92, 0x01, 0xc1], 64),
            Err(MsgpackError::ReservedMarker(2))
        );
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// lookup against the map decoded whole, repeated keys included (the last wins).
        #[test]
        fn lookup_finds_the_last_of_repeated_keys(
            pairs in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["a", "b", "ab", "level", "x"]),
                    proptest::prop_oneof![
                        proptest::prelude::any::<i32>().prop_map(serde_json::Value::from),
                        "[a-z]{0,40}".prop_map(serde_json::Value::from),
                        proptest::sample::select(vec!["a", "level", "b a"])
                            .prop_map(serde_json::Value::from),
                        proptest::prelude::Just(serde_json::json!({"a": 1, "level": [2]})),
                    ],
                ),
                0..10,
            ),
            key in proptest::sample::select(vec!["a", "b", "ab", "level", "x", "y"]),
        ) {
            let mut record = Vec::new();
            write_map_len(&mut record, pairs.len() as u32);
            for (k, v) in &pairs {
                write_str(&mut record, k);
                record.extend(encode(v));
            }
            let want = pairs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
            let got = lookup(&record, &[key])
                .map(|r| rmp_serde::from_slice::<serde_json::Value>(&record[r]).unwrap());
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn lookup_finds_nested_values() {
        let record = encode(&serde_json::json!({"a": {"b": "x"}, "n": 5}));
        let at = |path: &[&str]| lookup(&record, path).map(|r| record[r].to_vec());
        assert_eq!(at(&["n"]), Some(vec![5]));
        assert_eq!(at(&["a", "b"]), Some(vec![0xa1, b'x']));
        assert_eq!(at(&["a", "c"]), None);
        assert_eq!(at(&["n", "x"]), None);
    }

    #[test]
    fn empty_containers_complete_immediately() {
        assert_eq!(
            Scanner::new().scan(&[0x90, 0xff], 8).unwrap(),
            ScanStatus::Complete(1)
        );
        assert_eq!(
            Scanner::new().scan(&[0x92, 0x80, 0x90], 8).unwrap(),
            ScanStatus::Complete(3)
        );
    }

    #[test]
    fn heads_decode_every_marker_family() {
        let cases: Vec<(Vec<u8>, Head)> = vec![
            (encode(&7u8), Head::Uint(7)),
            (encode(&-3i8), Head::Int(-3)),
            (encode(&300u16), Head::Uint(300)),
            (encode(&-40000i32), Head::Int(-40000)),
            (encode(&u64::MAX), Head::Uint(u64::MAX)),
            (encode(&i64::MIN), Head::Int(i64::MIN)),
            (encode(&1.5f64), Head::F64(1.5)),
            (encode(&1.5f32), Head::F32(1.5)),
            (encode(&"x".repeat(40)), Head::Str(40)),
            (encode(&()), Head::Nil),
            (encode(&true), Head::Bool(true)),
            (vec![0xd7, 0x00, 0, 0, 0, 0, 0, 0, 0, 0], Head::Ext(0, 8)),
            (vec![0xc7, 0x03, 0x05, 1, 2, 3], Head::Ext(5, 3)),
        ];
        for (bytes, want) in cases {
            let (head, _) = read_head(&bytes, 0).unwrap().unwrap();
            assert_eq!(head, want, "{bytes:?}");
        }
    }
}
