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
