// Owns how a JSON answer is written, as Google's front end does for every API: `prettyPrint`
// (indented by default), `fields` (partial response), `callback` (JSONP).
// Must not decide what an answer contains; handlers do, and `params` has already refused bad values.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value};

use super::DropConnection;

/// A parsed `fields` selector (<https://cloud.google.com/bigquery/docs/api-performance#partial-response>):
/// `a,b/c,d(e,f),*`. Each name maps to what to keep below it; `None` keeps everything below.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldMask(BTreeMap<String, Option<FieldMask>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field selection at byte {0}")]
pub struct MaskError(usize);

impl FieldMask {
    pub fn parse(s: &str) -> Result<Self, MaskError> {
        let mut p = MaskParser {
            s: s.as_bytes(),
            i: 0,
        };
        let mask = p.selection()?;
        if p.i != p.s.len() {
            return Err(MaskError(p.i));
        }
        Ok(mask)
    }

    fn merge(&mut self, name: String, below: Option<FieldMask>) {
        match self.0.get_mut(&name) {
            // Everything below is already kept.
            Some(None) => {}
            Some(Some(existing)) => match below {
                None => {
                    self.0.insert(name, None);
                }
                Some(more) => {
                    for (k, v) in more.0 {
                        existing.merge(k, v);
                    }
                }
            },
            None => {
                self.0.insert(name, below);
            }
        }
    }

    /// Keeps only the selected members; arrays are filtered element by element, scalars kept.
    pub fn apply(&self, value: Value) -> Value {
        match value {
            Value::Object(obj) => {
                let wildcard = self.0.get("*");
                let mut out = Map::new();
                for (k, v) in obj {
                    let rule = self.0.get(&k).or(wildcard);
                    match rule {
                        Some(None) => {
                            out.insert(k, v);
                        }
                        Some(Some(sub)) => {
                            out.insert(k, sub.apply(v));
                        }
                        None => {}
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.apply(v)).collect()),
            scalar => scalar,
        }
    }
}

struct MaskParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl MaskParser<'_> {
    /// selection := item (',' item)*
    fn selection(&mut self) -> Result<FieldMask, MaskError> {
        let mut mask = FieldMask::default();
        loop {
            let (path, below) = self.item()?;
            // a/b/c(d) is a(b(c(d))).
            let mut nested = below;
            for name in path.iter().skip(1).rev() {
                let mut m = FieldMask::default();
                m.merge(name.clone(), nested);
                nested = Some(m);
            }
            if let Some(first) = path.into_iter().next() {
                mask.merge(first, nested);
            }
            if self.peek() == Some(b',') {
                self.i += 1;
            } else {
                return Ok(mask);
            }
        }
    }

    /// item := name ('/' name)* ['(' selection ')']
    fn item(&mut self) -> Result<(Vec<String>, Option<FieldMask>), MaskError> {
        let mut path = vec![self.name()?];
        while self.peek() == Some(b'/') {
            self.i += 1;
            path.push(self.name()?);
        }
        if self.peek() != Some(b'(') {
            return Ok((path, None));
        }
        self.i += 1;
        let sub = self.selection()?;
        if self.peek() != Some(b')') {
            return Err(MaskError(self.i));
        }
        self.i += 1;
        Ok((path, Some(sub)))
    }

    fn name(&mut self) -> Result<String, MaskError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'*' | b'$' | b'.' | b'-' | b'@') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i == start {
            return Err(MaskError(start));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
}

/// What the system parameters ask of the answer. Values were checked by the handler
/// (`params::parse`); here a value that does not parse is ignored.
struct Shape {
    pretty: bool,
    fields: Option<FieldMask>,
    callback: Option<String>,
}

impl Shape {
    fn from_query(query: Option<&str>) -> Self {
        let mut shape = Shape {
            pretty: true,
            fields: None,
            callback: None,
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "prettyPrint" => shape.pretty = !v.eq_ignore_ascii_case("false"),
                "fields" => shape.fields = FieldMask::parse(&v).ok(),
                "callback" => shape.callback = Some(v.into_owned()),
                _ => {}
            }
        }
        shape
    }

    fn untouched(&self) -> bool {
        !self.pretty && self.fields.is_none() && self.callback.is_none()
    }
}

/// Rewrites JSON answers of the BigQuery API as the system parameters ask. Google indents
/// answers unless `prettyPrint=false`; `fields` filters successful answers only (errors are
/// always whole); `callback` wraps the answer in a JSONP call.
pub async fn shape_layer(req: Request, next: Next) -> Response {
    let shape = Shape::from_query(req.uri().query());
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if shape.untouched() || !is_json || resp.extensions().get::<DropConnection>().is_some() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(mask) = shape.fields.as_ref().filter(|_| parts.status.is_success()) {
        value = mask.apply(value);
    }
    let json = if shape.pretty {
        serde_json::to_vec_pretty(&value)
    } else {
        serde_json::to_vec(&value)
    };
    // Serializing a Value into memory cannot fail.
    let mut out = json.unwrap_or_default();
    if let Some(cb) = shape.callback {
        let mut wrapped = format!("// API callback\n{cb}(").into_bytes();
        wrapped.append(&mut out);
        wrapped.extend_from_slice(b");");
        out = wrapped;
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=UTF-8"),
        );
    }
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_select_members_paths_groups_and_wildcards() {
        let v = json!({"kind": "k", "etag": "e", "rows": [{"f": [{"v": "1"}], "x": 2}],
                       "schema": {"fields": [{"name": "a", "type": "STRING"}]}});
        let m = FieldMask::parse("kind,rows/f,schema(fields(name))").unwrap();
        assert_eq!(
            m.apply(v.clone()),
            json!({"kind": "k", "rows": [{"f": [{"v": "1"}]}],
                   "schema": {"fields": [{"name": "a"}]}})
        );
        assert_eq!(FieldMask::parse("*").unwrap().apply(v.clone()), v);
        assert_eq!(
            FieldMask::parse("rows,rows/x").unwrap(),
            FieldMask::parse("rows").unwrap()
        );
        for bad in ["", "a(", "a()", "a,,b", "a/", "a)b", "a b"] {
            assert!(FieldMask::parse(bad).is_err(), "{bad:?}");
        }
    }
}
