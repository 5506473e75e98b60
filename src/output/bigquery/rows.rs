//! One event record (msgpack map bytes) → one insertAll row object (JSON text), converted per
//! a table schema when there is one. Pure and allocation-light; must not do I/O or batching.
//!
//! BigQuery reads `rows[].json` as a protobuf `Struct`, whose numbers are doubles
//! (https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll), so integers
//! beyond ±(2^53-1) are sent as decimal strings for INTEGER and NUMERIC columns, as Google's
//! JSON loading page advises ("pass it as a string to avoid data corruption",
//! https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-json). The accepted
//! text forms of each type are those of https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types.

use super::schema::{Field, FieldMode, FieldType, Schema, field_index};
use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head, MsgpackError};
use crate::fluentd::ruby;
use crate::format::json::{
    self, Extra, Full, Room, write_bytes_as_str, write_finite_f64, write_integer,
};
use base64::Engine;

/// How values that do not match their column type are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conversion {
    /// A value that cannot be converted losslessly makes the row an error.
    #[default]
    Strict,
    /// fluent-plugin-bigquery's Ruby coercions (`to_i`, `to_f`, `!!`, `to_s`), for users who
    /// depend on them; REQUIRED is left to BigQuery.
    Compat,
}

/// Why a record cannot become a row. Boxed, so the `Result`s of the converter's hot path are
/// one register wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError(Box<RowErrorAt>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowErrorAt {
    /// Dotted path, e.g. `http.status` or `tags[2]`; empty when the record itself is bad.
    pub field: String,
    pub reason: String,
}

impl std::ops::Deref for RowError {
    type Target = RowErrorAt;

    fn deref(&self) -> &RowErrorAt {
        &self.0
    }
}

impl std::ops::DerefMut for RowError {
    fn deref_mut(&mut self) -> &mut RowErrorAt {
        &mut self.0
    }
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field '{}': {}", self.field, self.reason)
    }
}

impl std::error::Error for RowError {}

impl RowError {
    #[cold]
    fn leaf(reason: impl Into<String>) -> Self {
        Self(Box::new(RowErrorAt {
            field: String::new(),
            reason: reason.into(),
        }))
    }

    /// The error happened inside the field `name`.
    #[cold]
    fn under(mut self, name: &str) -> Self {
        self.field = match self.field.as_bytes().first() {
            None => name.to_owned(),
            Some(b'[') => format!("{name}{}", self.field),
            Some(_) => format!("{name}.{}", self.field),
        };
        self
    }

    /// The error happened in element `index` of an array.
    #[cold]
    fn at(mut self, index: u32) -> Self {
        self.field = match self.field.as_bytes().first() {
            None | Some(b'[') => format!("[{index}]{}", self.field),
            Some(_) => format!("[{index}].{}", self.field),
        };
        self
    }
}

impl From<MsgpackError> for RowError {
    fn from(e: MsgpackError) -> Self {
        Self::leaf(e.to_string())
    }
}

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

/// `write_row` for many records of one table: it remembers, by position, what each top-level
/// key turned out to be (schema field, replaced by an extra, or unknown) and its JSON text, so
/// records that repeat their keys' order (those of one source nearly always do) skip the
/// schema lookup and the escaping. A key that differs from the one remembered at its position
/// is looked up in full.
pub struct RowWriter<'a> {
    schema: Option<&'a Schema>,
    compat: bool,
    keys: Vec<KeySlot>,
    extras: Vec<ExtraSlot>,
    /// Bit i set: top-level field i is REQUIRED (schemas of up to 64 fields; larger ones are
    /// checked field by field).
    required: Option<u64>,
    /// What the less usual conversions write before it is copied into the row.
    scratch: Vec<u8>,
}

/// What a record's key at one position was last time. What a row needs of it is kept in the
/// slot itself, not behind a pointer: the key as words to compare, and its JSON padded.
struct KeySlot {
    key: Key,
    role: KeyRole,
    /// `,"key":`
    json: Json,
}

/// A key to compare record keys against: keys of up to 32 bytes as the words `key_words`
/// makes of them, longer ones as bytes.
struct Key {
    len: usize,
    words: Option<(u128, u128)>,
    long: Vec<u8>,
}

impl Key {
    fn new(key: &[u8]) -> Self {
        let words = key_words(key);
        Key {
            len: key.len(),
            words,
            long: if words.is_some() {
                Vec::new()
            } else {
                key.to_vec()
            },
        }
    }

    #[inline(always)]
    fn matches(&self, key: &[u8]) -> bool {
        key.len() == self.len
            && match self.words {
                Some(words) => key_words(key) == Some(words),
                None => self.long == key,
            }
    }
}

/// Up to 32 bytes as two words: the first and the last 16, 8 or 4 bytes (overlapping when
/// shorter than twice that), or the first, middle and last byte. Together with the length
/// they give every byte, so two keys of one length are equal exactly when their words are.
#[inline(always)]
fn key_words(s: &[u8]) -> Option<(u128, u128)> {
    let n = s.len();
    Some(match n {
        16..=32 => (
            u128::from_ne_bytes(word(s, 0)),
            u128::from_ne_bytes(word(s, n - 16)),
        ),
        8..=15 => (
            u64::from_ne_bytes(word(s, 0)).into(),
            u64::from_ne_bytes(word(s, n - 8)).into(),
        ),
        4..=7 => (
            u32::from_ne_bytes(word(s, 0)).into(),
            u32::from_ne_bytes(word(s, n - 4)).into(),
        ),
        1..=3 => (
            u128::from(s[0]) | u128::from(s[n / 2]) << 8 | u128::from(s[n - 1]) << 16,
            0,
        ),
        0 => (0, 0),
        _ => return None,
    })
}

