//! Evaluates the few Ruby expressions real fluentd configs embed in "#{...}": environment
//! lookups and the host name. It must not grow into a Ruby interpreter; anything else is refused.

const SUPPORTED: &str = "ENV['NAME'], ENV[\"NAME\"], ENV.fetch('NAME', 'default'), \
     ENV['NAME'] || 'default', Socket.gethostname, hostname";

/// Evaluates `code` (the text between `#{` and `}`), reading variables through `env`.
pub(crate) fn evaluate(code: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let unsupported = || {
        format!(
            "bqforward does not evaluate Ruby code in \"#{{...}}\" (got `{}`); supported forms: {SUPPORTED}",
            code.trim()
        )
    };
    let mut parser = Expr {
        chars: code.chars().collect(),
        pos: 0,
        env,
    };
    let value = parser.expression().map_err(|e| match e {
        Failure::Unsupported => unsupported(),
        Failure::Message(m) => m,
    })?;
    parser.skip_ws();
    if parser.pos != parser.chars.len() {
        return Err(unsupported());
    }
    // Ruby's nil.to_s is "", which is what fluentd substitutes for an unset ENV['X'].
    Ok(value.unwrap_or_default())
}

enum Failure {
    Unsupported,
    Message(String),
}

struct Expr<'e> {
    chars: Vec<char>,
    pos: usize,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Expr<'_> {
    /// term ('||' term)*, with Ruby's truthiness: only nil (an unset variable) falls through.
    fn expression(&mut self) -> Result<Option<String>, Failure> {
        let mut value = self.term()?;
        while self.eat("||") {
            let next = self.term()?;
            if value.is_none() {
                value = next;
            }
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<Option<String>, Failure> {
        self.skip_ws();
        if self.eat("ENV") {
            if self.eat("[") {
                let name = self.literal()?;
                self.expect("]")?;
                return Ok((self.env)(&name));
            }
            if self.eat(".fetch") {
                self.expect("(")?;
                let name = self.literal()?;
                let default = if self.eat(",") {
                    Some(self.literal()?)
                } else {
                    None
                };
                self.expect(")")?;
                return match ((self.env)(&name), default) {
                    (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
                    (None, None) => Err(Failure::Message(format!(
                        "environment variable {name} is not set (ENV.fetch without a default)"
                    ))),
                };
            }
            return Err(Failure::Unsupported);
        }
        if self.eat("Socket.gethostname") || self.eat_word("hostname") {
            return Ok(Some(hostname()));
        }
        if matches!(self.peek(), Some('\'' | '"')) {
            return self.literal().map(Some);
        }
        Err(Failure::Unsupported)
    }

    /// A Ruby string literal; only the escapes a variable name or default plausibly needs.
    fn literal(&mut self) -> Result<String, Failure> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(Failure::Unsupported),
        };
        self.pos += 1;
        let mut out = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == quote {
                return Ok(out);
            }
            if c == '\\' {
                let escaped = self.peek().ok_or(Failure::Unsupported)?;
                self.pos += 1;
                match (quote, escaped) {
                    ('"', 'n') => out.push('\n'),
                    ('"', 't') => out.push('\t'),
                    // In Ruby's single quotes only \' and \\ are escapes.
                    ('\'', e) if e != '\'' && e != '\\' => {
                        out.push('\\');
                        out.push(e);
                    }
                    (_, e) => out.push(e),
                }
            } else {
                out.push(c);
            }
        }
        Err(Failure::Unsupported)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        let n = token.chars().count();
        let matches = self.chars.len() >= self.pos + n
            && self.chars[self.pos..self.pos + n]
                .iter()
                .copied()
                .eq(token.chars());
        if matches {
            self.pos += n;
        }
        matches
    }

    /// Like `eat`, but `hostname` must not be the start of a longer identifier.
    fn eat_word(&mut self, word: &str) -> bool {
        let start = self.pos;
        if !self.eat(word) {
            return false;
        }
        if self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '(')
        {
            self.pos = start;
            return false;
        }
        true
    }

    fn expect(&mut self, token: &str) -> Result<(), Failure> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(Failure::Unsupported)
        }
    }
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn eval(code: &str) -> Result<String, String> {
        evaluate(code, &env)
    }

    #[test]
    fn env_index_with_either_quote_reads_the_variable() {
        assert_eq!(eval("ENV['SET']").unwrap(), "value");
        assert_eq!(eval("ENV[\"SET\"]").unwrap(), "value");
        assert_eq!(eval("  ENV[ 'SET' ]  ").unwrap(), "value");
    }

    #[test]
    fn unset_env_index_is_empty_like_ruby_nil_to_s() {
        assert_eq!(eval("ENV['UNSET']").unwrap(), "");
    }

    #[test]
    fn or_default_applies_only_when_unset() {
        assert_eq!(eval("ENV['UNSET'] || 'dflt'").unwrap(), "dflt");
        assert_eq!(eval("ENV['SET'] || 'dflt'").unwrap(), "value");
        // An empty string is truthy in Ruby.
        assert_eq!(eval("ENV['EMPTY'] || 'dflt'").unwrap(), "");
        assert_eq!(eval("ENV['UNSET'] || ENV['SET']").unwrap(), "value");
    }

    #[test]
    fn fetch_uses_default_or_fails_without_one() {
        assert_eq!(eval("ENV.fetch('UNSET', 'dflt')").unwrap(), "dflt");
        assert_eq!(eval("ENV.fetch(\"SET\", \"dflt\")").unwrap(), "value");
        assert_eq!(eval("ENV.fetch('SET')").unwrap(), "value");
        let err = eval("ENV.fetch('UNSET')").unwrap_err();
        assert!(err.contains("UNSET is not set"), "{err}");
    }

    #[test]
    fn hostname_forms_return_the_host_name() {
        let host = hostname();
        assert!(!host.is_empty());
        assert_eq!(eval("Socket.gethostname").unwrap(), host);
        assert_eq!(eval("hostname").unwrap(), host);
    }

    #[test]
    fn other_ruby_is_refused_with_the_supported_forms() {
        for code in [
            "1 + 1",
            "ENV['SET'].upcase",
            "hostname.split('.')",
            "File.read('/etc/passwd')",
            "ENV['SET'",
            "`id`",
            "",
        ] {
            let err = eval(code).unwrap_err();
            assert!(err.contains("does not evaluate Ruby"), "{code}: {err}");
            assert!(err.contains("ENV.fetch('NAME', 'default')"), "{err}");
        }
    }
}
