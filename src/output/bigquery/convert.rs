//! One record (a msgpack map) → one BigQuery row, per the table's schema: the plugin's type
//! rules (strict, or its Ruby coercions with `type_conversion compat`), REQUIRED, `<inject>`
//! fields, unknown keys, and the field path of every error. The converter decides what each
//! value is and hands it, as a `Cell`, to an `Encoder`, which writes it in its wire format:
//! JSON (insertAll rows, load files: `json_row`) or protobuf (the Storage Write API). Pure;
//! no I/O, no batching.
//!
//! The text forms BigQuery accepts for each type are those of
//! https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types.

use super::schema::{Field, FieldMode, FieldType, Schema, field_index};
use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head, MsgpackError};
use crate::event::EventTime;
use crate::fluentd::ruby;
use crate::format::json::{self, Extra, Full};
use base64::Engine;
use std::fmt::Write as _;
use std::ops::Range;

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
    pub fn leaf(reason: impl Into<String>) -> Self {
        Self(Box::new(RowErrorAt {
            field: String::new(),
            reason: reason.into(),
        }))
    }

    /// The error happened inside the field `name`.
    #[cold]
    pub fn under(mut self, name: &str) -> Self {
        self.field = match self.field.as_bytes().first() {
            None => name.to_owned(),
            Some(b'[') => format!("{name}{}", self.field),
            Some(_) => format!("{name}.{}", self.field),
        };
        self
    }

    /// The error happened in element `index` of an array.
    #[cold]
    pub fn at(mut self, index: u32) -> Self {
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

/// Why a row stopped: the encoder needs more room (it writes into room made ahead), or the
/// record cannot be converted.
#[derive(Debug)]
pub enum Stop {
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

impl Stop {
    /// The error happened inside the field `name`.
    #[cold]
    fn under(self, name: &str) -> Self {
        match self {
            Stop::Row(e) => Stop::Row(e.under(name)),
            full => full,
        }
    }

    #[cold]
    fn at(self, index: u32) -> Self {
        match self {
            Stop::Row(e) => Stop::Row(e.at(index)),
            full => full,
        }
    }
}

/// A value converted for its column, in terms every wire format can write. Which cells a
/// column gets (the encoders rely on it):
///
/// | column | cells |
/// |---|---|
/// | INTEGER | `Int`, `BigInt` (compat: Ruby bignums, out-of-range truncations) |
/// | FLOAT | `Int`, `UInt`, `Float` |
/// | NUMERIC, BIGNUMERIC | `Int`, `UInt`, `Float` (finite), `Decimal`, `Text` |
/// | BOOLEAN | `Bool` |
/// | STRING, GEOGRAPHY | `Str`, `Text` |
/// | BYTES | `Bytes`, `Base64` |
/// | TIMESTAMP | `Int`, `UInt`, `Float` (epoch seconds), `Seconds`, `EventTime`, `Civil`, compat: `Str`, `Raw` |
/// | DATE, TIME, DATETIME | `EventTime`, `Civil`, compat: `Raw` |
/// | JSON | `Text` (JSON text), compat: `Raw` |
///
/// and `Null` for any NULLABLE column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above i64.
    UInt(u64),
    /// The decimal digits of an integer beyond 64 bits.
    BigInt(&'a str),
    Float(f64),
    /// A record's string (or binary) value as it came; not checked as UTF-8.
    Str(&'a [u8]),
    /// Text the converter made: a number as text, Ruby's `to_s`, a value's JSON text.
    Text(&'a str),
    /// Binary for BYTES.
    Bytes(&'a [u8]),
    /// A base64 string for BYTES, canonical once `pad` `=` are appended.
    Base64 {
        text: &'a [u8],
        pad: usize,
    },
    /// Validated NUMERIC text: `[+-]digits[.digits][e[+-]digits]`.
    Decimal(&'a [u8]),
    /// Exact epoch seconds with nanoseconds (an injected event time into TIMESTAMP).
    Seconds {
        secs: i64,
        nanos: u32,
    },
    /// fluentd's EventTime extension into a civil column.
    EventTime {
        secs: u32,
        nanos: u32,
    },
    /// A string of the column's text form (ASCII, no escapes needed); `cut`: fraction
    /// digits beyond microseconds to leave out.
    Civil {
        text: &'a [u8],
        cut: Option<(usize, usize)>,
    },
    /// A value passed through as it is, for BigQuery to judge (compat): its msgpack bytes.
    Raw(&'a [u8]),
}

/// Where a key's value goes: a field of the schema (its index among its siblings, for
/// wire formats that number fields), or nowhere the schema knows.
#[derive(Debug, Clone, Copy)]
pub struct Target<'f> {
    pub field: Option<(usize, &'f Field)>,
}

/// What a row is written with. The converter calls, for a row:
/// `begin_row`, then per key `key` / `nested_key` / `raw_key` followed by one value (`value`,
/// `unknown`, or a `begin_record` … `end_record` / `begin_array` (`element` + value)* `end_array`
/// group), then `end_row`. A NULLABLE value that is absent is simply not written; one that is
/// null is `value(Cell::Null)`.
pub trait Encoder {
    /// What the encoder keeps for a top-level key it will see again in the next records (its
    /// JSON text, a protobuf tag): made once per key position, reused while records repeat
    /// their keys.
    type Key;

    fn make_key(&self, name: &[u8], target: Target<'_>) -> Self::Key;

    fn begin_row(&mut self) -> Result<(), Stop>;
    fn end_row(&mut self) -> Result<(), Stop>;
    /// A top-level key.
    fn key(&mut self, key: &Self::Key) -> Result<(), Stop>;
    /// A key of a nested record.
    fn nested_key(&mut self, name: &[u8], target: Target<'_>) -> Result<(), Stop>;
    /// A key that is not a string (never a schema field): its msgpack bytes.
    fn raw_key(&mut self, key: &[u8]) -> Result<(), Stop>;
    /// The value of the last key, converted for `field`.
    fn value(&mut self, field: &Field, cell: Cell<'_>) -> Result<(), Stop>;
    /// The usual values, which the converter hands over without making a `Cell` (an
    /// encoder may write them without matching on the cell again): a string into a STRING
    /// column,
    #[inline(always)]
    fn str_value(&mut self, field: &Field, s: &[u8]) -> Result<(), Stop> {
        self.value(field, Cell::Str(s))
    }
    /// an integer within ±(2^53-1) into an INTEGER column,
    #[inline(always)]
    fn int_value(&mut self, field: &Field, n: i64) -> Result<(), Stop> {
        self.value(field, Cell::Int(n))
    }
    /// a finite float into a FLOAT column,
    #[inline(always)]
    fn float_value(&mut self, field: &Field, f: f64) -> Result<(), Stop> {
        self.value(field, Cell::Float(f))
    }
    /// and an injected event time into a TIMESTAMP column.
    #[inline(always)]
    fn seconds_value(&mut self, field: &Field, secs: i64, nanos: u32) -> Result<(), Stop> {
        self.value(field, Cell::Seconds { secs, nanos })
    }
    /// The value of the last key, which no schema field takes: its msgpack bytes.
    fn unknown(&mut self, value: &[u8]) -> Result<(), Stop>;
    fn begin_record(&mut self, field: &Field) -> Result<(), Stop>;
    fn end_record(&mut self, field: &Field) -> Result<(), Stop>;
    fn begin_array(&mut self, field: &Field) -> Result<(), Stop>;
    /// Before each element of the array.
    fn element(&mut self, field: &Field) -> Result<(), Stop>;
    fn end_array(&mut self, field: &Field) -> Result<(), Stop>;
}

/// What a record's key at one position was last time, and the encoder's key for it: records
/// that repeat their keys' order (those of one source nearly always do) skip the schema
/// lookup and the encoder's work on the name.
struct KeySlot<K> {
    key: Key,
    role: KeyRole,
    encoded: K,
}

#[derive(Clone, Copy)]
enum KeyRole {
    /// An injected field of the same name replaces it.
    Replaced,
    Field(usize),
    Unknown,
}

struct ExtraSlot<K> {
    name: Key,
    field: Option<usize>,
    encoded: K,
    /// The last text checked as a DATE / TIME / DATETIME / TIMESTAMP (an injected time,
    /// formatted per event: its text changes in the fraction every event, elsewhere once a
    /// second).
    civil: CivilMemo,
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

/// `a == b` by `key_words` (two loads each, for up to 32 bytes) rather than a `memcmp` call:
/// for the short texts compared once per row, such as a formatted time's text around its
/// fraction.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && match (key_words(a), key_words(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        }
}

/// The `N` bytes of `s` at `at` as an array.
#[inline(always)]
fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&s[at..at + N]);
    w
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

/// Converts records of one table, remembering by position what each top-level key turned
/// out to be (schema field, replaced by an injected field, or unknown) and the encoder's key.
/// A key that differs from the one remembered at its position is looked up in full.
pub struct RowConverter<'s, K> {
    schema: &'s Schema,
    compat: bool,
    /// Leave out keys the schema lacks whose value is null, `[]` or `{}` (schema evolution:
    /// they make no column, and carry nothing a column would hold).
    drop_untyped: bool,
    keys: Vec<KeySlot<K>>,
    extras: Vec<ExtraSlot<K>>,
    /// Bit i set: top-level field i is REQUIRED (schemas of up to 64 fields; larger ones are
    /// checked field by field).
    required: Option<u64>,
    /// Text the less usual conversions make (numbers as text, JSON text of values).
    scratch: String,
    /// msgpack of an injected field no schema field takes.
    raw: Vec<u8>,
}

impl<'s, K> RowConverter<'s, K> {
    pub fn new(schema: &'s Schema, conversion: Conversion) -> Self {
        let required = (schema.fields.len() <= 64).then(|| {
            schema
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.mode == FieldMode::Required)
                .fold(0u64, |mask, (i, _)| mask | 1 << i)
        });
        Self {
            schema,
            compat: conversion == Conversion::Compat,
            drop_untyped: false,
            keys: Vec::new(),
            extras: Vec::new(),
            required,
            scratch: String::new(),
            raw: Vec::new(),
        }
    }

    pub fn schema(&self) -> &'s Schema {
        self.schema
    }

    /// Keys the schema lacks are left out of the row when their value is null, `[]` or `{}`
    /// (see `evolve`: such a value makes no column, and BigQuery would refuse the key).
    pub fn drop_untyped_unknown(&mut self, drop: bool) {
        self.drop_untyped = drop;
    }

    /// One row for `record`, followed by `extras` (injected fields: an extra replaces a
    /// same-named record key, and is converted by the schema as the plugin injects before
    /// converting). Unknown keys go to the encoder (BigQuery rejects them unless
    /// ignoreUnknownValues, as the plugin does). Inlined into its one caller per encoder, so
    /// an encoder's write position can stay in registers across the keys.
    #[inline(always)]
    pub fn convert<E: Encoder<Key = K>>(
        &mut self,
        record: &[u8],
        extras: &[(&str, Extra<'_>)],
        enc: &mut E,
    ) -> Result<(), Stop> {
        let mut cur = Cursor::new(record);
        let Head::Map(pairs) = cur.head()? else {
            return Err(RowError::leaf("record is not a msgpack map").into());
        };
        let rules = Rules {
            compat: self.compat,
            drop_untyped: self.drop_untyped,
        };
        let fields = &self.schema.fields;
        let mut seen = Seen::new(fields.len());
        let mut hint = 0usize;
        let scratch = &mut self.scratch;
        enc.begin_row()?;
        for position in 0..pairs as usize {
            let key_start = cur.position();
            let key = match cur.head()? {
                Head::Str(n) | Head::Bin(n) => take(&mut cur, n)?,
                _ => {
                    rules.non_string_key(key_start, &mut cur, enc)?;
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
                    let target = Target {
                        field: match role {
                            KeyRole::Field(i) => Some((i, &fields[i])),
                            _ => None,
                        },
                    };
                    let slot = KeySlot {
                        key: Key::new(key),
                        role,
                        encoded: enc.make_key(key, target),
                    };
                    if position < self.keys.len() {
                        self.keys[position] = slot;
                        &self.keys[position]
                    } else if position == self.keys.len() && position < MAX_KEY_SLOTS {
                        self.keys.push(slot);
                        &self.keys[position]
                    } else {
                        // Not remembered (past the bound, or after a gap): used once.
                        rules.key_value(
                            fields, &slot, &mut seen, &mut hint, &mut cur, enc, scratch,
                        )?;
                        continue;
                    }
                }
            };
            rules.key_value(fields, slot, &mut seen, &mut hint, &mut cur, enc, scratch)?;
        }
        rules.extras(
            &mut self.extras,
            fields,
            extras,
            &mut seen,
            enc,
            scratch,
            &mut self.raw,
        )?;
        if !rules.compat {
            check_required(fields, &seen, self.required)?;
        }
        enc.end_row()
    }
}

/// The conversion rules of one mode.
#[derive(Clone, Copy)]
struct Rules {
    compat: bool,
    drop_untyped: bool,
}

/// A value's head with its payload already taken; containers leave the cursor on their first
/// child. `start` is where its msgpack begins (for values passed through as they are).
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

fn take<'a>(cur: &mut Cursor<'a>, n: u32) -> Result<&'a [u8], MsgpackError> {
    let range = cur.take(n as usize)?;
    Ok(cur.slice(range))
}

#[cold]
fn cannot(val: Val<'_>, ty: FieldType) -> RowError {
    RowError::leaf(format!(
        "cannot convert {} to {}",
        val.describe(),
        ty.as_str()
    ))
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

/// Consumes the next value if it holds no value at all (null, or arrays and maps of only
/// such values: `[]`, `{}`, `[null]`, `{"a": null}`); leaves the cursor where it was otherwise.
fn next_is_untyped(cur: &mut Cursor<'_>) -> Result<bool, MsgpackError> {
    let pos = cur.position();
    let untyped = untyped_value(cur, DEFAULT_MAX_DEPTH)?;
    if !untyped {
        cur.set_position(pos);
    }
    Ok(untyped)
}

/// Reads one value; true if it holds no value (the cursor is then past it).
fn untyped_value(cur: &mut Cursor<'_>, depth: usize) -> Result<bool, MsgpackError> {
    if depth == 0 {
        return Ok(false);
    }
    match cur.head()? {
        Head::Nil => Ok(true),
        Head::Array(n) => {
            for _ in 0..n {
                if !untyped_value(cur, depth - 1)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Head::Map(n) => {
            for _ in 0..n {
                cur.skip_value(DEFAULT_MAX_DEPTH)?;
                if !untyped_value(cur, depth - 1)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The msgpack bytes of the value whose head began at `start` (payload of a scalar already
/// taken, or the cursor on a container's first child): the rest of it is skipped.
fn raw_from<'a>(
    cur: &mut Cursor<'a>,
    start: usize,
    val: Val<'_>,
) -> Result<&'a [u8], MsgpackError> {
    match val {
        Val::Array(n) => {
            for _ in 0..n {
                cur.skip_value(DEFAULT_MAX_DEPTH)?;
            }
        }
        Val::Map(n) => {
            for _ in 0..2 * u64::from(n) {
                cur.skip_value(DEFAULT_MAX_DEPTH)?;
            }
        }
        _ => {}
    }
    let end = cur.position();
    Ok(cur.slice(start..end))
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

/// REQUIRED fields the record and extras did not give.
fn check_required(fields: &[Field], seen: &Seen, required: Option<u64>) -> Result<(), RowError> {
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

impl Rules {
    /// One top-level key (already read, its role decided) and its value.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn key_value<E: Encoder>(
        self,
        fields: &[Field],
        slot: &KeySlot<E::Key>,
        seen: &mut Seen,
        hint: &mut usize,
        cur: &mut Cursor<'_>,
        enc: &mut E,
        scratch: &mut String,
    ) -> Result<(), Stop> {
        if matches!(slot.role, KeyRole::Replaced) {
            cur.skip_value(DEFAULT_MAX_DEPTH)?;
            return Ok(());
        }
        if self.compat && next_is_nil(cur)? {
            // The plugin skips nil values (`next if value.nil?`).
            return Ok(());
        }
        if self.drop_untyped && matches!(slot.role, KeyRole::Unknown) && next_is_untyped(cur)? {
            return Ok(());
        }
        enc.key(&slot.encoded)?;
        match slot.role {
            KeyRole::Field(i) => {
                *hint = i + 1;
                seen.set(i);
                let field = &fields[i];
                self.field(field, cur, enc, scratch)
                    .map_err(|e| e.under(&field.name))
            }
            _ => {
                let start = cur.position();
                cur.skip_value(DEFAULT_MAX_DEPTH)?;
                enc.unknown(cur.slice(start..cur.position()))
            }
        }
    }

    /// The injected fields, after the record's own; `slots` remembers them by position.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn extras<E: Encoder>(
        self,
        slots: &mut Vec<ExtraSlot<E::Key>>,
        fields: &[Field],
        extras: &[(&str, Extra<'_>)],
        seen: &mut Seen,
        enc: &mut E,
        scratch: &mut String,
        raw: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        for (position, (name, extra)) in extras.iter().enumerate() {
            if slots
                .get(position)
                .is_none_or(|slot| !slot.name.matches(name.as_bytes()))
            {
                let field = field_index(fields, name.as_bytes());
                let target = Target {
                    field: field.map(|i| (i, &fields[i])),
                };
                let slot = ExtraSlot {
                    name: Key::new(name.as_bytes()),
                    field,
                    encoded: enc.make_key(name.as_bytes(), target),
                    civil: CivilMemo::default(),
                };
                slots.truncate(position);
                slots.push(slot);
            }
            let slot = &mut slots[position];
            enc.key(&slot.encoded)?;
            let Some(i) = slot.field else {
                unknown_extra(extra, enc, raw)?;
                continue;
            };
            seen.set(i);
            let field = &fields[i];
            if let Extra::Time(time) = extra
                && let Some(Cell::Seconds { secs, nanos }) = exact_seconds(field, *time)
            {
                enc.seconds_value(field, secs, nanos)?;
                continue;
            }
            // A formatted time into a civil column: its shape as the last one's when only the
            // fraction's digits differ. A text that fails the check goes the usual way (a
            // number of epoch seconds, or the error).
            if let Extra::Str(text) = extra
                && !self.compat
                && field.mode != FieldMode::Repeated
                && let Some(cut) = slot.civil.shape(field.field_type, text.as_bytes())
            {
                enc.value(
                    field,
                    Cell::Civil {
                        text: text.as_bytes(),
                        cut,
                    },
                )?;
                continue;
            }
            let val = Val::from_extra(extra);
            if self.usual(field, val, enc)? {
                continue;
            }
            self.field_value(field, val, 0, &mut Cursor::new(&[]), enc, scratch)
                .map_err(|e| e.under(&field.name))?;
        }
        Ok(())
    }

    /// A key that is not a string (the cursor on it, at `key_start`) and its value: never a
    /// schema field.
    fn non_string_key<E: Encoder>(
        self,
        key_start: usize,
        cur: &mut Cursor<'_>,
        enc: &mut E,
    ) -> Result<(), Stop> {
        cur.set_position(key_start);
        cur.skip_value(DEFAULT_MAX_DEPTH)?;
        let key = cur.slice(key_start..cur.position());
        if self.compat && next_is_nil(cur)? {
            return Ok(());
        }
        enc.raw_key(key)?;
        let start = cur.position();
        cur.skip_value(DEFAULT_MAX_DEPTH)?;
        enc.unknown(cur.slice(start..cur.position()))
    }

    /// A nested RECORD's `pairs` entries (cursor after the map head).
    fn record<E: Encoder>(
        self,
        field: &Field,
        cur: &mut Cursor<'_>,
        pairs: u32,
        enc: &mut E,
        scratch: &mut String,
    ) -> Result<(), Stop> {
        let fields = &field.fields;
        let mut seen = Seen::new(fields.len());
        let mut hint = 0usize;
        enc.begin_record(field)?;
        for _ in 0..pairs {
            let key_start = cur.position();
            let key = match cur.head()? {
                Head::Str(n) | Head::Bin(n) => take(cur, n)?,
                _ => {
                    self.non_string_key(key_start, cur, enc)?;
                    continue;
                }
            };
            if self.compat && next_is_nil(cur)? {
                // The plugin skips nil values (`next if value.nil?`), so a nil under an
                // unknown key never reaches BigQuery as "no such field".
                continue;
            }
            match find_field(fields, hint, key) {
                Some(i) => {
                    hint = i + 1;
                    seen.set(i);
                    let sub = &fields[i];
                    enc.nested_key(
                        key,
                        Target {
                            field: Some((i, sub)),
                        },
                    )?;
                    self.field(sub, cur, enc, scratch)
                        .map_err(|e| e.under(&sub.name))?;
                }
                None if self.drop_untyped && next_is_untyped(cur)? => {}
                None => {
                    enc.nested_key(key, Target { field: None })?;
                    let start = cur.position();
                    cur.skip_value(DEFAULT_MAX_DEPTH)?;
                    enc.unknown(cur.slice(start..cur.position()))?;
                }
            }
        }
        if !self.compat {
            check_required(fields, &seen, None)?;
        }
        enc.end_record(field)
    }

    /// The next value of the record, for `field`.
    #[inline(always)]
    fn field<'r, E: Encoder>(
        self,
        field: &Field,
        cur: &mut Cursor<'r>,
        enc: &mut E,
        scratch: &mut String,
    ) -> Result<(), Stop> {
        let start = cur.position();
        let val = Val::read(cur)?;
        if self.usual(field, val, enc)? {
            return Ok(());
        }
        self.field_value(field, val, start, cur, enc, scratch)
    }

    /// The usual pairs of a column type and a value of that type, handed over without a
    /// `Cell`; false (nothing written) for everything else.
    #[inline(always)]
    fn usual<E: Encoder>(self, field: &Field, val: Val<'_>, enc: &mut E) -> Result<bool, Stop> {
        const SAFE: i64 = (1 << 53) - 1;
        if field.mode == FieldMode::Repeated {
            return Ok(false);
        }
        match (field.field_type, val) {
            (FieldType::String, Val::Str(s)) if !self.compat => enc.str_value(field, s)?,
            (FieldType::Integer, Val::Int(n)) if (-SAFE..=SAFE).contains(&n) => {
                enc.int_value(field, n)?
            }
            (FieldType::Integer, Val::Uint(n)) if n <= SAFE as u64 => {
                enc.int_value(field, n as i64)?
            }
            (FieldType::Float, Val::Float(f)) if f.is_finite() => enc.float_value(field, f)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// One field's value, per its mode.
    fn field_value<'r, E: Encoder>(
        self,
        field: &Field,
        val: Val<'r>,
        start: usize,
        cur: &mut Cursor<'r>,
        enc: &mut E,
        scratch: &mut String,
    ) -> Result<(), Stop> {
        match (field.mode, val) {
            // BigQuery rejects null array elements and null arrays; an absent list is empty.
            (FieldMode::Repeated, Val::Nil) => {
                enc.begin_array(field)?;
                enc.end_array(field)
            }
            (FieldMode::Repeated, Val::Array(n)) => {
                enc.begin_array(field)?;
                for i in 0..n {
                    let elem_start = cur.position();
                    let elem = Val::read(cur).map_err(|e| RowError::from(e).at(i))?;
                    if matches!(elem, Val::Nil) {
                        continue;
                    }
                    enc.element(field)?;
                    self.value(field, elem, elem_start, cur, enc, scratch, true)
                        .map_err(|e| e.at(i))?;
                }
                enc.end_array(field)
            }
            (FieldMode::Repeated, other) if self.compat => {
                // The plugin would call `each` on it; wrapping keeps the value.
                enc.begin_array(field)?;
                enc.element(field)?;
                self.value(field, other, start, cur, enc, scratch, true)?;
                enc.end_array(field)
            }
            (FieldMode::Repeated, other) => Err(RowError::leaf(format!(
                "REPEATED field needs an array, got {}",
                other.describe()
            ))
            .into()),
            (FieldMode::Required, Val::Nil) if !self.compat => {
                Err(RowError::leaf("missing required field").into())
            }
            (_, Val::Nil) => enc.value(field, Cell::Null),
            (_, val) => self.value(field, val, start, cur, enc, scratch, false),
        }
    }

    /// One non-null value converted to `field`'s type. `in_array`: an element of a REPEATED
    /// field (the plugin formats those with `is_load: true`).
    #[allow(clippy::too_many_arguments)]
    fn value<'r, E: Encoder>(
        self,
        field: &Field,
        val: Val<'r>,
        start: usize,
        cur: &mut Cursor<'r>,
        enc: &mut E,
        scratch: &mut String,
        in_array: bool,
    ) -> Result<(), Stop> {
        let ty = field.field_type;
        scratch.clear();
        let cell = match ty {
            FieldType::Record => {
                return match val {
                    Val::Map(pairs) => self.record(field, cur, pairs, enc, scratch),
                    other => Err(RowError::leaf(format!(
                        "RECORD needs a map, got {}",
                        other.describe()
                    ))
                    .into()),
                };
            }
            FieldType::Integer => self.integer(val, scratch)?,
            FieldType::Float => self.float(val)?,
            FieldType::Numeric | FieldType::BigNumeric => self.numeric(val, cur, scratch)?,
            FieldType::Boolean => self.boolean(val)?,
            FieldType::String | FieldType::Geography => self.string(val, cur, scratch)?,
            FieldType::Bytes => bytes(val)?,
            FieldType::Timestamp => self.timestamp(val, start, cur)?,
            FieldType::Date | FieldType::Time | FieldType::DateTime => {
                self.civil(ty, val, start, cur)?
            }
            FieldType::Json => {
                // insertAll wants a JSON column's value as a string holding JSON text (the
                // plugin's `MultiJson.dump`; google-cloud-python's insert_rows does the same,
                // googleapis/python-bigquery#1756). A string value is thus stored as a JSON
                // string, not parsed. The plugin leaves REPEATED JSON elements raw.
                if self.compat && in_array {
                    Cell::Raw(raw_from(cur, start, val)?)
                } else {
                    json_text(val, cur, scratch)?;
                    Cell::Text(scratch)
                }
            }
        };
        enc.value(field, cell)
    }

    fn integer<'c, 'r: 'c>(
        self,
        val: Val<'r>,
        scratch: &'c mut String,
    ) -> Result<Cell<'c>, RowError> {
        const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
        Ok(match val {
            Val::Int(n) => Cell::Int(n),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => Cell::Int(n),
                Err(_) if self.compat => {
                    let _ = write!(scratch, "{n}");
                    Cell::BigInt(scratch)
                }
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
                    Cell::Int(t as i64)
                } else {
                    let _ = write!(scratch, "{t:.0}");
                    Cell::BigInt(scratch)
                }
            }
            Val::Float(f) if f.is_finite() && f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) => {
                Cell::Int(f as i64)
            }
            Val::Time(secs, _) => Cell::Int(i64::from(secs)),
            Val::Str(s) | Val::Bin(s) if self.compat => {
                *scratch = ruby::to_i(s);
                match scratch.parse::<i64>() {
                    Ok(n) => Cell::Int(n),
                    Err(_) => Cell::BigInt(scratch),
                }
            }
            Val::Str(s) | Val::Bin(s) => match parse_int(s) {
                Some(n) => Cell::Int(n),
                None => return Err(cannot(val, FieldType::Integer)),
            },
            _ => return Err(cannot(val, FieldType::Integer)),
        })
    }

    fn float<'a>(self, val: Val<'a>) -> Result<Cell<'a>, RowError> {
        Ok(match val {
            Val::Int(n) => Cell::Int(n),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => Cell::Int(n),
                Err(_) => Cell::UInt(n),
            },
            Val::Float(f) => Cell::Float(f),
            Val::Time(secs, nanos) => Cell::Float(f64::from(secs) + f64::from(nanos) / 1e9),
            Val::Str(s) | Val::Bin(s) if self.compat => Cell::Float(ruby::to_f(s)),
            Val::Str(s) | Val::Bin(s) => match parse_float(s) {
                Some(f) => Cell::Float(f),
                None => return Err(cannot(val, FieldType::Float)),
            },
            _ => return Err(cannot(val, FieldType::Float)),
        })
    }

    fn numeric<'c, 'r: 'c>(
        self,
        val: Val<'r>,
        cur: &mut Cursor<'r>,
        scratch: &'c mut String,
    ) -> Result<Cell<'c>, RowError> {
        if self.compat {
            // The plugin sends `value.to_s`.
            return ruby_to_s(val, cur, scratch);
        }
        Ok(match val {
            Val::Int(n) => Cell::Int(n),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => Cell::Int(n),
                Err(_) => Cell::UInt(n),
            },
            // NUMERIC has no NaN or infinity.
            Val::Float(f) if f.is_finite() => Cell::Float(f),
            Val::Time(secs, nanos) if nanos < 1_000_000_000 => {
                // Exact: NUMERIC keeps 9 decimal places.
                let _ = write!(scratch, "{secs}.{nanos:09}");
                Cell::Text(scratch)
            }
            Val::Str(s) | Val::Bin(s) if is_decimal(s) => Cell::Decimal(s),
            _ => return Err(cannot(val, FieldType::Numeric)),
        })
    }

    /// Strict accepts only unambiguous spellings ("true"/"false", 0/1).
    fn boolean<'a>(self, val: Val<'a>) -> Result<Cell<'a>, RowError> {
        Ok(Cell::Bool(match val {
            Val::Bool(b) => b,
            // Ruby's `!!value`: only nil (handled by the mode) and false are false.
            _ if self.compat => true,
            Val::Str(s) | Val::Bin(s) if s.eq_ignore_ascii_case(b"true") => true,
            Val::Str(s) | Val::Bin(s) if s.eq_ignore_ascii_case(b"false") => false,
            Val::Int(0) | Val::Uint(0) => false,
            Val::Int(1) | Val::Uint(1) => true,
            _ => return Err(cannot(val, FieldType::Boolean)),
        }))
    }

    fn string<'c, 'r: 'c>(
        self,
        val: Val<'r>,
        cur: &mut Cursor<'r>,
        scratch: &'c mut String,
    ) -> Result<Cell<'c>, RowError> {
        if self.compat {
            return ruby_to_s(val, cur, scratch);
        }
        Ok(match val {
            Val::Str(s) | Val::Bin(s) => Cell::Str(s),
            Val::Int(n) => {
                let _ = write!(scratch, "{n}");
                Cell::Text(scratch)
            }
            Val::Uint(n) => {
                let _ = write!(scratch, "{n}");
                Cell::Text(scratch)
            }
            Val::Float(f) if f.is_finite() => {
                // serde_json's text of a float, as the plugin's JSON would carry it.
                if let Ok(text) = serde_json::to_string(&f) {
                    *scratch = text;
                }
                Cell::Text(scratch)
            }
            Val::Float(f) => Cell::Text(non_finite_name(f)),
            Val::Bool(b) => Cell::Text(if b { "true" } else { "false" }),
            // Fluent::EventTime#to_s is its seconds; other extensions as format::json writes
            // them (base64).
            Val::Time(secs, _) => {
                let _ = write!(scratch, "{secs}");
                Cell::Text(scratch)
            }
            Val::Ext(b) => {
                base64::engine::general_purpose::STANDARD.encode_string(b, scratch);
                Cell::Text(scratch)
            }
            _ => {
                json_text(val, cur, scratch)?;
                Cell::Text(scratch)
            }
        })
    }

    fn timestamp<'a>(
        self,
        val: Val<'a>,
        start: usize,
        cur: &mut Cursor<'a>,
    ) -> Result<Cell<'a>, RowError> {
        Ok(match val {
            // Numbers are epoch seconds (insertAll takes numeric seconds as load jobs do).
            Val::Int(n) => Cell::Int(n),
            Val::Uint(n) => match i64::try_from(n) {
                Ok(n) => Cell::Int(n),
                Err(_) => Cell::UInt(n),
            },
            Val::Float(f) if f.is_finite() => Cell::Float(f),
            Val::Time(secs, nanos) => Cell::EventTime { secs, nanos },
            Val::Str(s) | Val::Bin(s) => {
                if let Some(n) = epoch_seconds(s, self.compat) {
                    match n {
                        Number::Int(i) => Cell::Int(i),
                        Number::Float(f) => Cell::Float(f),
                    }
                } else if self.compat {
                    // The plugin passes other strings through for BigQuery to judge.
                    Cell::Str(s)
                } else {
                    match shape(FieldType::Timestamp, s) {
                        Some(cut) => Cell::Civil { text: s, cut },
                        None => return Err(cannot(val, FieldType::Timestamp)),
                    }
                }
            }
            _ if self.compat => Cell::Raw(raw_from(cur, start, val)?),
            _ => return Err(cannot(val, FieldType::Timestamp)),
        })
    }

    /// DATE, TIME, DATETIME.
    fn civil<'a>(
        self,
        ty: FieldType,
        val: Val<'a>,
        start: usize,
        cur: &mut Cursor<'a>,
    ) -> Result<Cell<'a>, RowError> {
        Ok(match val {
            Val::Time(secs, nanos) => Cell::EventTime { secs, nanos },
            _ if self.compat => Cell::Raw(raw_from(cur, start, val)?),
            Val::Str(s) | Val::Bin(s) => match shape(ty, s) {
                Some(cut) => Cell::Civil { text: s, cut },
                None => return Err(cannot(val, ty)),
            },
            _ => return Err(cannot(val, ty)),
        })
    }
}

