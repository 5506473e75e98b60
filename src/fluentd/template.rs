//! Name templates resolved per event, as fluentd's buffer placeholders
//! (`Output#extract_placeholders`): `${tag}`, `${tag[N]}` (negative N counts from the end),
//! `${KEY}` and `${$.a.b}` (a record value, what fluentd calls a chunk key), and strftime parts
//! of the event time such as `%Y%m%d`. Used for file paths and BigQuery destinations. Pure; no
//! I/O.

use crate::event::EventTime;
use crate::fluentd::accessor::{self, KeyPath};
use crate::format::time::{TimeFormatter, Zone};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tag,
    TagIndex(i64),
    /// A record value, as Ruby's `to_s` prints it; a missing key is "" (fluentd
    /// substitutes the nil chunk-key value).
    Key(KeyPath),
}

#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    has_time: bool,
    zone: Zone,
}

/// fluentd v0.12's time-slice placeholder, read as `%Y%m%d`.
pub const TIME_SLICE: &str = "%{time_slice}";

impl Template {
    pub fn parse(source: &str, zone: Zone) -> Result<Self, String> {
        let mut parts = Vec::new();
        // fluentd v0.12's `%{time_slice}` (fluent-plugin-bigquery's README still writes
        // `table yourtable%{time_slice}`): its default time_slice_format, a day.
        let compat = source.replace(TIME_SLICE, "%Y%m%d");
        let mut rest = compat.as_str();
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].into()));
            }
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in '{source}'"))?;
            let name = &rest[start + 2..start + end];
            parts.push(parse_placeholder(name).map_err(|why| {
                format!(
                    "placeholder '${{{name}}}' in '{source}': {why} (supported: ${{tag}}, ${{tag[N]}}, ${{KEY}}, ${{$.a.b}}, strftime like %Y%m%d)"
                )
            })?);
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.into()));
        }
        let has_time = parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if l.contains('%')));
        if has_time {
            // Validate the strftime parts now rather than on the first event.
            TimeFormatter::new(Some(&literal_format(&parts)), zone)?;
        }
        Ok(Self {
            source: source.into(),
            parts,
            has_time,
            zone,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The template has strftime parts.
    pub fn has_time(&self) -> bool {
        self.has_time
    }

    /// The template reads the tag (`${tag}`, `${tag[N]}`).
    pub fn has_tag(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Tag | Part::TagIndex(_)))
    }

    /// Nothing to resolve: the text is the result.
    pub fn is_constant(&self) -> bool {
        !self.has_time && self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The record keys the template reads, in order of appearance.
    pub fn keys(&self) -> impl Iterator<Item = &KeyPath> {
        self.parts.iter().filter_map(|p| match p {
            Part::Key(key) => Some(key),
            _ => None,
        })
    }

    /// The name for one event. `record` is its msgpack map (only read for `${KEY}`).
    pub fn render(&self, tag: &str, time: EventTime, record: &[u8]) -> String {
        let mut out = String::with_capacity(self.source.len() + tag.len());
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Tag => push_escaped(&mut out, tag, self.has_time),
                Part::TagIndex(n) => {
                    let pieces: Vec<&str> = tag.split('.').collect();
                    let index = if *n < 0 { pieces.len() as i64 + n } else { *n };
                    let piece = usize::try_from(index).ok().and_then(|i| pieces.get(i));
                    push_escaped(&mut out, piece.copied().unwrap_or(""), self.has_time);
                }
                Part::Key(key) => {
                    let value = key.get(record).map(accessor::to_text).unwrap_or_default();
                    push_escaped(&mut out, &value, self.has_time);
                }
            }
        }
        if !self.has_time {
            return out;
        }
        match TimeFormatter::new(Some(&out), self.zone) {
            Ok(mut formatter) => formatter.format(time).to_owned(),
            Err(_) => out,
        }
    }
}

/// Text going through strftime (a tag, a record value) must not be read as a format.
fn push_escaped(out: &mut String, text: &str, escape: bool) {
    if escape {
        out.push_str(&text.replace('%', "%%"));
    } else {
        out.push_str(text);
    }
}

fn literal_format(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Literal(l) => l.as_str(),
            _ => "x",
        })
        .collect()
}

/// fluentd's placeholder names: `tag`, `tag[N]`, and chunk keys (`[-_.@$a-zA-Z0-9]+`, which
/// covers `$.a.b` paths).
fn parse_placeholder(name: &str) -> Result<Part, String> {
    if name == "tag" {
        return Ok(Part::Tag);
    }
    if let Some(index) = name.strip_prefix("tag[").and_then(|n| n.strip_suffix(']')) {
        return index
            .trim()
            .parse()
            .map(Part::TagIndex)
            .map_err(|_| "the index must be an integer".into());
    }
    if name == "chunk_id" {
        return Err("bqforward writes as events arrive and has no chunk to name".into());
    }
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@$".contains(&b));
    if !valid {
        return Err("not a tag or record key placeholder".into());
    }
    KeyPath::parse(name).map(Part::Key)
}

/// Remembers the last rendering per (tag, second): events of one batch mostly share both.
/// Templates that read record values are rendered per event.
#[derive(Debug, Clone)]
pub struct CachedTemplate {
    template: Template,
    last: Option<(String, i64, String)>,
}

