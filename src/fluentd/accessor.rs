//! What filters and rewrite_tag_filter read from a record: fluentd's record_accessor key
//! syntax (`key`, `$.a.b`, `$['a']['b']`), a value as Ruby's `to_s` would print it, and Ruby
//! regexp literals (`/.../i`). Pure functions over msgpack bytes; no allocation on plain strings.

use crate::codec::msgpack::{self, Cursor, DEFAULT_MAX_DEPTH, Head};
use regex::Regex;
use std::borrow::Cow;

/// A record_accessor key: one top-level key, or a path into nested maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(Vec<String>);

impl KeyPath {
    /// `key` (taken literally), `$.a.b` or `$['a']['b']` / `$["a"]["b"]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty key".into());
        }
        let Some(rest) = text.strip_prefix('$') else {
            return Ok(Self(vec![text.to_owned()]));
        };
        let mut parts = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                parts.push(after[..end].to_owned());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
                let Some(q) = quote else {
                    return Err(format!(
                        "invalid record accessor '{text}': expected a quoted key in [...]"
                    ));
                };
                let body = &after[1..];
                let close = format!("{q}]");
                let end = body
                    .find(&close)
                    .ok_or_else(|| format!("invalid record accessor '{text}': unclosed ["))?;
                parts.push(body[..end].to_owned());
                rest = &body[end + 2..];
            } else {
                return Err(format!(
                    "invalid record accessor '{text}' (use $.a.b or $['a']['b'])"
                ));
            }
        }
        if parts.is_empty() || parts.iter().any(String::is_empty) {
            return Err(format!("invalid record accessor '{text}'"));
        }
        Ok(Self(parts))
    }

    /// The encoded value at this path, if every key along it exists.
    pub fn get<'r>(&self, record: &'r [u8]) -> Option<&'r [u8]> {
        msgpack::lookup(record, &self.0).map(|r| &record[r])
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            parts => write!(f, "$.{}", parts.join(".")),
        }
    }
}

/// The value as Ruby's `to_s` prints it, which is what fluentd matches patterns against:
/// strings as they are, nil as "", numbers and booleans as text; arrays and maps as JSON
/// (Ruby would print its inspect form; no config matches on that).
pub fn to_text(value: &[u8]) -> Cow<'_, str> {
    let mut cur = Cursor::new(value);
    let Ok(head) = cur.head() else {
        return Cow::Borrowed("");
    };
    match head {
        Head::Nil => Cow::Borrowed(""),
        Head::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        Head::Uint(n) => Cow::Owned(n.to_string()),
        Head::Int(n) => Cow::Owned(n.to_string()),
        Head::F32(f) => Cow::Owned(super::ruby::float_to_s(f64::from(f))),
        Head::F64(f) => Cow::Owned(super::ruby::float_to_s(f)),
        Head::Str(n) | Head::Bin(n) => match cur.take(n as usize) {
            Ok(range) => String::from_utf8_lossy(cur.slice(range)),
            Err(_) => Cow::Borrowed(""),
        },
        _ => {
            let mut out = Vec::new();
            let mut cur = Cursor::new(value);
            if crate::format::json::write_value(&mut cur, &mut out, DEFAULT_MAX_DEPTH).is_err() {
                return Cow::Borrowed("");
            }
            Cow::Owned(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// A fluentd `:regexp` parameter: `/pattern/flags` (flags i, m, x as Ruby means them: `m`
/// is Ruby's dot-matches-newline) or a bare pattern.
pub fn compile_regexp(text: &str) -> Result<Regex, String> {
    let (body, flags) = match text.strip_prefix('/').and_then(|t| t.rsplit_once('/')) {
        Some((body, flags)) if flags.chars().all(|c| "imx".contains(c)) => (body, flags),
        _ => (text, ""),
    };
    let mut prefix = String::new();
    for (flag, rust) in [('i', 'i'), ('m', 's'), ('x', 'x')] {
        if flags.contains(flag) {
            prefix.push(rust);
        }
    }
    let pattern = if prefix.is_empty() {
        body.to_owned()
    } else {
        format!("(?{prefix}){body}")
    };
    Regex::new(&pattern).map_err(|e| format!("invalid pattern '{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn key_paths_read_top_level_and_nested_keys() {
        let record = encode(&serde_json::json!({"a": {"b": "x"}, "$.odd": 1, "n": 5}));
        let text = |k: &str| KeyPath::parse(k).unwrap().get(&record).map(to_text);
        assert_eq!(text("n").as_deref(), Some("5"));
        assert_eq!(text("$.a.b").as_deref(), Some("x"));
        assert_eq!(text("$['a']['b']").as_deref(), Some("x"));
        assert_eq!(text("$[\"a\"][\"b\"]").as_deref(), Some("x"));
        assert_eq!(text("$.a.c"), None);
        assert_eq!(text("missing"), None);
        assert!(KeyPath::parse("$a").is_err());
        assert!(KeyPath::parse("$['a'").is_err());
        assert_eq!(
            KeyPath::parse("$['a']['b.c']").unwrap().parts(),
            ["a", "b.c"]
        );
        assert_eq!(KeyPath::parse("a.b").unwrap().parts(), ["a.b"]);
        assert!(KeyPath::parse("$.a[0]").is_err());
        assert!(KeyPath::parse("$").is_err());
    }

    #[test]
    fn values_print_as_ruby_to_s() {
        let t = |v: serde_json::Value| to_text(&encode(&v)).into_owned();
        assert_eq!(t(serde_json::json!(null)), "");
        assert_eq!(t(serde_json::json!(true)), "true");
        assert_eq!(t(serde_json::json!(-3)), "-3");
        assert_eq!(t(serde_json::json!(2.0)), "2.0");
        assert_eq!(t(serde_json::json!(3.25)), "3.25");
        assert_eq!(t(serde_json::json!(1e20)), "1.0e+20");
        assert_eq!(t(serde_json::json!("x y")), "x y");
        assert_eq!(t(serde_json::json!([1, "a"])), "[1,\"a\"]");
    }

    #[test]
    fn regexp_literals_take_ruby_flags() {
        assert!(compile_regexp("/^GET/i").unwrap().is_match("get /"));
        assert!(compile_regexp("^a.b$").unwrap().is_match("axb"));
        assert!(compile_regexp("/a.b/m").unwrap().is_match("a\nb"));
        assert!(compile_regexp("/var/log").unwrap().is_match("/var/log"));
        assert!(compile_regexp("(").is_err());
    }
}
