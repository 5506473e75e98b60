//! A fluentd `:regexp` parameter compiled for matching many short values: the regex, and when
//! the pattern only ever matches a few fixed strings (`^debug$`, `^(debug|trace)$`,
//! `healthcheck`, `^GET `), those strings compared directly. grep's usual patterns are of that
//! kind; the regex engine's set-up per call costs more than the comparison itself on a value
//! of a few bytes. The shortcut answers exactly as the regex does (a property test holds them
//! to it); anything else goes to the regex.

use super::accessor::compile_regexp;
use memchr::memmem;
use regex::Regex;
use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// Strings a shortcut may hold before it is not worth it.
const MAX_STRINGS: usize = 16;

#[derive(Debug, Clone)]
pub struct Pattern {
    regex: Regex,
    literal: Option<Literal>,
}

/// Where the fixed strings must occur for the pattern to match.
#[derive(Debug, Clone)]
enum Literal {
    /// `^a$`, `^(a|b)$`: the whole value is one of them.
    Exact(Vec<Box<[u8]>>),
    /// `^a`, `^(a|b)`: the value starts with one of them.
    Prefix(Vec<Box<[u8]>>),
    /// `a$`: the value ends with one of them.
    Suffix(Vec<Box<[u8]>>),
    /// `a`: the value contains it.
    Contains(Box<memmem::Finder<'static>>),
}

impl Pattern {
    /// `/pattern/flags` or a bare pattern, as `compile_regexp` takes it.
    pub fn new(text: &str) -> Result<Self, String> {
        let regex = compile_regexp(text)?;
        let literal = regex_syntax::parse(regex.as_str())
            .ok()
            .and_then(|hir| literal(&hir));
        Ok(Self { regex, literal })
    }

    pub fn is_match(&self, value: &str) -> bool {
        let bytes = value.as_bytes();
        match &self.literal {
            Some(Literal::Exact(set)) => set.iter().any(|s| **s == *bytes),
            Some(Literal::Prefix(set)) => set.iter().any(|s| bytes.starts_with(s)),
            Some(Literal::Suffix(set)) => set.iter().any(|s| bytes.ends_with(s)),
            Some(Literal::Contains(finder)) => finder.find(bytes).is_some(),
            None => self.regex.is_match(value),
        }
    }

