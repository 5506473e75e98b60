//! Ruby's text forms and number coercions of values, as fluentd and its plugins apply them:
//! `Float#to_s`, `String#to_i`, `String#to_f`. The one implementation every stage uses.

/// Ruby's whitespace for number parsing (ISSPACE).
fn skip_ruby_space(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'))
        .count();
    &s[n..]
}

/// Digits with single underscores between them, as Ruby's number parsing allows; returns the
/// digits and the rest.
fn ruby_digits(s: &[u8]) -> (String, &[u8]) {
    let mut digits = String::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b @ b'0'..=b'9' => digits.push(char::from(b)),
            b'_' if !digits.is_empty() && s.get(i + 1).is_some_and(u8::is_ascii_digit) => {}
            _ => break,
        }
        i += 1;
    }
    (digits, &s[i..])
}

/// Ruby's `String#to_i`: the leading integer, 0 when there is none ("12x" → 12, "abc" → 0).
pub fn to_i(s: &[u8]) -> String {
    let s = skip_ruby_space(s);
    let (negative, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (digits, _) = ruby_digits(s);
    let digits = digits.trim_start_matches('0');
    match (digits.is_empty(), negative) {
        (true, _) => "0".into(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.into(),
    }
}

/// Ruby's `String#to_f`: the leading decimal number, 0.0 when there is none.
pub fn to_f(s: &[u8]) -> f64 {
    let s = skip_ruby_space(s);
    let (sign, s) = match s.first() {
        Some(b'-') => ("-", &s[1..]),
        Some(b'+') => ("", &s[1..]),
        _ => ("", s),
    };
    let (int, mut rest) = ruby_digits(s);
    let mut text = format!("{sign}{}", if int.is_empty() { "0" } else { &int });
    if let Some(after) = rest.strip_prefix(b".")
        && after.first().is_some_and(u8::is_ascii_digit)
    {
        let (frac, r) = ruby_digits(after);
        text.push('.');
        text.push_str(&frac);
        rest = r;
    } else if int.is_empty() {
        return 0.0;
    }
    if let Some(after) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let (exp_sign, after) = match after.first() {
            Some(b'-') => ("-", &after[1..]),
            Some(b'+') => ("", &after[1..]),
            _ => ("", after),
        };
        let (exp, _) = ruby_digits(after);
        if !exp.is_empty() {
            text.push('e');
            text.push_str(exp_sign);
            text.push_str(&exp);
        }
    }
    text.parse().unwrap_or(0.0)
}

/// Ruby's `Float#to_s`: shortest round-trip digits, fixed notation from 1e-4 up to 1e16,
/// exponent form (`1.0e+16`) outside.
pub fn float_to_s(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
        .into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", f.abs()); // e.g. "1.2345e3": shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let decpt = exp.parse::<i32>().unwrap_or(0) + 1;
    let sign = if f < 0.0 { "-" } else { "" };
    let len = digits.len() as i32;
    if 0 < decpt && decpt <= 16 {
        if len <= decpt {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - len) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{sign}{a}.{b}")
        }
    } else if -4 < decpt && decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        let e = decpt - 1;
        let e_sign = if e < 0 { '-' } else { '+' };
        format!("{sign}{first}.{rest}e{e_sign}{:02}", e.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coercions_match_ruby() {
        for (input, want) in [
            ("12x", "12"),
            ("abc", "0"),
            ("", "0"),
            ("-0", "0"),
            ("  -42", "-42"),
            ("+7", "7"),
            ("1_000", "1000"),
            ("1__0", "1"),
            ("_1", "0"),
            ("0x1A", "0"),
            ("123456789012345678901234", "123456789012345678901234"),
            ("1.9", "1"),
        ] {
            assert_eq!(to_i(input.as_bytes()), want, "{input:?}.to_i");
        }
        for (input, want) in [
            ("1.5", 1.5),
            ("abc", 0.0),
            ("1.5kg", 1.5),
            (".5", 0.5),
            ("1.", 1.0),
            ("-2e3", -2000.0),
            ("1e", 1.0),
            ("1_000.5", 1000.5),
            ("  3", 3.0),
            ("Infinity", 0.0),
            ("-", 0.0),
        ] {
            assert_eq!(to_f(input.as_bytes()), want, "{input:?}.to_f");
        }
        for (f, want) in [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1.0e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1.0e+16"),
            (1.5e300, "1.5e+300"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "Infinity"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(float_to_s(f), want, "{f}.to_s");
        }
    }
}
