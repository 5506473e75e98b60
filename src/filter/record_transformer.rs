//! `@type record_transformer`: fluentd's filter_record_transformer without Ruby. `<record>`
//! values with `${tag}`, `${tag_parts[N]}`, `${tag_prefix[N]}`, `${tag_suffix[N]}`,
//! `${hostname}`, `${time}`, `${record["key"]}`; remove_keys, keep_keys, renew_record,
//! renew_time_key, auto_typecast. Records are rebuilt as msgpack from the original bytes; the
//! usual case (keys fixed for the batch, top-level removals) appends to a copy of the record's
//! entries in one buffer per batch, without taking the record apart.

use super::{Filter, RecordError};
use crate::codec::msgpack::{self, Cursor, DEFAULT_MAX_DEPTH, Head};
use crate::config::{ConfigError, Section};
use crate::event::{Event, EventTime};
use crate::fluentd::accessor::{KeyPath, to_text};
use bytes::Bytes;
use memchr::memmem;
use std::borrow::Cow;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Tag,
    TagPart(i64),
    TagPrefix(i64),
    TagSuffix(i64),
    Hostname,
    Time,
    Field(KeyPath),
}

/// A string with placeholders, compiled once.
#[derive(Debug, Clone)]
struct Text(Vec<Piece>);

/// A `<record>` value: a string with placeholders, or JSON (`{...}` / `[...]`) whose strings
/// may hold placeholders.
#[derive(Debug, Clone)]
enum Value {
    Text(Text),
    Encoded(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Text, Value)>),
}

static RECORD_PATH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r#"\A(?:\[(?:"[^"]+"|'[^']+')\])+\z"#).expect("valid regex")
});

const SUPPORTED: &str = "${tag}, ${tag_parts[N]}, ${tag_prefix[N]}, ${tag_suffix[N]}, ${hostname}, ${time}, ${record[\"key\"]}";

impl Text {
    fn parse(source: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            if start > 0 {
                pieces.push(Piece::Literal(rest[..start].into()));
            }
            let name = &rest[start + 2..start + len];
            pieces.push(placeholder(name).ok_or_else(|| {
                format!("unsupported placeholder '${{{name}}}' in '{source}' (supported without Ruby: {SUPPORTED})")
            })?);
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.into()));
        }
        Ok(Self(pieces))
    }

    /// Whether it reads the event (its record or time); otherwise it is the same for a batch.
    fn per_event(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Time | Piece::Field(_)))
    }
}

impl Value {
    fn per_event(&self) -> bool {
        match self {
            Value::Text(text) => text.per_event(),
            Value::Encoded(_) => false,
            Value::Array(items) => items.iter().any(Value::per_event),
            Value::Map(pairs) => pairs.iter().any(|(k, v)| k.per_event() || v.per_event()),
        }
    }
}

fn placeholder(name: &str) -> Option<Piece> {
    match name {
        "tag" => return Some(Piece::Tag),
        "hostname" => return Some(Piece::Hostname),
        "time" => return Some(Piece::Time),
        _ => {}
    }
    let indexed = |prefix: &str| -> Option<i64> {
        name.strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?
            .trim()
            .parse()
            .ok()
    };
    if let Some(n) = indexed("tag_parts") {
        return Some(Piece::TagPart(n));
    }
    if let Some(n) = indexed("tag_prefix") {
        return Some(Piece::TagPrefix(n));
    }
    if let Some(n) = indexed("tag_suffix") {
        return Some(Piece::TagSuffix(n));
    }
    // record["key"], record['key'], and nested record["a"]["b"].
    let path = name.strip_prefix("record")?;
    if !RECORD_PATH.is_match(path) {
        return None;
    }
    let path = KeyPath::parse(&format!("${path}")).ok()?;
    Some(Piece::Field(path))
}