/// An injected field no schema field takes, as `<format> json` writes it: its value is
/// handed over as msgpack like an unknown record key's.
fn unknown_extra<E: Encoder>(
    extra: &Extra<'_>,
    enc: &mut E,
    raw: &mut Vec<u8>,
) -> Result<(), Stop> {
    raw.clear();
    match *extra {
        Extra::Str(s) => crate::codec::msgpack::write_str(raw, s),
        // Writing into a Vec cannot fail.
        Extra::Float(f) => {
            let _ = rmp::encode::write_f64(raw, f);
        }
        Extra::Time(t) => {
            let _ = rmp::encode::write_f64(raw, t.as_f64());
        }
        Extra::Int(i) => {
            let _ = rmp::encode::write_sint(raw, i);
        }
    }
    enc.unknown(raw)
}

/// An injected event time into a TIMESTAMP column as exact decimal seconds, which BigQuery
/// reads as it reads the float (`secs.nanos`, no float formatting on the way). Only for
/// times at or after the epoch.
fn exact_seconds(field: &Field, time: EventTime) -> Option<Cell<'static>> {
    (field.field_type == FieldType::Timestamp
        && field.mode != FieldMode::Repeated
        && time.secs >= 0
        && time.nanos < 1_000_000_000)
        .then_some(Cell::Seconds {
            secs: time.secs,
            nanos: time.nanos,
        })
}

