//! fluentd's typed parameter values (size, time, bool, array, hash, numbers) from their text.
//! Stricter than fluentd's `to_i`-style coercion: text fluentd would silently misread is an error.

use std::time::Duration;

/// A byte size: a whole number with an optional k/m/g/t suffix (1024-based, any case, an
/// optional trailing "b" as in the common `8MB`), like fluentd's `size` type.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size value '{text}'");
    let lower = text.trim().to_ascii_lowercase();
    let body = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, exponent) = match body.as_bytes().last() {
        Some(b'k') => (&body[..body.len() - 1], 1),
        Some(b'm') => (&body[..body.len() - 1], 2),
        Some(b'g') => (&body[..body.len() - 1], 3),
        Some(b't') => (&body[..body.len() - 1], 4),
        _ => (body, 0),
    };
    let digits = digits.trim_end();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    1024u64
        .checked_pow(exponent)
        .and_then(|unit| number.checked_mul(unit))
        .ok_or_else(invalid)
}

/// A duration: a number (fractions allowed) with an optional s/m/h/d suffix; a bare number is
/// seconds, like fluentd's `time` type.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid time value '{text}'");
    let trimmed = text.trim();
    let (number, unit) = match trimmed.as_bytes().last() {
        Some(b's') => (&trimmed[..trimmed.len() - 1], 1.0),
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 60.0),
        Some(b'h') => (&trimmed[..trimmed.len() - 1], 3600.0),
        Some(b'd') => (&trimmed[..trimmed.len() - 1], 86400.0),
        _ => (trimmed, 1.0),
    };
    if !is_decimal(number) {
        return Err(invalid());
    }
    let seconds: f64 = number.parse().map_err(|_| invalid())?;
    Duration::try_from_secs_f64(seconds * unit).map_err(|_| invalid())
}

/// Digits with at most one '.', and a digit on each side of it ("1", "1.5"; not ".5", "1e3").
fn is_decimal(text: &str) -> bool {
    let mut parts = text.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && parts.next().is_none_or(all_digits)
}

/// fluentd's `bool`: true/yes, false/no; an empty value (a key alone) is true. A value that is
/// only a comment (`flag # note` reads as "# note" in fluentd) is also true, as in fluentd.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" | "yes" | "" => Ok(true),
        "false" | "no" => Ok(false),
        t if t.starts_with('#') => Ok(true),
        _ => Err(format!(
            "invalid bool value '{text}' (expected true, yes, false or no)"
        )),
    }
}

pub fn parse_integer(text: &str) -> Result<i64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid integer value '{text}'"))
}

pub fn parse_float(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .ok_or_else(|| format!("invalid float value '{text}'"))
}

/// fluentd's `array`: a JSON array (elements stringified), or comma-separated items with the
/// whitespace around them trimmed; as Ruby's `split`, trailing empty items are dropped.
pub fn parse_array(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("invalid array value '{text}': {e}"))?;
        return Ok(items.iter().map(json_to_string).collect());
    }
    Ok(split_commas(trimmed))
}

