//! The protobuf `Encoder`: rows written from msgpack straight to proto2 wire format against the
//! descriptor `descriptor.rs` builds (field number = column position + 1), as `convert.rs`
//! decides each value. No value tree, no prost message per row. Must not decide conversions
//! (the converter does); it only puts each `Cell` in the column's wire type.
//!
//! Wire format: https://protobuf.dev/programming-guides/encoding/. Column types as BigQuery's
//! "Supported protocol buffer data types": TIMESTAMP int64 microseconds, DATE int32 days,
//! TIME and DATETIME canonical text, NUMERIC / BIGNUMERIC text, JSON text.

use super::descriptor::proto_type;
use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH};
use crate::format::json::{self, Extra, Full, Room};
use crate::output::bigquery::convert::{
    Cell, Conversion, Encoder, RowConverter, RowError, Stop, Target, civil_from_days,
};
use crate::output::bigquery::schema::{Field, FieldType, Schema};
use base64::Engine;
use bq_storage_proto::prost_types::field_descriptor_proto::Type;

/// 0001-01-01 00:00:00 and 9999-12-31 23:59:59.999999 UTC in microseconds: TIMESTAMP's range.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// DATE's range in days since 1970-01-01 (0001-01-01 ..= 9999-12-31).
const MIN_DAYS: i64 = -719_162;
const MAX_DAYS: i64 = 2_932_896;

/// The reason of a row with a key no column takes.
pub const UNKNOWN_FIELD: &str = "no such field in the table's schema";

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// What the encoder keeps per top-level key: the field number (0: no column takes it) and
/// the name, for the error of an unknown key.
pub struct ProtoKey {
    number: u32,
    name: Box<str>,
}

/// Writes rows of one table as serialized proto messages.
pub struct ProtoRowWriter<'a> {
    converter: RowConverter<'a, ProtoKey>,
    state: State,
}

/// The encoder's reused buffers.
#[derive(Default)]
struct State {
    /// Where each open nested message's content began.
    frames: Vec<usize>,
    /// The field number of each open REPEATED field.
    arrays: Vec<u32>,
    /// The name of the last key no column takes.
    unknown: String,
    scratch: Vec<u8>,
    ignore_unknown: bool,
}

impl<'a> ProtoRowWriter<'a> {
    /// `ignore_unknown`: keys no column takes are left out (insertAll's `ignore_unknown_values`);
    /// otherwise they make the row an error, as BigQuery's "no such field".
    pub fn new(schema: &'a Schema, conversion: Conversion, ignore_unknown: bool) -> Self {
        Self {
            converter: RowConverter::new(schema, conversion),
            state: State {
                ignore_unknown,
                ..State::default()
            },
        }
    }

    /// Keys the schema lacks are left out when null, `[]` or `{}` (schema evolution: such a
    /// value makes no column).
    pub fn drop_untyped_unknown(&mut self) {
        self.converter.drop_untyped_unknown(true);
    }

