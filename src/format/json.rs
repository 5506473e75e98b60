//! msgpack records to JSON text, written straight from the record bytes into an output buffer:
//! no intermediate value tree. Mapping (as fluentd's JSON formatter, where it has one):
//! str → string (invalid UTF-8 replaced), bin → string (lossy UTF-8), integers as written,
//! floats (NaN and infinities → null), nil → null, non-string map keys → their JSON text as a
//! string (such keys inside that text as their text, not escaped again), EventTime ext →
//! integer seconds (as fluentd's EventTime#to_json), other ext →
//! base64 of the payload.

use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head, MsgpackError};
use base64::Engine;

/// A field added to a record on output (fluentd's `<inject>`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Extra<'a> {
    Str(&'a str),
    Float(f64),
    Int(i64),
    /// The event time as `time_type float` injects it: the float `as_f64` gives everywhere,
    /// except where exact seconds can be written instead (a BigQuery TIMESTAMP column).
    Time(crate::event::EventTime),
}

/// Writes `record` (a msgpack map) as a JSON object, followed by `extras` as more fields.
/// A record key that an extra also names is written once, with the extra's value.
pub fn write_record(
    record: &[u8],
    extras: &[(&str, Extra<'_>)],
    out: &mut Vec<u8>,
) -> Result<(), MsgpackError> {
    let mut cur = Cursor::new(record);
    let Head::Map(pairs) = cur.head()? else {
        return Err(MsgpackError::Truncated(0));
    };
    out.push(b'{');
    let mut first = true;
    for _ in 0..pairs {
        let key_start = out.len();
        if !first {
            out.push(b',');
        }
        write_key(&mut cur, out)?;
        if !extras.is_empty() && shadowed(&out[key_start..], extras) {
            out.truncate(key_start);
            cur.skip_value(DEFAULT_MAX_DEPTH)?;
            continue;
        }
        out.push(b':');
        write_value(&mut cur, out, DEFAULT_MAX_DEPTH)?;
        first = false;
    }
    for (key, value) in extras {
        if !first {
            out.push(b',');
        }
        write_str(key, out);
        out.push(b':');
        match value {
            Extra::Str(s) => write_str(s, out),
            Extra::Float(f) => write_f64(*f, out),
            Extra::Time(t) => write_f64(t.as_f64(), out),
            Extra::Int(i) => write_integer(*i, out),
        }
        first = false;
    }
    out.push(b'}');
    Ok(())
}

/// Whether the key just written (after an optional comma) is one that an extra replaces.
fn shadowed(written: &[u8], extras: &[(&str, Extra<'_>)]) -> bool {
    let key = written.strip_prefix(b",").unwrap_or(written);
    extras
        .iter()
        .any(|(name, _)| key.len() == name.len() + 2 && &key[1..key.len() - 1] == name.as_bytes())
}

/// Where a value is written: in a record, or inside the text of a map key that is not a
/// string. There a key that is not a string either is written as its text as it is, not as a
/// JSON string of it (as Ruby's `Hash#to_s` shows a hash key: `{{"a"=>1}=>2}`): written as a
/// string, each such level would escape the one inside it again, doubling its backslashes,
/// and a record of 200 bytes took minutes and gigabytes to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Record,
    Key,
}

/// A map key as a JSON string: a string key as it is, any other the string of its JSON text.
pub fn write_key(cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), MsgpackError> {
    key(cur, out, DEFAULT_MAX_DEPTH, Within::Record)
}

fn key(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    within: Within,
) -> Result<(), MsgpackError> {
    let start = cur.position();
    match cur.head()? {
        Head::Str(n) | Head::Bin(n) => {
            let range = cur.take(n as usize)?;
            write_bytes_as_str(cur.slice(range), out);
        }
        _ if within == Within::Key => {
            cur.set_position(start);
            value(cur, out, depth, Within::Key)?;
        }
        _ => {
            // A non-string key becomes the string of its JSON text, as Ruby's to_s would.
            cur.set_position(start);
            let mut text = Vec::new();
            value(cur, &mut text, depth, Within::Key)?;
            write_bytes_as_str(&text, out);
        }
    }
    Ok(())
}

pub fn write_value(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), MsgpackError> {
    value(cur, out, depth, Within::Record)
}

fn value(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    within: Within,
) -> Result<(), MsgpackError> {
    if depth == 0 {
        return Err(MsgpackError::TooDeep(DEFAULT_MAX_DEPTH));
    }
    match cur.head()? {
        Head::Nil => out.extend_from_slice(b"null"),
        Head::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Head::Uint(n) => write_integer(n, out),
        Head::Int(n) => write_integer(n, out),
        Head::F32(f) => write_f64(f64::from(f), out),
        Head::F64(f) => write_f64(f, out),
        Head::Str(n) | Head::Bin(n) => {
            let range = cur.take(n as usize)?;
            write_bytes_as_str(cur.slice(range), out);
        }
        Head::Array(n) => array(n, cur, out, depth - 1, within)?,
        Head::Map(n) => map(n, cur, out, depth - 1, within)?,
        Head::Ext(0, 8) => {
            let range = cur.take(8)?;
            let bytes = cur.slice(range);
            let secs = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            write_integer(secs, out);
        }
        Head::Ext(_, n) => {
            let range = cur.take(n as usize)?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(cur.slice(range));
            write_str(&encoded, out);
        }
    }
    Ok(())
}

/// An array whose head (`n` elements) was just read: its elements, each at most `depth` deep.
pub fn write_array(
    n: u32,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), MsgpackError> {
    array(n, cur, out, depth, Within::Record)
}

fn array(
    n: u32,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    within: Within,
) -> Result<(), MsgpackError> {
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        value(cur, out, depth, within)?;
    }
    out.push(b']');
    Ok(())
}

/// A map whose head (`n` pairs) was just read: its pairs, each value at most `depth` deep.
pub fn write_map(
    n: u32,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), MsgpackError> {
    map(n, cur, out, depth, Within::Record)
}

fn map(
    n: u32,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    within: Within,
) -> Result<(), MsgpackError> {
    out.push(b'{');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        key(cur, out, depth, within)?;
        out.push(b':');
        value(cur, out, depth, within)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        write_finite_f64(f, out);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// The shortest text that reads back as `f` (zmij, as serde_json writes floats). `f` must be
/// finite: JSON has no text for the others.
#[inline]
pub fn write_finite_f64(f: f64, out: &mut Vec<u8>) {
    append_bytes(zmij::Buffer::new().format_finite(f).as_bytes(), out);
}

/// An integer's decimal digits.
#[inline]
pub fn write_integer(n: impl itoa::Integer, out: &mut Vec<u8>) {
    append_bytes(itoa::Buffer::new().format(n).as_bytes(), out);
}

pub fn write_str(s: &str, out: &mut Vec<u8>) {
    if needs_no_escaping(s.as_bytes()) {
        write_quoted_plain(s.as_bytes(), out);
    } else {
        // serde_json's escaping; writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Bytes as a JSON string. The usual case, ASCII with nothing to escape, is copied as it is;
/// anything else goes through serde_json's escaper (invalid UTF-8 replaced, as
/// `String::from_utf8_lossy` does).
#[inline(always)]
pub fn write_bytes_as_str(bytes: &[u8], out: &mut Vec<u8>) {
    if needs_no_escaping(bytes) {
        write_quoted_plain(bytes, out);
    } else {
        write_escaped(bytes, out);
    }
}

#[cold]
#[inline(never)]
fn write_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Err(_) => {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
        }
    }
}

#[inline(always)]
fn write_quoted_plain(bytes: &[u8], out: &mut Vec<u8>) {
    let n = bytes.len();
    if n > SHORT {
        out.reserve(n + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    // Quotes all over room for the longest short string, then the bytes over the middle.
    let start = out.len();
    out.extend_from_slice(&[b'"'; SHORT + 2]);
    copy_short(bytes, &mut out[start + 1..start + 1 + n]);
    out.truncate(start + n + 2);
}

/// Strings up to this long are copied by `copy_short`.
const SHORT: usize = 32;

/// Appends `bytes`; short ones (most keys, values and numbers' digits) without a call into
/// libc's memcpy, which for a few bytes costs more than the copy.
#[inline(always)]
pub fn append_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let n = bytes.len();
    if n > SHORT {
        out.extend_from_slice(bytes);
        return;
    }
    let start = out.len();
    out.extend_from_slice(&[0; SHORT]);
    copy_short(bytes, &mut out[start..start + n]);
    out.truncate(start + n);
}

/// Copies `src` (at most `SHORT` bytes) into `dst` of the same length with two fixed-size,
/// possibly overlapping moves, as memcpy itself does for small sizes.
#[inline(always)]
fn copy_short(src: &[u8], dst: &mut [u8]) {
    let n = src.len();
    debug_assert!(n == dst.len() && n <= SHORT);
    if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else if n > 0 {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}

/// Copies `src` into `dst` of the same length: short ones by `copy_short`.
#[inline(always)]
fn copy_into(src: &[u8], dst: &mut [u8]) {
    if src.len() <= SHORT {
        copy_short(src, dst);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Room made ahead at the end of a buffer, written through a slice and a position that stay
/// in registers. Appending to a `Vec` loads and stores its length for every piece, and for
/// rows of short keys and values that bookkeeping cost about as much as the bytes. A write
/// that does not fit returns `Full` and writes nothing; the caller makes more room and
/// starts again. Everything before `len()` has been written.
pub struct Room<'a> {
    buf: &'a mut [u8],
    at: usize,
}

/// A `Room` write that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl<'a> Room<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.at
    }

    pub fn is_empty(&self) -> bool {
        self.at == 0
    }

    /// The `n` bytes at the position, which then moves past them.
    #[inline(always)]
    fn next(&mut self, n: usize) -> Result<&mut [u8], Full> {
        let start = self.at;
        let slot = self.buf.get_mut(start..start + n).ok_or(Full)?;
        self.at = start + n;
        Ok(slot)
    }

    #[inline(always)]
    pub fn byte(&mut self, b: u8) -> Result<(), Full> {
        self.next(1)?[0] = b;
        Ok(())
    }

    /// Puts `bytes` in at `at` (a position already written), moving what follows.
    pub fn insert(&mut self, at: usize, bytes: &[u8]) -> Result<(), Full> {
        let end = self.at;
        let at = at.min(end);
        self.next(bytes.len())?;
        self.buf.copy_within(at..end, at + bytes.len());
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Overwrites a byte already written.
    pub fn set(&mut self, at: usize, b: u8) {
        if at < self.at {
            self.buf[at] = b;
        }
    }

    #[inline(always)]
    pub fn bytes(&mut self, s: &[u8]) -> Result<(), Full> {
        copy_into(s, self.next(s.len())?);
        Ok(())
    }

    /// The first `len` bytes of `padded`, with one fixed-size copy when the room allows.
    #[inline(always)]
    pub fn padded<const N: usize>(&mut self, padded: &[u8; N], len: usize) -> Result<(), Full> {
        match self.buf.get_mut(self.at..self.at + N) {
            Some(slot) => {
                slot.copy_from_slice(padded);
                self.at += len.min(N);
                Ok(())
            }
            None => self.bytes(&padded[..len.min(N)]),
        }
    }

    /// `s` as a JSON string when it needs no escaping; `Ok(false)`, nothing written, when it
    /// does.
    #[inline(always)]
    pub fn plain_str(&mut self, s: &[u8]) -> Result<bool, Full> {
        if !needs_no_escaping(s) {
            return Ok(false);
        }
        let n = s.len();
        let slot = self.next(n + 2)?;
        slot[0] = b'"';
        slot[n + 1] = b'"';
        copy_into(s, &mut slot[1..n + 1]);
        Ok(true)
    }

    /// An integer's decimal digits.
    #[inline(always)]
    pub fn integer(&mut self, n: impl itoa::Integer) -> Result<(), Full> {
        self.bytes(itoa::Buffer::new().format(n).as_bytes())
    }

    /// `n` (below 10^width, width at most 18) in exactly `width` digits, zero-padded.
    #[inline(always)]
    pub fn padded_digits(&mut self, n: u64, width: usize) -> Result<(), Full> {
        let width = width.min(18);
        let mut buf = itoa::Buffer::new();
        // One more digit than asked for, the leading 1 dropped.
        let digits = buf.format(10u64.pow(width as u32) + n % 10u64.pow(width as u32));
        self.bytes(&digits.as_bytes()[1..])
    }

    /// A finite float as serde_json writes it (shortest round-trip, zmij).
    #[inline(always)]
    pub fn finite_f64(&mut self, f: f64) -> Result<(), Full> {
        self.bytes(zmij::Buffer::new().format_finite(f).as_bytes())
    }
}

/// True when every byte is printable ASCII other than `"` and `\\`: such bytes are valid
/// UTF-8 and stand for themselves in a JSON string. Strings of 16 bytes and more are checked
/// 16 bytes per step with no branch inside the step, which the compiler turns into vector
/// compares (SSE2 on any x86-64), the last step overlapping the one before; shorter ones as
/// two overlapping 8-byte words ("has a byte less than n" word tricks, each exact), or byte
/// by byte below 8. No copy to a padded buffer: its small stores read back as one wide load
/// stall the CPU (11 % of the conversion in a profile).
#[inline(always)]
fn needs_no_escaping(bytes: &[u8]) -> bool {
    const STEP: usize = 16;
    #[inline(always)]
    fn plain_block(block: &[u8; STEP]) -> bool {
        let mut bad = 0u8;
        for &b in block {
            // Below 0x20 or 0x80 and above: outside 0..0x60 once 0x20 is taken off.
            bad |=
                u8::from(b.wrapping_sub(0x20) >= 0x60) | u8::from(b == b'"') | u8::from(b == b'\\');
        }
        bad == 0
    }
    #[inline(always)]
    fn plain_word(x: u64) -> bool {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        // A byte of `x` is below `n` (n <= 128, all bytes of `x` below 128).
        let any_below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
        !(x & HIGH != 0
            || any_below(x, 0x20)
            || any_below(x ^ (ONES * u64::from(b'"')), 1)
            || any_below(x ^ (ONES * u64::from(b'\\')), 1))
    }
    let n = bytes.len();
    if n >= STEP {
        let (blocks, rest) = bytes.as_chunks::<STEP>();
        for block in blocks {
            if !plain_block(block) {
                return false;
            }
        }
        // The last 16 bytes, overlapping the block before.
        return match bytes.last_chunk::<STEP>() {
            Some(last) if !rest.is_empty() => plain_block(last),
            _ => true,
        };
    }
    if n >= 8 {
        return plain_word(u64::from_ne_bytes(word(bytes, 0)))
            && plain_word(u64::from_ne_bytes(word(bytes, n - 8)));
    }
    bytes
        .iter()
        .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
}

/// The 8 bytes of `s` at `at`.
#[inline(always)]
fn word(s: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn to_json(record: &Value, extras: &[(&str, Extra<'_>)]) -> Value {
        let bytes = rmp_serde::to_vec(record).unwrap();
        let mut out = Vec::new();
        write_record(&bytes, extras, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn records_transcode_to_equal_json() {
        let record = json!({
            "s": "quote \" backslash \\ newline \n tab \t unicode é 😀",
            "i": -42, "u": u64::MAX, "f": 1.25, "b": true, "n": null,
            "a": [1, "two", [3.5], {"k": "v"}],
            "m": {"nested": {"deep": [null]}},
        });
        assert_eq!(to_json(&record, &[]), record);
    }

    #[test]
    fn extras_are_added_and_replace_same_named_keys() {
        let got = to_json(
            &json!({"tag": "old", "msg": "x"}),
            &[
                ("tag", Extra::Str("app.web")),
                ("time", Extra::Float(1.5)),
                ("n", Extra::Int(3)),
            ],
        );
        assert_eq!(
            got,
            json!({"msg": "x", "tag": "app.web", "time": 1.5, "n": 3})
        );
    }

    #[test]
    fn binary_ext_and_odd_keys_have_documented_json() {
        // {1: bin "hi", "t": EventTime(1700000000, 5), "x": ext 7 [1,2,3], "bad": str ff}
        let mut rec = vec![0x84, 0x01, 0xc4, 0x02, b'h', b'i'];
        rec.extend_from_slice(&[0xa1, b't', 0xd7, 0x00]);
        rec.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        rec.extend_from_slice(&5u32.to_be_bytes());
        rec.extend_from_slice(&[0xa1, b'x', 0xc7, 0x03, 0x07, 1, 2, 3]);
        rec.extend_from_slice(&[0xa3, b'b', b'a', b'd', 0xa1, 0xff]);
        let mut out = Vec::new();
        write_record(&rec, &[], &mut out).unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            got,
            json!({"1": "hi", "t": 1_700_000_000, "x": "AQID", "bad": "\u{fffd}"})
        );
    }

    /// Every byte value, at every position of strings up to three steps long, is judged as
    /// the byte-at-a-time rule judges it.
    #[test]
    fn the_plain_check_agrees_with_the_byte_rule_everywhere() {
        let plain = |b: u8| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\';
        for len in 0..48 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(needs_no_escaping(&s), plain(b), "{len} {at} {b:#x}");
                }
            }
            assert!(needs_no_escaping(&vec![b'~'; len]));
        }
    }

    /// A map key that is not a string is written as the string of its JSON text; inside that
    /// text, such a key is written as its text as it is (not escaped again), so the text grows
    /// with the record, not twice per level (40 levels took minutes and gigabytes).
    #[test]
    fn non_string_keys_inside_non_string_keys_are_written_once() {
        // {{"a": 1}: 2, "b": [{[3]: 4}]}: a map key, and an array key in a value's map.
        let rec = [
            0x82, 0x81, 0xa1, b'a', 0x01, 0x02, 0xa1, b'b', 0x91, 0x81, 0x91, 0x03, 0x04,
        ];
        let mut out = Vec::new();
        write_record(&rec, &[], &mut out).unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, json!({"{\"a\":1}": 2, "b": [{"[3]": 4}]}));

        // {{{"a": 1}: 2}: 3} and {"v": {[{[1]: 2}]: 3}}: keys with keys that are not strings.
        for (rec, want) in [
            (
                &[0x81, 0x81, 0x81, 0xa1, b'a', 0x01, 0x02, 0x03][..],
                json!({"{{\"a\":1}:2}": 3}),
            ),
            (
                &[0x81, 0xa1, b'v', 0x81, 0x91, 0x81, 0x91, 0x01, 0x02, 0x03][..],
                json!({"v": {"[{[1]:2}]": 3}}),
            ),
        ] {
            let mut out = Vec::new();
            write_record(rec, &[], &mut out).unwrap();
            let got: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(got, want);
        }

        // 40 levels of maps as keys, as a fuzzer found: a line of about 300 bytes.
        let mut rec = vec![0x81; 40];
        rec.extend_from_slice(&[0xa1, b'a']);
        rec.extend(std::iter::repeat_n(0x01, 40));
        let mut out = Vec::new();
        write_record(&rec, &[], &mut out).unwrap();
        assert!(out.len() < 400, "{} bytes", out.len());
        let got: Value = serde_json::from_slice(&out).unwrap();
        let key = got.as_object().unwrap().keys().next().unwrap().clone();
        assert!(key.starts_with(&"{".repeat(39)), "{key}");
    }

    #[test]
    fn keys_that_need_escaping_take_the_slow_path() {
        let record = json!({"plain_key-1.x": 1, "quo\"te": 2, "café": 3, "tab\t": 4});
        assert_eq!(to_json(&record, &[]), record);
    }

    #[test]
    fn non_finite_floats_become_null() {
        let rec = [0x81, 0xa1, b'f', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0];
        let mut out = Vec::new();
        write_record(&rec, &[], &mut out).unwrap();
        assert_eq!(out, br#"{"f":null}"#);
    }

    /// The fixed-size moves of short copies cover every byte of every length, after whatever
    /// the buffer already holds, and leave nothing past the end.
    #[test]
    fn short_copies_are_exact_at_every_length() {
        let text: Vec<u8> = (0..70u8)
            .map(|i| b'!' + i % 90)
            .filter(|&b| b != b'\\')
            .collect();
        for len in 0..text.len() {
            let bytes = &text[..len];
            let mut out = b"prefix".to_vec();
            append_bytes(bytes, &mut out);
            assert_eq!(out, [&b"prefix"[..], bytes].concat(), "append {len}");
            let mut quoted = b"prefix".to_vec();
            write_bytes_as_str(bytes, &mut quoted);
            let expected = serde_json::to_vec(std::str::from_utf8(bytes).unwrap()).unwrap();
            assert_eq!(quoted, [&b"prefix"[..], &expected].concat(), "quoted {len}");
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        for n in [0i64, 7, -7, 1 << 53, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_integer(n, &mut out);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        for f in [
            0.0,
            -0.0,
            1.5,
            1e21,
            1e-7,
            0.1 + 0.2,
            f64::MAX,
            f64::MIN_POSITIVE,
            1428.5714285714287,
        ] {
            let mut out = Vec::new();
            write_finite_f64(f, &mut out);
            assert_eq!(out, serde_json::to_vec(&f).unwrap(), "{f}");
        }
    }

    proptest::proptest! {
        /// The word-at-a-time check must agree with serde_json's escaper on every input,
        /// including the bytes around each threshold (0x1f/0x20, '"', '\\', 0x7f/0x80).
        #[test]
        fn strings_are_written_exactly_as_serde_json_writes_them(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(vec![0x1f_u8, 0x20, b'"', b'\\', 0x7f, 0x80, b'a']),
                ],
                0..40,
            )
        ) {
            let mut fast = Vec::new();
            write_bytes_as_str(&bytes, &mut fast);
            let expected = serde_json::to_vec(&String::from_utf8_lossy(&bytes)).unwrap();
            proptest::prop_assert_eq!(&fast, &expected);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let mut via_str = Vec::new();
                write_str(s, &mut via_str);
                proptest::prop_assert_eq!(via_str, expected);
            }
        }
    }
}
