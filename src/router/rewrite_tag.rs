//! `@type rewrite_tag_filter` (fluent-plugin-rewrite-tag-filter v2): `<rule>` key, pattern,
//! tag (with `$1`.., `${tag}`, `${tag_parts[N]}`, `${hostname}` and their `__TAG__` forms),
//! invert. The first rule that applies re-tags the event; no rule, or the same tag, drops it.

use crate::config::{ConfigError, Element, Section};
use crate::event::Event;
use crate::fluentd::accessor::{KeyPath, compile_regexp, to_text};
use regex::Regex;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Backref(usize),
    Tag,
    TagPart(i64),
    Hostname,
}

struct Rule {
    key: KeyPath,
    pattern: Regex,
    tag: Vec<Piece>,
    invert: bool,
}

pub struct RewriteTagFilter {
    id: String,
    rules: Vec<Rule>,
    capitalize: bool,
    remove_tag: Option<Regex>,
    hostname: String,
}

/// Re-tagged events: per new tag in first-seen order, and how many no rule took.
pub struct Rewritten {
    pub groups: Vec<(String, Vec<Event>)>,
    pub dropped: usize,
}

fn parse_tag(source: &str) -> Result<Vec<Piece>, String> {
    let placeholder = Regex::new(r"\$\{[a-z_]+(?:\[-?\d+\])?\}|__[A-Z_]+(?:\[-?\d+\])?__|\$\d+")
        .map_err(|e| e.to_string())?;
    let mut pieces = Vec::new();
    let mut last = 0;
    for m in placeholder.find_iter(source) {
        if m.start() > last {
            pieces.push(Piece::Literal(source[last..m.start()].into()));
        }
        last = m.end();
        let text = m.as_str();
        let index =
            |t: &str| -> Option<i64> { t.split_once('[')?.1.split_once(']')?.0.parse().ok() };
        let piece = if let Some(n) = text.strip_prefix('$').and_then(|n| n.parse().ok()) {
            Piece::Backref(n)
        } else if text == "${tag}" || text == "__TAG__" {
            Piece::Tag
        } else if text == "${hostname}" || text == "__HOSTNAME__" {
            Piece::Hostname
        } else if text.starts_with("${tag_parts[") || text.starts_with("__TAG_PARTS[") {
            Piece::TagPart(index(text).ok_or_else(|| format!("bad placeholder {text}"))?)
        } else {
            return Err(format!(
                "unsupported placeholder '{text}' in tag '{source}' (supported: $1.., ${{tag}}, ${{tag_parts[N]}}, ${{hostname}}, __TAG__, __TAG_PARTS[N]__, __HOSTNAME__)"
            ));
        };
        pieces.push(piece);
    }
    if last < source.len() {
        pieces.push(Piece::Literal(source[last..].into()));
    }
    Ok(pieces)
}

