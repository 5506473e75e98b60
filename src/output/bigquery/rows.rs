//! The JSON encoder of rows: insertAll's `rows[].json` objects (and load jobs' NDJSON lines),
//! written from what `convert` decides straight into the request body. Must not decide what a
//! value becomes (that is `convert`), do I/O or batching.
//!
//! BigQuery reads `rows[].json` as a protobuf `Struct`, whose numbers are doubles
//! (https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll), so integers
//! beyond ±(2^53-1) are sent as decimal strings for INTEGER and NUMERIC columns, as Google's
//! JSON loading page advises ("pass it as a string to avoid data corruption",
//! https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-json).
//!
//! Rows are written through a `Room` (`format/json.rs`): room made ahead at the end of the
//! body and a position held in registers. A row that outgrows its room is written again into
//! twice as much.

pub use super::convert::Conversion;
use super::convert::{
    Cell, Encoder, RowConverter, RowError, Stop, Target, civil_from_days, non_finite_name,
};
use super::schema::{Field, FieldType, Schema};
use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head};
use crate::format::json::{
    self, Extra, Full, Room, write_bytes_as_str, write_finite_f64, write_integer,
};
use base64::Engine;

/// Appends one row object (no insertId wrapper) for `record` (a msgpack map) to `out`, followed
/// by `extras` (injected fields, same semantics as format::json::write_record: an extra replaces
/// a same-named record key). With `schema` None: the plain documented msgpack→JSON mapping
/// (format::json). With a schema: each known field converted per its type and mode (extras
/// too, as the plugin injects before converting); unknown keys passed through unchanged
/// (BigQuery rejects them unless ignoreUnknownValues, as the plugin does). On error `out` is
/// left exactly as it was before the call.
pub fn write_row(
    record: &[u8],
    schema: Option<&Schema>,
    extras: &[(&str, Extra<'_>)],
    conversion: Conversion,
    out: &mut Vec<u8>,
) -> Result<(), RowError> {
    RowWriter::new(schema, conversion).write(record, extras, out)
}

/// `write_row` for many records of one table: the converter remembers, by position, what each
/// top-level key turned out to be and its JSON text (`,"key":`), so records that repeat their
/// keys' order (those of one source nearly always do) skip the schema lookup and the escaping.
pub struct RowWriter<'a> {
    converter: Option<RowConverter<'a, KeyJson>>,
    /// What the less usual values are written into before they are copied into the row.
    scratch: Vec<u8>,
    /// Where each open nested record or array began.
    marks: Vec<usize>,
}

impl<'a> RowWriter<'a> {
    pub fn new(schema: Option<&'a Schema>, conversion: Conversion) -> Self {
        Self {
            converter: schema.map(|s| RowConverter::new(s, conversion)),
            scratch: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// Keys the schema lacks are left out when null, `[]` or `{}` (schema evolution).
    pub fn drop_untyped_unknown(&mut self) {
        if let Some(converter) = &mut self.converter {
            converter.drop_untyped_unknown(true);
        }
    }

    /// One row, as `write_row` writes it. On error `out` is left as it was.
    pub fn write(
        &mut self,
        record: &[u8],
        extras: &[(&str, Extra<'_>)],
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let start = out.len();
        match self.write_at(record, extras, out, start) {
            Ok(end) => {
                out.truncate(end);
                Ok(())
            }
            Err(err) => {
                out.truncate(start);
                Err(err)
            }
        }
    }

    /// One row written into `buf` at `at` (at most `buf.len()`), whose bytes past `at` are
    /// free to overwrite: returns where the row ends, and leaves what lies past it as it
    /// pleases. `buf` only grows (zero-filled) by what the row's room lacks, so a caller that
    /// writes many rows into one buffer and keeps its length (as `load::ndjson` does) fills
    /// each byte with zeros once, not the room of every row.
    pub fn write_at(
        &mut self,
        record: &[u8],
        extras: &[(&str, Extra<'_>)],
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<usize, RowError> {
        let Some(converter) = &mut self.converter else {
            let Head::Map(_) = Cursor::new(record).head()? else {
                return Err(RowError::leaf("record is not a msgpack map"));
            };
            buf.truncate(at);
            json::write_record(record, extras, buf)?;
            return Ok(buf.len());
        };
        // Room for the usual row (JSON is rarely twice its msgpack); a row that needs more is
        // written again into twice the room.
        let mut room = record.len() * 2 + 64 * extras.len() + 64;
        loop {
            if buf.len() < at + room {
                buf.resize(at + room, 0);
            }
            let mut enc = JsonEncoder {
                out: Room::new(&mut buf[at..]),
                open: 0,
                scratch: &mut self.scratch,
                marks: &mut self.marks,
            };
            enc.marks.clear();
            match converter.convert(record, extras, &mut enc) {
                Ok(()) => return Ok(at + enc.out.len()),
                Err(Stop::Full) => room = (buf.len() - at) * 2,
                Err(Stop::Row(err)) => return Err(err),
            }
        }
    }
}

/// A top-level key's JSON (`,"key":`), kept also zero-padded to a fixed width when it fits:
/// one fixed-size copy writes it.
pub struct KeyJson {
    text: Vec<u8>,
    padded: Option<[u8; KeyJson::PADDED]>,
}

impl KeyJson {
    const PADDED: usize = 48;

    fn new(text: Vec<u8>) -> Self {
        let padded = (text.len() <= Self::PADDED).then(|| {
            let mut padded = [0u8; Self::PADDED];
            padded[..text.len()].copy_from_slice(&text);
            padded
        });
        Self { text, padded }
    }

    #[inline(always)]
    fn put(&self, out: &mut Room<'_>) -> Result<(), Full> {
        match &self.padded {
            Some(padded) => out.padded(padded, self.text.len()),
            None => out.bytes(&self.text),
        }
    }
}

/// Writes one row's JSON into `out`. Every member and element is written with a leading
/// comma; the first comma of an object or array becomes its `{` or `[`.
struct JsonEncoder<'r, 's> {
    out: Room<'r>,
    /// Where the row object began.
    open: usize,
    scratch: &'s mut Vec<u8>,
    marks: &'s mut Vec<usize>,
}

impl JsonEncoder<'_, '_> {
    /// What `write` put in the scratch buffer, copied into the row.
    #[inline(always)]
    fn via(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Stop> {
        self.scratch.clear();
        write(self.scratch);
        self.out.bytes(self.scratch)?;
        Ok(())
    }

    /// A string value: straight into the row when it needs no escaping.
    #[inline(always)]
    fn str(&mut self, s: &[u8]) -> Result<(), Stop> {
        if self.out.plain_str(s)? {
            return Ok(());
        }
        self.via(|v| write_bytes_as_str(s, v))
    }

    /// Closes the object or array opened at `mark` with `open` ... `close`.
    fn close(&mut self, mark: usize, open: u8, close: u8) -> Result<(), Stop> {
        if self.out.len() > mark {
            self.out.set(mark, open);
        } else {
            self.out.byte(open)?;
        }
        self.out.byte(close)?;
        Ok(())
    }

    #[cold]
    fn value_slow(&mut self, ty: FieldType, cell: Cell<'_>) -> Result<(), Stop> {
        match cell {
            Cell::Null => self.out.bytes(b"null")?,
            Cell::Bool(b) => self.out.bytes(if b { b"true" } else { b"false" })?,
            Cell::Int(n) if ty == FieldType::Float => self.out.integer(n)?,
            Cell::Int(n) => self.via(|v| write_int(n, v))?,
            Cell::UInt(n) if matches!(ty, FieldType::Float | FieldType::Timestamp) => {
                self.out.integer(n)?
            }
            Cell::UInt(n) => self.via(|v| write_quoted(itoa::Buffer::new().format(n), v))?,
            Cell::BigInt(digits) => self.via(|v| write_quoted(digits, v))?,
            Cell::Float(f) => self.via(|v| write_float(f, v))?,
            Cell::Str(s) => self.str(s)?,
            Cell::Text(t) => self.str(t.as_bytes())?,
            Cell::Bytes(b) => self.via(|v| write_base64(b, v))?,
            Cell::Base64 { text, pad } => self.via(|v| {
                v.push(b'"');
                v.extend_from_slice(text);
                v.extend(std::iter::repeat_n(b'=', pad));
                v.push(b'"');
            })?,
            Cell::Decimal(s) => self.via(|v| write_quoted_ascii(s, v))?,
            Cell::Seconds { secs, nanos } => {
                self.out.integer(secs)?;
                self.out.byte(b'.')?;
                self.out.padded_digits(u64::from(nanos), 9)?;
            }
            Cell::EventTime { secs, nanos } => {
                self.via(|v| write_event_time(ty, secs, nanos, v))?
            }
            // The text has the type's shape: digits, separators and a zone's name, nothing
            // JSON escapes.
            Cell::Civil { text, cut } => {
                self.out.byte(b'"')?;
                match cut {
                    Some((from, to)) => {
                        self.out.bytes(&text[..from])?;
                        self.out.bytes(&text[to..])?;
                    }
                    None => self.out.bytes(text)?,
                }
                self.out.byte(b'"')?;
            }
            Cell::Raw(raw) => {
                self.scratch.clear();
                json::write_value(&mut Cursor::new(raw), self.scratch, DEFAULT_MAX_DEPTH)?;
                self.out.bytes(self.scratch)?;
            }
        }
        Ok(())
    }
}

impl Encoder for JsonEncoder<'_, '_> {
    type Key = KeyJson;

    fn make_key(&self, name: &[u8], _target: Target<'_>) -> KeyJson {
        let mut json = Vec::with_capacity(name.len() + 4);
        json.push(b',');
        write_bytes_as_str(name, &mut json);
        json.push(b':');
        KeyJson::new(json)
    }

    #[inline(always)]
    fn begin_row(&mut self) -> Result<(), Stop> {
        self.open = self.out.len();
        Ok(())
    }

    #[inline(always)]
    fn end_row(&mut self) -> Result<(), Stop> {
        self.close(self.open, b'{', b'}')
    }

    #[inline(always)]
    fn key(&mut self, key: &KeyJson) -> Result<(), Stop> {
        Ok(key.put(&mut self.out)?)
    }

    fn nested_key(&mut self, name: &[u8], _target: Target<'_>) -> Result<(), Stop> {
        self.out.byte(b',')?;
        self.str(name)?;
        Ok(self.out.byte(b':')?)
    }

    fn raw_key(&mut self, key: &[u8]) -> Result<(), Stop> {
        self.out.byte(b',')?;
        self.scratch.clear();
        json::write_key(&mut Cursor::new(key), self.scratch)?;
        self.out.bytes(self.scratch)?;
        Ok(self.out.byte(b':')?)
    }

    /// The usual pairs of a column type and a cell inline; the rest out of line.
    #[inline(always)]
    fn value(&mut self, field: &Field, cell: Cell<'_>) -> Result<(), Stop> {
        const SAFE: i64 = (1 << 53) - 1;
        match (field.field_type, cell) {
            (FieldType::String, Cell::Str(s)) => self.str(s),
            (FieldType::Integer, Cell::Int(n)) if (-SAFE..=SAFE).contains(&n) => {
                Ok(self.out.integer(n)?)
            }
            (FieldType::Float, Cell::Float(f)) if f.is_finite() => Ok(self.out.finite_f64(f)?),
            (ty, cell) => self.value_slow(ty, cell),
        }
    }

    #[inline(always)]
    fn str_value(&mut self, _field: &Field, s: &[u8]) -> Result<(), Stop> {
        self.str(s)
    }

    #[inline(always)]
    fn int_value(&mut self, _field: &Field, n: i64) -> Result<(), Stop> {
        Ok(self.out.integer(n)?)
    }

    #[inline(always)]
    fn float_value(&mut self, _field: &Field, f: f64) -> Result<(), Stop> {
        Ok(self.out.finite_f64(f)?)
    }

    /// Exact decimal seconds, which BigQuery reads as it reads the float.
    #[inline(always)]
    fn seconds_value(&mut self, _field: &Field, secs: i64, nanos: u32) -> Result<(), Stop> {
        self.out.integer(secs)?;
        self.out.byte(b'.')?;
        Ok(self.out.padded_digits(u64::from(nanos), 9)?)
    }

    fn unknown(&mut self, value: &[u8]) -> Result<(), Stop> {
        self.scratch.clear();
        json::write_value(&mut Cursor::new(value), self.scratch, DEFAULT_MAX_DEPTH)?;
        self.out.bytes(self.scratch)?;
        Ok(())
    }

    fn begin_record(&mut self, _field: &Field) -> Result<(), Stop> {
        self.marks.push(self.out.len());
        Ok(())
    }

    fn end_record(&mut self, _field: &Field) -> Result<(), Stop> {
        let mark = self.marks.pop().unwrap_or(0);
        self.close(mark, b'{', b'}')
    }

    fn begin_array(&mut self, _field: &Field) -> Result<(), Stop> {
        self.marks.push(self.out.len());
        Ok(())
    }

    fn element(&mut self, _field: &Field) -> Result<(), Stop> {
        Ok(self.out.byte(b',')?)
    }

    fn end_array(&mut self, _field: &Field) -> Result<(), Stop> {
        let mark = self.marks.pop().unwrap_or(0);
        self.close(mark, b'[', b']')
    }
}

/// Integers within ±(2^53-1) as JSON numbers, others as strings (see the module comment).
fn write_int(n: i64, out: &mut Vec<u8>) {
    const SAFE: i64 = (1 << 53) - 1;
    if (-SAFE..=SAFE).contains(&n) {
        write_integer(n, out);
    } else {
        write_quoted(itoa::Buffer::new().format(n), out);
    }
}

/// FLOAT64's non-finite values as the strings BigQuery accepts for them ("NaN", "Infinity",
/// "-Infinity"; googleapis/google-cloud-go#2408, googleapis/python-bigquery#696).
fn write_float(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        write_finite_f64(f, out);
    } else {
        write_quoted(non_finite_name(f), out);
    }
}

fn write_quoted(s: &str, out: &mut Vec<u8>) {
    write_quoted_ascii(s.as_bytes(), out);
}

/// `s` must need no JSON escaping (callers pass validated ASCII).
fn write_quoted_ascii(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

/// BYTES travel as base64 (BigQuery decodes BYTES from base64 in JSON rows,
/// googleapis/google-cloud-java#1603).
fn write_base64(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let start = out.len();
    let encoded_len = base64::encoded_len(b.len(), true).unwrap_or(0);
    out.resize(start + encoded_len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(b, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

fn pad(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

/// TIMESTAMP `YYYY-MM-DD HH:MM:SS.ffffff UTC`, DATETIME without the zone, DATE, TIME.
fn write_event_time(ty: FieldType, secs: u32, nanos: u32, out: &mut Vec<u8>) {
    let secs = i64::from(secs);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let sod = (secs % 86_400) as u32;
    out.push(b'"');
    if ty != FieldType::Time {
        pad(out, year as u32, 4);
        out.push(b'-');
        pad(out, month, 2);
        out.push(b'-');
        pad(out, day, 2);
        if ty != FieldType::Date {
            out.push(b' ');
        }
    }
    if ty != FieldType::Date {
        pad(out, sod / 3600, 2);
        out.push(b':');
        pad(out, sod / 60 % 60, 2);
        out.push(b':');
        pad(out, sod % 60, 2);
        out.push(b'.');
        pad(out, nanos.min(999_999_999) / 1000, 6);
        if ty == FieldType::Timestamp {
            out.extend_from_slice(b" UTC");
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    // ---- msgpack builders for values serde_json cannot express ----

    fn v(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec(value).unwrap()
    }

    fn bin(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc4, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn etime(secs: u32, nanos: u32) -> Vec<u8> {
        let mut out = vec![0xd7, 0x00];
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&nanos.to_be_bytes());
        out
    }

    fn f64v(f: f64) -> Vec<u8> {
        let mut out = vec![0xcb];
        out.extend_from_slice(&f.to_bits().to_be_bytes());
        out
    }

    fn u64v(n: u64) -> Vec<u8> {
        let mut out = vec![0xcf];
        out.extend_from_slice(&n.to_be_bytes());
        out
    }

    /// A map of `(key, msgpack value)` pairs.
    fn map(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0x80 | pairs.len() as u8];
        for (key, value) in pairs {
            out.extend(v(&json!(key)));
            out.extend_from_slice(value);
        }
        out
    }

    fn schema(fields: Value) -> Schema {
        Schema::from_json(&fields).unwrap()
    }

    /// Runs write_row after a prefix, checking that an error leaves `out` untouched.
    fn row(
        record: &[u8],
        schema: Option<&Schema>,
        extras: &[(&str, Extra<'_>)],
        conversion: Conversion,
    ) -> Result<Value, RowError> {
        let mut out = b"[prefix]".to_vec();
        match write_row(record, schema, extras, conversion, &mut out) {
            Ok(()) => {
                assert!(out.starts_with(b"[prefix]"));
                let text = std::str::from_utf8(&out[8..]).expect("row is UTF-8");
                Ok(serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")))
            }
            Err(e) => {
                assert_eq!(out, b"[prefix]", "out changed after error {e}");
                Err(e)
            }
        }
    }

    /// Converts one value in a NULLABLE column `f` of type `ty`.
    fn one(ty: &str, value: &[u8], conversion: Conversion) -> Result<Value, RowError> {
        let schema = schema(json!([{"name": "f", "type": ty}]));
        row(
            &map(&[("f", value.to_vec())]),
            Some(&schema),
            &[],
            conversion,
        )
        .map(|mut row| row["f"].take())
    }

    /// Expected outcome: the JSON value written, or an error.
    #[derive(Debug)]
    enum E {
        J(Value),
        Fail,
    }
    use E::{Fail, J};

    fn check(ty: &str, value: Vec<u8>, strict: E, compat: E) {
        for (conversion, want) in [(Conversion::Strict, strict), (Conversion::Compat, compat)] {
            let got = one(ty, &value, conversion);
            match (&want, &got) {
                (J(w), Ok(g)) if w == g => {}
                (Fail, Err(e)) => {
                    assert_eq!(e.field, "f", "{ty} {value:x?} {conversion:?}");
                    assert!(!e.reason.is_empty());
                }
                _ => panic!("{ty} {value:x?} {conversion:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn integer_conversions() {
        let t = "INTEGER";
        check(t, v(&json!(42)), J(json!(42)), J(json!(42)));
        check(t, v(&json!(-7)), J(json!(-7)), J(json!(-7)));
        check(t, u64v(u64::MAX), Fail, J(json!("18446744073709551615")));
        // Beyond 2^53 integers travel as strings so the Struct's doubles cannot round them.
        check(
            t,
            v(&json!(1u64 << 53)),
            J(json!("9007199254740992")),
            J(json!("9007199254740992")),
        );
        check(
            t,
            v(&json!((1i64 << 53) - 1)),
            J(json!(9007199254740991i64)),
            J(json!(9007199254740991i64)),
        );
        check(t, f64v(3.0), J(json!(3)), J(json!(3)));
        check(t, f64v(-2.0), J(json!(-2)), J(json!(-2)));
        check(t, f64v(1.9), Fail, J(json!(1)));
        check(t, f64v(-1.9), Fail, J(json!(-1)));
        check(t, f64v(f64::NAN), Fail, Fail);
        check(t, f64v(f64::INFINITY), Fail, Fail);
        check(t, f64v(1e19), Fail, J(json!("10000000000000000000")));
        // A numeric string is an integer like any other: a number within ±(2^53-1).
        check(t, v(&json!("123")), J(json!(123)), J(json!(123)));
        check(t, v(&json!("-5")), J(json!(-5)), J(json!(-5)));
        check(
            t,
            v(&json!("9007199254740993")),
            J(json!("9007199254740993")),
            J(json!("9007199254740993")),
        );
        check(t, v(&json!("+5")), J(json!(5)), J(json!(5)));
        check(t, v(&json!("007")), J(json!(7)), J(json!(7)));
        check(t, v(&json!("12x")), Fail, J(json!(12)));
        check(t, v(&json!("abc")), Fail, J(json!(0)));
        check(t, v(&json!("")), Fail, J(json!(0)));
        check(t, v(&json!(" 1_000")), Fail, J(json!(1000)));
        check(t, v(&json!("1.9")), Fail, J(json!(1)));
        check(
            t,
            v(&json!("99999999999999999999")),
            Fail,
            J(json!("99999999999999999999")),
        );
        check(t, bin(b"17"), J(json!(17)), J(json!(17)));
        check(t, v(&json!(true)), Fail, Fail);
        check(t, v(&json!({"a": 1})), Fail, Fail);
        check(t, v(&json!([1])), Fail, Fail);
        check(
            t,
            etime(1_700_000_000, 5),
            J(json!(1_700_000_000)),
            J(json!(1_700_000_000)),
        );
    }

    #[test]
    fn float_conversions() {
        let t = "FLOAT";
        check(t, v(&json!(3)), J(json!(3)), J(json!(3)));
        check(t, u64v(u64::MAX), J(json!(u64::MAX)), J(json!(u64::MAX)));
        check(t, f64v(1.5), J(json!(1.5)), J(json!(1.5)));
        check(
            t,
            vec![0xca, 0x3f, 0xc0, 0, 0],
            J(json!(1.5)),
            J(json!(1.5)),
        );
        check(t, f64v(f64::NAN), J(json!("NaN")), J(json!("NaN")));
        check(
            t,
            f64v(f64::INFINITY),
            J(json!("Infinity")),
            J(json!("Infinity")),
        );
        check(
            t,
            f64v(f64::NEG_INFINITY),
            J(json!("-Infinity")),
            J(json!("-Infinity")),
        );
        check(t, v(&json!("2.5")), J(json!(2.5)), J(json!(2.5)));
        check(t, v(&json!("1e3")), J(json!(1000.0)), J(json!(1000.0)));
        check(
            t,
            v(&json!("-Infinity")),
            J(json!("-Infinity")),
            J(json!(0.0)),
        );
        check(t, v(&json!("NaN")), J(json!("NaN")), J(json!(0.0)));
        check(t, v(&json!("1e400")), Fail, J(json!("Infinity")));
        check(t, v(&json!("1.5kg")), Fail, J(json!(1.5)));
        check(t, v(&json!("abc")), Fail, J(json!(0.0)));
        check(t, v(&json!(" 2")), Fail, J(json!(2.0)));
        check(t, v(&json!(true)), Fail, Fail);
        check(t, v(&json!([1.5])), Fail, Fail);
        check(t, etime(10, 500_000_000), J(json!(10.5)), J(json!(10.5)));
    }

    #[test]
    fn numeric_and_bignumeric_conversions() {
        for t in ["NUMERIC", "BIGNUMERIC"] {
            check(t, v(&json!(5)), J(json!(5)), J(json!("5")));
            check(
                t,
                u64v(u64::MAX),
                J(json!("18446744073709551615")),
                J(json!("18446744073709551615")),
            );
            check(t, f64v(1.25), J(json!(1.25)), J(json!("1.25")));
            check(t, f64v(1e20), J(json!(1e20)), J(json!("1.0e+20")));
            check(t, f64v(f64::NAN), Fail, J(json!("NaN")));
            check(
                t,
                v(&json!("123.456")),
                J(json!("123.456")),
                J(json!("123.456")),
            );
            check(
                t,
                v(&json!("-1.5e-3")),
                J(json!("-1.5e-3")),
                J(json!("-1.5e-3")),
            );
            check(t, v(&json!(".5")), J(json!(".5")), J(json!(".5")));
            check(t, v(&json!("1.2.3")), Fail, J(json!("1.2.3")));
            check(t, v(&json!("abc")), Fail, J(json!("abc")));
            check(t, v(&json!("1e")), Fail, J(json!("1e")));
            check(t, v(&json!(true)), Fail, J(json!("true")));
            check(t, v(&json!({"a": 1})), Fail, J(json!("{\"a\":1}")));
            check(t, etime(1, 5), J(json!("1.000000005")), J(json!("1")));
        }
    }

    #[test]
    fn boolean_conversions() {
        let t = "BOOLEAN";
        check(t, v(&json!(true)), J(json!(true)), J(json!(true)));
        check(t, v(&json!(false)), J(json!(false)), J(json!(false)));
        check(t, v(&json!("true")), J(json!(true)), J(json!(true)));
        check(t, v(&json!("TRUE")), J(json!(true)), J(json!(true)));
        // Ruby's `!!"false"` is true: the quirk compat keeps.
        check(t, v(&json!("False")), J(json!(false)), J(json!(true)));
        check(t, v(&json!("yes")), Fail, J(json!(true)));
        check(t, v(&json!("")), Fail, J(json!(true)));
        check(t, v(&json!(0)), J(json!(false)), J(json!(true)));
        check(t, v(&json!(1)), J(json!(true)), J(json!(true)));
        check(t, v(&json!(2)), Fail, J(json!(true)));
        check(t, f64v(1.0), Fail, J(json!(true)));
        check(t, v(&json!({"a": 1})), Fail, J(json!(true)));
        check(t, v(&json!([])), Fail, J(json!(true)));
    }

    #[test]
    fn string_and_geography_conversions() {
        for t in ["STRING", "GEOGRAPHY"] {
            check(
                t,
                v(&json!("hi \"there\"")),
                J(json!("hi \"there\"")),
                J(json!("hi \"there\"")),
            );
            check(t, bin(b"hi"), J(json!("hi")), J(json!("hi")));
            check(t, bin(&[0xff]), J(json!("\u{fffd}")), J(json!("\u{fffd}")));
            check(t, v(&json!(42)), J(json!("42")), J(json!("42")));
            check(
                t,
                u64v(u64::MAX),
                J(json!("18446744073709551615")),
                J(json!("18446744073709551615")),
            );
            check(t, f64v(1.5), J(json!("1.5")), J(json!("1.5")));
            check(t, f64v(1e20), J(json!("1e+20")), J(json!("1.0e+20")));
            check(t, f64v(2.0), J(json!("2.0")), J(json!("2.0")));
            check(t, f64v(f64::NAN), J(json!("NaN")), J(json!("NaN")));
            check(t, v(&json!(true)), J(json!("true")), J(json!("true")));
            check(
                t,
                v(&json!({"a": [1, "x\\y"]})),
                J(json!("{\"a\":[1,\"x\\\\y\"]}")),
                J(json!("{\"a\":[1,\"x\\\\y\"]}")),
            );
            check(
                t,
                v(&json!([1, null])),
                J(json!("[1,null]")),
                J(json!("[1,null]")),
            );
            check(
                t,
                etime(1_700_000_000, 0),
                J(json!("1700000000")),
                J(json!("1700000000")),
            );
            check(
                t,
                vec![0xd5, 0x07, 1, 2],
                J(json!("AQI=")),
                J(json!("AQI=")),
            );
        }
    }

    #[test]
    fn bytes_conversions() {
        let t = "BYTES";
        check(t, bin(&[1, 2, 3]), J(json!("AQID")), J(json!("AQID")));
        check(t, bin(&[]), J(json!("")), J(json!("")));
        check(t, v(&json!("AQID")), J(json!("AQID")), J(json!("AQID")));
        check(t, v(&json!("AQ==")), J(json!("AQ==")), J(json!("AQ==")));
        check(t, v(&json!("AQ")), J(json!("AQ==")), J(json!("AQ==")));
        check(t, v(&json!("AQI")), J(json!("AQI=")), J(json!("AQI=")));
        check(t, v(&json!("AQ=")), Fail, Fail);
        check(t, v(&json!("A")), Fail, Fail);
        check(t, v(&json!("not base64!")), Fail, Fail);
        check(t, v(&json!(5)), Fail, Fail);
        check(t, v(&json!([1])), Fail, Fail);
    }

    #[test]
    fn timestamp_conversions() {
        let t = "TIMESTAMP";
        check(
            t,
            v(&json!(1_700_000_000)),
            J(json!(1_700_000_000)),
            J(json!(1_700_000_000)),
        );
        check(t, f64v(1.5), J(json!(1.5)), J(json!(1.5)));
        check(t, f64v(f64::NAN), Fail, J(json!(null)));
        let fmt = "2023-11-14 22:13:20.123456 UTC";
        check(
            t,
            etime(1_700_000_000, 123_456_789),
            J(json!(fmt)),
            J(json!(fmt)),
        );
        check(
            t,
            etime(0, 0),
            J(json!("1970-01-01 00:00:00.000000 UTC")),
            J(json!("1970-01-01 00:00:00.000000 UTC")),
        );
        check(
            t,
            v(&json!("1700000000")),
            J(json!(1_700_000_000)),
            J(json!(1_700_000_000)),
        );
        check(t, v(&json!("-5")), J(json!(-5)), J(json!(-5)));
        check(
            t,
            v(&json!("1700000000.25")),
            J(json!(1_700_000_000.25)),
            J(json!(1_700_000_000.25)),
        );
        for ok in [
            "2023-11-14",
            "2023-11-14 22:13:20",
            "2023-1-4 2:3:4",
            "2023-11-14T22:13:20.123456Z",
            "2023-11-14 22:13:20 UTC",
            "2023-11-14 22:13:20 -07:00",
            "2023-11-14T22:13:20+0530",
            "2023-11-14T22:13:20+05",
            "2014-09-27 12:30:00.45 America/Los_Angeles",
        ] {
            check(t, v(&json!(ok)), J(json!(ok)), J(json!(ok)));
        }
        // Beyond microseconds the digits are cut; compat passes the string as it is.
        check(
            t,
            v(&json!("2023-11-14T22:13:20.123456789Z")),
            J(json!("2023-11-14T22:13:20.123456Z")),
            J(json!("2023-11-14T22:13:20.123456789Z")),
        );
        for bad in [
            "yesterday",
            "2023-13-01",
            "2023-11-14 25:00:00",
            "2023-11-14 22:13",
            "23-11-14",
            "2023-11-14 22:13:20 +",
            " 2023-11-14",
            "2023-11-14 22:13:20.",
            "1e5",
            "12ab",
        ] {
            check(t, v(&json!(bad)), Fail, J(json!(bad)));
        }
        check(t, v(&json!(true)), Fail, J(json!(true)));
        check(t, v(&json!({"a": 1})), Fail, J(json!({"a": 1})));
    }

    #[test]
    fn date_time_datetime_conversions() {
        let et = etime(1_700_000_000, 123_456_789);
        check(
            "DATE",
            v(&json!("2023-11-14")),
            J(json!("2023-11-14")),
            J(json!("2023-11-14")),
        );
        check(
            "DATE",
            v(&json!("2023-1-5")),
            J(json!("2023-1-5")),
            J(json!("2023-1-5")),
        );
        check(
            "DATE",
            et.clone(),
            J(json!("2023-11-14")),
            J(json!("2023-11-14")),
        );
        check(
            "DATE",
            v(&json!("2023/11/14")),
            Fail,
            J(json!("2023/11/14")),
        );
        check(
            "DATE",
            v(&json!("2023-11-14 10:00:00")),
            Fail,
            J(json!("2023-11-14 10:00:00")),
        );
        check(
            "DATE",
            v(&json!("2023-00-14")),
            Fail,
            J(json!("2023-00-14")),
        );
        check("DATE", v(&json!(5)), Fail, J(json!(5)));

        check(
            "TIME",
            v(&json!("22:13:20")),
            J(json!("22:13:20")),
            J(json!("22:13:20")),
        );
        check(
            "TIME",
            v(&json!("2:3:4.5")),
            J(json!("2:3:4.5")),
            J(json!("2:3:4.5")),
        );
        check(
            "TIME",
            v(&json!("22:13:20.1234567")),
            J(json!("22:13:20.123456")),
            J(json!("22:13:20.1234567")),
        );
        check(
            "TIME",
            et.clone(),
            J(json!("22:13:20.123456")),
            J(json!("22:13:20.123456")),
        );
        check("TIME", v(&json!("24:00:00")), Fail, J(json!("24:00:00")));
        check("TIME", v(&json!("22:13")), Fail, J(json!("22:13")));
        check("TIME", v(&json!(3600)), Fail, J(json!(3600)));

        let dt = "2023-11-14 22:13:20";
        check("DATETIME", v(&json!(dt)), J(json!(dt)), J(json!(dt)));
        check(
            "DATETIME",
            v(&json!("2023-11-14T22:13:20.5")),
            J(json!("2023-11-14T22:13:20.5")),
            J(json!("2023-11-14T22:13:20.5")),
        );
        check(
            "DATETIME",
            v(&json!("2023-11-14")),
            J(json!("2023-11-14")),
            J(json!("2023-11-14")),
        );
        check(
            "DATETIME",
            et,
            J(json!("2023-11-14 22:13:20.123456")),
            J(json!("2023-11-14 22:13:20.123456")),
        );
        check(
            "DATETIME",
            v(&json!("2023-11-14 22:13:20Z")),
            Fail,
            J(json!("2023-11-14 22:13:20Z")),
        );
        check("DATETIME", v(&json!(false)), Fail, J(json!(false)));
    }

    #[test]
    fn json_columns_get_json_text_as_a_string() {
        let t = "JSON";
        let obj = json!({"a": [1, null, "x"], "b": {"c": true}});
        let text = serde_json::to_string(&obj).unwrap();
        check(t, v(&obj), J(json!(text)), J(json!(text)));
        check(t, v(&json!("x")), J(json!("\"x\"")), J(json!("\"x\"")));
        check(t, v(&json!(5)), J(json!("5")), J(json!("5")));
        check(t, v(&json!(true)), J(json!("true")), J(json!("true")));
        check(t, f64v(f64::NAN), J(json!("null")), J(json!("null")));
    }

    #[test]
    fn record_needs_a_map() {
        let schema = schema(
            json!([{"name": "r", "type": "RECORD", "fields": [{"name": "a", "type": "INTEGER"}]}]),
        );
        for conversion in [Conversion::Strict, Conversion::Compat] {
            let err = row(
                &map(&[("r", v(&json!("x")))]),
                Some(&schema),
                &[],
                conversion,
            )
            .unwrap_err();
            assert_eq!(err.field, "r");
            assert!(err.reason.contains("RECORD needs a map"), "{err}");
        }
    }

    fn http_schema() -> Schema {
        schema(json!([
            {"name": "msg", "type": "STRING"},
            {"name": "http", "type": "RECORD", "fields": [
                {"name": "status", "type": "INTEGER"},
                {"name": "latency", "type": "FLOAT"},
                {"name": "headers", "type": "RECORD", "mode": "REPEATED", "fields": [
                    {"name": "k", "type": "STRING"}, {"name": "v", "type": "STRING"},
                    {"name": "n", "type": "INTEGER"}]}
            ]},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            {"name": "codes", "type": "INTEGER", "mode": "REPEATED"},
            {"name": "docs", "type": "JSON", "mode": "REPEATED"},
        ]))
    }

    #[test]
    fn nested_records_convert_and_unknown_keys_pass_through() {
        let record = v(&json!({
            "msg": 7,
            "http": {"status": 200.0, "latency": "0.25", "extra": [1, {"x": null}],
                     "headers": [{"k": "a", "v": 1}, null, {"k": "b", "other": true}]},
            "tags": ["x", null, 3],
            "unknown": {"deep": [1.5, "s"]},
        }));
        let got = row(&record, Some(&http_schema()), &[], Conversion::Strict).unwrap();
        assert_eq!(
            got,
            json!({
                "msg": "7",
                "http": {"status": 200, "latency": 0.25, "extra": [1, {"x": null}],
                         "headers": [{"k": "a", "v": "1"}, {"k": "b", "other": true}]},
                "tags": ["x", "3"],
                "unknown": {"deep": [1.5, "s"]},
            })
        );
    }

    #[test]
    fn errors_name_the_nested_field_and_leave_out_unchanged() {
        let schema = http_schema();
        let cases = [
            (json!({"http": {"status": "abc"}}), "http.status"),
            (json!({"codes": [1, "x", 3]}), "codes[1]"),
            (
                json!({"http": {"headers": [{"k": "a"}, {"k": {"no": 1}, "n": "x"}]}}),
                "http.headers[1].n",
            ),
            (
                json!({"http": {"headers": [{"k": "a"}, 5]}}),
                "http.headers[1]",
            ),
            (json!({"http": {"headers": {"k": "a"}}}), "http.headers"),
            (json!({"tags": "solo"}), "tags"),
        ];
        for (record, field) in cases {
            let err = row(&v(&record), Some(&schema), &[], Conversion::Strict).unwrap_err();
            assert_eq!(err.field, field, "{record}: {err}");
        }
        let err = row(
            &v(&json!({"http": {"status": "abc"}})),
            Some(&schema),
            &[],
            Conversion::Strict,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field 'http.status': cannot convert string \"abc\" to INTEGER"
        );
    }

    #[test]
    fn repeated_fields_drop_nulls_and_compat_wraps_scalars() {
        let schema = http_schema();
        let strict = |r: Value| row(&v(&r), Some(&schema), &[], Conversion::Strict);
        let compat = |r: Value| row(&v(&r), Some(&schema), &[], Conversion::Compat);
        assert_eq!(strict(json!({"tags": null})).unwrap(), json!({"tags": []}));
        assert_eq!(
            strict(json!({"codes": [1, null, "2"]})).unwrap(),
            json!({"codes": [1, 2]})
        );
        assert_eq!(strict(json!({"codes": []})).unwrap(), json!({"codes": []}));
        assert_eq!(
            strict(json!({"codes": [null]})).unwrap(),
            json!({"codes": []})
        );
        assert_eq!(
            compat(json!({"tags": "solo"})).unwrap(),
            json!({"tags": ["solo"]})
        );
        assert_eq!(
            compat(json!({"codes": ["12x", 1.9]})).unwrap(),
            json!({"codes": [12, 1]})
        );
        // JSON elements: strict encodes each as JSON text; the plugin leaves them raw.
        assert_eq!(
            strict(json!({"docs": [{"a": 1}, null, 2]})).unwrap(),
            json!({"docs": ["{\"a\":1}", "2"]})
        );
        assert_eq!(
            compat(json!({"docs": [{"a": 1}, 2]})).unwrap(),
            json!({"docs": [{"a": 1}, 2]})
        );
    }

    #[test]
    fn required_fields_are_checked_in_strict_mode_only() {
        let schema = schema(json!([
            {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
            {"name": "r", "type": "RECORD", "fields": [
                {"name": "need", "type": "STRING", "mode": "REQUIRED"},
                {"name": "opt", "type": "STRING"}]},
        ]));
        let cases = [
            (json!({}), "id"),
            (json!({"id": null}), "id"),
            (json!({"id": 1, "r": {"opt": "x"}}), "r.need"),
            (json!({"id": 1, "r": {"need": null}}), "r.need"),
        ];
        for (record, field) in cases {
            let err = row(&v(&record), Some(&schema), &[], Conversion::Strict).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.reason.as_str()),
                (field, "missing required field"),
                "{record}"
            );
            row(&v(&record), Some(&schema), &[], Conversion::Compat).unwrap();
        }
        assert_eq!(
            row(
                &v(&json!({"id": 1, "r": null})),
                Some(&schema),
                &[],
                Conversion::Strict
            )
            .unwrap(),
            json!({"id": 1, "r": null})
        );
        // A required field can come from an injected extra.
        let got = row(
            &v(&json!({"x": 1})),
            Some(&schema),
            &[("id", Extra::Int(9))],
            Conversion::Strict,
        );
        assert_eq!(got.unwrap(), json!({"x": 1, "id": 9}));
        assert_eq!(
            row(
                &v(&json!({"id": null})),
                Some(&schema),
                &[],
                Conversion::Compat
            )
            .unwrap(),
            json!({}),
            "compat drops the nil and leaves REQUIRED to BigQuery"
        );
    }

    #[test]
    fn required_tracking_works_beyond_64_fields() {
        let fields: Vec<Value> = (0..70)
            .map(|i| json!({"name": format!("c{i}"), "type": "INTEGER", "mode": "REQUIRED"}))
            .collect();
        let schema = schema(Value::Array(fields));
        let mut record = serde_json::Map::new();
        for i in 0..70 {
            record.insert(format!("c{i}"), json!(i));
        }
        let full = Value::Object(record.clone());
        assert_eq!(
            row(&v(&full), Some(&schema), &[], Conversion::Strict).unwrap(),
            full
        );
        record.remove("c66");
        let err = row(
            &v(&Value::Object(record)),
            Some(&schema),
            &[],
            Conversion::Strict,
        )
        .unwrap_err();
        assert_eq!(err.field, "c66");
    }

    #[test]
    fn extras_replace_record_keys_and_are_converted_by_the_schema() {
        let schema = schema(json!([
            {"name": "time", "type": "TIMESTAMP"},
            {"name": "tag", "type": "STRING"},
            {"name": "n", "type": "INTEGER"},
        ]));
        let record = v(&json!({"tag": "old", "msg": "x"}));
        let extras = [
            ("tag", Extra::Str("app.web")),
            ("time", Extra::Str("1700000000")),
            ("host", Extra::Str("h1")),
        ];
        let got = row(&record, Some(&schema), &extras, Conversion::Strict).unwrap();
        assert_eq!(
            got,
            json!({"msg": "x", "tag": "app.web", "time": 1_700_000_000, "host": "h1"})
        );
        let got = row(
            &record,
            Some(&schema),
            &[("time", Extra::Float(1.5))],
            Conversion::Strict,
        );
        assert_eq!(got.unwrap()["time"], json!(1.5));
        let err = row(
            &record,
            Some(&schema),
            &[("n", Extra::Str("abc"))],
            Conversion::Strict,
        )
        .unwrap_err();
        assert_eq!(err.field, "n");
        assert_eq!(
            row(
                &record,
                Some(&schema),
                &[("n", Extra::Str("abc"))],
                Conversion::Compat
            )
            .unwrap()["n"],
            json!(0)
        );
        // Without a schema, extras behave exactly as format::json::write_record.
        let got = row(&record, None, &extras, Conversion::Strict).unwrap();
        assert_eq!(
            got,
            json!({"msg": "x", "tag": "app.web", "time": "1700000000", "host": "h1"})
        );
    }

    #[test]
    fn column_names_match_case_insensitively_and_odd_keys_pass_through() {
        let schema = schema(json!([{"name": "status", "type": "INTEGER"}]));
        let got = row(
            &v(&json!({"Status": 2.0})),
            Some(&schema),
            &[],
            Conversion::Strict,
        )
        .unwrap();
        assert_eq!(got, json!({"Status": 2}));
        // {1: "a", "status": 3}: a non-string key is written as its JSON text.
        let mut record = vec![0x82, 0x01];
        record.extend(v(&json!("a")));
        record.extend(v(&json!("status")));
        record.extend(v(&json!(3)));
        let got = row(&record, Some(&schema), &[], Conversion::Strict).unwrap();
        assert_eq!(got, json!({"1": "a", "status": 3}));
    }

    #[test]
    fn compat_drops_nil_values_as_the_plugin_does() {
        let schema = http_schema();
        let record =
            v(&json!({"msg": null, "debug": null, "http": {"status": null, "x": 1}, "tags": null}));
        let got = row(&record, Some(&schema), &[], Conversion::Compat).unwrap();
        assert_eq!(got, json!({"http": {"x": 1}}));
        let got = row(&record, Some(&schema), &[], Conversion::Strict).unwrap();
        assert_eq!(
            got,
            json!({"msg": null, "debug": null, "http": {"status": null, "x": 1}, "tags": []})
        );
    }

    #[test]
    fn container_keys_are_written_as_json_text() {
        // {[1, 2]: nil, "msg": 5}
        let mut record = vec![0x82, 0x92, 0x01, 0x02, 0xc0];
        record.extend(v(&json!("msg")));
        record.extend(v(&json!(5)));
        let schema = http_schema();
        let got = row(&record, Some(&schema), &[], Conversion::Strict).unwrap();
        assert_eq!(got, json!({"[1,2]": null, "msg": "5"}));
        let got = row(&record, Some(&schema), &[], Conversion::Compat).unwrap();
        assert_eq!(got, json!({"msg": "5"}));
    }

    #[test]
    fn bad_records_are_errors_without_output() {
        let schema = http_schema();
        for schema in [None, Some(&schema)] {
            for conversion in [Conversion::Strict, Conversion::Compat] {
                let err = row(&v(&json!([1, 2])), schema, &[], conversion).unwrap_err();
                assert_eq!(err.field, "");
                assert!(err.reason.contains("not a msgpack map"));
                // Truncated inside a known field and inside an unknown one.
                let mut bytes = v(&json!({"msg": "x", "http": {"status": 1}}));
                bytes.truncate(bytes.len() - 1);
                assert!(row(&bytes, schema, &[], conversion).is_err());
                assert!(row(&[0x81, 0xa1, b'z', 0xa5, b'a'], schema, &[], conversion).is_err());
                assert!(row(&[], schema, &[], conversion).is_err());
            }
        }
    }

    #[test]
    fn no_schema_output_is_format_json_byte_for_byte() {
        let record = v(&json!({"a": 1, "b": [1.5, "x", null], "c": {"d": true}}));
        let extras = [("tag", Extra::Str("t")), ("time", Extra::Int(5))];
        let mut want = Vec::new();
        json::write_record(&record, &extras, &mut want).unwrap();
        for conversion in [Conversion::Strict, Conversion::Compat] {
            let mut got = Vec::new();
            write_row(&record, None, &extras, conversion, &mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn event_time_formats_across_the_range() {
        let cases = [
            (0, "1970-01-01 00:00:00.000000 UTC"),
            (951_782_400, "2000-02-29 00:00:00.000000 UTC"),
            (1_709_164_799, "2024-02-28 23:59:59.000000 UTC"),
            (u32::MAX, "2106-02-07 06:28:15.000000 UTC"),
        ];
        for (secs, want) in cases {
            let mut out = Vec::new();
            write_event_time(FieldType::Timestamp, secs, 0, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{want}\""));
        }
    }

    /// serde_json::Value equality with floats compared within 1e-15 relative: the writer
    /// prints the shortest round-trip form, but serde_json's reader (without its
    /// `float_roundtrip` feature) may land an ULP or so away.
    fn approx_eq(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                // Subnormals lose more to the reader, so also allow a tiny absolute error.
                x == y || (x - y).abs() <= (1e-15 * x.abs().max(y.abs())).max(1e-300)
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| approx_eq(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| approx_eq(v, w)))
            }
            _ => a == b,
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn without_schema_any_record_round_trips(
            record in prop::collection::btree_map(".*", json_value(), 0..8)
        ) {
            let record = Value::Object(record.into_iter().collect());
            let got = row(&v(&record), None, &[], Conversion::Strict).unwrap();
            prop_assert!(approx_eq(&got, &record), "{} != {}", got, record);
        }
    }

    // ---- the schema path against a plain reference ----

    /// A field of a generated schema: a name, a type and a mode (RECORD with sub-fields).
    #[derive(Debug, Clone)]
    struct GenField {
        name: String,
        ty: &'static str,
        mode: &'static str,
        fields: Vec<GenField>,
    }

    fn gen_schema_json(fields: &[GenField]) -> Value {
        Value::Array(
            fields
                .iter()
                .map(|f| {
                    let mut j = json!({"name": f.name, "type": f.ty, "mode": f.mode});
                    if f.ty == "RECORD" {
                        j["fields"] = gen_schema_json(&f.fields);
                    }
                    j
                })
                .collect(),
        )
    }

    fn gen_field(depth: u32) -> impl Strategy<Value = GenField> {
        let scalar = (
            "[a-z]{1,6}",
            prop::sample::select(vec!["STRING", "INTEGER", "FLOAT", "BOOLEAN"]),
            prop::sample::select(vec!["NULLABLE", "REQUIRED", "REPEATED"]),
        )
            .prop_map(|(name, ty, mode)| GenField {
                name,
                ty,
                mode,
                fields: Vec::new(),
            });
        if depth == 0 {
            return scalar.boxed();
        }
        prop_oneof![
            3 => scalar,
            1 => (
                "[a-z]{1,6}",
                prop::sample::select(vec!["NULLABLE", "REQUIRED", "REPEATED"]),
                prop::collection::vec(gen_field(depth - 1), 1..4),
            )
                .prop_map(|(name, mode, fields)| GenField {
                    name,
                    ty: "RECORD",
                    mode,
                    fields: dedup_names(fields),
                }),
        ]
        .boxed()
    }

    /// Field names are unique per record (case-insensitively, as BigQuery's).
    fn dedup_names(fields: Vec<GenField>) -> Vec<GenField> {
        let mut seen = std::collections::HashSet::new();
        fields
            .into_iter()
            .filter(|f| seen.insert(f.name.to_ascii_lowercase()))
            .collect()
    }

    /// A value for `f`: mostly of its type, sometimes of another, null, or absent (None).
    fn gen_value(f: &GenField, depth: u32) -> BoxedStrategy<Option<Value>> {
        let scalar_of = |ty: &'static str| -> BoxedStrategy<Value> {
            match ty {
                "STRING" => prop_oneof![
                    ".{0,8}".prop_map(Value::from),
                    any::<i32>().prop_map(Value::from)
                ]
                .boxed(),
                "INTEGER" => prop_oneof![
                    any::<i64>().prop_map(Value::from),
                    any::<i32>().prop_map(|n| Value::from(n.to_string())),
                    "[a-z]{1,3}".prop_map(Value::from),
                ]
                .boxed(),
                "FLOAT" => prop_oneof![
                    (-1e12f64..1e12).prop_map(Value::from),
                    any::<i32>().prop_map(Value::from),
                    "x?".prop_map(Value::from),
                ]
                .boxed(),
                _ => prop_oneof![
                    any::<bool>().prop_map(Value::from),
                    prop::sample::select(vec!["true", "False", "yes"]).prop_map(Value::from),
                    (0..3i64).prop_map(Value::from),
                ]
                .boxed(),
            }
        };
        let one: BoxedStrategy<Value> = if f.ty == "RECORD" {
            if depth == 0 {
                Just(json!({})).boxed()
            } else {
                gen_record(f.fields.clone(), depth - 1)
            }
        } else {
            scalar_of(f.ty)
        };
        let value = if f.mode == "REPEATED" {
            prop_oneof![
                4 => prop::collection::vec(
                    prop_oneof![4 => one.clone(), 1 => Just(Value::Null)], 0..4
                ).prop_map(Value::Array),
                1 => one.clone(),
            ]
            .boxed()
        } else {
            one
        };
        prop_oneof![
            8 => value.prop_map(Some),
            1 => Just(Some(Value::Null)),
            1 => Just(None),
        ]
        .boxed()
    }

    fn gen_record(fields: Vec<GenField>, depth: u32) -> BoxedStrategy<Value> {
        let values: Vec<_> = fields.iter().map(|f| gen_value(f, depth)).collect();
        (values, prop::option::of(("[A-Z]{1,4}", any::<i32>())))
            .prop_map(move |(values, unknown)| {
                let mut obj = serde_json::Map::new();
                for (f, v) in fields.iter().zip(values) {
                    if let Some(v) = v {
                        obj.insert(f.name.clone(), v);
                    }
                }
                if let Some((k, n)) = unknown {
                    obj.insert(format!("unknown_{k}"), json!(n));
                }
                Value::Object(obj)
            })
            .boxed()
    }

    /// The strict rules written plainly over serde_json values: what a row must be.
    fn reference(fields: &[GenField], record: &Value) -> Result<Value, ()> {
        let obj = record.as_object().ok_or(())?;
        let mut out = serde_json::Map::new();
        for (key, value) in obj {
            match fields.iter().find(|f| f.name.eq_ignore_ascii_case(key)) {
                Some(f) => {
                    out.insert(key.clone(), reference_field(f, value)?);
                }
                None => {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        for f in fields {
            let present = obj.keys().any(|k| k.eq_ignore_ascii_case(&f.name));
            if f.mode == "REQUIRED" && !present {
                return Err(());
            }
        }
        Ok(Value::Object(out))
    }

    fn reference_field(f: &GenField, value: &Value) -> Result<Value, ()> {
        match (f.mode, value) {
            ("REPEATED", Value::Null) => Ok(json!([])),
            ("REPEATED", Value::Array(items)) => items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| reference_value(f, v))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            ("REPEATED", _) => Err(()),
            ("REQUIRED", Value::Null) => Err(()),
            (_, Value::Null) => Ok(Value::Null),
            _ => reference_value(f, value),
        }
    }

    fn reference_value(f: &GenField, value: &Value) -> Result<Value, ()> {
        const SAFE: i64 = (1 << 53) - 1;
        let int = |n: i64| {
            if (-SAFE..=SAFE).contains(&n) {
                json!(n)
            } else {
                json!(n.to_string())
            }
        };
        match (f.ty, value) {
            ("RECORD", Value::Object(_)) => reference(&f.fields, value),
            ("STRING", Value::String(s)) => Ok(json!(s)),
            ("STRING", Value::Number(n)) => Ok(json!(n.to_string())),
            ("INTEGER", Value::Number(n)) => n.as_i64().map(int).ok_or(()),
            ("INTEGER", Value::String(s)) => s.parse::<i64>().map(int).map_err(|_| ()),
            ("FLOAT", Value::Number(n)) => Ok(Value::Number(n.clone())),
            ("FLOAT", Value::String(s)) => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| json!(f))
                .ok_or(()),
            ("BOOLEAN", Value::Bool(b)) => Ok(json!(b)),
            ("BOOLEAN", Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(json!(true)),
            ("BOOLEAN", Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(json!(false)),
            ("BOOLEAN", Value::Number(n)) if n.as_i64() == Some(0) => Ok(json!(false)),
            ("BOOLEAN", Value::Number(n)) if n.as_i64() == Some(1) => Ok(json!(true)),
            _ => Err(()),
        }
    }

    fn gen_case() -> impl Strategy<Value = (Vec<GenField>, Value)> {
        prop::collection::vec(gen_field(2), 1..6)
            .prop_map(dedup_names)
            .prop_flat_map(|fields| {
                let record = gen_record(fields.clone(), 2);
                (Just(fields), record)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The converter and the JSON encoder, through the schema path, write what the strict
        /// rules written plainly say, or refuse exactly the records those rules refuse.
        #[test]
        fn schema_path_matches_a_plain_reference((fields, record) in gen_case()) {
            let schema = schema(gen_schema_json(&fields));
            let got = row(&v(&record), Some(&schema), &[], Conversion::Strict);
            match reference(&fields, &record) {
                Ok(want) => {
                    let got = got.map_err(|e| TestCaseError::fail(format!("{e} for {record}")))?;
                    prop_assert!(approx_eq(&got, &want), "{} != {} for {}", got, want, record);
                }
                Err(()) => prop_assert!(got.is_err(), "{:?} for {}", got, record),
            }
        }
    }

    /// One `RowWriter` over records whose keys change order, case, role and count must write
    /// exactly what a fresh writer writes for each record alone, errors included.
    #[test]
    fn remembered_keys_never_change_a_row() {
        let schema = schema(json!([
            {"name": "time", "type": "TIMESTAMP", "mode": "REQUIRED"},
            {"name": "a", "type": "INTEGER"},
            {"name": "b", "type": "STRING"},
            {"name": "tag", "type": "STRING"},
            {"name": "nested", "type": "RECORD", "fields": [{"name": "x", "type": "INTEGER"}]},
        ]));
        let records = [
            map(&[("a", v(&json!(1))), ("b", v(&json!("x")))]),
            map(&[("a", v(&json!(2))), ("b", v(&json!("y")))]),
            // Order swapped: every position misses.
            map(&[("b", v(&json!("z"))), ("a", v(&json!(3)))]),
            // Same bytes at position 0 as the last record's, then a new unknown key.
            map(&[("b", v(&json!("w"))), ("other", v(&json!([1, "two"])))]),
            // A key the extras replace, at a position that held a schema field.
            map(&[("b", v(&json!("v"))), ("tag", v(&json!("from record")))]),
            // Case differs from the schema's name.
            map(&[("A", v(&json!(4))), ("B", v(&json!("u")))]),
            // A bad value under a remembered key: an error, nothing written.
            map(&[("A", v(&json!("not a number"))), ("B", v(&json!("t")))]),
            // Fewer keys, then more, then a nested record and a non-string key.
            map(&[("a", v(&json!(5)))]),
            map(&[
                ("a", v(&json!(6))),
                ("b", v(&json!("s"))),
                ("nested", v(&json!({"x": 7}))),
                ("c", v(&json!(null))),
            ]),
            {
                let mut r = vec![0x82, 0x01, 0x02];
                r.extend(v(&json!("a")));
                r.extend(v(&json!(8)));
                r
            },
            // A nil value: strict writes null, compat drops the key.
            map(&[("a", v(&json!(null))), ("b", v(&json!("r")))]),
            // Keys whose JSON text is longer than the padded copy holds, then shorter again.
            map(&[("a_key_that_is_longer_than_the_padded_copy", v(&json!(1)))]),
            map(&[("a", v(&json!(9))), ("b", v(&json!("q")))]),
        ];
        let with_time = [
            ("time", Extra::Float(1_700_000_000.5)),
            ("tag", Extra::Str("app.web")),
        ];
        let without_time = [("tag", Extra::Str("app.web"))];
        for conversion in [Conversion::Strict, Conversion::Compat] {
            let mut writer = RowWriter::new(Some(&schema), conversion);
            for (i, record) in records.iter().enumerate() {
                // Extras change too: the REQUIRED time is missing from every third row.
                let extras: &[(&str, Extra<'_>)] = if i % 3 == 2 {
                    &without_time
                } else {
                    &with_time
                };
                let mut remembered = b"[prefix]".to_vec();
                let got = writer.write(record, extras, &mut remembered);
                let mut fresh = b"[prefix]".to_vec();
                let want = write_row(record, Some(&schema), extras, conversion, &mut fresh);
                assert_eq!(got, want, "record {i}, {conversion:?}");
                assert_eq!(
                    String::from_utf8_lossy(&remembered),
                    String::from_utf8_lossy(&fresh),
                    "record {i}, {conversion:?}"
                );
            }
        }
    }

    /// An injected event time goes into a TIMESTAMP column as exact seconds, which parse to
    /// the same float the float path writes; every other column, and times before the epoch,
    /// get the float text itself.
    #[test]
    fn injected_time_is_exact_in_timestamp_columns_and_the_float_elsewhere() {
        use crate::event::EventTime;
        let schema = schema(json!([
            {"name": "time", "type": "TIMESTAMP"},
            {"name": "t_float", "type": "FLOAT"},
            {"name": "t_string", "type": "STRING"},
        ]));
        let record = map(&[("msg", v(&json!("x")))]);
        for time in [
            EventTime::new(1_764_099_221, 123_456_789),
            EventTime::new(1_764_099_221, 0),
            EventTime::new(0, 1),
            EventTime::new(-5, 500_000_000),
        ] {
            for name in ["time", "t_float", "t_string"] {
                let mut exact = Vec::new();
                let mut float = Vec::new();
                let mut writer = RowWriter::new(Some(&schema), Conversion::Strict);
                writer
                    .write(&record, &[(name, Extra::Time(time))], &mut exact)
                    .unwrap();
                write_row(
                    &record,
                    Some(&schema),
                    &[(name, Extra::Float(time.as_f64()))],
                    Conversion::Strict,
                    &mut float,
                )
                .unwrap();
                let exact_text = String::from_utf8(exact.clone()).unwrap();
                if name == "time" && time.secs >= 0 {
                    let want = format!("{}.{:09}", time.secs, time.nanos);
                    assert!(exact_text.contains(&want), "{exact_text} has {want}");
                    let parsed = |row: &[u8]| {
                        serde_json::from_slice::<Value>(row).unwrap()[name]
                            .as_f64()
                            .unwrap()
                    };
                    assert!(
                        (parsed(&exact) - parsed(&float)).abs() < 1e-6,
                        "{exact_text}"
                    );
                } else {
                    assert_eq!(
                        exact_text,
                        String::from_utf8(float).unwrap(),
                        "{name} {time:?}"
                    );
                }
            }
        }
    }

    /// Rows are written into room sized from the record; rows far larger than their record
    /// (escapes, small integers, long extras) are written again into more room, never cut.
    #[test]
    fn rows_larger_than_their_first_room_are_whole() {
        let schema = schema(json!([
            {"name": "s", "type": "STRING"},
            {"name": "n", "type": "INTEGER", "mode": "REPEATED"},
            {"name": "tag", "type": "STRING"},
        ]));
        let escaped = "\u{1}\"".repeat(300);
        let record = map(&[
            ("s", v(&json!(escaped))),
            ("n", v(&json!(vec![-100; 500]))),
            ("unknown", v(&json!([1, 2, 3]))),
        ]);
        let tag = "t".repeat(5000);
        let mut out = b"[prefix]".to_vec();
        let mut writer = RowWriter::new(Some(&schema), Conversion::Strict);
        for _ in 0..2 {
            out.truncate(8);
            writer
                .write(&record, &[("tag", Extra::Str(&tag))], &mut out)
                .unwrap();
            assert!(out.len() > 8 + 2 * record.len(), "{} bytes", out.len());
            let row: Value = serde_json::from_slice(&out[8..]).unwrap();
            assert_eq!(
                row,
                json!({"s": escaped, "n": vec![-100; 500], "unknown": [1, 2, 3], "tag": tag})
            );
        }
    }
}