    /// One row's message appended to `out`; on error `out` is left as it was.
    pub fn write(
        &mut self,
        record: &[u8],
        extras: &[(&str, Extra<'_>)],
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let start = out.len();
        // Room made ahead for the usual row (protobuf is rarely larger than its msgpack); a
        // row that needs more is written again into twice the room, as the JSON rows are.
        let mut room = record.len() * 2 + 64 * extras.len() + 64;
        loop {
            out.resize(start + room, 0);
            self.state.frames.clear();
            self.state.arrays.clear();
            let mut enc = ProtoEncoder {
                out: Room::new(&mut out[start..]),
                number: 0,
                state: &mut self.state,
            };
            match self.converter.convert(record, extras, &mut enc) {
                Ok(()) => {
                    let written = enc.out.len();
                    out.truncate(start + written);
                    return Ok(());
                }
                Err(Stop::Full) => room *= 2,
                Err(Stop::Row(e)) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
    }
}

/// Writes one row's message into room made ahead (`Room`: its position stays in registers;
/// pushing to a `Vec` loaded and stored its length for every byte of every tag).
struct ProtoEncoder<'o, 's> {
    out: Room<'o>,
    /// The field number of the next value; 0 after a key no column takes.
    number: u32,
    state: &'s mut State,
}

#[inline(always)]
fn varint(out: &mut Room<'_>, v: u64) -> Result<(), Full> {
    if v < 0x80 {
        return out.byte(v as u8);
    }
    let mut bytes = [0u8; 10];
    out.bytes(varint_bytes(v, &mut bytes))
}

/// `v` as a varint in `bytes`: the bytes it takes.
fn varint_bytes(v: u64, bytes: &mut [u8; 10]) -> &[u8] {
    let mut free = &mut bytes[..];
    bq_storage_proto::prost::encoding::encode_varint(v, &mut free);
    let used = 10 - free.len();
    &bytes[..used]
}

impl ProtoEncoder<'_, '_> {
    #[inline(always)]
    fn tag(&mut self, wire: u32) -> Result<(), Full> {
        varint(&mut self.out, u64::from(self.number << 3 | wire))
    }

    #[inline(always)]
    fn int(&mut self, n: i64) -> Result<(), Full> {
        self.tag(VARINT)?;
        varint(&mut self.out, n as u64)
    }

    #[inline(always)]
    fn double(&mut self, f: f64) -> Result<(), Full> {
        self.tag(FIXED64)?;
        self.out.bytes(&f.to_le_bytes())
    }

    #[inline(always)]
    fn len_delimited(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.tag(LEN)?;
        varint(&mut self.out, bytes.len() as u64)?;
        self.out.bytes(bytes)
    }

    /// A proto `string` must be UTF-8: a record's invalid bytes are replaced, as the JSON
    /// writer does. The check is simdutf8's (SIMD) from 64 bytes; below that simdutf8 hands
    /// over to std's `from_utf8` (7 % of a Storage Write profile, most values being short), so
    /// short values are first checked for ASCII a word at a time.
    #[inline(always)]
    fn string(&mut self, s: &[u8]) -> Result<(), Full> {
        let valid = if s.len() < 64 {
            s.is_ascii() || std::str::from_utf8(s).is_ok()
        } else {
            simdutf8::basic::from_utf8(s).is_ok()
        };
        if valid {
            self.len_delimited(s)
        } else {
            let text = String::from_utf8_lossy(s).into_owned();
            self.len_delimited(text.as_bytes())
        }
    }

    /// What `write` put in the scratch buffer, as a length-delimited value.
    fn via(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), RowError>,
    ) -> Result<(), Stop> {
        let mut scratch = std::mem::take(&mut self.state.scratch);
        scratch.clear();
        let written = write(&mut scratch);
        let put = match written {
            Ok(()) => self.string(&scratch),
            Err(_) => Ok(()),
        };
        self.state.scratch = scratch;
        written?;
        Ok(put?)
    }

    #[cold]
    fn value_slow(&mut self, field: &Field, cell: Cell<'_>) -> Result<(), Stop> {
        let ty = field.field_type;
        match (proto_type(ty), cell) {
            (_, Cell::Null) => {}
            (Type::Bool, Cell::Bool(b)) => self.int(i64::from(b))?,
            (Type::Double, Cell::Int(n)) => self.double(n as f64)?,
            (Type::Double, Cell::UInt(n)) => self.double(n as f64)?,
            (Type::Double, Cell::Float(f)) => self.double(f)?,
            (Type::Bytes, Cell::Bytes(b)) => self.len_delimited(b)?,
            (Type::Bytes, Cell::Base64 { text, .. }) => {
                let decoded = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
                    .decode(text)
                    .map_err(|e| RowError::leaf(format!("BYTES value is not base64: {e}")))?;
                self.len_delimited(&decoded)?;
            }
            (Type::Int64, _) if ty == FieldType::Timestamp => {
                let micros = timestamp_micros(cell)?;
                self.int(micros)?;
            }
            (Type::Int64, Cell::Int(n)) => self.int(n)?,
            (Type::Int32, _) => {
                let days = date_days(cell)?;
                self.int(days)?;
            }
            (Type::String, _) => self.text(ty, cell)?,
            (_, other) => return Err(wrong(ty, other)),
        }
        Ok(())
    }

    /// The columns written as text.
    fn text(&mut self, ty: FieldType, cell: Cell<'_>) -> Result<(), Stop> {
        match (ty, cell) {
            (FieldType::Time | FieldType::DateTime, _) => self.via(|v| civil_text(ty, cell, v)),
            (_, Cell::Str(s)) => Ok(self.string(s)?),
            (_, Cell::Text(t)) => Ok(self.len_delimited(t.as_bytes())?),
            (FieldType::Numeric | FieldType::BigNumeric, Cell::Decimal(s)) => {
                Ok(self.len_delimited(s)?)
            }
            (FieldType::Numeric | FieldType::BigNumeric, Cell::Int(n)) => {
                Ok(self.len_delimited(itoa::Buffer::new().format(n).as_bytes())?)
            }
            (FieldType::Numeric | FieldType::BigNumeric, Cell::UInt(n)) => {
                Ok(self.len_delimited(itoa::Buffer::new().format(n).as_bytes())?)
            }
            // Rust's `Display` of a float is plain decimal (no exponent), NUMERIC's text form.
            (FieldType::Numeric | FieldType::BigNumeric, Cell::Float(f)) => self.via(|v| {
                use std::io::Write as _;
                let _ = write!(v, "{f}");
                Ok(())
            }),
            (FieldType::Json, Cell::Raw(raw)) => self.via(|v| {
                json::write_value(&mut Cursor::new(raw), v, DEFAULT_MAX_DEPTH)
                    .map_err(RowError::from)
            }),
            (_, other) => Err(wrong(ty, other)),
        }
    }
}

#[cold]
fn wrong(ty: FieldType, cell: Cell<'_>) -> Stop {
    let shown = match cell {
        Cell::Str(s) | Cell::Civil { text: s, .. } => {
            format!("string {:?}", String::from_utf8_lossy(s))
        }
        Cell::BigInt(digits) => format!("integer {digits}"),
        Cell::UInt(n) => format!("integer {n}"),
        Cell::Raw(_) => "a value of another type".to_owned(),
        other => format!("{other:?}"),
    };
    Stop::Row(RowError::leaf(format!(
        "cannot write {shown} as {} (out of range or not of its form)",
        ty.as_str()
    )))
}

impl Encoder for ProtoEncoder<'_, '_> {
    type Key = ProtoKey;

    fn make_key(&self, name: &[u8], target: Target<'_>) -> ProtoKey {
        ProtoKey {
            number: target.field.map_or(0, |(i, _)| i as u32 + 1),
            name: String::from_utf8_lossy(name).into(),
        }
    }

    #[inline(always)]
    fn begin_row(&mut self) -> Result<(), Stop> {
        Ok(())
    }

    #[inline(always)]
    fn end_row(&mut self) -> Result<(), Stop> {
        Ok(())
    }

    #[inline(always)]
    fn key(&mut self, key: &ProtoKey) -> Result<(), Stop> {
        self.number = key.number;
        if key.number == 0 {
            self.state.unknown.clear();
            self.state.unknown.push_str(&key.name);
        }
        Ok(())
    }

    fn nested_key(&mut self, name: &[u8], target: Target<'_>) -> Result<(), Stop> {
        self.number = target.field.map_or(0, |(i, _)| i as u32 + 1);
        if self.number == 0 {
            self.state.unknown = String::from_utf8_lossy(name).into_owned();
        }
        Ok(())
    }

    fn raw_key(&mut self, _key: &[u8]) -> Result<(), Stop> {
        self.number = 0;
        self.state.unknown = "(a key that is not a string)".into();
        Ok(())
    }

    #[inline(always)]
    fn value(&mut self, field: &Field, cell: Cell<'_>) -> Result<(), Stop> {
        self.value_slow(field, cell)
    }

    #[inline(always)]
    fn str_value(&mut self, _field: &Field, s: &[u8]) -> Result<(), Stop> {
        Ok(self.string(s)?)
    }

    #[inline(always)]
    fn int_value(&mut self, _field: &Field, n: i64) -> Result<(), Stop> {
        Ok(self.int(n)?)
    }

    #[inline(always)]
    fn float_value(&mut self, _field: &Field, f: f64) -> Result<(), Stop> {
        Ok(self.double(f)?)
    }

    #[inline(always)]
    fn seconds_value(&mut self, _field: &Field, secs: i64, nanos: u32) -> Result<(), Stop> {
        let micros = seconds_micros(secs, nanos)?;
        Ok(self.int(micros)?)
    }

    fn unknown(&mut self, _value: &[u8]) -> Result<(), Stop> {
        if self.state.ignore_unknown {
            return Ok(());
        }
        Err(Stop::Row(
            RowError::leaf(UNKNOWN_FIELD).under(&self.state.unknown),
        ))
    }

    fn begin_record(&mut self, _field: &Field) -> Result<(), Stop> {
        self.tag(LEN)?;
        self.state.frames.push(self.out.len());
        Ok(())
    }

    /// The message's length goes before its content, now that it is known.
    fn end_record(&mut self, _field: &Field) -> Result<(), Stop> {
        let Some(start) = self.state.frames.pop() else {
            return Err(Stop::Row(RowError::leaf("unbalanced record")));
        };
        let mut len = [0u8; 10];
        let len = varint_bytes((self.out.len() - start) as u64, &mut len);
        Ok(self.out.insert(start, len)?)
    }

    fn begin_array(&mut self, _field: &Field) -> Result<(), Stop> {
        self.state.arrays.push(self.number);
        Ok(())
    }

    #[inline(always)]
    fn element(&mut self, _field: &Field) -> Result<(), Stop> {
        self.number = self.state.arrays.last().copied().unwrap_or(0);
        Ok(())
    }

    fn end_array(&mut self, _field: &Field) -> Result<(), Stop> {
        self.state.arrays.pop();
        Ok(())
    }
}

#[cold]
fn out_of_range(what: &str) -> Stop {
    Stop::Row(RowError::leaf(format!(
        "{what} is out of TIMESTAMP's range (0001-01-01 to 9999-12-31)"
    )))
}

fn seconds_micros(secs: i64, nanos: u32) -> Result<i64, Stop> {
    secs.checked_mul(1_000_000)
        .and_then(|m| m.checked_add(i64::from(nanos.min(999_999_999) / 1000)))
        .filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m))
        .ok_or_else(|| out_of_range(&format!("{secs} seconds")))
}

/// A TIMESTAMP cell as microseconds since the epoch (numbers are epoch seconds).
fn timestamp_micros(cell: Cell<'_>) -> Result<i64, Stop> {
    match cell {
        Cell::Int(secs) => seconds_micros(secs, 0),
        Cell::Float(f) => {
            let micros = (f * 1e6).round();
            if f.is_finite() && (MIN_MICROS as f64..=MAX_MICROS as f64).contains(&micros) {
                Ok(micros as i64)
            } else {
                Err(out_of_range(&format!("{f} seconds")))
            }
        }
        Cell::Seconds { secs, nanos } => seconds_micros(secs, nanos),
        Cell::EventTime { secs, nanos } => seconds_micros(i64::from(secs), nanos),
        Cell::Civil { text, .. } | Cell::Str(text) => civil_micros(text).ok_or_else(|| {
            Stop::Row(RowError::leaf(format!(
                "cannot convert string {:?} to TIMESTAMP",
                String::from_utf8_lossy(text)
            )))
        }),
        other => Err(wrong(FieldType::Timestamp, other)),
    }
}

/// A DATE cell as days since 1970-01-01.
fn date_days(cell: Cell<'_>) -> Result<i64, Stop> {
    let days = match cell {
        Cell::EventTime { secs, .. } => Some(i64::from(secs) / 86_400),
        Cell::Civil { text, .. } => parse_civil(text).map(|c| c.days),
        other => return Err(wrong(FieldType::Date, other)),
    };
    days.filter(|d| (MIN_DAYS..=MAX_DAYS).contains(d))
        .ok_or_else(|| wrong(FieldType::Date, cell))
}

/// TIME and DATETIME in BigQuery's canonical text (`YYYY-MM-DD HH:MM:SS.ffffff`).
fn civil_text(ty: FieldType, cell: Cell<'_>, out: &mut Vec<u8>) -> Result<(), RowError> {
    let civil = match cell {
        Cell::EventTime { secs, nanos } => Civil {
            days: i64::from(secs) / 86_400,
            second_of_day: i64::from(secs) % 86_400,
            micros: nanos.min(999_999_999) / 1000,
            offset: Some(0),
        },
        Cell::Civil { text, .. } if ty == FieldType::Time => std::str::from_utf8(text)
            .ok()
            .and_then(parse_clock)
            .map(|(second_of_day, micros, _)| Civil {
                days: 0,
                second_of_day,
                micros,
                offset: Some(0),
            })
            .ok_or_else(|| match wrong(ty, cell) {
                Stop::Row(e) => e,
                Stop::Full => RowError::leaf("cannot convert"),
            })?,
        Cell::Civil { text, .. } => parse_civil(text).ok_or_else(|| match wrong(ty, cell) {
            Stop::Row(e) => e,
            Stop::Full => RowError::leaf("cannot convert"),
        })?,
        other => {
            return Err(match wrong(ty, other) {
                Stop::Row(e) => e,
                Stop::Full => RowError::leaf("cannot convert"),
            });
        }
    };
    use std::io::Write as _;
    let sod = civil.second_of_day;
    if ty == FieldType::DateTime {
        let (y, m, d) = civil_from_days(civil.days);
        let _ = write!(out, "{y:04}-{m:02}-{d:02} ");
    }
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        civil.micros
    );
    Ok(())
}