fn value_from_json(json: &serde_json::Value) -> Result<Value, String> {
    Ok(match json {
        serde_json::Value::String(s) => Value::Text(Text::parse(s)?),
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .map(value_from_json)
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| Ok((Text::parse(k)?, value_from_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => Value::Encoded(rmp_serde::to_vec(other).map_err(|e| e.to_string())?),
    })
}

/// What placeholders read for one batch: the tag and its parts (a batch has one tag).
struct TagContext<'a> {
    tag: &'a str,
    parts: Vec<&'a str>,
}

impl<'a> TagContext<'a> {
    fn new(tag: &'a str) -> Self {
        Self {
            tag,
            parts: tag.split('.').collect(),
        }
    }

    /// Index `n` (negative from the end) into a list of `len`, as fluentd stores both forms.
    fn index(&self, n: i64) -> Option<usize> {
        let len = self.parts.len() as i64;
        let i = if n < 0 { len + n } else { n };
        (0..len).contains(&i).then_some(i as usize)
    }

    fn part(&self, n: i64) -> Option<Cow<'a, str>> {
        self.index(n).map(|i| Cow::Borrowed(self.parts[i]))
    }

    fn prefix(&self, n: i64) -> Option<Cow<'a, str>> {
        self.index(n)
            .map(|i| Cow::Owned(self.parts[..=i].join(".")))
    }

    fn suffix(&self, n: i64) -> Option<Cow<'a, str>> {
        self.index(n).map(|i| Cow::Owned(self.parts[i..].join(".")))
    }
}

pub struct RecordTransformer {
    id: String,
    record: Vec<(Text, Value)>,
    remove_keys: Vec<KeyPath>,
    keep_keys: Vec<String>,
    renew_record: bool,
    renew_time_key: Option<String>,
    auto_typecast: bool,
    hostname: String,
}

