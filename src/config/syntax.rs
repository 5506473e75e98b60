//! fluentd v1 config syntax (directives, parameters, literals, @include) into an `Element` tree,
//! following fluentd's `v1_parser.rb`/`literal_parser.rb`; no knowledge of plugins or value types.
//!
//! Where fluentd's scanner has a quirk that a working config may rely on, it is kept and the
//! test names it: `#` right after a character is part of an unquoted value, a value of only a
//! comment is that text, an unquoted value starting with `[` or `{` must be JSON.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigError;
use super::embedded;

/// Where a directive or parameter starts: file and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone)]
pub struct Param {
    pub key: String,
    pub value: String,
    pub location: Location,
}

/// A directive `<name arg>...</name>`; the file itself is the element named "ROOT".
#[derive(Debug, Clone)]
pub struct Element {
    pub name: String,
    pub arg: String,
    pub params: Vec<Param>,
    pub elements: Vec<Element>,
    pub location: Location,
}

impl Element {
    /// The parameter `key`; when it is given more than once the last one wins, as in fluentd.
    pub fn param(&self, key: &str) -> Option<&Param> {
        self.params.iter().rev().find(|p| p.key == key)
    }

    pub fn elements_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.elements.iter().filter(move |e| e.name == name)
    }

    /// A section that the config does not have, read for its defaults.
    pub fn empty(name: &str, location: Location) -> Self {
        Self {
            name: name.into(),
            arg: String::new(),
            params: Vec::new(),
            elements: Vec::new(),
            location,
        }
    }

    /// The opening tag as written, for messages: `<match a.**>` or `<system>`.
    pub fn header(&self) -> String {
        if self.arg.is_empty() {
            format!("<{}>", self.name)
        } else {
            format!("<{} {}>", self.name, self.arg)
        }
    }
}

pub fn parse_file(path: &Path) -> Result<Element, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
    })?;
    parse_str(&text, path)
}

/// Parses `text` as if read from `file`, which names locations and anchors relative @include.
pub fn parse_str(text: &str, file: &Path) -> Result<Element, ConfigError> {
    parse_with_env(text, file, &|name| std::env::var(name).ok())
}

/// `parse_str` with the environment injected, so tests need not mutate the process's.
pub(crate) fn parse_with_env(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Element, ConfigError> {
    let mut stack = vec![std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf())];
    let mut parser = Parser::new(text, Arc::new(file.to_path_buf()), &mut stack, env);
    let location = parser.location();
    let mut root = Element {
        name: "ROOT".into(),
        arg: String::new(),
        params: Vec::new(),
        elements: Vec::new(),
        location,
    };
    parser.parse_body(&mut Body::root(&mut root.params, &mut root.elements), 0)?;
    Ok(root)
}

/// Directives under which an unknown `@param` is an error rather than a fluentd warning.
const ELEM_SYMBOLS: &[&str] = &["match", "source", "filter", "system"];
const RESERVED_PARAMS: &[&str] = &["@type", "@id", "@label", "@log_level"];
/// Guards against stack exhaustion on hostile input; real configs nest a handful of levels.
const MAX_DEPTH: usize = 64;

/// Where an unquoted string ends (fluentd's boundary regexps).
#[derive(Clone, Copy)]
enum Boundary {
    /// `LINE_END`: optional blanks, optional comment, then end of line or file.
    LineEnd,
    /// `SPACING`: whitespace or end of file (keys).
    Spacing,
    /// Optional spacing then `>` (a directive's argument).
    TagArg,
}

/// The element being filled: its parameters and children, and what closes it.
struct Body<'b> {
    params: &'b mut Vec<Param>,
    elements: &'b mut Vec<Element>,
    /// `None` at the top level of a file (including an included file).
    open: Option<(&'b str, &'b Location)>,
}

impl<'b> Body<'b> {
    fn root(params: &'b mut Vec<Param>, elements: &'b mut Vec<Element>) -> Self {
        Self {
            params,
            elements,
            open: None,
        }
    }
}

struct Parser<'s, 'c> {
    src: &'s str,
    pos: usize,
    file: Arc<PathBuf>,
    line_starts: Vec<usize>,
    /// Canonical paths of the files being read, outermost first, to refuse include cycles.
    stack: &'c mut Vec<PathBuf>,
    env: &'c dyn Fn(&str) -> Option<String>,
}