/// A date and time of day read from text, and its zone's offset when it has one.
struct Civil {
    days: i64,
    /// 0..=86_400 (a leap second 60 rolls over into the next minute).
    second_of_day: i64,
    micros: u32,
    /// Seconds east of UTC; `None` for a zone name that needs the date to resolve.
    offset: Option<i64>,
}

/// `YYYY-[M]M-[D]D[( |T)[H]H:[M]M:[S]S[.F...]][zone]`, the shapes `convert::shape` accepts; a
/// date that does not exist (February 30) is `None`.
fn parse_civil(s: &[u8]) -> Option<Civil> {
    let text = std::str::from_utf8(s).ok()?;
    let (date, rest) = split_digits_run(text, |c| c.is_ascii_digit() || c == '-');
    let mut parts = date.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let date = chrono::NaiveDate::from_ymd_opt(year, month, day)?;
    let days = date
        .signed_duration_since(chrono::NaiveDate::default())
        .num_days();
    let mut civil = Civil {
        days,
        second_of_day: 0,
        micros: 0,
        offset: None,
    };
    let rest = match rest.strip_prefix([' ', 'T', 't']) {
        Some(time) if time.starts_with(|c: char| c.is_ascii_digit()) => {
            let (second_of_day, micros, zone) = parse_clock(time)?;
            civil.second_of_day = second_of_day;
            civil.micros = micros;
            zone
        }
        _ => rest,
    };
    civil.offset = zone_offset(rest, civil.days, civil.second_of_day)?;
    Some(civil)
}