/// The `N` bytes of `s` at `at` as an array.
#[inline(always)]
fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&s[at..at + N]);
    w
}

/// JSON text written for every row, kept also zero-padded to a fixed width when it fits: one
/// fixed-size copy writes it.
struct Json {
    text: Vec<u8>,
    padded: Option<[u8; Json::PADDED]>,
}

impl Json {
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

#[derive(Clone, Copy)]
enum KeyRole {
    /// An injected field of the same name replaces it.
    Replaced,
    Field(usize),
    Unknown,
}

struct ExtraSlot {
    name: Key,
    field: Option<usize>,
    /// `,"name":`
    json: Json,
}

/// An injected event time into a TIMESTAMP column as exact decimal seconds, which BigQuery
/// reads as it reads the float (`secs.nanos`, no float formatting on the way). Only for
/// times at or after the epoch; returns whether it wrote.
fn exact_timestamp(
    field: &Field,
    time: crate::event::EventTime,
    out: &mut Room<'_>,
) -> Result<bool, Full> {
    if field.field_type != FieldType::Timestamp
        || field.mode == FieldMode::Repeated
        || time.secs < 0
        || time.nanos >= 1_000_000_000
    {
        return Ok(false);
    }
    out.integer(time.secs)?;
    out.byte(b'.')?;
    out.padded_digits(u64::from(time.nanos), 9)?;
    Ok(true)
}

/// The schema field named `key` (case-insensitively, as BigQuery matches names). Records of one
/// source list their keys in the schema's order more often than not: the field at `hint` (the
/// one after the last match) is tried before scanning them all.
fn find_field(fields: &[Field], hint: usize, key: &[u8]) -> Option<usize> {
    match fields.get(hint) {
        Some(f) if f.name.as_bytes().eq_ignore_ascii_case(key) => Some(hint),
        _ => field_index(fields, key),
    }
}

/// Positions remembered per record: enough for wide records, bounded against odd ones.
const MAX_KEY_SLOTS: usize = 128;

impl<'a> RowWriter<'a> {
    pub fn new(schema: Option<&'a Schema>, conversion: Conversion) -> Self {
        let required = schema.and_then(|s| {
            (s.fields.len() <= 64).then(|| {
                s.fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.mode == FieldMode::Required)
                    .fold(0u64, |mask, (i, _)| mask | 1 << i)
            })
        });
        Self {
            schema,
            compat: conversion == Conversion::Compat,
            keys: Vec::new(),
            extras: Vec::new(),
            required,
            scratch: Vec::new(),
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
        let Some(schema) = self.schema else {
            let Head::Map(_) = Cursor::new(record).head()? else {
                return Err(RowError::leaf("record is not a msgpack map"));
            };
            let result = json::write_record(record, extras, out);
            if result.is_err() {
                out.truncate(start);
            }
            return Ok(result?);
        };
        // Room for the usual row (JSON is rarely twice its msgpack); a row that needs more is
        // written again into twice the room.
        let mut room = record.len() * 2 + 64 * extras.len() + 64;
        loop {
            out.resize(start + room, 0);
            match self.write_inner(schema, record, extras, &mut out[start..]) {
                Ok(written) => {
                    out.truncate(start + written);
                    return Ok(());
                }
                Err(Stop::Full) => room *= 2,
                Err(Stop::Row(err)) => {
                    out.truncate(start);
                    return Err(err);
                }
            }
        }
    }