impl<'s, 'c> Parser<'s, 'c> {
    fn new(
        src: &'s str,
        file: Arc<PathBuf>,
        stack: &'c mut Vec<PathBuf>,
        env: &'c dyn Fn(&str) -> Option<String>,
    ) -> Self {
        // Editors on Windows may save a byte order mark; it is not part of the first key.
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            src,
            pos: 0,
            file,
            line_starts,
            stack,
            env,
        }
    }

    // ---- structure -------------------------------------------------------------------------

    fn parse_body(&mut self, body: &mut Body<'_>, depth: usize) -> Result<(), ConfigError> {
        loop {
            self.skip_spacing();
            if self.eof() {
                return match body.open {
                    None => Ok(()),
                    Some((name, at)) => Err(self.error(format!(
                        "expected end tag '</{name}>' but got end of file (<{name}> opened at {at})"
                    ))),
                };
            }
            if self.rest().starts_with("</") {
                return self.end_tag(body);
            } else if self.rest().starts_with('<') {
                self.directive(body, depth)?;
            } else {
                self.param(body, depth)?;
            }
        }
    }

    fn end_tag(&mut self, body: &Body<'_>) -> Result<(), ConfigError> {
        let location = self.location();
        self.pos += 2;
        let name = self.scan_name();
        self.skip_spacing();
        if !self.eat(b'>') {
            return Err(self.error("expected '>' to close the end tag"));
        }
        if !self.line_end() {
            return Err(self.error("expected end of line after end tag"));
        }
        match body.open {
            Some((open, _)) if open == name => Ok(()),
            Some((open, at)) => Err(ConfigError::at(
                &location,
                format!(
                    "unmatched end tag '</{name}>': expected '</{open}>' for <{open}> opened at {at}"
                ),
            )),
            None => Err(ConfigError::at(
                &location,
                format!("unmatched end tag '</{name}>': no <{name}> is open"),
            )),
        }
    }

    fn directive(&mut self, body: &mut Body<'_>, depth: usize) -> Result<(), ConfigError> {
        let location = self.location();
        self.pos += 1;
        let name = self.scan_name().to_string();
        if name.is_empty() {
            return Err(self.error("expected a directive name (letters, digits, '_') after '<'"));
        }
        self.skip_spacing();
        let arg = self.scan_nonquoted(Boundary::TagArg).unwrap_or_default();
        self.skip_spacing();
        if !self.eat(b'>') {
            return Err(self.error(format!("expected '>' to close <{name}")));
        }
        if !self.line_end() {
            return Err(self.error("expected end of line after tag"));
        }
        if depth >= MAX_DEPTH {
            return Err(ConfigError::at(
                &location,
                format!("directives nested more than {MAX_DEPTH} deep"),
            ));
        }
        let mut element = Element {
            name,
            arg,
            params: Vec::new(),
            elements: Vec::new(),
            location,
        };
        let mut inner = Body {
            params: &mut element.params,
            elements: &mut element.elements,
            open: Some((&element.name, &element.location)),
        };
        self.parse_body(&mut inner, depth + 1)?;
        body.elements.push(element);
        Ok(())
    }

    fn param(&mut self, body: &mut Body<'_>, depth: usize) -> Result<(), ConfigError> {
        let location = self.location();
        let quoted_key = matches!(self.peek(), Some(b'"' | b'\''));
        let key = self.scan_string(Boundary::Spacing)?.unwrap_or_default();
        let is_include =
            !quoted_key && (key == "@include" || (body.open.is_none() && key == "include"));
        let blank = self.skip_blank();
        // A key alone on its line has the empty value (fluentd: "tag_mapped"-style flags).
        if blank.contains('\n') || self.eof() {
            if is_include {
                return Err(ConfigError::at(&location, "@include needs a path"));
            }
            body.params.push(Param {
                key,
                value: String::new(),
                location,
            });
            return Ok(());
        }
        if is_include {
            let spec = self.scan_string(Boundary::LineEnd)?.unwrap_or_default();
            if !self.line_end() {
                return Err(self.error("expected end of line after the @include path"));
            }
            return self.include(&spec, &location, body, depth);
        }
        if key.starts_with('@') && !RESERVED_PARAMS.contains(&key.as_str()) {
            let strict = body
                .open
                .is_none_or(|(name, _)| ELEM_SYMBOLS.contains(&name));
            if strict {
                return Err(ConfigError::at(
                    &location,
                    format!(
                        "'@' is the system reserved prefix; parameter '{key}' is not allowed here"
                    ),
                ));
            }
        }
        let value = self.parse_literal()?;
        if !self.line_end() {
            return Err(self.error(format!("expected end of line after the value of '{key}'")));
        }
        body.params.push(Param {
            key,
            value,
            location,
        });
        Ok(())
    }

    // ---- @include --------------------------------------------------------------------------

    fn include(
        &mut self,
        spec: &str,
        at: &Location,
        body: &mut Body<'_>,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let path = include_path(spec).map_err(|m| ConfigError::at(at, m))?;
        let pattern = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.file.parent().unwrap_or(Path::new("")).join(path)
        };
        let mut files = glob_sorted(&pattern).map_err(|m| ConfigError::at(at, m))?;
        files.retain(|f| !f.is_dir());
        // fluentd's Dir.glob silently includes nothing when nothing matches; for a plain path
        // (no wildcard) that is almost always a typo, so bqforward refuses it.
        if files.is_empty() && !path.contains(['*', '?', '[']) {
            return Err(ConfigError::at(
                at,
                format!("@include {spec}: no such file {}", pattern.display()),
            ));
        }
        for file in files {
            self.include_file(&file, at, body, depth)?;
        }
        Ok(())
    }

    fn include_file(
        &mut self,
        file: &Path,
        at: &Location,
        body: &mut Body<'_>,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if self.stack.contains(&canonical) {
            return Err(ConfigError::at(
                at,
                format!("include cycle: {} is already being read", file.display()),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::at(at, format!("include error {}: {e}", file.display())))?;
        self.stack.push(canonical);
        let mut parser = Parser::new(&text, Arc::new(file.to_path_buf()), self.stack, self.env);
        // Included content is spliced into the including element, read as a top level.
        let mut spliced = Body::root(body.params, body.elements);
        let result = parser.parse_body(&mut spliced, depth);
        self.stack.pop();
        result
    }

    // ---- literals --------------------------------------------------------------------------

    /// A value: JSON array/hash (possibly multi-line), or a quoted or unquoted string.
    fn parse_literal(&mut self) -> Result<String, ConfigError> {
        self.skip_blank();
        match self.peek() {
            Some(b'[') => self.scan_json(b'[', b']', "array"),
            Some(b'{') => self.scan_json(b'{', b'}', "hash"),
            _ => Ok(self.scan_string(Boundary::LineEnd)?.unwrap_or_default()),
        }
    }

    fn scan_string(&mut self, boundary: Boundary) -> Result<Option<String>, ConfigError> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.scan_double_quoted().map(Some)
            }
            Some(b'\'') => {
                self.pos += 1;
                self.scan_single_quoted().map(Some)
            }
            _ => Ok(self.scan_nonquoted(boundary)),
        }
    }

    /// An unquoted string; `#` is a character unless blanks precede it (then a comment).
    fn scan_nonquoted(&mut self, boundary: Boundary) -> Option<String> {
        let start = self.pos;
        while let Some(c) = self.peek_char() {
            let at_boundary = c != '#'
                && match boundary {
                    Boundary::LineEnd => line_end_at(self.bytes(), self.pos).is_some(),
                    Boundary::Spacing => matches!(c, ' ' | '\t' | '\r' | '\n'),
                    Boundary::TagArg => {
                        self.bytes().get(spacing_end(self.bytes(), self.pos)) == Some(&b'>')
                    }
                };
            if at_boundary || c == '\n' {
                break;
            }
            self.pos += c.len_utf8();
        }
        (self.pos > start).then(|| self.src[start..self.pos].to_string())
    }

    /// A double-quoted string after its opening quote: escapes, `#{...}`, and line breaks,
    /// which fluentd keeps after a character and drops after a backslash (continuation).
    fn scan_double_quoted(&mut self) -> Result<String, ConfigError> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(self.error("unexpected end of file in a double quoted string"));
            };
            if c == '"' {
                self.pos += 1;
                return Ok(out);
            }
            let next = self.pos + c.len_utf8();
            let next_byte = self.bytes().get(next).copied();
            if matches!(next_byte, None | Some(b'\r' | b'\n')) {
                if c != '\\' {
                    out.push(c);
                    if let Some(b) = next_byte {
                        out.push(char::from(b));
                    }
                }
                self.pos = next + usize::from(next_byte.is_some());
            } else if c == '\\' {
                let escaped = self.src[next..].chars().next().unwrap_or('\\');
                out.push(self.escape(escaped)?);
                self.pos = next + escaped.len_utf8();
            } else if c == '#' && next_byte == Some(b'{') {
                let location = self.location();
                self.pos = next + 1;
                let code = self.scan_embedded_code()?;
                let value = embedded::evaluate(code, self.env)
                    .map_err(|m| ConfigError::at(&location, m))?;
                out.push_str(&value);
            } else if c == '\n' {
                return Err(self.error(
                    "unexpected line break in a double quoted string \
                     (fluentd accepts a line break in quotes only right after a character)",
                ));
            } else {
                out.push(c);
                self.pos = next;
            }
        }
    }

    fn escape(&self, c: char) -> Result<char, ConfigError> {
        Ok(match c {
            'r' => '\r',
            'n' => '\n',
            't' => '\t',
            'f' => '\u{c}',
            'b' => '\u{8}',
            '0' => '\0',
            c if c.is_ascii_alphanumeric() => {
                return Err(self.error(format!("unexpected back-slash escape character '{c}'")));
            }
            c => c,
        })
    }

    /// The code of `#{...}` up to its matching `}` (consumed), skipping braces in Ruby strings.
    fn scan_embedded_code(&mut self) -> Result<&'s str, ConfigError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut depth = 0usize;
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                quote @ (b'\'' | b'"') => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != quote {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'{' => depth += 1,
                b'}' if depth == 0 => {
                    self.pos = i + 1;
                    return Ok(&self.src[start..i]);
                }
                b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        self.pos = bytes.len();
        Err(self.error("expected '}' to end embedded code \"#{...}\" but got end of file"))
    }

    fn scan_single_quoted(&mut self) -> Result<String, ConfigError> {
        let mut out = String::new();
        loop {
            let rest = self.rest();
            if rest.starts_with('\'') {
                self.pos += 1;
                return Ok(out);
            } else if rest.starts_with("\\'") || rest.starts_with("\\\\") {
                out.push(char::from(rest.as_bytes()[1]));
                self.pos += 2;
            } else {
                match rest.chars().next() {
                    Some(c) if c != '\n' => {
                        out.push(c);
                        self.pos += c.len_utf8();
                    }
                    _ => {
                        return Err(self.error(
                            "single quoted string not closed on its line \
                             (only double quoted strings may span lines)",
                        ));
                    }
                }
            }
        }
    }

    /// A JSON array or hash, read until it first parses, so it may span lines. As in fluentd,
    /// a `#` is a comment (to end of line) when the JSON so far would be complete without it.
    fn scan_json(&mut self, open: u8, close: u8, kind: &str) -> Result<String, ConfigError> {
        let location = self.location();
        self.pos += 1;
        let mut done = String::from(char::from(open));
        let mut line = String::new();
        while let Some(c) = self.peek_char() {
            self.pos += c.len_utf8();
            match c {
                '#' => {
                    let trimmed = line.trim_end();
                    let trimmed = trimmed.strip_suffix(',').unwrap_or(trimmed);
                    let probe = format!("{done}{trimmed}{}", char::from(close));
                    if is_json(&probe) {
                        while let Some(skipped) = self.peek_char() {
                            self.pos += skipped.len_utf8();
                            if skipped == '\n' {
                                break;
                            }
                        }
                        done.push_str(&line);
                        done.push('\n');
                        line.clear();
                    } else {
                        line.push('#');
                    }
                }
                '\n' => {
                    done.push_str(&line);
                    done.push('\n');
                    line.clear();
                }
                c => {
                    line.push(c);
                    // Only a closing bracket can complete the JSON text.
                    if (c == ']' || c == '}') && is_json(&format!("{done}{line}")) {
                        done.push_str(&line);
                        return Ok(done);
                    }
                }
            }
        }
        Err(ConfigError::at(
            &location,
            format!(
                "got incomplete JSON {kind} configuration (a value starting with '{}' must be JSON; quote it otherwise)",
                char::from(open)
            ),
        ))
    }

    // ---- scanning primitives ---------------------------------------------------------------

    fn bytes(&self) -> &'s [u8] {
        self.src.as_bytes()
    }

    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn eof(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn scan_name(&mut self) -> &'s str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    /// fluentd's `SPACING`: whitespace, newlines and comments.
    fn skip_spacing(&mut self) {
        self.pos = spacing_end(self.bytes(), self.pos);
    }

    /// fluentd's `SPACING_WITHOUT_COMMENT`; returns what was skipped.
    fn skip_blank(&mut self) -> &'s str {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn line_end(&mut self) -> bool {
        match line_end_at(self.bytes(), self.pos) {
            Some(end) => {
                self.pos = end;
                true
            }
            None => false,
        }
    }

    fn location(&self) -> Location {
        let line = self.line_starts.partition_point(|&s| s <= self.pos);
        Location {
            file: self.file.clone(),
            line: line.max(1),
        }
    }

    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.location(), message)
    }
}

