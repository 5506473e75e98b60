//! The Forward protocol as pure functions over bytes: finding message boundaries in a stream,
//! decoding Message / Forward / PackedForward / CompressedPackedForward messages into events
//! that keep each record as the msgpack bytes it arrived in. No I/O, no logging.

pub mod encode;
pub mod forward;
pub mod msgpack;
#[cfg(test)]
mod tests;

pub use forward::{
    DecodeError, DecodeOptions, Decoder, InvalidEvent, Message, Mode, decode_message,
};

use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

/// Event time with nanoseconds, as Forward's EventTime extension carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    pub secs: i64,
    pub nanos: u32,
}

impl EventTime {
    pub fn new(secs: i64, nanos: u32) -> Self {
        Self { secs, nanos }
    }

    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::new(since.as_secs() as i64, since.subsec_nanos())
    }

    /// A float time as some clients send it; `None` for NaN, infinities and out-of-range values.
    pub fn from_f64(secs: f64) -> Option<Self> {
        if !secs.is_finite() || secs.abs() > 1e15 {
            return None;
        }
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
        Some(Self::new(whole as i64, nanos))
    }

    pub fn as_f64(self) -> f64 {
        self.secs as f64 + f64::from(self.nanos) / 1e9
    }

    pub fn is_zero(self) -> bool {
        self.secs == 0 && self.nanos == 0
    }
}

/// One event: its time and its record, a msgpack map kept as the bytes it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: EventTime,
    pub record: Bytes,
}

/// `record` with `key` set to the string `value` (replacing an existing `key`), as fluentd's
/// `record[key] = value`. Copies the record; used only where a setting asks for it.
pub fn set_field(record: &[u8], key: &str, value: &str) -> Result<Bytes, msgpack::MsgpackError> {
    let mut cur = msgpack::Cursor::new(record);
    let msgpack::Head::Map(pairs) = cur.head()? else {
        return Err(msgpack::MsgpackError::Truncated(0));
    };
    let mut body = Vec::with_capacity(record.len() + key.len() + value.len() + 8);
    let mut kept = 0u32;
    for _ in 0..pairs {
        let key_range = cur.skip_value(msgpack::DEFAULT_MAX_DEPTH)?;
        let value_range = cur.skip_value(msgpack::DEFAULT_MAX_DEPTH)?;
        if is_str(&record[key_range.clone()], key) {
            continue;
        }
        body.extend_from_slice(&record[key_range.start..value_range.end]);
        kept += 1;
    }
    let mut out = Vec::with_capacity(body.len() + key.len() + value.len() + 16);
    msgpack::write_map_len(&mut out, kept + 1);
    out.extend_from_slice(&body);
    msgpack::write_str(&mut out, key);
    msgpack::write_str(&mut out, value);
    Ok(Bytes::from(out))
}

/// Whether `encoded` is the msgpack string `s`.
fn is_str(encoded: &[u8], s: &str) -> bool {
    let mut expected = Vec::with_capacity(s.len() + 5);
    msgpack::write_str(&mut expected, s);
    encoded == expected.as_slice()
}
