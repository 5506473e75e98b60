//! `@type record_transformer`: fluentd's filter_record_transformer without Ruby. `<record>`
//! values with `${tag}`, `${tag_parts[N]}`, `${tag_prefix[N]}`, `${tag_suffix[N]}`,
//! `${hostname}`, `${time}`, `${record["key"]}`; remove_keys, keep_keys, renew_record,
//! renew_time_key, auto_typecast. Records are rebuilt as msgpack from the original bytes.

use super::{Filter, RecordError};
use crate::codec::msgpack::{self, Cursor, DEFAULT_MAX_DEPTH, Head};
use crate::config::{ConfigError, Section};
use crate::event::{Event, EventTime};
use crate::fluentd::accessor::{KeyPath, to_text};
use bytes::Bytes;
use std::borrow::Cow;

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
        let mut key_cur = Cursor::new(&record[key.clone()]);
        let text = match key_cur.head() {
            Ok(Head::Str(n) | Head::Bin(n)) => {
                let range = key_cur.take(n as usize)?;
                key_cur.slice(range)
            }
            _ => &record[key.clone()],
        };
        out.push((text, &record[key], &record[value]));
    }
    Ok(out)
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
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            match self.transform(&ctx, &event) {
                Ok(new) => kept.push(new),
                Err(reason) => errors.push(RecordError { event, reason }),
            }
        }
        kept
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