/// fluentd's `LINE_END` at `i`: one or more of (blanks, optional comment, newline or end of
/// file). Returns where it ends.
fn line_end_at(s: &[u8], mut i: usize) -> Option<usize> {
    let mut end = None;
    loop {
        let mut j = i;
        while j < s.len() && matches!(s[j], b' ' | b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'#' {
            while j < s.len() && s[j] != b'\n' {
                j += 1;
            }
        }
        if j == s.len() {
            return Some(j);
        }
        if matches!(s[j], b'\r' | b'\n') {
            i = j + 1;
            end = Some(i);
        } else {
            return end;
        }
    }
}

/// End of fluentd's `SPACING` (zero or more) starting at `i`.
fn spacing_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    i
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

/// The local path an @include names; URLs other than file:// are refused.
fn include_path(spec: &str) -> Result<&str, String> {
    if let Some(path) = spec.strip_prefix("file://") {
        return Ok(path);
    }
    if let Some((scheme, _)) = spec.split_once("://")
        && scheme.len() > 1
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!(
            "@include {spec}: bqforward includes only local files, not URLs; \
             download the file and include its path"
        ));
    }
    if spec.is_empty() {
        return Err("@include needs a path".into());
    }
    Ok(spec)
}

/// Files matching `pattern`, sorted by name as fluentd's `Dir.glob(...).sort`.
fn glob_sorted(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let text = pattern
        .to_str()
        .ok_or_else(|| format!("@include path {} is not UTF-8", pattern.display()))?;
    // Ruby's Dir.glob: `*` stops at '/' and does not match a leading dot.
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let entries =
        glob::glob_with(text, options).map_err(|e| format!("@include {text}: bad pattern: {e}"))?;
    let mut files = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("include error {text}: {e}"))?;
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value;

    fn test_env(name: &str) -> Option<String> {
        match name {
            "BQF_PROJECT" => Some("my-project".into()),
            "BQF_EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Element, ConfigError> {
        parse_with_env(text, Path::new("conf/fluent.conf"), &test_env)
    }

    fn parse_ok(text: &str) -> Element {
        parse(text).unwrap_or_else(|e| panic!("parse failed: {e}\n---\n{text}"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(root) => panic!("expected an error, got {root:#?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The value of `key` in the first `<match>` of `text`, or in the root when there is none.
    fn value_of(text: &str, key: &str) -> String {
        let root = parse_ok(text);
        let element = root.elements.first().unwrap_or(&root);
        element
            .param(key)
            .unwrap_or_else(|| panic!("no {key} in {element:#?}"))
            .value
            .clone()
    }

    #[test]
    fn directives_nest_with_names_args_params_and_lines() {
        let root = parse_ok(
            "# top comment\n\
             <source>\n\
             \x20 @type forward\n\
             \x20 port 24224\n\
             </source>\n\
             \n\
             <match app.** sys.*>\n\
             \x20 @type bigquery_insert\n\
             \x20 <buffer tag, time>\n\
             \x20   chunk_limit_size 8m\n\
             \x20 </buffer>\n\
             </match>\n",
        );
        assert_eq!(root.name, "ROOT");
        assert_eq!(root.arg, "");
        assert_eq!(root.elements.len(), 2);
        let source = &root.elements[0];
        assert_eq!((source.name.as_str(), source.arg.as_str()), ("source", ""));
        assert_eq!(source.location.line, 2);
        assert_eq!(source.param("port").unwrap().value, "24224");
        assert_eq!(source.param("port").unwrap().location.line, 4);
        let matcher = &root.elements[1];
        assert_eq!(matcher.name, "match");
        assert_eq!(matcher.arg, "app.** sys.*");
        assert_eq!(matcher.location.to_string(), "conf/fluent.conf:7");
        let buffer = matcher.elements_named("buffer").next().unwrap();
        assert_eq!(buffer.arg, "tag, time");
        assert_eq!(buffer.param("chunk_limit_size").unwrap().value, "8m");
        assert_eq!(buffer.location.line, 9);
        assert_eq!(matcher.header(), "<match app.** sys.*>");
    }

    #[test]
    fn label_worker_and_system_are_ordinary_elements() {
        let root = parse_ok(
            "<system>\n workers 4\n</system>\n\
             <worker 0-3>\n <source>\n  @type forward\n </source>\n</worker>\n\
             <label @OUT>\n <match **>\n  @type stdout\n </match>\n</label>\n",
        );
        let names: Vec<_> = root
            .elements
            .iter()
            .map(|e| (e.name.as_str(), e.arg.as_str()))
            .collect();
        assert_eq!(
            names,
            [("system", ""), ("worker", "0-3"), ("label", "@OUT")]
        );
        assert_eq!(root.elements[2].elements[0].arg, "**");
    }

    #[test]
    fn directive_argument_is_trimmed_and_keeps_inner_spaces() {
        let root = parse_ok("<match   a.**   b.c  >\n</match   >\n");
        assert_eq!(root.elements[0].arg, "a.**   b.c");
    }

    #[test]
    fn repeated_parameter_last_one_wins_but_all_are_kept() {
        let root = parse_ok("<match x>\n  flush_interval 1s\n  flush_interval 5s\n</match>\n");
        let matcher = &root.elements[0];
        assert_eq!(matcher.param("flush_interval").unwrap().value, "5s");
        assert_eq!(matcher.param("flush_interval").unwrap().location.line, 3);
        assert_eq!(matcher.params.len(), 2);
    }

    #[test]
    fn key_alone_has_empty_value_even_at_end_of_file() {
        let root = parse_ok("<match x>\n  tag_mapped\n  other   \n</match>\nlast");
        assert_eq!(root.elements[0].param("tag_mapped").unwrap().value, "");
        assert_eq!(root.elements[0].param("other").unwrap().value, "");
        assert_eq!(root.param("last").unwrap().value, "");
    }

    #[test]
    fn value_is_rest_of_line_with_trailing_blanks_trimmed() {
        assert_eq!(
            value_of("path /var/log/a b.log  \t\n", "path"),
            "/var/log/a b.log"
        );
        assert_eq!(value_of("k   v  w", "k"), "v  w");
    }

    #[test]
    fn comments_start_at_a_hash_after_whitespace_only() {
        let text = "# full line\n\
                    \x20   # indented comment\n\
                    <match x> # after tag\n\
                    \x20 a value # trailing comment\n\
                    \x20 b value\t#tab then comment\n\
                    \x20 c color#ff0000\n\
                    \x20 d #{not code}\n\
                    </match> # after end tag\n";
        let root = parse_ok(text);
        let m = &root.elements[0];
        assert_eq!(m.params.len(), 4);
        assert_eq!(m.param("a").unwrap().value, "value");
        assert_eq!(m.param("b").unwrap().value, "value");
        // fluentd: a '#' glued to a character is part of an unquoted value.
        assert_eq!(m.param("c").unwrap().value, "color#ff0000");
        // fluentd: a value that starts with '#' is that text, not a comment.
        assert_eq!(m.param("d").unwrap().value, "#{not code}");
    }

    #[test]
    fn a_comment_right_after_a_key_is_read_as_its_value_as_in_fluentd() {
        let text = "<match x>\n  compress # comment\n</match>\n";
        let got = value_of(text, "compress");
        assert_eq!(got, "# comment");
        assert!(value::parse_bool(&got).unwrap());
    }

    #[test]
    fn double_quoted_escapes() {
        let text = r###"a "tab\there\nnl\r\\ \" \# \$ \0end"
b "has # hash" # comment
c "#{ENV['BQF_PROJECT']}-x"
"###;
        let root = parse_ok(text);
        assert_eq!(
            root.param("a").unwrap().value,
            "tab\there\nnl\r\\ \" # $ \0end"
        );
        assert_eq!(root.param("b").unwrap().value, "has # hash");
        assert_eq!(root.param("c").unwrap().value, "my-project-x");
    }

    #[test]
    fn escaped_hash_brace_in_double_quotes_is_literal_not_code() {
        let text = "a \"\\#{ENV['BQF_PROJECT']}\"\nb \"${tag}\"\n";
        let root = parse_ok(text);
        assert_eq!(root.param("a").unwrap().value, "#{ENV['BQF_PROJECT']}");
        assert_eq!(root.param("b").unwrap().value, "${tag}");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let root = parse_ok("\u{feff}<source>\n  port 1\n</source>\n");
        assert_eq!(root.elements[0].name, "source");
    }

    #[test]
    fn double_quoted_letter_escape_is_an_error_with_line() {
        let err = parse_err("a 1\nb \"bad \\q escape\"\n");
        assert_eq!(
            err,
            "conf/fluent.conf:2: unexpected back-slash escape character 'q'"
        );
    }

    #[test]
    fn double_quoted_string_spans_lines_and_backslash_continues_a_line() {
        let text =
            "<match x>\n  msg \"first\n  second\"\n  joined \"ab\\\ncd\"\n  after 1\n</match>\n";
        let root = parse_ok(text);
        let m = &root.elements[0];
        assert_eq!(m.param("msg").unwrap().value, "first\n  second");
        assert_eq!(m.param("joined").unwrap().value, "abcd");
        assert_eq!(m.param("after").unwrap().location.line, 6);
    }

    #[test]
    fn unterminated_double_quote_is_an_error() {
        let err = parse_err("a \"never closed\nb 1");
        assert!(err.starts_with("conf/fluent.conf:2: "), "{err}");
        assert!(
            err.contains("unexpected end of file in a double quoted string"),
            "{err}"
        );
    }

    #[test]
    fn text_after_a_closing_quote_is_an_error() {
        let err = parse_err("\n<match x>\n  a \"v\" extra\n</match>\n");
        assert_eq!(
            err,
            "conf/fluent.conf:3: expected end of line after the value of 'a'"
        );
    }

    #[test]
    fn single_quoted_has_only_quote_and_backslash_escapes() {
        let root = parse_ok(
            r#"a 'it\'s \\ \n #{ENV["X"]} "q"'
b '#not comment' # comment
"#,
        );
        assert_eq!(
            root.param("a").unwrap().value,
            r#"it's \ \n #{ENV["X"]} "q""#
        );
        assert_eq!(root.param("b").unwrap().value, "#not comment");
    }

    #[test]
    fn single_quoted_string_may_not_span_lines_as_in_fluentd() {
        let err = parse_err("a 'one\ntwo'\n");
        assert!(
            err.starts_with("conf/fluent.conf:1: single quoted string not closed"),
            "{err}"
        );
    }

    #[test]
    fn quoted_keys_are_allowed() {
        let root = parse_ok("\"my key\" value\n");
        assert_eq!(root.param("my key").unwrap().value, "value");
    }

    #[test]
    fn embedded_env_forms_are_evaluated() {
        let text = r###"a "#{ENV['BQF_PROJECT']}"
b "#{ENV["BQF_PROJECT"]}"
c "[#{ENV['BQF_UNSET']}]"
d "#{ENV.fetch('BQF_UNSET', 'fallback')}"
e "#{ENV['BQF_UNSET'] || 'dflt'}.#{ENV['BQF_EMPTY'] || 'dflt'}"
f "#{Socket.gethostname}"
g "host=#{hostname}"
"###;
        let root = parse_ok(text);
        let v = |k: &str| root.param(k).unwrap().value.clone();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        assert_eq!(v("a"), "my-project");
        assert_eq!(v("b"), "my-project");
        assert_eq!(v("c"), "[]");
        assert_eq!(v("d"), "fallback");
        assert_eq!(v("e"), "dflt.");
        assert_eq!(v("f"), host);
        assert_eq!(v("g"), format!("host={host}"));
    }

    #[test]
    fn parse_str_reads_the_process_environment() {
        let Ok(path) = std::env::var("PATH") else {
            return;
        };
        let root = parse_str("p \"#{ENV['PATH']}\"\n", Path::new("f.conf")).unwrap();
        assert_eq!(root.param("p").unwrap().value, path);
    }

    #[test]
    fn other_embedded_ruby_is_an_error_at_its_line() {
        let err = parse_err("a 1\n<match x>\n  b \"#{`rm -rf /`}\"\n</match>\n");
        assert!(
            err.starts_with("conf/fluent.conf:3: bqforward does not evaluate Ruby"),
            "{err}"
        );
        assert!(err.contains("ENV.fetch('NAME', 'default')"), "{err}");
        let err = parse_err("a \"#{ENV.fetch('BQF_UNSET')}\"\n");
        assert!(err.contains("BQF_UNSET is not set"), "{err}");
        let err = parse_err("a \"#{ENV['X']\n");
        assert!(err.contains("expected '}' to end embedded code"), "{err}");
    }

    #[test]
    fn json_array_and_hash_may_span_lines_with_comments() {
        let text = r##"<match x>
  fields [
    "a",   # first
    "b#c", # a hash inside a string stays
    "d"
  ]
  schema {
    "x": 1, # comment after a comma
    "y": {"z": "w"}
  } # trailing
  after ok
</match>
"##;
        let root = parse_ok(text);
        let m = &root.elements[0];
        let fields = m.param("fields").unwrap();
        assert_eq!(fields.location.line, 2);
        assert_eq!(
            value::parse_array(&fields.value).unwrap(),
            ["a", "b#c", "d"]
        );
        assert!(!fields.value.contains("first"), "{}", fields.value);
        let schema = m.param("schema").unwrap();
        assert_eq!(
            value::parse_hash(&schema.value).unwrap(),
            [
                ("x".to_string(), "1".to_string()),
                ("y".into(), r#"{"z":"w"}"#.into())
            ]
        );
        assert_eq!(m.param("after").unwrap().value, "ok");
        assert_eq!(m.param("after").unwrap().location.line, 11);
    }

    #[test]
    fn single_line_json_is_kept_as_json_text() {
        assert_eq!(value_of("a [1, \"two\"]\n", "a"), "[1, \"two\"]");
        assert_eq!(value_of("h {\"k\":\"v\"} # c\n", "h"), "{\"k\":\"v\"}");
    }

    #[test]
    fn unquoted_value_starting_with_bracket_must_be_json() {
        let err = parse_err("a 1\nformat [%s] message\nb 2\n");
        assert!(
            err.starts_with("conf/fluent.conf:2: got incomplete JSON array configuration"),
            "{err}"
        );
        let err = parse_err("h {\"a\": 1\n");
        assert!(err.contains("incomplete JSON hash"), "{err}");
        // Quoting is the way out, as in fluentd.
        assert_eq!(
            value_of("format \"[%s] message\"\n", "format"),
            "[%s] message"
        );
    }

    #[test]
    fn json_followed_by_text_is_an_error() {
        let err = parse_err("a [1] b\n");
        assert_eq!(
            err,
            "conf/fluent.conf:1: expected end of line after the value of 'a'"
        );
    }

    #[test]
    fn unclosed_directive_reports_end_of_file_and_where_it_opened() {
        let err = parse_err("<match x>\n  <buffer>\n  a 1\n</match>\n");
        assert!(
            err.starts_with("conf/fluent.conf:4: unmatched end tag '</match>'"),
            "{err}"
        );
        assert!(
            err.contains("<buffer> opened at conf/fluent.conf:2"),
            "{err}"
        );
        let err = parse_err("<match x>\n  a 1\n");
        assert!(
            err.starts_with("conf/fluent.conf:3: expected end tag '</match>' but got end of file"),
            "{err}"
        );
        assert!(err.contains("opened at conf/fluent.conf:1"), "{err}");
    }

    #[test]
    fn stray_end_tag_is_an_error() {
        let err = parse_err("a 1\n</match>\n");
        assert_eq!(
            err,
            "conf/fluent.conf:2: unmatched end tag '</match>': no <match> is open"
        );
    }

    #[test]
    fn malformed_tags_are_errors_with_lines() {
        assert!(
            parse_err("\n<match x\n</match>\n").starts_with("conf/fluent.conf:3: expected '>'")
        );
        assert_eq!(
            parse_err("<match x> a 1\n</match>\n"),
            "conf/fluent.conf:1: expected end of line after tag"
        );
        assert_eq!(
            parse_err("<match x>\n</match> junk\n"),
            "conf/fluent.conf:2: expected end of line after end tag"
        );
        assert!(parse_err("< match>\n</match>\n").contains("expected a directive name"));
    }

    #[test]
    fn reserved_at_prefix_is_refused_in_top_level_directives_only() {
        let err = parse_err("<match x>\n  @type stdout\n  @bogus 1\n</match>\n");
        assert!(
            err.starts_with("conf/fluent.conf:3: '@' is the system reserved prefix"),
            "{err}"
        );
        assert!(parse_err("@foo 1\n").contains("reserved prefix"));
        // fluentd only warns inside nested sections, so it is accepted there.
        let root = parse_ok("<match x>\n  <buffer>\n    @custom 1\n  </buffer>\n</match>\n");
        assert_eq!(
            root.elements[0].elements[0].param("@custom").unwrap().value,
            "1"
        );
        let root = parse_ok("<match x>\n  @id out1\n  @log_level warn\n  @label @X\n</match>\n");
        assert_eq!(root.elements[0].params.len(), 3);
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let root = parse_ok("<match x>\r\n  a 1\r\n  b \"q\" # c\r\n</match>\r\n");
        let m = &root.elements[0];
        assert_eq!(m.param("a").unwrap().value, "1");
        assert_eq!(m.param("b").unwrap().value, "q");
        assert_eq!(m.param("b").unwrap().location.line, 3);
    }

    #[test]
    fn absurd_nesting_is_an_error_not_a_stack_overflow() {
        let text = "<a>\n".repeat(200) + &"</a>\n".repeat(200);
        assert!(parse_err(&text).contains("nested more than"));
    }

    // ---- @include ------------------------------------------------------------------------

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn include_glob_is_sorted_relative_and_located_in_the_included_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "conf.d/20-b.conf",
            "<match b>\n  @type stdout\n</match>\n",
        );
        write(
            dir.path(),
            "conf.d/10-a.conf",
            "\n\n<match a>\n  @type stdout\n</match>\n",
        );
        write(
            dir.path(),
            "conf.d/.hidden.conf",
            "<match hidden>\n</match>\n",
        );
        write(dir.path(), "conf.d/notes.txt", "<match txt>\n</match>\n");
        let main = write(
            dir.path(),
            "fluent.conf",
            "<source>\n  @type forward\n</source>\n@include conf.d/*.conf\n<match z>\n</match>\n",
        );
        let root = parse_file(&main).unwrap();
        let args: Vec<_> = root.elements.iter().map(|e| e.arg.as_str()).collect();
        assert_eq!(args, ["", "a", "b", "z"]);
        assert_eq!(
            *root.elements[1].location.file,
            dir.path().join("conf.d/10-a.conf")
        );
        assert_eq!(root.elements[1].location.line, 3);
        assert_eq!(root.elements[3].location.file.as_path(), main.as_path());
        assert_eq!(root.elements[3].location.line, 5);
    }

    #[test]
    fn include_inside_a_directive_splices_params_and_elements() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "common/buffer.conf",
            "flush_interval 5s\n<buffer>\n  @type file\n</buffer>\n",
        );
        let main = write(
            dir.path(),
            "fluent.conf",
            "<match x>\n  @type bigquery_insert\n  @include common/buffer.conf\n  table t\n</match>\n",
        );
        let root = parse_file(&main).unwrap();
        let m = &root.elements[0];
        let keys: Vec<_> = m.params.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["@type", "flush_interval", "table"]);
        assert_eq!(m.elements_named("buffer").count(), 1);
        assert_eq!(
            m.param("flush_interval").unwrap().location.to_string(),
            format!("{}:1", dir.path().join("common/buffer.conf").display())
        );
    }

    #[test]
    fn nested_include_is_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b/leaf.conf", "leaf yes\n");
        write(dir.path(), "a/mid.conf", "mid yes\n@include b/leaf.conf\n");
        let main = write(dir.path(), "fluent.conf", "include a/mid.conf\n");
        let root = parse_file(&main).unwrap();
        assert_eq!(root.param("mid").unwrap().value, "yes");
        assert_eq!(root.param("leaf").unwrap().value, "yes");
    }

    #[test]
    fn include_accepts_absolute_paths_quotes_and_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let abs = write(dir.path(), "abs.conf", "abs 1\n");
        let text = format!(
            "@include {}\n@include \"{}\"\n@include file://{}\n",
            abs.display(),
            abs.display(),
            abs.display()
        );
        let root = parse_str(&text, Path::new("/nonexistent/fluent.conf")).unwrap();
        assert_eq!(root.params.len(), 3);
        assert!(root.params.iter().all(|p| p.key == "abs"));
    }

    #[test]
    fn include_of_a_url_is_a_clear_error() {
        for url in ["http://example.com/a.conf", "https://example.com/a.conf"] {
            let err = parse_err(&format!("a 1\n@include {url}\n"));
            assert!(
                err.starts_with("conf/fluent.conf:2: @include http"),
                "{err}"
            );
            assert!(err.contains("only local files, not URLs"), "{err}");
        }
    }

    #[test]
    fn include_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.conf", "a 1\n@include b.conf\n");
        write(dir.path(), "b.conf", "b 1\n@include a.conf\n");
        let main = write(dir.path(), "fluent.conf", "@include a.conf\n");
        let err = parse_file(&main).unwrap_err().to_string();
        assert!(err.contains("include cycle"), "{err}");
        assert!(
            err.starts_with(&format!("{}:2: ", dir.path().join("b.conf").display())),
            "{err}"
        );

        let selfish = write(dir.path(), "self.conf", "@include self.conf\n");
        assert!(
            parse_file(&selfish)
                .unwrap_err()
                .to_string()
                .contains("include cycle")
        );
    }

    #[test]
    fn include_of_a_missing_file_is_an_error_but_an_empty_glob_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "fluent.conf", "@include missing.conf\n");
        let err = parse_file(&main).unwrap_err().to_string();
        assert!(
            err.contains(":1: @include missing.conf: no such file"),
            "{err}"
        );
        let main = write(dir.path(), "glob.conf", "@include none/*.conf\nx 1\n");
        assert_eq!(parse_file(&main).unwrap().param("x").unwrap().value, "1");
    }

    #[test]
    fn errors_inside_included_files_name_that_file() {
        let dir = tempfile::tempdir().unwrap();
        let inc = write(dir.path(), "bad.conf", "ok 1\n<match x>\n");
        let main = write(dir.path(), "fluent.conf", "@include bad.conf\n");
        let err = parse_file(&main).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3: expected end tag", inc.display())),
            "{err}"
        );
    }

    #[test]
    fn included_file_cannot_close_the_including_directive() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "closer.conf", "</match>\n");
        let main = write(
            dir.path(),
            "fluent.conf",
            "<match x>\n@include closer.conf\n",
        );
        let err = parse_file(&main).unwrap_err().to_string();
        assert!(err.contains("unmatched end tag '</match>'"), "{err}");
    }

    #[test]
    fn include_without_a_path_is_an_error() {
        assert_eq!(
            parse_err("@include\n"),
            "conf/fluent.conf:1: @include needs a path"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = parse_file(Path::new("/nonexistent/fluent.conf")).unwrap_err();
        assert!(err.location.is_none());
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/fluent.conf")
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(text in "[<>/a-c@#{}\\[\\]\"'\\\\ \t\r\nEN:,.*]{0,80}") {
            let _ = parse(&text);
        }
    }
}