/// BYTES travel as base64 (https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll
/// rows are JSON; BigQuery decodes BYTES from base64, googleapis/google-cloud-java#1603).
fn bytes(val: Val<'_>) -> Result<Cell<'_>, RowError> {
    match val {
        Val::Bin(b) | Val::Ext(b) => Ok(Cell::Bytes(b)),
        Val::Str(s) => match base64_padding(s) {
            Some(pad) => Ok(Cell::Base64 { text: s, pad }),
            None => {
                let mut e = cannot(val, FieldType::Bytes);
                e.reason.push_str(" (BYTES strings must be base64)");
                Err(e)
            }
        },
        _ => Err(cannot(val, FieldType::Bytes)),
    }
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

pub fn non_finite_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// `val`'s JSON text (format::json's mapping) into `scratch`.
fn json_text(val: Val<'_>, cur: &mut Cursor<'_>, scratch: &mut String) -> Result<(), MsgpackError> {
    let mut out = std::mem::take(scratch).into_bytes();
    out.clear();
    let written = plain(val, cur, &mut out);
    // format::json writes valid UTF-8 (invalid input is replaced).
    *scratch = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    written
}

/// The value's plain JSON (format::json's mapping).
fn plain(val: Val<'_>, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Result<(), MsgpackError> {
    match val {
        Val::Array(n) => json::write_array(n, cur, out, DEFAULT_MAX_DEPTH),
        Val::Map(n) => json::write_map(n, cur, out, DEFAULT_MAX_DEPTH),
        Val::Nil => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Val::Bool(b) => {
            out.extend_from_slice(if b { b"true" } else { b"false" });
            Ok(())
        }
        Val::Uint(n) => {
            json::write_integer(n, out);
            Ok(())
        }
        Val::Int(n) => {
            json::write_integer(n, out);
            Ok(())
        }
        Val::Float(f) if f.is_finite() => {
            json::write_finite_f64(f, out);
            Ok(())
        }
        Val::Float(_) => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Val::Str(s) | Val::Bin(s) => {
            json::write_bytes_as_str(s, out);
            Ok(())
        }
        Val::Time(secs, _) => {
            json::write_integer(secs, out);
            Ok(())
        }
        Val::Ext(b) => {
            json::write_str(&base64::engine::general_purpose::STANDARD.encode(b), out);
            Ok(())
        }
    }
}

/// Ruby's `to_s` as the plugin applies it to STRING and NUMERIC columns: Hash and Array as
/// their JSON (`MultiJson.dump`), everything else as its text.
fn ruby_to_s<'c, 'r: 'c>(
    val: Val<'r>,
    cur: &mut Cursor<'r>,
    scratch: &'c mut String,
) -> Result<Cell<'c>, RowError> {
    Ok(match val {
        Val::Str(s) | Val::Bin(s) => Cell::Str(s),
        Val::Int(n) => {
            let _ = write!(scratch, "{n}");
            Cell::Text(scratch)
        }
        Val::Uint(n) => {
            let _ = write!(scratch, "{n}");
            Cell::Text(scratch)
        }
        Val::Float(f) => {
            *scratch = ruby::float_to_s(f);
            Cell::Text(scratch)
        }
        Val::Bool(b) => Cell::Text(if b { "true" } else { "false" }),
        // Fluent::EventTime#to_s is its seconds.
        Val::Time(secs, _) => {
            let _ = write!(scratch, "{secs}");
            Cell::Text(scratch)
        }
        Val::Nil => Cell::Text(""),
        Val::Ext(b) => {
            base64::engine::general_purpose::STANDARD.encode_string(b, scratch);
            Cell::Text(scratch)
        }
        Val::Array(_) | Val::Map(_) => {
            json_text(val, cur, scratch)?;
            Cell::Text(scratch)
        }
    })
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

/// `[H]H:[M]M:[S]S[.F...]`; returns the end and the fraction's digits (empty when there is
/// none).
fn time_at(s: &[u8], pos: usize) -> Option<(usize, Range<usize>)> {
    let (_, p) = num(s, pos, 1, 2, 23)?;
    let p = byte(s, p, b':')?;
    let (_, p) = num(s, p, 1, 2, 59)?;
    let p = byte(s, p, b':')?;
    let (_, p) = num(s, p, 1, 2, 60)?;
    let Some(frac_start) = byte(s, p, b'.') else {
        return Some((p, p..p));
    };
    let digits = s[frac_start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let end = frac_start + digits;
    Some((end, frac_start..end))
}

/// The fraction digits beyond microseconds, which are cut (BigQuery keeps microseconds; the
/// data-types page allows up to six digits).
fn cut_of(fraction: Range<usize>) -> Option<(usize, usize)> {
    (fraction.len() > 6).then_some((fraction.start + 6, fraction.end))
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
pub fn shape(ty: FieldType, s: &[u8]) -> Option<Option<(usize, usize)>> {
    fraction(ty, s).map(cut_of)
}

/// Whether `s` has the text form of `ty`, and where its fraction's digits are (an empty range
/// when it has none).
fn fraction(ty: FieldType, s: &[u8]) -> Option<Range<usize>> {
    match ty {
        FieldType::Date => (date_at(s, 0)? == s.len()).then_some(0..0),
        FieldType::Time => {
            let (end, fraction) = time_at(s, 0)?;
            (end == s.len()).then_some(fraction)
        }
        FieldType::DateTime | FieldType::Timestamp => {
            let p = date_at(s, 0)?;
            let (p, fraction) = match s.get(p) {
                Some(b' ' | b'T' | b't') if s.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                    time_at(s, p + 1)?
                }
                _ => (p, 0..0),
            };
            let zoned = ty == FieldType::Timestamp && zone_ok(&s[p..]);
            (p == s.len() || zoned).then_some(fraction)
        }
        _ => None,
    }
}

/// The last text that had the shape of a civil type, and where its fraction's digits are. A
/// text of the same length that differs from it only within those digits, and has digits
/// there, has the same shape: only the fraction's length and place decide it, and the cut.
#[derive(Default)]
struct CivilMemo {
    ty: Option<FieldType>,
    text: Vec<u8>,
    fraction: Range<usize>,
}

impl CivilMemo {
    /// `shape(ty, s)`, remembered; `None` for a text without the shape (not remembered).
    #[inline]
    fn shape(&mut self, ty: FieldType, s: &[u8]) -> Option<Option<(usize, usize)>> {
        let Range { start, end } = self.fraction;
        if self.ty == Some(ty)
            && s.len() == self.text.len()
            && same(&s[..start], &self.text[..start])
            && same(&s[end..], &self.text[end..])
            && s[start..end].iter().all(u8::is_ascii_digit)
        {
            return Some(cut_of(start..end));
        }
        if !matches!(
            ty,
            FieldType::Date | FieldType::Time | FieldType::DateTime | FieldType::Timestamp
        ) {
            return None;
        }
        let fraction = fraction(ty, s)?;
        self.ty = Some(ty);
        self.text.clear();
        self.text.extend_from_slice(s);
        self.fraction = fraction.clone();
        Some(cut_of(fraction))
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Texts near the civil forms: the formats `<inject>` writes, with digits, separators and
    /// zones varied, so that a run of them has texts that differ in and out of the fraction.
    fn civil_text() -> impl Strategy<Value = String> {
        let digit =
            || proptest::sample::select(vec!["0", "1", "2", "5", "9", "10", "23", "60", "99"]);
        (
            proptest::sample::select(vec!["2026", "1970", "999", "x"]),
            digit(),
            digit(),
            proptest::sample::select(vec!["T", " ", "", "t", "_"]),
            digit(),
            digit(),
            digit(),
            proptest::sample::select(vec!["", ".", ".1", ".123456", ".123456789", ".12a"]),
            proptest::sample::select(vec!["", "Z", " UTC", "+09:00", "-0130", "Asia/Tokyo", "?"]),
        )
            .prop_map(|(y, mo, d, sep, h, mi, se, frac, zone)| {
                if sep.is_empty() {
                    format!("{y}-{mo}-{d}{zone}")
                } else {
                    format!("{y}-{mo}-{d}{sep}{h}:{mi}:{se}{frac}{zone}")
                }
            })
    }

    proptest! {
        /// The remembered shape is the shape of every text, one after another (one memo per
        /// type, as an injected field keeps one).
        #[test]
        fn remembered_civil_shapes_are_the_shapes(texts in proptest::collection::vec(civil_text(), 1..40)) {
            for ty in [FieldType::Timestamp, FieldType::DateTime, FieldType::Date, FieldType::Time] {
                let mut memo = CivilMemo::default();
                for text in &texts {
                    // Each text also with its fraction's digits changed (same length).
                    let other: String = text
                        .char_indices()
                        .map(|(i, c)| if i > 19 && c.is_ascii_digit() { char::from(b'0' + (i % 10) as u8) } else { c })
                        .collect();
                    for t in [text.as_str(), other.as_str()] {
                        prop_assert_eq!(memo.shape(ty, t.as_bytes()), shape(ty, t.as_bytes()), "{:?} {}", ty, t);
                    }
                }
            }
        }
    }

    #[test]
    fn remembered_civil_shape_rechecks_what_is_outside_the_fraction() {
        let mut memo = CivilMemo::default();
        let ts = FieldType::Timestamp;
        assert_eq!(
            memo.shape(ts, b"2026-12-03T10:00:00.123456789Z"),
            Some(Some((26, 29)))
        );
        assert_eq!(
            memo.shape(ts, b"2026-12-03T10:00:00.987654321Z"),
            Some(Some((26, 29)))
        );
        // A digit outside the fraction (the month) makes it a new text, checked again.
        assert_eq!(memo.shape(ts, b"2026-13-03T10:00:00.987654321Z"), None);
        // Not a digit inside it.
        assert_eq!(memo.shape(ts, b"2026-12-03T10:00:00.98765432?Z"), None);
        assert_eq!(
            memo.shape(ts, b"2026-12-03T10:00:01.000000001Z"),
            Some(Some((26, 29)))
        );
        assert_eq!(
            memo.shape(FieldType::String, b"2026-12-03T10:00:01.000000001Z"),
            None
        );
        assert_eq!(memo.shape(FieldType::Date, b"2026-12-03"), Some(None));
        assert_eq!(memo.shape(FieldType::Date, b"2026-12-04"), Some(None));
        assert_eq!(memo.shape(FieldType::Date, b"2026-12-4x"), None);
    }

    /// The word compares of remembered keys see a difference at every position of every length.
    /// A map head claiming 2^31 or more pairs (found by fuzz/rows): its entries are counted
    /// without overflowing, and the short value is refused.
    #[test]
    fn a_map_of_more_pairs_than_half_of_u32_is_refused_not_overflowed() {
        let bytes = [0xdf, 0x80, 0, 0, 0, 0xc0];
        let mut cur = Cursor::new(&bytes);
        let Ok(Head::Map(n)) = cur.head() else {
            panic!("a map head");
        };
        assert!(raw_from(&mut cur, 0, Val::Map(n)).is_err());
    }

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
}