    /// The row into `room`; returns how many bytes it took.
    fn write_inner(
        &mut self,
        schema: &Schema,
        record: &[u8],
        extras: &[(&str, Extra<'_>)],
        room: &mut [u8],
    ) -> Result<usize, Stop> {
        // A local, handed only to inlined code, so its position stays in a register.
        let out = &mut Room::new(room);
        let mut cur = Cursor::new(record);
        let Head::Map(pairs) = cur.head()? else {
            return Err(RowError::leaf("record is not a msgpack map").into());
        };
        let converter = Converter {
            compat: self.compat,
        };
        let fields = &schema.fields;
        let mut seen = Seen::new(fields.len());
        let mut hint = 0usize;
        let scratch = &mut self.scratch;
        // Every field is written with a leading comma; the first comma becomes the `{`.
        let open = out.len();
        for position in 0..pairs as usize {
            let key_start = cur.position();
            let key = match cur.head()? {
                Head::Str(n) | Head::Bin(n) => take(&mut cur, n)?,
                _ => {
                    // Not remembered. `first` false: here every field takes a leading comma.
                    via(out, scratch, |v| {
                        converter.non_string_key(key_start, &mut cur, &mut false, v)
                    })?;
                    continue;
                }
            };
            let slot = match self.keys.get(position) {
                Some(slot) if slot.key.matches(key) => slot,
                _ => {
                    let role = if extras.iter().any(|(name, _)| name.as_bytes() == key) {
                        KeyRole::Replaced
                    } else {
                        find_field(fields, hint, key).map_or(KeyRole::Unknown, KeyRole::Field)
                    };
                    let mut json = Vec::with_capacity(key.len() + 4);
                    json.push(b',');
                    write_bytes_as_str(key, &mut json);
                    json.push(b':');
                    let slot = KeySlot {
                        key: Key::new(key),
                        role,
                        json: Json::new(json),
                    };
                    if position < self.keys.len() {
                        self.keys[position] = slot;
                        &self.keys[position]
                    } else if position == self.keys.len() && position < MAX_KEY_SLOTS {
                        self.keys.push(slot);
                        &self.keys[position]
                    } else {
                        // Not remembered (past the bound, or after a gap): used once.
                        converter.key_value(
                            fields, &slot, &mut seen, &mut hint, &mut cur, out, scratch,
                        )?;
                        continue;
                    }
                }
            };
            converter.key_value(fields, slot, &mut seen, &mut hint, &mut cur, out, scratch)?;
        }
        write_extras(
            &mut self.extras,
            &converter,
            fields,
            extras,
            &mut seen,
            out,
            scratch,
        )?;
        if !converter.compat {
            converter.check_required(fields, &seen, self.required)?;
        }
        if out.len() > open {
            out.set(open, b'{');
        } else {
            out.byte(b'{')?;
        }
        out.byte(b'}')?;
        Ok(out.len())
    }
}

/// The injected fields, after the record's own; `slots` remembers their names by position.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write_extras(
    slots: &mut Vec<ExtraSlot>,
    converter: &Converter,
    fields: &[Field],
    extras: &[(&str, Extra<'_>)],
    seen: &mut Seen,
    out: &mut Room<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(), Stop> {
    for (position, (name, extra)) in extras.iter().enumerate() {
        if slots
            .get(position)
            .is_none_or(|slot| !slot.name.matches(name.as_bytes()))
        {
            let mut json = Vec::with_capacity(name.len() + 4);
            json.push(b',');
            json::write_str(name, &mut json);
            json.push(b':');
            let slot = ExtraSlot {
                name: Key::new(name.as_bytes()),
                field: field_index(fields, name.as_bytes()),
                json: Json::new(json),
            };
            slots.truncate(position);
            slots.push(slot);
        }
        let slot = &slots[position];
        slot.json.put(out)?;
        if let (Extra::Time(time), Some(i)) = (extra, slot.field)
            && exact_timestamp(&fields[i], *time, out)?
        {
            seen.set(i);
            continue;
        }
        let val = Val::from_extra(extra);
        match slot.field {
            Some(i) => {
                seen.set(i);
                let field = &fields[i];
                if !converter.common_scalar(field, val, out)? {
                    via(out, scratch, |v| {
                        converter
                            .field(field, val, &mut Cursor::new(&[]), v)
                            .map_err(|e| e.under(&field.name))
                    })?;
                }
            }
            None => via(out, scratch, |v| {
                plain_scalar(val, v);
                Ok::<(), RowError>(())
            })?,
        }
    }
    Ok(())
}

/// Why a row stopped: it needs more room, or it cannot be converted.
enum Stop {
    Full,
    Row(RowError),
}

impl From<Full> for Stop {
    fn from(_: Full) -> Self {
        Stop::Full
    }
}

impl From<RowError> for Stop {
    fn from(err: RowError) -> Self {
        Stop::Row(err)
    }
}

impl From<MsgpackError> for Stop {
    fn from(err: MsgpackError) -> Self {
        Stop::Row(err.into())
    }
}

/// What the `Vec`-writing conversions (everything but the usual scalars) write, copied into
/// the room through `scratch`.
#[inline(always)]
fn via<E>(
    out: &mut Room<'_>,
    scratch: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), Stop>
where
    Stop: From<E>,
{
    scratch.clear();
    write(scratch)?;
    out.bytes(scratch)?;
    Ok(())
}

/// Consumes the next value if it is nil; leaves the cursor where it was otherwise.
fn next_is_nil(cur: &mut Cursor<'_>) -> Result<bool, MsgpackError> {
    let pos = cur.position();
    let nil = matches!(cur.head()?, Head::Nil);
    if !nil {
        cur.set_position(pos);
    }
    Ok(nil)
}

/// A value's head with its payload already taken; containers leave the cursor on their first
/// child.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    /// fluentd's EventTime extension (type 0): seconds and nanoseconds.
    Time(u32, u32),
    Ext(&'a [u8]),
    Array(u32),
    Map(u32),
}

impl<'a> Val<'a> {
    #[inline(always)]
    fn read(cur: &mut Cursor<'a>) -> Result<Self, MsgpackError> {
        Ok(match cur.head()? {
            Head::Nil => Val::Nil,
            Head::Bool(b) => Val::Bool(b),
            Head::Uint(n) => Val::Uint(n),
            Head::Int(n) => Val::Int(n),
            Head::F32(f) => Val::Float(f64::from(f)),
            Head::F64(f) => Val::Float(f),
            Head::Str(n) => Val::Str(take(cur, n)?),
            Head::Bin(n) => Val::Bin(take(cur, n)?),
            Head::Ext(0, 8) => {
                let b = take(cur, 8)?;
                Val::Time(
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                )
            }
            Head::Ext(_, n) => Val::Ext(take(cur, n)?),
            Head::Array(n) => Val::Array(n),
            Head::Map(n) => Val::Map(n),
        })
    }

    fn from_extra(extra: &Extra<'a>) -> Self {
        match *extra {
            Extra::Str(s) => Val::Str(s.as_bytes()),
            Extra::Float(f) => Val::Float(f),
            Extra::Time(t) => Val::Float(t.as_f64()),
            Extra::Int(i) => Val::Int(i),
        }
    }

    /// For error messages only.
    fn describe(self) -> String {
        match self {
            Val::Nil => "null".into(),
            Val::Bool(b) => format!("boolean {b}"),
            Val::Uint(n) => format!("integer {n}"),
            Val::Int(n) => format!("integer {n}"),
            Val::Float(f) => format!("float {f}"),
            Val::Str(s) => {
                let s = String::from_utf8_lossy(s);
                match s.char_indices().nth(40) {
                    Some((cut, _)) => format!("string {:?}...", &s[..cut]),
                    None => format!("string {s:?}"),
                }
            }
            Val::Bin(b) => format!("binary of {} bytes", b.len()),
            Val::Time(..) => "EventTime".into(),
            Val::Ext(_) => "msgpack extension value".into(),
            Val::Array(_) => "array".into(),
            Val::Map(_) => "map".into(),
        }
    }
}

#[cold]
fn value_error(e: MsgpackError, field: &Field) -> RowError {
    RowError::from(e).under(&field.name)
}

fn take<'a>(cur: &mut Cursor<'a>, n: u32) -> Result<&'a [u8], MsgpackError> {
    let range = cur.take(n as usize)?;
    Ok(cur.slice(range))
}

fn cannot(val: Val<'_>, ty: FieldType) -> RowError {
    RowError::leaf(format!(
        "cannot convert {} to {}",
        val.describe(),
        ty.as_str()
    ))
}

struct Converter {
    compat: bool,
}

/// Which of a record's schema fields have been written (for REQUIRED), without allocating for
/// records of up to 64 fields.
enum Seen {
    Small(u64),
    Large(Vec<bool>),
}

impl Seen {
    fn new(len: usize) -> Self {
        if len <= 64 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![false; len])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Seen::Small(bits) => *bits |= 1 << i,
            Seen::Large(v) => v[i] = true,
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Seen::Small(bits) => bits & (1 << i) != 0,
            Seen::Large(v) => v[i],
        }
    }
}

impl Converter {
    /// One key (already read, its role decided) and its value.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn key_value(
        &self,
        fields: &[Field],
        slot: &KeySlot,
        seen: &mut Seen,
        hint: &mut usize,
        cur: &mut Cursor<'_>,
        out: &mut Room<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        if matches!(slot.role, KeyRole::Replaced) {
            cur.skip_value(DEFAULT_MAX_DEPTH)?;
            return Ok(());
        }
        if self.compat && next_is_nil(cur)? {
            // The plugin skips nil values (`next if value.nil?`).
            return Ok(());
        }
        slot.json.put(out)?;
        match slot.role {
            KeyRole::Field(i) => {
                *hint = i + 1;
                seen.set(i);
                let field = &fields[i];
                let val = match Val::read(cur) {
                    Ok(val) => val,
                    Err(e) => return Err(value_error(e, field).into()),
                };
                if self.common_scalar(field, val, out)? {
                    return Ok(());
                }
                via(out, scratch, |v| {
                    self.field(field, val, cur, v)
                        .map_err(|e| e.under(&field.name))
                })
            }
            _ => via(out, scratch, |v| {
                json::write_value(cur, v, DEFAULT_MAX_DEPTH)
            }),
        }
    }

