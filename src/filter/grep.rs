//! `@type grep`: fluentd's filter_grep. `<regexp>` / `<exclude>` (key, pattern) at the top level
//! and inside `<and>` / `<or>`, and the legacy `regexpN` / `excludeN` lines. A missing key
//! reads as "" (Ruby's `nil.to_s`), so it passes a `<regexp>` only if the pattern matches "".

use super::{Filter, RecordError};
use crate::config::{ConfigError, Element, Section};
use crate::event::Event;
use crate::fluentd::accessor::{KeyPath, to_text};
use crate::fluentd::pattern::Pattern;

struct Expression {
    key: KeyPath,
    pattern: Pattern,
}

impl Expression {
    fn matches(&self, record: &[u8]) -> bool {
        let value = self.key.get(record).map(to_text).unwrap_or_default();
        self.pattern.is_match(&value)
    }

    fn from_section(element: &Element) -> Result<Self, ConfigError> {
        let s = Section::new(element);
        let key = s.str("key").ok_or_else(|| {
            ConfigError::at(
                &element.location,
                format!("{} needs 'key'", element.header()),
            )
        })?;
        let pattern = s.str("pattern").ok_or_else(|| {
            ConfigError::at(
                &element.location,
                format!("{} needs 'pattern'", element.header()),
            )
        })?;
        let expression =
            Self::new(key, pattern).map_err(|e| ConfigError::at(&element.location, e))?;
        s.finish(&[])?;
        Ok(expression)
    }

    fn new(key: &str, pattern: &str) -> Result<Self, String> {
        Ok(Self {
            key: KeyPath::parse(key)?,
            pattern: Pattern::new(pattern)?,
        })
    }

    /// `regexp1 message foo.*`: the key, a space, the pattern.
    fn legacy(line: &str) -> Result<Self, String> {
        let (key, pattern) = line
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("'{line}' needs a key and a pattern"))?;
        Self::new(key, pattern.trim())
    }
}

/// The four groups fluentd's filter_grep evaluates in this order.
pub struct Grep {
    id: String,
    regexp_and: Vec<Expression>,
    regexp_or: Vec<Expression>,
    exclude_and: Vec<Expression>,
    exclude_or: Vec<Expression>,
}

impl Grep {
    pub fn from_config(id: String, s: &Section<'_>) -> Result<(Self, Vec<String>), ConfigError> {
        let mut grep = Self {
            id,
            regexp_and: Vec::new(),
            regexp_or: Vec::new(),
            exclude_and: Vec::new(),
            exclude_or: Vec::new(),
        };
        for e in s.sections("regexp") {
            grep.regexp_and.push(Expression::from_section(e)?);
        }
        for e in s.sections("exclude") {
            grep.exclude_or.push(Expression::from_section(e)?);
        }
        for (name, regexps_and, excludes_and) in [("and", true, true), ("or", false, false)] {
            for section in s.sections(name) {
                let inner = Section::new(section);
                for e in inner.sections("regexp") {
                    let x = Expression::from_section(e)?;
                    if regexps_and {
                        grep.regexp_and.push(x)
                    } else {
                        grep.regexp_or.push(x)
                    }
                }
                for e in inner.sections("exclude") {
                    let x = Expression::from_section(e)?;
                    if excludes_and {
                        grep.exclude_and.push(x)
                    } else {
                        grep.exclude_or.push(x)
                    }
                }
                inner.finish(&[])?;
            }
        }
        let mut legacy = Vec::new();
        for param in &s.element().params {
            let Some(n) = param
                .key
                .strip_prefix("regexp")
                .map(|n| (n, true))
                .or_else(|| param.key.strip_prefix("exclude").map(|n| (n, false)))
            else {
                continue;
            };
            if n.0.parse::<u8>().is_ok_and(|i| (1..=20).contains(&i)) {
                legacy.push((param.key.clone(), n.1));
            }
        }
        for (key, is_regexp) in legacy {
            let line = s.str(&key).unwrap_or_default();
            let x = Expression::legacy(line)
                .map_err(|e| ConfigError::at(s.location(), format!("{key}: {e}")))?;
            if is_regexp {
                grep.regexp_and.push(x)
            } else {
                grep.exclude_or.push(x)
            }
        }
        let warnings = s.finish(&[])?;
        Ok((grep, warnings))
    }