/// `[H]H:[M]M:[S]S[.F...]` at the start of `s`: the second of the day, the microseconds
/// (digits beyond them cut, as BigQuery keeps microseconds) and what follows.
fn parse_clock(s: &str) -> Option<(i64, u32, &str)> {
    let (clock, rest) = split_digits_run(s, |c| c.is_ascii_digit() || c == ':' || c == '.');
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next()?.parse().ok()?;
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(6)
        .collect();
    Some((h * 3600 + m * 60 + sec, digits.parse().ok()?, rest))
}

/// The leading run of `s` whose characters satisfy `keep`, and the rest.
fn split_digits_run(s: &str, keep: impl Fn(char) -> bool) -> (&str, &str) {
    let end = s.find(|c: char| !keep(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// The offset (seconds east of UTC) of a zone after a timestamp: none written (UTC), `Z`,
/// `UTC`, `[+-]H[H][[:]MM]`, or a tz database name resolved at that local time.
fn zone_offset(zone: &str, days: i64, second_of_day: i64) -> Option<Option<i64>> {
    let zone = zone.strip_prefix(' ').unwrap_or(zone);
    if zone.is_empty() || zone.eq_ignore_ascii_case("z") || zone.eq_ignore_ascii_case("utc") {
        return Some(Some(0));
    }
    if let Some(sign) = zone.strip_prefix(['+', '-']).map(|_| &zone[..1]) {
        let body = &zone[1..];
        let (h, m) = match body.split_once(':') {
            Some((h, m)) => (h, m),
            None if body.len() > 2 => body.split_at(body.len() - 2),
            None => (body, "0"),
        };
        let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
        return Some(Some(if sign == "-" { -secs } else { secs }));
    }
    let tz: chrono_tz::Tz = zone.parse().ok()?;
    use chrono::{Offset, TimeZone};
    let local = chrono::NaiveDate::default()
        .checked_add_signed(chrono::Duration::days(days))?
        .and_hms_opt(0, 0, 0)?
        .checked_add_signed(chrono::Duration::seconds(second_of_day))?;
    let offset = tz.offset_from_local_datetime(&local).earliest()?;
    Some(Some(i64::from(offset.fix().local_minus_utc())))
}

/// A TIMESTAMP string as microseconds since the epoch.
fn civil_micros(s: &[u8]) -> Option<i64> {
    let civil = parse_civil(s)?;
    let local = civil
        .days
        .checked_mul(86_400)?
        .checked_add(civil.second_of_day)?;
    let utc = local - civil.offset.unwrap_or(0);
    utc.checked_mul(1_000_000)?
        .checked_add(i64::from(civil.micros))
        .filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::json::Extra;
    use bq_storage_proto::prost::Message;
    use serde_json::json;

    fn schema(fields: serde_json::Value) -> Schema {
        Schema::from_json(&fields).unwrap()
    }

    fn encode(
        schema: &Schema,
        record: serde_json::Value,
        conversion: Conversion,
    ) -> Result<Vec<u8>, RowError> {
        let mut writer = ProtoRowWriter::new(schema, conversion, false);
        let mut out = Vec::new();
        writer.write(&rmp_serde::to_vec(&record).unwrap(), &[], &mut out)?;
        Ok(out)
    }

    /// A message prost decodes for the checks: the test's own view of the descriptor.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Row {
        #[prost(string, optional, tag = "1")]
        s: Option<String>,
        #[prost(int64, optional, tag = "2")]
        i: Option<i64>,
        #[prost(double, optional, tag = "3")]
        f: Option<f64>,
        #[prost(bool, optional, tag = "4")]
        b: Option<bool>,
        #[prost(int64, optional, tag = "5")]
        ts: Option<i64>,
        #[prost(int32, optional, tag = "6")]
        d: Option<i32>,
        #[prost(string, optional, tag = "7")]
        t: Option<String>,
        #[prost(string, optional, tag = "8")]
        dt: Option<String>,
        #[prost(string, optional, tag = "9")]
        n: Option<String>,
        #[prost(bytes = "vec", optional, tag = "10")]
        by: Option<Vec<u8>>,
        #[prost(string, optional, tag = "11")]
        j: Option<String>,
        #[prost(string, repeated, tag = "12")]
        tags: Vec<String>,
        #[prost(message, repeated, tag = "13")]
        r: Vec<Inner>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Inner {
        #[prost(int64, optional, tag = "1")]
        k: Option<i64>,
        #[prost(message, optional, tag = "2")]
        deep: Option<Deep>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Deep {
        #[prost(string, optional, tag = "1")]
        v: Option<String>,
    }

    fn all_types() -> Schema {
        schema(json!([
            {"name": "s", "type": "STRING"},
            {"name": "i", "type": "INTEGER"},
            {"name": "f", "type": "FLOAT"},
            {"name": "b", "type": "BOOLEAN"},
            {"name": "ts", "type": "TIMESTAMP"},
            {"name": "d", "type": "DATE"},
            {"name": "t", "type": "TIME"},
            {"name": "dt", "type": "DATETIME"},
            {"name": "n", "type": "NUMERIC"},
            {"name": "by", "type": "BYTES"},
            {"name": "j", "type": "JSON"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "r", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "k", "type": "INTEGER"},
                {"name": "deep", "type": "RECORD", "fields": [{"name": "v", "type": "STRING"}]}
            ]}
        ]))
    }

    #[test]
    fn every_type_is_written_in_its_wire_type() {
        let schema = all_types();
        let bytes = encode(
            &schema,
            json!({
                "s": "héllo", "i": -42, "f": 1.5, "b": true,
                "ts": "2024-02-29 12:34:56.123456789+01:00", "d": "2024-2-29",
                "t": "1:02:03.5", "dt": "2024-02-29T23:59:59", "n": "123.456",
                "by": "aGk", "j": {"a": [1, null]}, "tags": ["x", null, "y"],
                "r": [{"k": 1, "deep": {"v": "z"}}, {"k": 2}]
            }),
            Conversion::Strict,
        )
        .unwrap();
        let row = Row::decode(bytes.as_slice()).unwrap();
        assert_eq!(row.s.as_deref(), Some("héllo"));
        assert_eq!(row.i, Some(-42));
        assert_eq!(row.f, Some(1.5));
        assert_eq!(row.b, Some(true));
        // 2024-02-29T11:34:56.123456Z
        assert_eq!(row.ts, Some(1_709_206_496_123_456));
        assert_eq!(row.d, Some(19_782));
        assert_eq!(row.t.as_deref(), Some("01:02:03.500000"));
        assert_eq!(row.dt.as_deref(), Some("2024-02-29 23:59:59.000000"));
        assert_eq!(row.n.as_deref(), Some("123.456"));
        assert_eq!(row.by.as_deref(), Some(&b"hi"[..]));
        assert_eq!(row.j.as_deref(), Some(r#"{"a":[1,null]}"#));
        assert_eq!(row.tags, ["x", "y"]);
        assert_eq!(row.r.len(), 2);
        assert_eq!(row.r[0].k, Some(1));
        assert_eq!(
            row.r[0].deep.as_ref().and_then(|d| d.v.as_deref()),
            Some("z")
        );
        assert_eq!(
            row.r[1],
            Inner {
                k: Some(2),
                deep: None
            }
        );
    }

    #[test]
    fn timestamps_from_numbers_event_times_and_zones() {
        let schema = all_types();
        let ts = |v: serde_json::Value| {
            Row::decode(
                encode(&schema, json!({"ts": v}), Conversion::Strict)
                    .unwrap()
                    .as_slice(),
            )
            .unwrap()
            .ts
        };
        assert_eq!(ts(json!(1)), Some(1_000_000));
        assert_eq!(ts(json!(1.25)), Some(1_250_000));
        assert_eq!(ts(json!("1700000000")), Some(1_700_000_000_000_000));
        assert_eq!(ts(json!("2024-01-01")), Some(1_704_067_200_000_000));
        assert_eq!(
            ts(json!("2024-01-01 00:00:00 UTC")),
            Some(1_704_067_200_000_000)
        );
        assert_eq!(
            ts(json!("2024-01-01T01:00:00Z")),
            Some(1_704_070_800_000_000)
        );
        assert_eq!(
            ts(json!("2024-01-01 00:00:00-0130")),
            Some(1_704_072_600_000_000)
        );
        // New York is UTC-5 in January.
        assert_eq!(
            ts(json!("2024-01-01 00:00:00 America/New_York")),
            Some(1_704_085_200_000_000)
        );
        let err = encode(&schema, json!({"ts": "10000-01-01"}), Conversion::Strict).unwrap_err();
        assert_eq!(err.field, "ts");
    }

    #[test]
    fn invalid_utf8_in_a_string_is_replaced_and_valid_text_kept_whole() {
        let schema = all_types();
        let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, false);
        // {"s": <bytes>}: a fixmap of one entry, a fixstr key, a str8 value.
        let mut row = |value: &[u8]| {
            let mut record = vec![0x81, 0xa1, b's', 0xd9, value.len() as u8];
            record.extend_from_slice(value);
            let mut out = Vec::new();
            writer.write(&record, &[], &mut out).unwrap();
            Row::decode(out.as_slice()).unwrap().s
        };
        let long = "héllo wörld, ".repeat(8);
        assert_eq!(row(long.as_bytes()).as_deref(), Some(long.as_str()));
        assert_eq!(
            row(b"ok \xff\xfe end").as_deref(),
            Some("ok \u{fffd}\u{fffd} end")
        );
    }

    #[test]
    fn an_injected_time_is_exact_microseconds() {
        let schema = all_types();
        let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, false);
        let mut out = Vec::new();
        let time = crate::event::EventTime {
            secs: 1_700_000_000,
            nanos: 123_456_789,
        };
        let record = rmp_serde::to_vec(&json!({})).unwrap();
        writer
            .write(&record, &[("ts", Extra::Time(time))], &mut out)
            .unwrap();
        assert_eq!(
            Row::decode(out.as_slice()).unwrap().ts,
            Some(1_700_000_000_123_456)
        );
    }

    #[test]
    fn unknown_keys_are_row_errors_unless_ignored() {
        let schema = all_types();
        let err = encode(&schema, json!({"s": "a", "nope": 1}), Conversion::Strict).unwrap_err();
        assert_eq!(err.field, "nope");
        let err = encode(
            &schema,
            json!({"r": [{"k": 1, "zz": 2}]}),
            Conversion::Strict,
        )
        .unwrap_err();
        assert_eq!(err.field, "r[0].zz");
        let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, true);
        let mut out = Vec::new();
        let record = rmp_serde::to_vec(&json!({"s": "a", "nope": 1})).unwrap();
        writer.write(&record, &[], &mut out).unwrap();
        assert_eq!(Row::decode(out.as_slice()).unwrap().s.as_deref(), Some("a"));
    }

    #[test]
    fn a_failed_row_leaves_the_buffer_as_it_was_and_nulls_are_absent() {
        let schema = all_types();
        let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, false);
        let mut out = b"kept".to_vec();
        let bad = rmp_serde::to_vec(&json!({"s": "x", "r": [{"k": "not a number"}]})).unwrap();
        assert!(writer.write(&bad, &[], &mut out).is_err());
        assert_eq!(out, b"kept");
        let nulls = rmp_serde::to_vec(&json!({"s": null, "i": null})).unwrap();
        out.clear();
        writer.write(&nulls, &[], &mut out).unwrap();
        assert!(out.is_empty());
        let bad_date = encode(&schema, json!({"d": "2023-02-30"}), Conversion::Strict).unwrap_err();
        assert_eq!(bad_date.field, "d");
    }

    /// Rows are written into room sized from the record; a row far larger than its record
    /// (small integers as TIMESTAMP microseconds) is written again into more room, whole.
    #[test]
    fn rows_larger_than_their_first_room_are_whole() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Times {
            #[prost(int64, repeated, packed = "false", tag = "1")]
            ts: Vec<i64>,
            #[prost(message, optional, tag = "2")]
            r: Option<Deep>,
        }
        let schema = schema(json!([
            {"name": "ts", "type": "TIMESTAMP", "mode": "REPEATED"},
            {"name": "r", "type": "RECORD", "fields": [{"name": "v", "type": "STRING"}]}
        ]));
        let ones = vec![1; 300];
        let bytes = encode(
            &schema,
            json!({"ts": ones, "r": {"v": "x".repeat(200)}}),
            Conversion::Strict,
        )
        .unwrap();
        let row = Times::decode(bytes.as_slice()).unwrap();
        assert_eq!(row.ts, vec![1_000_000; 300]);
        assert_eq!(row.r.and_then(|r| r.v), Some("x".repeat(200)));
        // Appended after what the buffer held, which stays as it was.
        let mut writer = ProtoRowWriter::new(&schema, Conversion::Strict, false);
        let mut out = b"kept".to_vec();
        let record = rmp_serde::to_vec(&json!({"ts": vec![1; 300]})).unwrap();
        writer.write(&record, &[], &mut out).unwrap();
        assert_eq!(&out[..4], b"kept");
        assert_eq!(Times::decode(&out[4..]).unwrap().ts.len(), 300);
    }

    #[test]
    fn compat_coercions_reach_the_wire() {
        let schema = all_types();
        let row = Row::decode(
            encode(
                &schema,
                json!({"s": 12, "i": "7abc", "b": "no", "n": 1.5}),
                Conversion::Compat,
            )
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        assert_eq!(row.s.as_deref(), Some("12"));
        assert_eq!(row.i, Some(7));
        assert_eq!(row.b, Some(true));
        assert_eq!(row.n.as_deref(), Some("1.5"));
    }
}