    /// The usual pairs of a column type and a value of that type, written as `field` would
    /// write them; false (nothing written) for everything else.
    #[inline(always)]
    fn common_scalar(&self, field: &Field, val: Val<'_>, out: &mut Room<'_>) -> Result<bool, Full> {
        const SAFE: i64 = (1 << 53) - 1;
        if field.mode == FieldMode::Repeated {
            return Ok(false);
        }
        match (field.field_type, val) {
            (FieldType::String, Val::Str(s)) if !self.compat => return out.plain_str(s),
            (FieldType::Integer, Val::Int(n)) if (-SAFE..=SAFE).contains(&n) => out.integer(n)?,
            (FieldType::Integer, Val::Uint(n)) if n <= SAFE as u64 => out.integer(n)?,
            (FieldType::Float, Val::Float(f)) if f.is_finite() => out.finite_f64(f)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// REQUIRED fields the record and extras did not give.
    fn check_required(
        &self,
        fields: &[Field],
        seen: &Seen,
        required: Option<u64>,
    ) -> Result<(), RowError> {
        if let (Some(mask), Seen::Small(bits)) = (required, seen)
            && mask & !bits == 0
        {
            return Ok(());
        }
        let missing = fields
            .iter()
            .enumerate()
            .find(|(i, f)| f.mode == FieldMode::Required && !seen.get(*i));
        match missing {
            Some((_, f)) => Err(RowError::leaf("missing required field").under(&f.name)),
            None => Ok(()),
        }
    }

    /// A nested RECORD's `pairs` entries (cursor after the map head). The top level goes
    /// through `RowWriter`, which also remembers keys and adds the extras.
    fn record(
        &self,
        fields: &[Field],
        cur: &mut Cursor<'_>,
        pairs: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        let mut seen = Seen::new(fields.len());
        let mut first = true;
        let mut hint = 0usize;
        out.push(b'{');
        for _ in 0..pairs {
            let key_start = cur.position();
            let key = match cur.head()? {
                Head::Str(n) | Head::Bin(n) => take(cur, n)?,
                _ => {
                    self.non_string_key(key_start, cur, &mut first, out)?;
                    continue;
                }
            };
            if self.compat && next_is_nil(cur)? {
                // The plugin skips nil values (`next if value.nil?`), so a nil under an
                // unknown key never reaches BigQuery as "no such field".
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_bytes_as_str(key, out);
            out.push(b':');
            match find_field(fields, hint, key) {
                Some(i) => {
                    hint = i + 1;
                    seen.set(i);
                    let field = &fields[i];
                    let val = Val::read(cur).map_err(|e| value_error(e, field))?;
                    self.field(field, val, cur, out)
                        .map_err(|e| e.under(&field.name))?;
                }
                None => json::write_value(cur, out, DEFAULT_MAX_DEPTH)?,
            }
        }
        if !self.compat {
            self.check_required(fields, &seen, None)?;
        }
        out.push(b'}');
        Ok(())
    }

    /// A key that is not a string (the cursor on it, at `key_start`) and its value: the key's
    /// JSON text as a string, as format::json writes it, never a schema field.
    fn non_string_key(
        &self,
        key_start: usize,
        cur: &mut Cursor<'_>,
        first: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        cur.set_position(key_start);
        let mut key_cur = cur.clone();
        cur.skip_value(DEFAULT_MAX_DEPTH)?;
        if self.compat && next_is_nil(cur)? {
            return Ok(());
        }
        if !*first {
            out.push(b',');
        }
        *first = false;
        json::write_key(&mut key_cur, out)?;
        out.push(b':');
        Ok(json::write_value(cur, out, DEFAULT_MAX_DEPTH)?)
    }

    /// One field's value, per its mode.
    fn field(
        &self,
        field: &Field,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        match (field.mode, val) {
            // BigQuery rejects null array elements and null arrays; an absent list is empty.
            (FieldMode::Repeated, Val::Nil) => out.extend_from_slice(b"[]"),
            (FieldMode::Repeated, Val::Array(n)) => {
                out.push(b'[');
                let mut first = true;
                for i in 0..n {
                    let elem = Val::read(cur).map_err(|e| RowError::from(e).at(i))?;
                    if matches!(elem, Val::Nil) {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    self.value(field, elem, cur, out, true)
                        .map_err(|e| e.at(i))?;
                }
                out.push(b']');
            }
            (FieldMode::Repeated, other) if self.compat => {
                // The plugin would call `each` on it; wrapping keeps the value.
                out.push(b'[');
                self.value(field, other, cur, out, true)?;
                out.push(b']');
            }
            (FieldMode::Repeated, other) => {
                return Err(RowError::leaf(format!(
                    "REPEATED field needs an array, got {}",
                    other.describe()
                )));
            }
            (FieldMode::Required, Val::Nil) if !self.compat => {
                return Err(RowError::leaf("missing required field"));
            }
            (_, Val::Nil) => out.extend_from_slice(b"null"),
            (_, val) => self.value(field, val, cur, out, false)?,
        }
        Ok(())
    }

    /// One non-null value converted to `field`'s type. `in_array`: an element of a REPEATED
    /// field (the plugin formats those with `is_load: true`).
    fn value(
        &self,
        field: &Field,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
        in_array: bool,
    ) -> Result<(), RowError> {
        let ty = field.field_type;
        match ty {
            FieldType::Record => match val {
                Val::Map(pairs) => self.record(&field.fields, cur, pairs, out),
                other => Err(RowError::leaf(format!(
                    "RECORD needs a map, got {}",
                    other.describe()
                ))),
            },
            FieldType::Integer => self.integer(val, out),
            FieldType::Float => self.float(val, out),
            FieldType::Numeric | FieldType::BigNumeric => self.numeric(val, cur, out),
            FieldType::Boolean => self.boolean(val, out),
            FieldType::String | FieldType::Geography => self.string(val, cur, out),
            FieldType::Bytes => bytes(val, out),
            FieldType::Timestamp => self.timestamp(val, cur, out),
            FieldType::Date | FieldType::Time | FieldType::DateTime => {
                self.civil(ty, val, cur, out)
            }
            FieldType::Json => {
                // insertAll wants a JSON column's value as a string holding JSON text (the
                // plugin's `MultiJson.dump`; google-cloud-python's insert_rows does the same,
                // googleapis/python-bigquery#1756). A string value is thus stored as a JSON
                // string, not parsed. The plugin leaves REPEATED JSON elements raw.
                if self.compat && in_array {
                    plain(val, cur, out)?;
                } else {
                    json_text_as_str(val, cur, out)?;
                }
                Ok(())
            }
        }
    }

    fn integer(&self, val: Val<'_>, out: &mut Vec<u8>) -> Result<(), RowError> {
        const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
        match val {
            Val::Int(n) => write_int(n, out),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => write_int(n, out),
                Err(_) if self.compat => write_quoted(itoa::Buffer::new().format(n), out),
                Err(_) => {
                    return Err(RowError::leaf(format!(
                        "integer {n} is out of range for INTEGER"
                    )));
                }
            },
            Val::Float(f) if self.compat => {
                // Ruby's Float#to_i truncates; NaN and infinities raise FloatDomainError.
                if !f.is_finite() {
                    let mut e = cannot(val, FieldType::Integer);
                    e.reason.push_str(" (Ruby raises FloatDomainError)");
                    return Err(e);
                }
                let t = f.trunc();
                if (-LIMIT..LIMIT).contains(&t) {
                    write_int(t as i64, out);
                } else {
                    write_quoted(&format!("{t:.0}"), out);
                }
            }
            Val::Float(f) if f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) => {
                write_int(f as i64, out)
            }
            Val::Time(secs, _) => write_int(i64::from(secs), out),
            Val::Str(s) | Val::Bin(s) if self.compat => write_big_int(&ruby::to_i(s), out),
            Val::Str(s) | Val::Bin(s) => match parse_int(s) {
                // A numeric string stays a string; BigQuery parses it without a double.
                Some(n) => write_quoted(itoa::Buffer::new().format(n), out),
                None => return Err(cannot(val, FieldType::Integer)),
            },
            _ => return Err(cannot(val, FieldType::Integer)),
        }
        Ok(())
    }

    fn float(&self, val: Val<'_>, out: &mut Vec<u8>) -> Result<(), RowError> {
        match val {
            Val::Int(n) => write_integer(n, out),
            Val::Uint(n) => write_integer(n, out),
            Val::Float(f) => write_float(f, out),
            Val::Time(secs, nanos) => write_float(f64::from(secs) + f64::from(nanos) / 1e9, out),
            Val::Str(s) | Val::Bin(s) if self.compat => write_float(ruby::to_f(s), out),
            Val::Str(s) | Val::Bin(s) => match parse_float(s) {
                Some(f) => write_float(f, out),
                None => return Err(cannot(val, FieldType::Float)),
            },
            _ => return Err(cannot(val, FieldType::Float)),
        }
        Ok(())
    }

    fn numeric(
        &self,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        if self.compat {
            // The plugin sends `value.to_s`.
            ruby_to_s(val, cur, out)?;
            return Ok(());
        }
        match val {
            Val::Int(n) => write_int(n, out),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => write_int(n, out),
                Err(_) => write_quoted(itoa::Buffer::new().format(n), out),
            },
            // NUMERIC has no NaN or infinity.
            Val::Float(f) if f.is_finite() => write_float(f, out),
            Val::Time(secs, nanos) if nanos < 1_000_000_000 => {
                // Exact: NUMERIC keeps 9 decimal places.
                out.push(b'"');
                write_integer(secs, out);
                out.push(b'.');
                pad(out, nanos, 9);
                out.push(b'"');
            }
            Val::Str(s) | Val::Bin(s) if is_decimal(s) => write_quoted_ascii(s, out),
            _ => return Err(cannot(val, FieldType::Numeric)),
        }
        Ok(())
    }

    /// Always written as a JSON boolean, so which strings BigQuery itself would take for BOOL
    /// does not matter; strict accepts only unambiguous spellings ("true"/"false", 0/1).
    fn boolean(&self, val: Val<'_>, out: &mut Vec<u8>) -> Result<(), RowError> {
        let b = match val {
            Val::Bool(b) => b,
            // Ruby's `!!value`: only nil (handled by the mode) and false are false.
            _ if self.compat => true,
            Val::Str(s) | Val::Bin(s) if s.eq_ignore_ascii_case(b"true") => true,
            Val::Str(s) | Val::Bin(s) if s.eq_ignore_ascii_case(b"false") => false,
            Val::Int(0) | Val::Uint(0) => false,
            Val::Int(1) | Val::Uint(1) => true,
            _ => return Err(cannot(val, FieldType::Boolean)),
        };
        out.extend_from_slice(if b { b"true" } else { b"false" });
        Ok(())
    }

    fn string(
        &self,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        if self.compat {
            ruby_to_s(val, cur, out)?;
            return Ok(());
        }
        match val {
            Val::Str(s) | Val::Bin(s) => write_bytes_as_str(s, out),
            Val::Int(n) => write_quoted(itoa::Buffer::new().format(n), out),
            Val::Uint(n) => write_quoted(itoa::Buffer::new().format(n), out),
            Val::Float(f) if f.is_finite() => {
                out.push(b'"');
                let _ = serde_json::to_writer(&mut *out, &f);
                out.push(b'"');
            }
            Val::Float(f) => write_quoted(non_finite_name(f), out),
            Val::Bool(b) => write_quoted(if b { "true" } else { "false" }, out),
            // Fluent::EventTime#to_s is its seconds; other extensions are base64 already.
            Val::Time(secs, _) => write_quoted(itoa::Buffer::new().format(secs), out),
            Val::Ext(_) => plain_scalar(val, out),
            _ => json_text_as_str(val, cur, out)?,
        }
        Ok(())
    }

    fn timestamp(
        &self,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        match val {
            // Numbers are epoch seconds (https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types#timestamp_type
            // for the text forms; insertAll takes numeric seconds as load jobs do).
            Val::Int(n) => write_int(n, out),
            Val::Uint(n) => write_integer(n, out),
            Val::Float(f) if f.is_finite() => write_float(f, out),
            Val::Time(secs, nanos) => write_event_time(FieldType::Timestamp, secs, nanos, out),
            Val::Str(s) | Val::Bin(s) => {
                if let Some(n) = epoch_seconds(s, self.compat) {
                    write_float_or_int(n, out);
                } else if self.compat {
                    // The plugin passes other strings through for BigQuery to judge.
                    write_bytes_as_str(s, out);
                } else {
                    match shape(FieldType::Timestamp, s) {
                        Some(cut) => write_cut(s, cut, out),
                        None => return Err(cannot(val, FieldType::Timestamp)),
                    }
                }
            }
            _ if self.compat => plain(val, cur, out)?,
            _ => return Err(cannot(val, FieldType::Timestamp)),
        }
        Ok(())
    }

    /// DATE, TIME, DATETIME.
    fn civil(
        &self,
        ty: FieldType,
        val: Val<'_>,
        cur: &mut Cursor<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), RowError> {
        match val {
            Val::Time(secs, nanos) => write_event_time(ty, secs, nanos, out),
            _ if self.compat => plain(val, cur, out)?,
            Val::Str(s) | Val::Bin(s) => match shape(ty, s) {
                Some(cut) => write_cut(s, cut, out),
                None => return Err(cannot(val, ty)),
            },
            _ => return Err(cannot(val, ty)),
        }
        Ok(())
    }
}

/// BYTES travel as base64 (https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll
/// rows are JSON; BigQuery decodes BYTES from base64, googleapis/google-cloud-java#1603).
fn bytes(val: Val<'_>, out: &mut Vec<u8>) -> Result<(), RowError> {
    match val {
        Val::Bin(b) | Val::Ext(b) => {
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
        Val::Str(s) => match base64_padding(s) {
            Some(pad) => {
                out.push(b'"');
                out.extend_from_slice(s);
                out.extend(std::iter::repeat_n(b'=', pad));
                out.push(b'"');
            }
            None => {
                let mut e = cannot(val, FieldType::Bytes);
                e.reason.push_str(" (BYTES strings must be base64)");
                return Err(e);
            }
        },
        _ => return Err(cannot(val, FieldType::Bytes)),
    }
    Ok(())
}

/// Standard-alphabet base64, padded or not: how many `=` make it canonical.
fn base64_padding(s: &[u8]) -> Option<usize> {
    let body_len = s.len() - s.iter().rev().take(2).take_while(|b| **b == b'=').count();
    let (body, padding) = s.split_at(body_len);
    if !body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
    {
        return None;
    }
    let missing = match body.len() % 4 {
        0 => 0,
        1 => return None,
        rem => 4 - rem,
    };
    match padding.len() {
        0 => Some(missing),
        n if n == missing => Some(0),
        _ => None,
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

/// A canonical decimal integer of any size (Ruby's bignums), safe-range ones as numbers.
fn write_big_int(digits: &str, out: &mut Vec<u8>) {
    match digits.parse::<i64>() {
        Ok(n) => write_int(n, out),
        Err(_) => write_quoted(digits, out),
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

fn non_finite_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn write_float_or_int(n: Number, out: &mut Vec<u8>) {
    match n {
        Number::Int(i) => write_int(i, out),
        Number::Float(f) => write_float(f, out),
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

/// The value's plain JSON (format::json's mapping).
fn plain(val: Val<'_>, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), MsgpackError> {
    match val {
        Val::Array(n) => json::write_array(n, cur, out, DEFAULT_MAX_DEPTH),
        Val::Map(n) => json::write_map(n, cur, out, DEFAULT_MAX_DEPTH),
        scalar => {
            plain_scalar(scalar, out);
            Ok(())
        }
    }
}

fn plain_scalar(val: Val<'_>, out: &mut Vec<u8>) {
    match val {
        Val::Nil => out.extend_from_slice(b"null"),
        Val::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Val::Uint(n) => write_integer(n, out),
        Val::Int(n) => write_integer(n, out),
        Val::Float(f) if f.is_finite() => write_finite_f64(f, out),
        Val::Float(_) => out.extend_from_slice(b"null"),
        Val::Str(s) | Val::Bin(s) => write_bytes_as_str(s, out),
        Val::Time(secs, _) => write_integer(secs, out),
        Val::Ext(b) => json::write_str(&base64::engine::general_purpose::STANDARD.encode(b), out),
        // Containers are written by `plain`.
        Val::Array(_) | Val::Map(_) => out.extend_from_slice(b"null"),
    }
}

/// `val`'s JSON text, as a JSON string.
fn json_text_as_str(
    val: Val<'_>,
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
) -> Result<(), MsgpackError> {
    let mark = out.len();
    plain(val, cur, out)?;
    quote_in_place(out, mark);
    Ok(())
}

/// Turns the JSON text in `out[mark..]` into a JSON string holding it, without a scratch
/// buffer. JSON text has no raw control characters, so only `"` and `\` need escaping.
fn quote_in_place(out: &mut Vec<u8>, mark: usize) {
    let escapes = out[mark..]
        .iter()
        .filter(|b| **b == b'"' || **b == b'\\')
        .count();
    let old_end = out.len();
    out.resize(old_end + escapes + 2, 0);
    let mut w = out.len() - 1;
    out[w] = b'"';
    let mut r = old_end;
    while r > mark {
        r -= 1;
        let b = out[r];
        w -= 1;
        out[w] = b;
        if b == b'"' || b == b'\\' {
            w -= 1;
            out[w] = b'\\';
        }
    }
    out[mark] = b'"';
}

// ---- text shapes -------------------------------------------------------------------------

/// An optional sign and decimal digits, within i64.
fn parse_int(s: &[u8]) -> Option<i64> {
    let digits = s
        .strip_prefix(b"+")
        .or_else(|| s.strip_prefix(b"-"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A decimal or exponent number, or the names of NaN and the infinities; not one that
/// overflows to infinity.
fn parse_float(s: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(s).ok()?;
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let f: f64 = text.parse().ok()?;
    if f.is_infinite() && !text.to_ascii_lowercase().contains("inf") {
        return None;
    }
    Some(f)
}

/// `[+-]digits[.digits][e[+-]digits]` or `[+-].digits...`: NUMERIC's text form.
fn is_decimal(s: &[u8]) -> bool {
    let s = s
        .strip_prefix(b"+")
        .or_else(|| s.strip_prefix(b"-"))
        .unwrap_or(s);
    let int = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = &s[int..];
    let mut frac = 0;
    if let Some(r) = rest.strip_prefix(b".") {
        frac = r.iter().take_while(|b| b.is_ascii_digit()).count();
        rest = &r[frac..];
    }
    if int + frac == 0 {
        return false;
    }
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let r = r
            .strip_prefix(b"+")
            .or_else(|| r.strip_prefix(b"-"))
            .unwrap_or(r);
        return !r.is_empty() && r.iter().all(u8::is_ascii_digit);
    }
    rest.is_empty()
}

enum Number {
    Int(i64),
    Float(f64),
}

/// A TIMESTAMP string that is epoch seconds: `-?digits` or `-?digits.digits` (the plugin's
/// INTEGER_REGEXP and FLOAT_REGEXP); strict also takes a leading `+`.
fn epoch_seconds(s: &[u8], compat: bool) -> Option<Number> {
    let unsigned = match s.strip_prefix(b"-") {
        Some(rest) => rest,
        None if !compat => s.strip_prefix(b"+").unwrap_or(s),
        None => s,
    };
    let int = unsigned.iter().take_while(|b| b.is_ascii_digit()).count();
    if int == 0 {
        return None;
    }
    // Only digits, a sign and a dot get here (a formatted date does not): ASCII.
    let text = || std::str::from_utf8(s).ok();
    match &unsigned[int..] {
        [] => text()?
            .parse()
            .ok()
            .map(Number::Int)
            .or_else(|| text()?.parse().ok().map(Number::Float)),
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => {
            text()?.parse().ok().map(Number::Float)
        }
        _ => None,
    }
}

/// Reads 1..=max digits at `pos` into a number within `range`; returns it and the end.
fn num(s: &[u8], pos: usize, min: usize, max: usize, limit: u32) -> Option<(u32, usize)> {
    let n = s
        .get(pos..)?
        .iter()
        .take(max)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n < min {
        return None;
    }
    let value = s[pos..pos + n]
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    (value <= limit).then_some((value, pos + n))
}

fn byte(s: &[u8], pos: usize, want: u8) -> Option<usize> {
    (s.get(pos) == Some(&want)).then_some(pos + 1)
}

/// `YYYY-[M]M-[D]D`; returns the end.
fn date_at(s: &[u8], pos: usize) -> Option<usize> {
    let (_, p) = num(s, pos, 4, 4, 9999)?;
    let p = byte(s, p, b'-')?;
    let (month, p) = num(s, p, 1, 2, 12)?;
    let p = byte(s, p, b'-')?;
    let (day, p) = num(s, p, 1, 2, 31)?;
    (month >= 1 && day >= 1).then_some(p)
}

/// `[H]H:[M]M:[S]S[.F...]`; returns the end and the fraction digits beyond microseconds,
/// which are cut (BigQuery keeps microseconds; the data-types page allows up to six digits).
fn time_at(s: &[u8], pos: usize) -> Option<(usize, Option<(usize, usize)>)> {
    let (_, p) = num(s, pos, 1, 2, 23)?;
    let p = byte(s, p, b':')?;
    let (_, p) = num(s, p, 1, 2, 59)?;
    let p = byte(s, p, b':')?;
    let (_, p) = num(s, p, 1, 2, 60)?;
    let Some(frac_start) = byte(s, p, b'.') else {
        return Some((p, None));
    };
    let digits = s[frac_start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let end = frac_start + digits;
    let cut = (digits > 6).then_some((frac_start + 6, end));
    Some((end, cut))
}

/// A time zone after a timestamp: `Z`, `UTC`, `[+-]H[H][[:]MM]`, or a tz database name,
/// optionally after one space.
fn zone_ok(z: &[u8]) -> bool {
    let z = z.strip_prefix(b" ").unwrap_or(z);
    match z {
        [] => false,
        [b'+' | b'-', rest @ ..] => {
            let Some((_, p)) = num(rest, 0, 1, 2, 24) else {
                return false;
            };
            let p = byte(rest, p, b':').unwrap_or(p);
            p == rest.len() || num(rest, p, 2, 2, 59).is_some_and(|(_, end)| end == rest.len())
        }
        _ => {
            z[0].is_ascii_alphabetic()
                && z.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'-'))
        }
    }
}

/// Whether `s` has the text form of `ty` (by shape; day 31 of February passes, BigQuery
/// decides); `Some(cut)` gives fraction digits to drop.
fn shape(ty: FieldType, s: &[u8]) -> Option<Option<(usize, usize)>> {
    match ty {
        FieldType::Date => (date_at(s, 0)? == s.len()).then_some(None),
        FieldType::Time => {
            let (end, cut) = time_at(s, 0)?;
            (end == s.len()).then_some(cut)
        }
        FieldType::DateTime | FieldType::Timestamp => {
            let p = date_at(s, 0)?;
            let (p, cut) = match s.get(p) {
                Some(b' ' | b'T' | b't') if s.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                    time_at(s, p + 1)?
                }
                _ => (p, None),
            };
            let zoned = ty == FieldType::Timestamp && zone_ok(&s[p..]);
            (p == s.len() || zoned).then_some(cut)
        }
        _ => None,
    }
}

/// A validated (ASCII, escape-free) string, without the `cut` range.
fn write_cut(s: &[u8], cut: Option<(usize, usize)>, out: &mut Vec<u8>) {
    out.push(b'"');
    match cut {
        Some((from, to)) => {
            out.extend_from_slice(&s[..from]);
            out.extend_from_slice(&s[to..]);
        }
        None => out.extend_from_slice(s),
    }
    out.push(b'"');
}

// ---- EventTime as civil UTC text ----------------------------------------------------------

fn pad(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

/// Ruby's `to_s` as the plugin applies it to STRING and NUMERIC columns: Hash and Array as
/// their JSON (`MultiJson.dump`), everything else as its text.
fn ruby_to_s(val: Val<'_>, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), MsgpackError> {
    match val {
        Val::Str(s) | Val::Bin(s) => write_bytes_as_str(s, out),
        Val::Int(n) => write_quoted(itoa::Buffer::new().format(n), out),
        Val::Uint(n) => write_quoted(itoa::Buffer::new().format(n), out),
        Val::Float(f) => json::write_str(&ruby::float_to_s(f), out),
        Val::Bool(b) => write_quoted(if b { "true" } else { "false" }, out),
        // Fluent::EventTime#to_s is its seconds.
        Val::Time(secs, _) => write_quoted(itoa::Buffer::new().format(secs), out),
        Val::Nil => write_quoted("", out),
        Val::Ext(_) => plain_scalar(val, out),
        Val::Array(_) | Val::Map(_) => json_text_as_str(val, cur, out)?,
    }
    Ok(())
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
        check(t, v(&json!("123")), J(json!("123")), J(json!(123)));
        check(t, v(&json!("-5")), J(json!("-5")), J(json!(-5)));
        check(t, v(&json!("+5")), J(json!("5")), J(json!(5)));
        check(t, v(&json!("007")), J(json!("7")), J(json!(7)));
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
        check(t, bin(b"17"), J(json!("17")), J(json!(17)));
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
            json!({"codes": [1, "2"]})
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

    /// The word compares of remembered keys see a difference at every position of every length.
    #[test]
    fn key_comparison_is_exact_at_every_length_and_position() {
        let key: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
        for len in 0..key.len() {
            let a = &key[..len];
            let remembered = Key::new(a);
            assert!(remembered.matches(&key[..len]), "{len}");
            assert!(!remembered.matches(&key[..len + 1]), "{len} vs longer");
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!remembered.matches(&b), "{len} differing at {at}");
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