    /// The strings a value must equal for the pattern to match (`^debug$`), if it is one of
    /// those patterns.
    pub fn exact(&self) -> Option<&[Box<[u8]>]> {
        match &self.literal {
            Some(Literal::Exact(set)) => Some(set),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

fn literal(hir: &Hir) -> Option<Literal> {
    let parts: &[Hir] = match hir.kind() {
        HirKind::Concat(parts) => parts,
        _ => std::slice::from_ref(hir),
    };
    let is = |h: &Hir, look: Look| matches!(h.kind(), HirKind::Look(l) if *l == look);
    let (start, parts) = match parts {
        [first, rest @ ..] if is(first, Look::Start) => (true, rest),
        _ => (false, parts),
    };
    let (end, parts) = match parts {
        [rest @ .., last] if is(last, Look::End) => (true, rest),
        _ => (false, parts),
    };
    let strings = concat_strings(parts)?;
    Some(match (start, end) {
        (true, true) => Literal::Exact(strings),
        (true, false) => Literal::Prefix(strings),
        (false, true) => Literal::Suffix(strings),
        (false, false) => match strings.as_slice() {
            [one] if !one.is_empty() => {
                Literal::Contains(Box::new(memmem::Finder::new(&**one).into_owned()))
            }
            _ => return None,
        },
    })
}

/// Every string a concatenation matches, when they are few; `None` when it can match
/// anything else (repetition, a look-around, a large class).
fn concat_strings(parts: &[Hir]) -> Option<Vec<Box<[u8]>>> {
    let mut out: Vec<Vec<u8>> = vec![Vec::new()];
    for part in parts {
        let next = strings(part)?;
        if out.len() * next.len() > MAX_STRINGS {
            return None;
        }
        out = out
            .iter()
            .flat_map(|head| {
                next.iter().map(move |tail| {
                    let mut s = head.clone();
                    s.extend_from_slice(tail);
                    s
                })
            })
            .collect();
    }
    Some(out.into_iter().map(Vec::into_boxed_slice).collect())
}

fn strings(hir: &Hir) -> Option<Vec<Box<[u8]>>> {
    match hir.kind() {
        HirKind::Empty => Some(vec![Box::default()]),
        HirKind::Literal(lit) => Some(vec![lit.0.clone()]),
        HirKind::Capture(capture) => strings(&capture.sub),
        HirKind::Concat(parts) => concat_strings(parts),
        HirKind::Alternation(alternatives) => {
            let mut out = Vec::new();
            for alternative in alternatives {
                out.extend(strings(alternative)?);
                if out.len() > MAX_STRINGS {
                    return None;
                }
            }
            Some(out)
        }
        HirKind::Class(Class::Unicode(class)) => few(class
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .map(|c| Box::from(c.encode_utf8(&mut [0; 4]).as_bytes()))),
        HirKind::Class(Class::Bytes(class)) => few(class
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .map(|b| Box::from([b].as_slice()))),
        HirKind::Look(_) | HirKind::Repetition(_) => None,
    }
}

/// A class's members as strings, when there are at most `MAX_STRINGS` of them.
fn few(members: impl Iterator<Item = Box<[u8]>>) -> Option<Vec<Box<[u8]>>> {
    let out: Vec<_> = members.take(MAX_STRINGS + 1).collect();
    (out.len() <= MAX_STRINGS).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> &'static str {
        match Pattern::new(text).unwrap().literal {
            Some(Literal::Exact(_)) => "exact",
            Some(Literal::Prefix(_)) => "prefix",
            Some(Literal::Suffix(_)) => "suffix",
            Some(Literal::Contains(_)) => "contains",
            None => "regex",
        }
    }

    #[test]
    fn usual_grep_patterns_take_the_shortcut_and_the_rest_the_regex() {
        assert_eq!(kind("/^debug$/"), "exact");
        assert_eq!(kind("^(debug|trace)$"), "exact");
        assert_eq!(kind("/^(?:DEBUG|TRACE)$/"), "exact");
        assert_eq!(kind("^GET "), "prefix");
        assert_eq!(kind("\\.js$"), "suffix");
        assert_eq!(kind("healthcheck"), "contains");
        assert_eq!(kind("/var/log"), "contains");
        assert_eq!(kind("/^debug$/i"), "regex");
        assert_eq!(kind("/^debug$/m"), "exact");
        assert_eq!(kind("(?m)^debug$"), "regex");
        assert_eq!(kind("^de.ug$"), "regex");
        assert_eq!(kind("^a+$"), "regex");
        assert_eq!(kind("\\bword\\b"), "regex");
        assert_eq!(kind(""), "regex");
    }

    #[test]
    fn the_shortcut_answers_as_the_regex() {
        let p = Pattern::new("/^(debug|trace)$/").unwrap();
        assert!(p.is_match("debug") && p.is_match("trace"));
        assert!(!p.is_match("debugx") && !p.is_match("a\ndebug") && !p.is_match("debug\n"));
        assert!(Pattern::new("^[ab]c").unwrap().is_match("bcd"));
        assert!(Pattern::new("é$").unwrap().is_match("café"));
    }

    proptest::proptest! {
        /// Over patterns of every kind and values from a small alphabet (so that they
        /// often match), the shortcut and the regex agree.
        #[test]
        fn shortcut_agrees_with_the_regex(
            pattern in proptest::sample::select(vec![
                "^debug$", "^(debug|trace)$", "^de(b|bb)ug$", "^GET ", "GET$", "bug",
                "^(a|b)(c|d)$", "^[abc]$", "é", "^$", "^(a|)b$", "/^debug$/m", "x\\.y",
            ]),
            value in "(debug|trace|GET |bug|ab|c|d|é|\n|x.y|xzy|){0,4}",
        ) {
            let p = Pattern::new(pattern).unwrap();
            proptest::prop_assert_eq!(p.is_match(&value), p.regex.is_match(&value), "{} on {:?}", pattern, value);
        }
    }
}