impl RecordTransformer {
    pub fn from_config(id: String, s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        if s.bool("enable_ruby")? == Some(true) {
            return Err(ConfigError::at(
                s.location(),
                format!(
                    "enable_ruby true is not supported by bqforward (it cannot run Ruby): remove it and use the placeholders that work without Ruby ({SUPPORTED}), or set fields upstream"
                ),
            ));
        }
        let mut record = Vec::new();
        for element in s.sections("record") {
            for param in &element.params {
                let at = |e: String| ConfigError::at(&param.location, e);
                let key = Text::parse(&param.key).map_err(at)?;
                let value = if param.value.starts_with(['{', '[']) {
                    match serde_json::from_str::<serde_json::Value>(&param.value) {
                        Ok(json) => value_from_json(&json).map_err(at)?,
                        Err(_) => Value::Text(Text::parse(&param.value).map_err(at)?),
                    }
                } else {
                    Value::Text(Text::parse(&param.value).map_err(at)?)
                };
                record.push((key, value));
            }
        }
        let list = |key: &str| -> Vec<String> {
            s.str(key)
                .map(|v| {
                    v.split(',')
                        .map(|k| k.trim().to_owned())
                        .filter(|k| !k.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let remove_keys = list("remove_keys")
            .iter()
            .map(|k| KeyPath::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::at(s.location(), format!("remove_keys: {e}")))?;
        let keep_keys = list("keep_keys");
        let renew_record = s.bool("renew_record")?.unwrap_or(false);
        if !keep_keys.is_empty() && !renew_record {
            return Err(ConfigError::at(
                s.location(),
                "`renew_record` must be true to use `keep_keys`",
            ));
        }
        let transformer = Self {
            id,
            record,
            remove_keys,
            keep_keys,
            renew_record,
            renew_time_key: s.str("renew_time_key").map(str::to_owned),
            auto_typecast: s.bool("auto_typecast")?.unwrap_or(false),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let warnings = s.finish(&[])?;
        Ok((transformer, warnings))
    }

    fn transform(&self, ctx: &TagContext<'_>, event: &Event) -> Result<Event, String> {
        let original = &event.record;
        let entries = entries(original).map_err(|e| e.to_string())?;
        let mut out: Vec<OutEntry<'_>> = Vec::new();
        if self.renew_record {
            for key in &self.keep_keys {
                if let Some(e) = entries.iter().find(|e| e.0 == key.as_bytes()) {
                    out.push((Cow::Borrowed(e.0), Cow::Borrowed(e.1), Cow::Borrowed(e.2)));
                }
            }
        } else {
            out.extend(
                entries
                    .iter()
                    .map(|e| (Cow::Borrowed(e.0), Cow::Borrowed(e.1), Cow::Borrowed(e.2))),
            );
        }
        for (key, value) in &self.record {
            let name = self.render_text(key, ctx, event);
            let mut encoded_key = Vec::with_capacity(name.len() + 5);
            msgpack::write_str(&mut encoded_key, &name);
            let mut encoded = Vec::new();
            self.render_value(value, ctx, event, &mut encoded);
            match out.iter_mut().find(|e| *e.0 == *name.as_bytes()) {
                // Ruby's Hash#merge! keeps an existing key where it was.
                Some(existing) => existing.2 = Cow::Owned(encoded),
                None => out.push((
                    Cow::Owned(name.into_bytes()),
                    Cow::Owned(encoded_key),
                    Cow::Owned(encoded),
                )),
            }
        }
        let mut nested_removals = Vec::new();
        for path in &self.remove_keys {
            match path.parts() {
                [one] => out.retain(|e| *e.0 != *one.as_bytes()),
                _ => nested_removals.push(path),
            }
        }
        let mut record = Vec::with_capacity(original.len() + 64);
        msgpack::write_map_len(&mut record, out.len() as u32);
        for (_, key, value) in &out {
            record.extend_from_slice(key);
            record.extend_from_slice(value);
        }
        for path in nested_removals {
            if let Some(removed) = remove_path(&record, path.parts()) {
                record = removed;
            }
        }
        let mut time = event.time;
        if let Some(key) = &self.renew_time_key
            && let Some(range) = msgpack::lookup(&record, &[key.as_str()])
        {
            time = time_of(&record[range]).ok_or_else(|| {
                format!(
                    "renew_time_key '{key}' is not a number: {}",
                    to_text(&record[msgpack::lookup(&record, &[key.as_str()]).unwrap_or(0..0)])
                )
            })?;
        }
        Ok(Event {
            time,
            record: Bytes::from(record),
        })
    }

    /// The plain way for one event: its new record, or its error.
    fn transform_into(
        &self,
        ctx: &TagContext<'_>,
        event: Event,
        kept: &mut Vec<Event>,
        errors: &mut Vec<RecordError>,
    ) {
        match self.transform(ctx, &event) {
            Ok(new) => kept.push(new),
            Err(reason) => errors.push(RecordError { event, reason }),
        }
    }

    fn render_text(&self, text: &Text, ctx: &TagContext<'_>, event: &Event) -> String {
        let mut out = String::new();
        for piece in &text.0 {
            match self.piece(piece, ctx, event) {
                Some(Rendered::Str(s)) => out.push_str(&s),
                Some(Rendered::Encoded(bytes)) => out.push_str(&to_text(bytes)),
                None => {}
            }
        }
        out
    }

    fn render_value(&self, value: &Value, ctx: &TagContext<'_>, event: &Event, out: &mut Vec<u8>) {
        match value {
            Value::Text(text) => {
                if self.auto_typecast
                    && let [piece] = text.0.as_slice()
                    && !matches!(piece, Piece::Literal(_))
                {
                    // auto_typecast: a value that is one placeholder keeps the value's type.
                    match self.piece(piece, ctx, event) {
                        Some(Rendered::Encoded(bytes)) => out.extend_from_slice(bytes),
                        Some(Rendered::Str(s)) => msgpack::write_str(out, &s),
                        None => out.push(0xc0),
                    }
                    return;
                }
                msgpack::write_str(out, &self.render_text(text, ctx, event));
            }
            Value::Encoded(bytes) => out.extend_from_slice(bytes),
            Value::Array(items) => {
                let _ = rmp::encode::write_array_len(out, items.len() as u32);
                for item in items {
                    self.render_value(item, ctx, event, out);
                }
            }
            Value::Map(pairs) => {
                msgpack::write_map_len(out, pairs.len() as u32);
                for (k, v) in pairs {
                    msgpack::write_str(out, &self.render_text(k, ctx, event));
                    self.render_value(v, ctx, event, out);
                }
            }
        }
    }

    fn piece<'e>(
        &'e self,
        piece: &'e Piece,
        ctx: &TagContext<'e>,
        event: &'e Event,
    ) -> Option<Rendered<'e>> {
        Some(match piece {
            Piece::Literal(l) => Rendered::Str(Cow::Borrowed(l)),
            Piece::Tag => Rendered::Str(Cow::Borrowed(ctx.tag)),
            Piece::TagPart(n) => Rendered::Str(ctx.part(*n)?),
            Piece::TagPrefix(n) => Rendered::Str(ctx.prefix(*n)?),
            Piece::TagSuffix(n) => Rendered::Str(ctx.suffix(*n)?),
            Piece::Hostname => Rendered::Str(Cow::Borrowed(&self.hostname)),
            Piece::Time => Rendered::Str(Cow::Owned(ruby_time(event.time))),
            Piece::Field(path) => Rendered::Encoded(path.get(&event.record)?),
        })
    }

    /// Why every record is taken apart and rebuilt, when the batch way (append to the
    /// record's bytes) cannot be taken; `check` says it.
    fn rebuilds_because(&self) -> Option<&'static str> {
        if self.renew_record {
            Some("renew_record")
        } else if self.renew_time_key.is_some() {
            Some("renew_time_key")
        } else if self.remove_keys.iter().any(|p| p.parts().len() > 1) {
            Some("a nested remove_keys path")
        } else if self.record.iter().any(|(key, _)| key.per_event()) {
            Some("a key that reads the event")
        } else {
            None
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.record.is_empty() {
            parts.push(format!("set {} field(s)", self.record.len()));
        }
        if self.renew_record {
            parts.push(format!("renew_record (keep {:?})", self.keep_keys));
        }
        if !self.remove_keys.is_empty() {
            let keys: Vec<String> = self.remove_keys.iter().map(ToString::to_string).collect();
            parts.push(format!("remove {}", keys.join(",")));
        }
        if let Some(key) = &self.renew_time_key {
            parts.push(format!("time from {key}"));
        }
        if let Some(why) = self.rebuilds_because() {
            parts.push(format!(
                "every record rebuilt ({why}; docs/performance.md#filters)"
            ));
        }
        parts.join(", ")
    }
}

enum Rendered<'a> {
    Str(Cow<'a, str>),
    Encoded(&'a [u8]),
}

/// An entry of the record being built: (key text, encoded key, encoded value).
type OutEntry<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>, Cow<'a, [u8]>);

/// (key text, encoded key, encoded value) of each entry of a map record.
type Entries<'a> = Vec<(&'a [u8], &'a [u8], &'a [u8])>;

fn entries(record: &[u8]) -> Result<Entries<'_>, msgpack::MsgpackError> {
    let mut cur = Cursor::new(record);
    let Head::Map(pairs) = cur.head()? else {
        return Err(msgpack::MsgpackError::Truncated(0));
    };
    let mut out = Vec::with_capacity(pairs as usize);
    for _ in 0..pairs {
        let key = cur.skip_value(DEFAULT_MAX_DEPTH)?;
        let value = cur.skip_value(DEFAULT_MAX_DEPTH)?;
        let key = &record[key];
        out.push((key_text(key), key, &record[value]));
    }
    Ok(out)
}

/// What a key is compared by: a string's (or binary's) bytes. Other keys (integers, ...) are
/// never equal to a key the config names, as in Ruby's Hash: they read as bytes no UTF-8
/// string has.
#[inline(always)]
fn key_text(key: &[u8]) -> &[u8] {
    const NOT_TEXT: &[u8] = b"\xff";
    msgpack::str_bytes(key).unwrap_or(NOT_TEXT)
}

/// A batch's `<record>` work when no key reads the event and `remove_keys` are top-level:
/// the entries to add after the record's own, with the values that are the same for every
/// event already encoded. An event whose record has one of the keys set goes the plain way
/// (its entry is replaced where it is), so the fast way only appends.
struct Appender<'f> {
    /// Every key `<record>` sets (also those removed again).
    set: Vec<String>,
    remove: Vec<&'f str>,
    /// The text of each key set or removed: a record in which none occurs anywhere has none
    /// of them as a key, so it is not taken apart (its entries are copied whole).
    needles: Vec<memmem::Finder<'static>>,
    tail: Vec<Tail<'f>>,
    /// Entries in `tail`.
    added: u32,
    /// Bytes of the fixed parts of `tail`.
    fixed_len: usize,
}

enum Tail<'f> {
    /// Encoded keys and values, the same for every event of the batch.
    Fixed(Vec<u8>),
    /// A value that reads the event, rendered for each.
    Value(&'f Value),
}

impl<'f> Appender<'f> {
    /// `None` when the batch needs the plain way (renew_record, renew_time_key, a nested
    /// remove_keys path, or a key that reads the event).
    fn new(rt: &'f RecordTransformer, ctx: &TagContext<'_>, first: &Event) -> Option<Self> {
        if rt.rebuilds_because().is_some() {
            return None;
        }
        let remove: Vec<&str> = rt
            .remove_keys
            .iter()
            .filter_map(|path| path.parts().first().map(String::as_str))
            .collect();
        // The keys in order, a repeated key keeping its first place with its last value (as
        // the plain way's replace-or-push).
        let mut merged: Vec<(String, &'f Value)> = Vec::with_capacity(rt.record.len());
        for (key, value) in &rt.record {
            let name = rt.render_text(key, ctx, first);
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some(existing) => existing.1 = value,
                None => merged.push((name, value)),
            }
        }
        let set: Vec<String> = merged.iter().map(|(name, _)| name.clone()).collect();
        let needles = set
            .iter()
            .map(String::as_str)
            .chain(remove.iter().copied())
            .map(|key| memmem::Finder::new(key).into_owned())
            .collect();
        let mut appender = Self {
            set,
            remove,
            needles,
            tail: Vec::new(),
            added: 0,
            fixed_len: 0,
        };
        let mut fixed = Vec::new();
        for (name, value) in &merged {
            if appender.remove.contains(&name.as_str()) {
                continue;
            }
            appender.added += 1;
            msgpack::write_str(&mut fixed, name);
            if value.per_event() {
                appender.fixed_len += fixed.len();
                appender.tail.push(Tail::Fixed(std::mem::take(&mut fixed)));
                appender.tail.push(Tail::Value(value));
            } else {
                rt.render_value(value, ctx, first, &mut fixed);
            }
        }
        appender.fixed_len += fixed.len();
        appender.tail.push(Tail::Fixed(fixed));
        Some(appender)
    }

