//! Name templates resolved per event, as fluentd's buffer placeholders: `${tag}`,
//! `${tag[N]}` (negative N counts from the end) and strftime parts of the event time such as
//! `%Y%m%d`. Used for file paths now and BigQuery table names later. Pure; no I/O.

use super::super::format::time::{TimeFormatter, Zone};
use crate::codec::EventTime;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tag,
    TagIndex(i64),
}

#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    has_time: bool,
    zone: Zone,
}

impl Template {
    pub fn parse(source: &str, zone: Zone) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].into()));
            }
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in '{source}'"))?;
            let name = &rest[start + 2..start + end];
            parts.push(parse_placeholder(name).ok_or_else(|| {
                format!(
                    "unsupported placeholder '${{{name}}}' in '{source}' (supported: ${{tag}}, ${{tag[N]}}, strftime like %Y%m%d)"
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

    pub fn has_time(&self) -> bool {
        self.has_time
    }

    pub fn has_tag(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    pub fn render(&self, tag: &str, time: EventTime) -> String {
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

/// Tag text going through strftime must not be read as a format.
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

fn parse_placeholder(name: &str) -> Option<Part> {
    if name == "tag" {
        return Some(Part::Tag);
    }
    let index = name.strip_prefix("tag[")?.strip_suffix(']')?;
    index.trim().parse().ok().map(Part::TagIndex)
}

/// Remembers the last rendering per (tag, second): events of one batch mostly share both.
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

    pub fn render(&mut self, tag: &str, time: EventTime) -> &str {
        let secs = if self.template.has_time { time.secs } else { 0 };
        let hit = matches!(&self.last, Some((t, s, _)) if t == tag && *s == secs);
        if !hit {
            let rendered = self.template.render(tag, time);
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

    fn render(template: &str, tag: &str) -> String {
        let t = Template::parse(template, Zone::Utc).unwrap();
        t.render(tag, EventTime::new(1_764_099_221, 0)) // 2025-11-25T19:33:41Z
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
    fn unknown_placeholders_and_bad_formats_are_errors() {
        assert!(Template::parse("${record}", Zone::Utc).is_err());
        assert!(Template::parse("${tag", Zone::Utc).is_err());
        assert!(Template::parse("x_%Q", Zone::Utc).is_err());
    }

    #[test]
    fn cache_follows_tag_and_second() {
        let mut c = CachedTemplate::new(Template::parse("${tag}.%S", Zone::Utc).unwrap());
        assert_eq!(c.render("a", EventTime::new(1, 0)), "a.01");
        assert_eq!(c.render("a", EventTime::new(2, 0)), "a.02");
        assert_eq!(c.render("b", EventTime::new(2, 0)), "b.02");
    }
}