    pub fn keeps(&self, record: &[u8]) -> bool {
        if self.regexp_and.iter().any(|x| !x.matches(record)) {
            return false;
        }
        if !self.regexp_or.is_empty() && !self.regexp_or.iter().any(|x| x.matches(record)) {
            return false;
        }
        if !self.exclude_and.is_empty() && self.exclude_and.iter().all(|x| x.matches(record)) {
            return false;
        }
        !self.exclude_or.iter().any(|x| x.matches(record))
    }

    pub fn describe(&self) -> String {
        let list = |xs: &[Expression]| {
            xs.iter()
                .map(|x| format!("{} =~ {}", x.key, x.pattern.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        for (name, xs) in [
            ("all of", &self.regexp_and),
            ("any of", &self.regexp_or),
            ("not all of", &self.exclude_and),
            ("none of", &self.exclude_or),
        ] {
            if !xs.is_empty() {
                parts.push(format!("{name} [{}]", list(xs)));
            }
        }
        format!("keep {}", parts.join(" and "))
    }
}

impl Filter for Grep {
    fn id(&self) -> &str {
        &self.id
    }

    fn type_name(&self) -> &'static str {
        "grep"
    }

    fn filter(
        &self,
        _tag: &str,
        mut events: Vec<Event>,
        _errors: &mut Vec<RecordError>,
    ) -> Vec<Event> {
        events.retain(|e| self.keeps(&e.record));
        events
    }

    fn describe(&self) -> String {
        Grep::describe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grep(body: &str) -> Grep {
        let text = format!("<filter **>\n  @type grep\n{body}</filter>\n");
        let root = crate::config::parse_str(&text, std::path::Path::new("t.conf")).unwrap();
        let s = Section::new(&root.elements[0]);
        s.type_name();
        Grep::from_config("g".into(), &s).unwrap().0
    }

    fn keeps(g: &Grep, record: serde_json::Value) -> bool {
        g.keeps(&rmp_serde::to_vec(&record).unwrap())
    }

    #[test]
    fn regexp_and_exclude_as_the_fluentd_docs_example() {
        let g = grep(
            "<regexp>\n key message\n pattern /cool/\n</regexp>\n<regexp>\n key hostname\n pattern /^web\\d+\\.example\\.com$/\n</regexp>\n<exclude>\n key message\n pattern /uncool/\n</exclude>\n",
        );
        assert!(keeps(
            &g,
            json!({"message": "It's cool outside today", "hostname": "web001.example.com"})
        ));
        assert!(!keeps(
            &g,
            json!({"message": "That's not cool", "hostname": "db001.example.com"})
        ));
        assert!(!keeps(
            &g,
            json!({"message": "I am uncool", "hostname": "web001.example.com"})
        ));
    }

    #[test]
    fn missing_keys_read_as_empty_strings() {
        let g = grep("<regexp>\n key level\n pattern /.*/\n</regexp>\n");
        assert!(
            keeps(&g, json!({"message": "x"})),
            ".* matches the empty string"
        );
        let g = grep("<regexp>\n key level\n pattern /.+/\n</regexp>\n");
        assert!(!keeps(&g, json!({"message": "x"})));
        let g = grep("<exclude>\n key level\n pattern /^$/\n</exclude>\n");
        assert!(
            !keeps(&g, json!({"message": "x"})),
            "a missing key is excluded by ^$"
        );
        assert!(keeps(&g, json!({"level": "info"})));
    }

    #[test]
    fn nested_keys_and_or_groups() {
        let g = grep(
            "<or>\n <regexp>\n  key $.kubernetes.namespace\n  pattern /^prod$/\n </regexp>\n <regexp>\n  key level\n  pattern /error/\n </regexp>\n</or>\n<and>\n <exclude>\n  key path\n  pattern /^\\/health/\n </exclude>\n <exclude>\n  key status\n  pattern /^200$/\n </exclude>\n</and>\n",
        );
        assert!(keeps(
            &g,
            json!({"kubernetes": {"namespace": "prod"}, "path": "/health", "status": 500})
        ));
        assert!(!keeps(
            &g,
            json!({"kubernetes": {"namespace": "prod"}, "path": "/health", "status": 200})
        ));
        assert!(keeps(&g, json!({"level": "error"})));
        assert!(!keeps(&g, json!({"kubernetes": {"namespace": "dev"}})));
    }

    #[test]
    fn legacy_regexp_n_lines() {
        let g = grep("regexp1 message foo\nexclude1 message bar\n");
        assert!(keeps(&g, json!({"message": "foo"})));
        assert!(!keeps(&g, json!({"message": "foobar"})));
    }
}