    /// Appends `event`'s new record to `out`; `false` (nothing written) when the event needs
    /// the plain way: its record has a key that is set, or is not a readable map.
    #[inline]
    fn append(
        &self,
        rt: &RecordTransformer,
        ctx: &TagContext<'_>,
        event: &Event,
        spans: &mut Vec<Range<usize>>,
        out: &mut Vec<u8>,
    ) -> bool {
        let record = &event.record[..];
        let mut cur = Cursor::new(record);
        let Ok(Head::Map(pairs)) = cur.head() else {
            return false;
        };
        spans.clear();
        // A record is exactly one map (as the decoder cuts it), so its entries run to its end.
        if !self.needles.iter().any(|n| n.find(record).is_some()) {
            spans.push(cur.position()..record.len());
            self.write(rt, ctx, event, pairs, spans, out);
            return true;
        }
        let mut from = cur.position();
        let mut kept = 0u32;
        for _ in 0..pairs {
            let (Ok(key), Ok(value)) = (
                cur.skip_key(DEFAULT_MAX_DEPTH),
                cur.skip_value(DEFAULT_MAX_DEPTH),
            ) else {
                return false;
            };
            let text = key_text(&record[key.clone()]);
            if self.set.iter().any(|k| k.as_bytes() == text) {
                return false;
            }
            if self.remove.iter().any(|k| k.as_bytes() == text) {
                spans.push(from..key.start);
                from = value.end;
            } else {
                kept += 1;
            }
        }
        spans.push(from..cur.position());
        self.write(rt, ctx, event, kept, spans, out);
        true
    }

