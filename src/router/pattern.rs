//! fluentd tag patterns (`<match a.* b.** {x,y}.z>`), compiled once to anchored regexes with
//! the semantics of fluentd's GlobMatchPattern: `*` one tag part, `**` zero or more parts
//! (so `a.**` also matches `a`), `{a,b}` alternatives, `\` escapes.

use regex::Regex;

#[derive(Debug, Clone)]
pub struct TagPattern {
    source: String,
    regex: Option<Regex>,
}

impl TagPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "**" {
            return Ok(Self {
                source: pattern.into(),
                regex: None,
            });
        }
        let body = glob_to_regex(pattern)?;
        let regex = Regex::new(&format!(r"\A(?:{body})\z"))
            .map_err(|e| format!("invalid tag pattern '{pattern}': {e}"))?;
        Ok(Self {
            source: pattern.into(),
            regex: Some(regex),
        })
    }

    pub fn matches(&self, tag: &str) -> bool {
        self.regex.as_ref().is_none_or(|re| re.is_match(tag))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

fn glob_to_regex(pat: &str) -> Result<String, String> {
    let chars: Vec<char> = pat.chars().collect();
    // One regex under construction per open `{`, each with its finished alternatives.
    let mut groups: Vec<(Vec<String>, String)> = Vec::new();
    let mut current = String::new();
    let mut dot = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let escaped = chars
                .get(i + 1)
                .ok_or_else(|| format!("tag pattern '{pat}' ends with a backslash"))?;
            if dot {
                current.push_str(r"\.");
                dot = false;
            }
            current.push_str(&regex::escape(&escaped.to_string()));
            i += 2;
            continue;
        }
        if c == '*' && chars.get(i + 1) == Some(&'*') {
            // `**` is zero or more whole parts, so the dots around it are optional with it:
            // "a.**" matches "a", "a.**.z" matches "a.z", "**.c" matches "c".
            let dot_after = chars.get(i + 2) == Some(&'.');
            current.push_str(match (dot, dot_after) {
                (true, true) => r"\.(?:.*\.)?",
                (true, false) => r"(?:\..*)?",
                (false, true) => r"(?:.*\.)?",
                (false, false) => ".*",
            });
            dot = false;
            i += if dot_after { 3 } else { 2 };
            continue;
        }
        if dot {
            current.push_str(r"\.");
            dot = false;
        }
        match c {
            '.' => dot = true,
            '*' => current.push_str(r"[^.]*"),
            '{' => groups.push((Vec::new(), std::mem::take(&mut current))),
            ',' if !groups.is_empty() => {
                if let Some((alternatives, _)) = groups.last_mut() {
                    alternatives.push(std::mem::take(&mut current));
                }
            }
            '}' if !groups.is_empty() => {
                if let Some((mut alternatives, outer)) = groups.pop() {
                    alternatives.push(std::mem::take(&mut current));
                    current = format!("{outer}(?:{})", alternatives.join("|"));
                }
            }
            c => current.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    if dot {
        current.push_str(r"\.");
    }
    if !groups.is_empty() {
        return Err(format!("tag pattern '{pat}' has an unclosed '{{'"));
    }
    Ok(current)
}

/// The patterns of one `<match>`: space-separated, any may match.
#[derive(Debug, Clone)]
pub struct MatchPatterns(Vec<TagPattern>);

impl MatchPatterns {
    pub fn parse(arg: &str) -> Result<Self, String> {
        let patterns = arg
            .split_whitespace()
            .map(TagPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("<match> needs a tag pattern, e.g. <match **>".into());
        }
        Ok(Self(patterns))
    }

    pub fn matches(&self, tag: &str) -> bool {
        self.0.iter().any(|p| p.matches(tag))
    }
}

impl std::fmt::Display for MatchPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = self.0.iter().map(TagPattern::as_str).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, tag: &str) -> bool {
        MatchPatterns::parse(pattern).unwrap().matches(tag)
    }

    #[test]
    fn patterns_match_like_fluentd() {
        // Cases from fluentd's test_match.rb semantics.
        let yes = [
            ("a", "a"),
            ("a.b", "a.b"),
            ("a*", "abc"),
            ("*a", "cba"),
            ("a.*", "a.b"),
            ("a.*.c", "a.b.c"),
            ("**", ""),
            ("**", "a.b.c"),
            ("a.**", "a"),
            ("a.**", "a.b.c"),
            ("**.c", "c"),
            ("**.c", "a.b.c"),
            ("a.**.z", "a.z"),
            ("a.**.z", "a.b.c.z"),
            ("{a,b}", "b"),
            ("a.{b,c}.d", "a.c.d"),
            ("{a.*,b}.c", "a.x.c"),
            ("a.{b,c.**}", "a.c.d.e"),
            ("a b", "b"),
            ("docker.* app.**", "app.web.1"),
            ("a\\*", "a*"),
        ];
        for (pattern, tag) in yes {
            assert!(m(pattern, tag), "{pattern} should match {tag}");
        }
        let no = [
            ("a", "b"),
            ("a.b", "aab"),
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("*", "a.b"),
            ("a.**", "ab"),
            ("a.**", "b.a"),
            ("**.c", "ac"),
            ("{a,b}", "c"),
            ("{a,b}", "ab"),
            ("a\\*", "ab"),
        ];
        for (pattern, tag) in no {
            assert!(!m(pattern, tag), "{pattern} should not match {tag}");
        }
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(MatchPatterns::parse("").is_err());
        assert!(MatchPatterns::parse("{a,b").is_err());
        assert!(MatchPatterns::parse("a\\").is_err());
    }
}