impl CachedTemplate {
    pub fn new(template: Template) -> Self {
        Self {
            template,
            last: None,
        }
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    pub fn render(&mut self, tag: &str, time: EventTime, record: &[u8]) -> &str {
        let secs = if self.template.has_time { time.secs } else { 0 };
        let reads_record = self.template.keys().next().is_some();
        let hit = !reads_record && matches!(&self.last, Some((t, s, _)) if t == tag && *s == secs);
        if !hit {
            let rendered = self.template.render(tag, time, record);
            self.last = Some((tag.to_owned(), secs, rendered));
        }
        self.last
            .as_ref()
            .map(|(_, _, r)| r.as_str())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, tag: &str) -> String {
        render_with(template, tag, &json!({}))
    }

    fn render_with(template: &str, tag: &str, record: &serde_json::Value) -> String {
        let t = Template::parse(template, Zone::Utc).unwrap();
        let record = rmp_serde::to_vec(record).unwrap();
        t.render(tag, EventTime::new(1_764_099_221, 0), &record) // 2025-11-25T19:33:41Z
    }

    #[test]
    fn placeholders_resolve_from_tag_and_time() {
        assert_eq!(render("logs_${tag}", "app"), "logs_app");
        assert_eq!(
            render("${tag[0]}_${tag[-1]}", "docker.web.stdout"),
            "docker_stdout"
        );
        assert_eq!(render("t_${tag[5]}", "a.b"), "t_");
        assert_eq!(
            render("/var/log/${tag}/%Y/%m/%d.%H", "a.b"),
            "/var/log/a.b/2025/11/25.19"
        );
        assert_eq!(render("access$%Y%m%d", "x"), "access$20251125");
        assert_eq!(render("pct_${tag}_%Y", "100%.x"), "pct_100%.x_2025");
    }

    #[test]
    fn record_placeholders_read_values_as_ruby_prints_them() {
        let record = json!({"created_at": "2014_08_20", "status": 404, "ok": true,
            "f": 1.5, "pct": "5%d", "n": null, "a": {"b": "deep"}});
        assert_eq!(
            render_with("foo_${created_at}", "t", &record),
            "foo_2014_08_20"
        );
        assert_eq!(
            render_with("s${status}_${ok}_${f}", "t", &record),
            "s404_true_1.5"
        );
        assert_eq!(render_with("${$.a.b}_${tag}", "t", &record), "deep_t");
        // A missing key and nil read as "", as fluentd's nil chunk-key value.
        assert_eq!(render_with("x_${missing}_${n}", "t", &record), "x__");
        // Values are not strftime formats.
        assert_eq!(render_with("%Y_${pct}", "t", &record), "2025_5%d");
    }

    #[test]
    fn templates_report_what_they_read() {
        let t = Template::parse("${tag}_${a}_${$.b.c}_%Y", Zone::Utc).unwrap();
        assert!(t.has_tag() && t.has_time() && !t.is_constant());
        let keys: Vec<String> = t.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["a", "$.b.c"]);
        assert!(Template::parse("plain", Zone::Utc).unwrap().is_constant());
        assert!(!Template::parse("${x}", Zone::Utc).unwrap().has_tag());
    }

    #[test]
    fn unknown_placeholders_and_bad_formats_are_errors() {
        assert!(Template::parse("${record[\"a\"]}", Zone::Utc).is_err());
        assert!(Template::parse("${chunk_id}", Zone::Utc).is_err());
        assert!(Template::parse("${tag[x]}", Zone::Utc).is_err());
        assert!(Template::parse("${}", Zone::Utc).is_err());
        assert!(Template::parse("${tag", Zone::Utc).is_err());
        assert!(Template::parse("x_%Q", Zone::Utc).is_err());
    }

    #[test]
    fn cache_follows_tag_and_second() {
        let mut c = CachedTemplate::new(Template::parse("${tag}.%S", Zone::Utc).unwrap());
        assert_eq!(c.render("a", EventTime::new(1, 0), &[]), "a.01");
        assert_eq!(c.render("a", EventTime::new(2, 0), &[]), "a.02");
        assert_eq!(c.render("b", EventTime::new(2, 0), &[]), "b.02");
        let mut c = CachedTemplate::new(Template::parse("${k}", Zone::Utc).unwrap());
        let a = rmp_serde::to_vec(&json!({"k": "a"})).unwrap();
        let b = rmp_serde::to_vec(&json!({"k": "b"})).unwrap();
        assert_eq!(c.render("t", EventTime::new(1, 0), &a), "a");
        assert_eq!(c.render("t", EventTime::new(1, 0), &b), "b");
    }

    #[test]
    fn fluentd_v012_time_slice_is_a_day() {
        let t = Template::parse("yourtable%{time_slice}", Zone::Utc).unwrap();
        assert!(t.has_time());
        assert_eq!(
            t.render("tag", EventTime::new(1_700_000_000, 0), b"\x80"),
            "yourtable20231114"
        );
        assert_eq!(t.as_str(), "yourtable%{time_slice}");
    }
}