/// fluentd's `hash`: a JSON object (values stringified, key order kept), or `k1:v1,k2:v2`
/// split at the first ':' of each item. A repeated key keeps its first place, last value.
pub fn parse_hash(text: &str) -> Result<Vec<(String, String)>, String> {
    let trimmed = text.trim();
    let pairs = if trimmed.starts_with('{') {
        let object: OrderedObject = serde_json::from_str(trimmed)
            .map_err(|e| format!("invalid hash value '{text}': {e}"))?;
        object
            .0
            .into_iter()
            .map(|(k, v)| (k, json_to_string(&v)))
            .collect()
    } else {
        split_commas(trimmed)
            .into_iter()
            .map(|item| {
                item.split_once(':')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        format!("invalid hash value '{text}': item '{item}' is not key:value")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut merged: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some(existing) => existing.1 = value,
            None => merged.push((key, value)),
        }
    }
    Ok(merged)
}

fn split_commas(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut items: Vec<String> = text.split(',').map(|s| s.trim().to_string()).collect();
    while items.last().is_some_and(String::is_empty) {
        items.pop();
    }
    items
}

/// A JSON scalar as the text a user wrote (strings unquoted, null empty as Ruby's nil.to_s);
/// arrays and objects as JSON text.
fn json_to_string(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A JSON object with its keys in document order (serde_json's map sorts them).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_suffixes_are_1024_based_and_case_insensitive() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("8k").unwrap(), 8 * 1024);
        assert_eq!(parse_size("8m").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_size("8M").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size(" 8MB ").unwrap(), 8 << 20);
        assert_eq!(parse_size("256kb").unwrap(), 256 << 10);
    }

    #[test]
    fn size_rejects_what_fluentd_would_misread() {
        for bad in ["8x", "", "m", "1.5m", "-1k", "8 mb x", "99999999999t"] {
            let err = parse_size(bad).unwrap_err();
            assert_eq!(err, format!("invalid size value '{bad}'"));
        }
    }

    #[test]
    fn time_suffixes_and_fractions() {
        assert_eq!(parse_time("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_time("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_time("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_time("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_time("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_time("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_time("0.5m").unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn time_rejects_unknown_units_and_forms() {
        // "500ms" would be 500 minutes in fluentd; refusing it is safer.
        for bad in ["500ms", "5x", "", "s", ".5s", "1e3", "-1s", "10S", "1.2.3s"] {
            let err = parse_time(bad).unwrap_err();
            assert_eq!(err, format!("invalid time value '{bad}'"));
        }
    }

    #[test]
    fn bool_accepts_fluentd_spellings_and_bare_key() {
        assert!(parse_bool("true").unwrap());
        assert!(parse_bool("yes").unwrap());
        assert!(parse_bool("").unwrap());
        assert!(parse_bool("# just a comment").unwrap());
        assert!(!parse_bool("false").unwrap());
        assert!(!parse_bool("no").unwrap());
        let err = parse_bool("maybe").unwrap_err();
        assert!(err.contains("invalid bool value 'maybe'"), "{err}");
        assert!(parse_bool("True").is_err(), "fluentd is case-sensitive");
    }

    #[test]
    fn integers_and_floats() {
        assert_eq!(parse_integer(" 42 ").unwrap(), 42);
        assert_eq!(parse_integer("-7").unwrap(), -7);
        assert_eq!(
            parse_integer("4x").unwrap_err(),
            "invalid integer value '4x'"
        );
        assert_eq!(parse_float("0.5").unwrap(), 0.5);
        assert_eq!(parse_float("3").unwrap(), 3.0);
        assert_eq!(parse_float("NaN").unwrap_err(), "invalid float value 'NaN'");
        assert!(parse_float("inf").is_err());
        assert!(parse_float("abc").is_err());
    }

    #[test]
    fn array_from_json_or_commas() {
        assert_eq!(
            parse_array(r#"["a", 1, true, null]"#).unwrap(),
            ["a", "1", "true", ""]
        );
        assert_eq!(parse_array(" a , b,c ").unwrap(), ["a", "b", "c"]);
        assert_eq!(parse_array("a,b,,").unwrap(), ["a", "b"]);
        assert_eq!(parse_array("a,,b").unwrap(), ["a", "", "b"]);
        assert!(parse_array("").unwrap().is_empty());
        assert_eq!(parse_array("single").unwrap(), ["single"]);
        let err = parse_array("[1,").unwrap_err();
        assert!(err.starts_with("invalid array value '[1,'"), "{err}");
    }

    #[test]
    fn hash_from_json_keeps_order_and_stringifies() {
        let pairs = parse_hash(r#"{"z": "last", "a": 1, "m": {"x": [1]}, "n": null}"#).unwrap();
        assert_eq!(
            pairs,
            [
                ("z".to_string(), "last".to_string()),
                ("a".into(), "1".into()),
                ("m".into(), r#"{"x":[1]}"#.into()),
                ("n".into(), "".into()),
            ]
        );
        assert!(parse_hash("[1]").is_err());
        assert!(parse_hash("{\"a\":").is_err());
    }

    #[test]
    fn hash_from_pairs_splits_at_first_colon() {
        assert_eq!(
            parse_hash("k1:v1, k2:http://x:80").unwrap(),
            [
                ("k1".to_string(), "v1".to_string()),
                ("k2".into(), "http://x:80".into())
            ]
        );
        // fluentd does not trim around ':'.
        assert_eq!(
            parse_hash("k: v").unwrap(),
            [("k".to_string(), " v".to_string())]
        );
        assert_eq!(
            parse_hash("a:1,b:2,a:3").unwrap(),
            [("a".to_string(), "3".to_string()), ("b".into(), "2".into())]
        );
        let err = parse_hash("a:1,oops").unwrap_err();
        assert!(err.contains("item 'oops' is not key:value"), "{err}");
        assert!(parse_hash("").unwrap().is_empty());
    }
}