impl RewriteTagFilter {
    pub fn from_config(id: String, s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut rules = Vec::new();
        for element in s.sections("rule") {
            rules.push(Self::rule(element)?);
        }
        let mut legacy: Vec<(u32, &str)> = s
            .element()
            .params
            .iter()
            .filter_map(|p| {
                Some((
                    p.key.strip_prefix("rewriterule")?.parse().ok()?,
                    p.key.as_str(),
                ))
            })
            .collect();
        legacy.sort();
        for (_, key) in legacy {
            let line = s.str(key).unwrap_or_default();
            let at = |e: String| ConfigError::at(s.location(), format!("{key}: {e}"));
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [k, pattern @ .., tag] = parts.as_slice() else {
                return Err(at(format!("'{line}' needs a key, a pattern and a tag")));
            };
            if pattern.is_empty() {
                return Err(at(format!("'{line}' needs a key, a pattern and a tag")));
            }
            rules.push(Rule {
                key: KeyPath::parse(k).map_err(at)?,
                pattern: compile_regexp(&pattern.join(" ")).map_err(at)?,
                tag: parse_tag(tag).map_err(at)?,
                invert: false,
            });
        }
        if rules.is_empty() {
            return Err(ConfigError::at(
                s.location(),
                "rewrite_tag_filter needs at least one <rule> (key, pattern, tag)",
            ));
        }
        let remove_prefix = s
            .str("remove_tag_prefix")
            .map(|p| format!("^{}\\.?", regex::escape(p)));
        let remove_regexp = s.str("remove_tag_regexp").map(str::to_owned);
        let remove_tag = match remove_regexp.or(remove_prefix) {
            Some(p) => Some(compile_regexp(&p).map_err(|e| ConfigError::at(s.location(), e))?),
            None => None,
        };
        let filter = Self {
            id,
            rules,
            capitalize: s.bool("capitalize_regex_backreference")?.unwrap_or(false),
            remove_tag,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let warnings = s.finish(&["hostname_command", "emit_mode"])?;
        Ok((filter, warnings))
    }

    fn rule(element: &Element) -> Result<Rule, ConfigError> {
        let s = Section::new(element);
        let at = |e: String| ConfigError::at(&element.location, e);
        let need = |key: &str| {
            s.str(key)
                .ok_or_else(|| at(format!("<rule> needs '{key}'")))
        };
        let rule = Rule {
            key: KeyPath::parse(need("key")?).map_err(at)?,
            pattern: compile_regexp(need("pattern")?).map_err(at)?,
            tag: parse_tag(need("tag")?).map_err(at)?,
            invert: s.bool("invert")?.unwrap_or(false),
        };
        s.finish(&[])?;
        Ok(rule)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn rewrite(&self, tag: &str, events: Vec<Event>) -> Rewritten {
        let base = match &self.remove_tag {
            Some(re) => re.replace(tag, "").into_owned(),
            None => tag.to_owned(),
        };
        let parts: Vec<&str> = base.split('.').collect();
        let mut out = Rewritten {
            groups: Vec::new(),
            dropped: 0,
        };
        for event in events {
            match self.new_tag(&event.record, &base, &parts) {
                Some(new) if new != tag => match out.groups.iter_mut().find(|(t, _)| *t == new) {
                    Some((_, list)) => list.push(event),
                    None => out.groups.push((new, vec![event])),
                },
                _ => out.dropped += 1,
            }
        }
        out
    }

    fn new_tag(&self, record: &[u8], tag: &str, parts: &[&str]) -> Option<String> {
        for rule in &self.rules {
            let value = rule.key.get(record).map(to_text).unwrap_or_default();
            if value.is_empty() && !rule.invert {
                continue;
            }
            let captures = rule.pattern.captures(&value);
            if captures.is_some() == rule.invert {
                continue;
            }
            let mut out = String::new();
            for piece in &rule.tag {
                match piece {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Tag => out.push_str(tag),
                    Piece::Hostname => out.push_str(&self.hostname),
                    Piece::TagPart(n) => {
                        let len = parts.len() as i64;
                        let i = if *n < 0 { len + n } else { *n };
                        if (0..len).contains(&i) {
                            out.push_str(parts[i as usize]);
                        }
                    }
                    Piece::Backref(n) => {
                        let text = captures
                            .as_ref()
                            .and_then(|c| c.get(*n))
                            .map_or("", |m| m.as_str());
                        if self.capitalize {
                            let mut chars = text.chars();
                            if let Some(first) = chars.next() {
                                out.extend(first.to_uppercase());
                                out.push_str(&chars.as_str().to_lowercase());
                            }
                        } else {
                            out.push_str(text);
                        }
                    }
                }
            }
            return Some(out);
        }
        None
    }

    pub fn describe(&self) -> String {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} {}~ {}",
                    r.key,
                    if r.invert { "!" } else { "=" },
                    r.pattern.as_str()
                )
            })
            .collect();
        format!("rules [{}]", rules.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventTime;
    use bytes::Bytes;
    use serde_json::json;

    fn filter(body: &str) -> RewriteTagFilter {
        let text = format!("<match **>\n  @type rewrite_tag_filter\n{body}</match>\n");
        let root = crate::config::parse_str(&text, std::path::Path::new("t.conf")).unwrap();
        let s = Section::new(&root.elements[0]);
        s.type_name();
        RewriteTagFilter::from_config("r".into(), &s).unwrap().0
    }

    fn tags(
        f: &RewriteTagFilter,
        tag: &str,
        records: &[serde_json::Value],
    ) -> (Vec<(String, usize)>, usize) {
        let events = records
            .iter()
            .map(|r| Event {
                time: EventTime::new(1, 0),
                record: Bytes::from(rmp_serde::to_vec(r).unwrap()),
            })
            .collect();
        let out = f.rewrite(tag, events);
        (
            out.groups.into_iter().map(|(t, e)| (t, e.len())).collect(),
            out.dropped,
        )
    }

    #[test]
    fn rules_in_order_with_backreferences_and_tag_parts() {
        let f = filter(
            "<rule>\n key domain\n pattern ^(www\\.)?(.+)\\.com$\n tag site.$2.${tag_parts[-1]}\n</rule>\n<rule>\n key domain\n pattern .+\n tag other.${tag}\n</rule>\n",
        );
        let (groups, dropped) = tags(
            &f,
            "app.access",
            &[
                json!({"domain": "www.example.com"}),
                json!({"domain": "x.org"}),
                json!({"other": 1}),
                json!({"domain": "example.com"}),
            ],
        );
        assert_eq!(
            groups,
            [
                ("site.example.access".into(), 2),
                ("other.app.access".into(), 1)
            ]
        );
        assert_eq!(dropped, 1, "a missing key matches no rule");
    }

    #[test]
    fn invert_matches_missing_keys_and_same_tag_is_dropped() {
        let f = filter(
            "<rule>\n key level\n pattern /^(error|warn)$/\n tag noise\n invert true\n</rule>\n",
        );
        let (groups, _) = tags(
            &f,
            "t",
            &[
                json!({"level": "info"}),
                json!({}),
                json!({"level": "error"}),
            ],
        );
        assert_eq!(groups, [("noise".into(), 2)]);
        let (groups, dropped) = tags(&f, "noise", &[json!({})]);
        assert!(groups.is_empty());
        assert_eq!(dropped, 1);
    }

    #[test]
    fn legacy_rules_capitalize_and_remove_prefix() {
        let f = filter(
            "rewriterule1 method ^(get|post)$ __TAG__.$1\ncapitalize_regex_backreference yes\nremove_tag_prefix raw\n",
        );
        let (groups, _) = tags(&f, "raw.http", &[json!({"method": "get"})]);
        assert_eq!(groups, [("http.Get".into(), 1)]);
    }
}