    /// The new record: `kept` of the record's entries (the bytes in `spans`), then the tail.
    #[inline]
    fn write(
        &self,
        rt: &RecordTransformer,
        ctx: &TagContext<'_>,
        event: &Event,
        kept: u32,
        spans: &[Range<usize>],
        out: &mut Vec<u8>,
    ) {
        msgpack::write_map_len(out, kept + self.added);
        for span in spans {
            out.extend_from_slice(&event.record[span.clone()]);
        }
        for tail in &self.tail {
            match tail {
                Tail::Fixed(bytes) => out.extend_from_slice(bytes),
                Tail::Value(value) => rt.render_value(value, ctx, event, out),
            }
        }
    }
}

/// `record` without the value at `path` (nested maps), or `None` if it is not there.
fn remove_path(record: &[u8], path: &[String]) -> Option<Vec<u8>> {
    let (first, rest) = path.split_first()?;
    let list = entries(record).ok()?;
    let index = list.iter().position(|e| e.0 == first.as_bytes())?;
    let mut out = Vec::with_capacity(record.len());
    let replaced = if rest.is_empty() {
        None
    } else {
        Some(remove_path(list[index].2, rest)?)
    };
    let len = if replaced.is_some() {
        list.len()
    } else {
        list.len() - 1
    };
    msgpack::write_map_len(&mut out, len as u32);
    for (i, (_, key, value)) in list.iter().enumerate() {
        if i == index {
            if let Some(v) = &replaced {
                out.extend_from_slice(key);
                out.extend_from_slice(v);
            }
            continue;
        }
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
    Some(out)
}

/// Ruby's `Time.at(time).to_s`: local time, `2025-11-25 19:33:41 +0000`.
fn ruby_time(time: EventTime) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_opt(time.secs, 0)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S %z").to_string())
        .unwrap_or_default()
}

/// An event time from a number or a numeric string (Ruby's `to_f` on it); other values are
/// a record error, as Ruby raises on them.
fn time_of(value: &[u8]) -> Option<EventTime> {
    let mut cur = Cursor::new(value);
    match cur.head().ok()? {
        Head::Uint(n) => Some(EventTime::new(i64::try_from(n).ok()?, 0)),
        Head::Int(n) => Some(EventTime::new(n, 0)),
        Head::F32(f) => EventTime::from_f64(f64::from(f)),
        Head::F64(f) => EventTime::from_f64(f),
        Head::Nil => Some(EventTime::new(0, 0)),
        Head::Str(_) => EventTime::from_f64(to_text(value).trim().parse().ok()?),
        Head::Ext(..) => {
            let (secs, nanos) = (value.get(value.len() - 8..)?).split_at(4);
            let n = |b: &[u8]| b.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x));
            Some(EventTime::new(i64::from(n(secs)), n(nanos)))
        }
        _ => None,
    }
}

