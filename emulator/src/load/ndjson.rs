// Owns reading newline-delimited JSON: splitting the data into rows with their byte positions and
// parsing one row into an object. Pure: no schema, no I/O.
//
// <https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-json>: one JSON object per
// line; BigQuery names a bad row by the byte position it starts at ("JSON parsing error in row
// starting at position 0: …").

use serde_json::{Map, Value};

/// One non-blank line: where it starts and its bytes (without the line break).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub position: u64,
    pub bytes: &'a [u8],
}

/// The non-blank lines of `data`; `\r\n` and `\n` both end a line.
pub fn lines(data: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut position = 0u64;
    data.split(|b| *b == b'\n').filter_map(move |raw| {
        let start = position;
        position += raw.len() as u64 + 1;
        let bytes = raw.strip_suffix(b"\r").unwrap_or(raw);
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        (!blank).then_some(Line {
            position: start,
            bytes,
        })
    })
}

/// Parses one line into an object; `Err` is the detail BigQuery gives after "JSON parsing error
/// in row starting at position N: ".
pub fn parse(line: &Line<'_>, max_row_bytes: usize) -> Result<Map<String, Value>, String> {
    if line.bytes.len() > max_row_bytes {
        // Observed: "JSON parsing error in row starting at position 0: Row size is larger than:
        // 104857600." (ossf/package-analysis#242).
        return Err(format!("Row size is larger than: {max_row_bytes}."));
    }
    match serde_json::from_slice::<Value>(line.bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(Value::Array(_)) => Err("Start of array encountered without start of object.".into()),
        Ok(_) => Err("Expected a JSON object.".into()),
        // BigQuery's words for a row cut short.
        Err(e) if e.is_eof() => Err("Parser terminated before end of string".into()),
        Err(e) => Err(format!("Invalid JSON: {e}")),
    }
}

/// The member names of a line's top-level object in the order they are written (serde_json's
/// maps are sorted, and autodetect gives columns the order of the data). `None` when the line
/// is not an object.
pub fn key_order(line: &Line<'_>) -> Option<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_slice::<Keys>(line.bytes).ok().map(|k| k.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_their_byte_positions_and_skip_blank_ones() {
        let data = b"{\"a\":1}\r\n\n  \n{\"a\":2}\n{\"a\":";
        let got: Vec<(u64, &[u8])> = lines(data).map(|l| (l.position, l.bytes)).collect();
        assert_eq!(
            got,
            [
                (0, &b"{\"a\":1}"[..]),
                (13, &b"{\"a\":2}"[..]),
                (21, &b"{\"a\":"[..])
            ]
        );
        let last = lines(data).last().unwrap();
        assert_eq!(
            parse(&last, 100).unwrap_err(),
            "Parser terminated before end of string"
        );
        let array = Line {
            position: 0,
            bytes: b"[1]",
        };
        assert!(
            parse(&array, 100)
                .unwrap_err()
                .starts_with("Start of array")
        );
        assert_eq!(
            key_order(&lines(b"{\"z\": 1, \"a\": {\"y\": 2}}").next().unwrap()),
            Some(vec!["z".to_string(), "a".to_string()])
        );
        let big = Line {
            position: 0,
            bytes: b"{\"a\":\"xxxxxxxx\"}",
        };
        assert_eq!(parse(&big, 4).unwrap_err(), "Row size is larger than: 4.");
    }
}