impl Filter for RecordTransformer {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        "record_transformer"
    }

    fn filter(&self, tag: &str, events: Vec<Event>, errors: &mut Vec<RecordError>) -> Vec<Event> {
        let ctx = TagContext::new(tag);
        let appender = events.first().and_then(|e| Appender::new(self, &ctx, e));
        let Some(appender) = appender else {
            let mut kept = Vec::with_capacity(events.len());
            for event in events {
                self.transform_into(&ctx, event, &mut kept, errors);
            }
            return kept;
        };
        // The batch's new records in one buffer, each event a slice of it (as the input's
        // events are slices of what it read), in place of its record in `events`.
        let room = events
            .iter()
            .map(|e| e.record.len() + appender.fixed_len + 5)
            .sum();
        let mut arena = Vec::with_capacity(room);
        // Where each event's new record ends in the arena (they follow one another), or
        // PLAIN for an event that went the plain way.
        const PLAIN: usize = usize::MAX;
        let mut ends = Vec::with_capacity(events.len());
        let mut spans = Vec::new();
        let mut failed = false;
        let mut events = events;
        for event in &mut events {
            if appender.append(self, &ctx, event, &mut spans, &mut arena) {
                ends.push(arena.len());
                continue;
            }
            ends.push(PLAIN);
            match self.transform(&ctx, event) {
                Ok(new) => *event = new,
                Err(reason) => {
                    // Its record left empty, which no record the plain way builds is (a
                    // map has its header): removed below.
                    let record = std::mem::take(&mut event.record);
                    let time = event.time;
                    errors.push(RecordError {
                        event: Event { time, record },
                        reason,
                    });
                    failed = true;
                }
            }
        }
        // The input's records are let go here, one after the other, not one per event
        // between the appends: each drop is an atomic decrement of the count that every
        // record of a read buffer shares. `perf` put about 19 ns an event on those drops
        // between the appends and 5 ns in one run; end to end the filtered config came out
        // 0.4% cheaper (docs/performance.md#filters).
        let arena = Bytes::from(arena);
        let mut start = 0;
        for (event, end) in events.iter_mut().zip(ends) {
            if end != PLAIN {
                event.record = arena.slice(start..end);
                start = end;
            }
        }
        if failed {
            events.retain(|e| !e.record.is_empty());
        }
        events
    }

    fn describe(&self) -> String {
        RecordTransformer::describe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as J, json};

    fn transformer(body: &str) -> Result<RecordTransformer, ConfigError> {
        let text = format!("<filter **>\n  @type record_transformer\n{body}</filter>\n");
        let root = crate::config::parse_str(&text, std::path::Path::new("t.conf")).unwrap();
        let s = Section::new(&root.elements[0]);
        s.type_name();
        RecordTransformer::from_config("rt".into(), &s).map(|(t, _)| t)
    }

    fn run(t: &RecordTransformer, tag: &str, record: J) -> Result<(J, EventTime), String> {
        let event = Event {
            time: EventTime::new(1_700_000_000, 0),
            record: Bytes::from(rmp_serde::to_vec(&record).unwrap()),
        };
        let out = t.transform(&TagContext::new(tag), &event)?;
        Ok((rmp_serde::from_slice(&out.record).unwrap(), out.time))
    }

    #[test]
    fn tag_placeholders_with_negative_indexes() {
        let t = transformer(
            "<record>\n tag ${tag}\n first ${tag_parts[0]}\n last ${tag_parts[-1]}\n pre ${tag_prefix[1]}\n suf ${tag_suffix[-2]}\n out ${tag_parts[9]}x\n</record>\n",
        )
        .unwrap();
        let (r, _) = run(&t, "web.app.access", json!({"m": 1})).unwrap();
        assert_eq!(
            r,
            json!({"m": 1, "tag": "web.app.access", "first": "web", "last": "access", "pre": "web.app", "suf": "app.access", "out": "x"})
        );
    }

    #[test]
    fn record_fields_hostname_and_typecast() {
        let t = transformer(
            "auto_typecast true\n<record>\n n ${record[\"count\"]}\n s n=${record[\"count\"]}\n nested ${record[\"a\"][\"b\"]}\n missing ${record[\"nope\"]}\n host ${hostname}\n msg ${record[\"msg\"]} on ${hostname}\n</record>\n",
        )
        .unwrap();
        let (r, _) = run(&t, "x", json!({"count": 5, "msg": "hi", "a": {"b": [1]}})).unwrap();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        assert_eq!(r["n"], 5);
        assert_eq!(r["s"], "n=5");
        assert_eq!(r["nested"], json!([1]));
        assert_eq!(r["missing"], J::Null);
        assert_eq!(r["host"], host);
        assert_eq!(r["msg"], format!("hi on {host}"));
        // Without auto_typecast a single placeholder is a string.
        let t = transformer("<record>\n n ${record[\"count\"]}\n</record>\n").unwrap();
        assert_eq!(run(&t, "x", json!({"count": 5})).unwrap().0["n"], "5");
    }

    #[test]
    fn existing_keys_keep_their_place_and_remove_keys_apply_last() {
        let t = transformer(
            "remove_keys drop,$.k8s.secret\n<record>\n a replaced\n drop again\n</record>\n",
        )
        .unwrap();
        let (r, _) = run(
            &t,
            "x",
            json!({"a": 1, "b": 2, "drop": 3, "k8s": {"secret": 1, "ns": "p"}}),
        )
        .unwrap();
        assert_eq!(r, json!({"a": "replaced", "b": 2, "k8s": {"ns": "p"}}));
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["a", "b", "k8s"]);
    }

    #[test]
    fn renew_record_keep_keys_and_renew_time_key() {
        let t = transformer(
            "renew_record true\nkeep_keys message,absent\nrenew_time_key ts\n<record>\n ts ${record[\"t\"]}\n</record>\n",
        )
        .unwrap();
        let (r, time) = run(
            &t,
            "x",
            json!({"message": "m", "other": 1, "t": "1600000000.5"}),
        )
        .unwrap();
        assert_eq!(r, json!({"message": "m", "ts": "1600000000.5"}));
        assert_eq!(time, EventTime::new(1_600_000_000, 500_000_000));
        let t = transformer("renew_time_key ts\n").unwrap();
        assert!(run(&t, "x", json!({"ts": {"no": 1}})).is_err());
        assert_eq!(
            run(&t, "x", json!({"ts": 12})).unwrap().1,
            EventTime::new(12, 0)
        );
    }

    #[test]
    fn json_values_and_placeholders_in_keys() {
        let t = transformer(
            "<record>\n ${tag_parts[0]}_meta {\"t\":\"${tag}\",\"n\":[1,true]}\n</record>\n",
        )
        .unwrap();
        let (r, _) = run(&t, "svc.a", json!({})).unwrap();
        assert_eq!(r, json!({"svc_meta": {"t": "svc.a", "n": [1, true]}}));
    }

    /// A map record (complete, as the decoder cuts them) with these keys (a string, or an integer when it parses as one) and
    /// values, duplicates kept as they come.
    fn raw_record(pairs: &[(String, J)]) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_map_len(&mut out, pairs.len() as u32);
        for (key, value) in pairs {
            match key.parse::<i64>() {
                Ok(n) => {
                    let _ = rmp::encode::write_sint(&mut out, n);
                }
                Err(_) => msgpack::write_str(&mut out, key),
            }
            out.extend(rmp_serde::to_vec(value).unwrap());
        }
        out
    }

    fn arb_value() -> impl Strategy<Value = J> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(J::from),
            "[a-z ]{0,12}".prop_map(J::from),
            // Values holding a key's text: such a record is taken apart to find its keys.
            proptest::sample::select(vec!["tag", "hostname", "a tag", "x"]).prop_map(J::from),
            Just(J::Null),
            Just(json!({"a": 1, "b": "x"})),
            Just(json!([1, "two"])),
        ]
    }

    use proptest::prelude::{Strategy, prop_oneof};

    proptest::proptest! {
        /// The batch way (appending to the record's own bytes) gives each event what the
        /// plain way (taking the record apart) gives it, errors included.
        #[test]
        fn batches_give_what_the_plain_way_gives(
            records in proptest::collection::vec(
                prop_oneof![
                    9 => proptest::collection::vec(
                        (proptest::sample::select(vec![
                            "a", "b", "tag", "host", "hostname", "nested", "x", "97", "",
                        ]).prop_map(str::to_owned), arb_value()),
                        0..8,
                    ).prop_map(|pairs: Vec<(String, J)>| raw_record(&pairs)),
                    1 => proptest::prelude::Just(rmp_serde::to_vec(&"not a map").unwrap()),
                ],
                1..12,
            ),
            items in proptest::collection::vec(proptest::sample::select(vec![
                "tag ${tag}", "hostname ${hostname}", "a fixed", "host h-${tag_parts[-1]}",
                "n ${record[\"a\"]}", "t ${time}", "m {\"k\":\"${tag_parts[0]}\"}",
                "tag again", "${tag_parts[0]}_k v", "${record[\"b\"]} v", "l [1,\"${tag}\"]",
            ]), 0..5),
            removes in proptest::collection::vec(proptest::sample::select(vec![
                "b", "x", "a", "tag", "$.nested.a", "97",
            ]), 0..3),
            typecast in proptest::prelude::any::<bool>(),
            renew in proptest::prelude::any::<bool>(),
        ) {
            let mut body = format!("auto_typecast {typecast}\n");
            if !removes.is_empty() {
                body.push_str(&format!("remove_keys {}\n", removes.join(",")));
            }
            if renew {
                body.push_str("renew_record true\nkeep_keys a,b\n");
            }
            body.push_str("<record>\n");
            for item in &items {
                body.push_str(&format!(" {item}\n"));
            }
            body.push_str("</record>\n");
            let t = transformer(&body).unwrap();
            let events: Vec<Event> = records
                .iter()
                .enumerate()
                .map(|(i, r)| Event {
                    time: EventTime::new(1_700_000_000 + i as i64, i as u32),
                    record: Bytes::from(r.clone()),
                })
                .collect();
            let ctx = TagContext::new("web.app");
            let mut want = Vec::new();
            let mut want_errors = Vec::new();
            for event in &events {
                match t.transform(&ctx, event) {
                    Ok(new) => want.push(new),
                    Err(reason) => want_errors.push((event.clone(), reason)),
                }
            }
            let mut errors = Vec::new();
            let got = t.filter("web.app", events, &mut errors);
            let got_errors: Vec<(Event, String)> =
                errors.into_iter().map(|e| (e.event, e.reason)).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(got_errors, want_errors);
        }
    }

    #[test]
    fn check_says_when_every_record_is_rebuilt() {
        let fast =
            transformer("remove_keys a\n<record>\n t ${tag}\n n ${record[\"a\"]}\n</record>\n");
        assert_eq!(fast.unwrap().describe(), "set 2 field(s), remove a");
        let nested = transformer("remove_keys $.a.b\n").unwrap().describe();
        assert!(
            nested.ends_with(
                "every record rebuilt (a nested remove_keys path; docs/performance.md#filters)"
            ),
            "{nested}"
        );
        let key = transformer("<record>\n ${record[\"k\"]} v\n</record>\n").unwrap();
        assert!(
            key.describe().contains("(a key that reads the event;"),
            "{}",
            key.describe()
        );
    }

    #[test]
    fn integer_keys_are_not_the_strings_of_their_encoding() {
        // 97 is encoded as the byte of "a": Ruby's Hash keeps both keys.
        let t = transformer("remove_keys a\n<record>\n b x\n</record>\n").unwrap();
        let record = raw_record(&[("97".into(), json!(1)), ("b".into(), json!(2))]);
        let event = Event {
            time: EventTime::new(1, 0),
            record: Bytes::from(record),
        };
        let out = t.filter("x", vec![event], &mut Vec::new());
        let mut cur = Cursor::new(&out[0].record);
        assert_eq!(cur.head(), Ok(Head::Map(2)));
        assert_eq!(cur.head(), Ok(Head::Uint(97)));
    }

    #[test]
    fn ruby_and_unknown_placeholders_are_config_errors() {
        let err = transformer("enable_ruby true\n").err().unwrap().to_string();
        assert!(err.contains("enable_ruby true is not supported"), "{err}");
        let err = transformer("<record>\n x ${record['a'].upcase}\n</record>\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unsupported placeholder"), "{err}");
        let err = transformer("keep_keys a\n").err().unwrap().to_string();
        assert!(err.contains("renew_record"), "{err}");
    }
}
