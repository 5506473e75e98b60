// Owns resumable upload sessions: the job a session will create, the bytes received so far,
// `Content-Range` arithmetic, and how a session ended. Must not create jobs or answer HTTP: the
// upload routes do, with what this returns.
//
// Google's resumable upload protocol (<https://cloud.google.com/bigquery/docs/reference/api-uploads>,
// the same as Cloud Storage's "Perform resumable uploads"): chunks are PUT with
// `Content-Range: bytes START-END/TOTAL` (TOTAL `*` while unknown); an empty PUT with
// `bytes */TOTAL` or `bytes */*` asks how much has arrived; the server answers 308 with
// `Range: bytes=0-LAST` until the last byte, then what the finished upload created. Sessions live
// in memory: after a restart a client starts its upload again (its job id makes that safe).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;
use crate::jobs::Prepared;

/// Sessions kept at once; the oldest is forgotten beyond this.
const MAX_SESSIONS: usize = 1_000;

/// A parsed `Content-Range` header of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First and last byte of this chunk; `None` for a status query (`bytes */…`).
    pub span: Option<(u64, u64)>,
    /// The upload's size, when the client knows it.
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses `bytes 0-99/1000`, `bytes 0-99/*`, `bytes */1000` and `bytes */*`.
    pub fn parse(header: &str) -> Option<Self> {
        let rest = header.trim().strip_prefix("bytes")?.trim_start();
        let (span, total) = rest.split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        let span = match span.trim() {
            "*" => None,
            s => {
                let (a, b) = s.split_once('-')?;
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                Some((a, b))
            }
        };
        Some(Self { span, total })
    }
}

/// How a session ended: the key of the job it created, or the error its last chunk answered.
#[derive(Debug, Clone)]
pub enum Finished {
    Job(String),
    Refused(ApiError),
}

/// What a chunk (or a status query) made of a session.
#[derive(Debug)]
pub enum Progress {
    /// More is expected; this many bytes have arrived.
    Incomplete(u64),
    /// The last byte arrived: create the job with this data.
    Complete(Box<Prepared>, Vec<u8>),
    /// The session ended before this request.
    Finished(Finished),
}

struct Session {
    prepared: Prepared,
    expected: Option<u64>,
    data: Vec<u8>,
    finished: Option<Finished>,
    created: Instant,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `prepared`; `expected` is `X-Upload-Content-Length` when sent.
    pub fn start(&self, upload_id: String, prepared: Prepared, expected: Option<u64>) {
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            upload_id,
            Session {
                prepared,
                expected,
                data: Vec::new(),
                finished: None,
                created: Instant::now(),
            },
        );
    }

    /// Adds a chunk. `range` is `None` when the PUT has no `Content-Range`: the body is then the
    /// rest of the upload. `limit` bounds the upload's size. `Ok(None)`: no such session.
    pub fn put(
        &self,
        upload_id: &str,
        range: Option<ContentRange>,
        body: &[u8],
        limit: usize,
    ) -> Result<Option<Progress>, ApiError> {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(upload_id) else {
            return Ok(None);
        };
        if let Some(f) = &session.finished {
            return Ok(Some(Progress::Finished(f.clone())));
        }
        let received = session.data.len() as u64;
        let range = range.unwrap_or(ContentRange {
            span: (!body.is_empty()).then(|| (received, received + body.len() as u64 - 1)),
            total: Some(received + body.len() as u64),
        });
        if let Some(total) = range.total {
            if session.expected.is_some_and(|e| e != total) {
                return Err(bad(format!(
                    "Content-Range total {total} does not match the upload's size {}",
                    session.expected.unwrap_or_default()
                )));
            }
            session.expected = Some(total);
        }
        if let Some((start, end)) = range.span {
            if end - start + 1 != body.len() as u64 {
                return Err(bad(format!(
                    "Content-Range bytes {start}-{end} announces {} bytes, the request has {}",
                    end - start + 1,
                    body.len()
                )));
            }
            if start > received {
                return Err(bad(format!(
                    "Content-Range starts at byte {start}, but {received} bytes have been received"
                )));
            }
            // A chunk sent again after a lost answer: keep only what is new.
            let skip = usize::try_from(received - start).unwrap_or(usize::MAX);
            if let Some(new) = body.get(skip..) {
                if session.data.len() + new.len() > limit {
                    return Err(crate::insert::payload_too_large(limit));
                }
                session.data.extend_from_slice(new);
            }
        } else if !body.is_empty() {
            return Err(bad("Content-Range bytes */… cannot carry data".into()));
        }
        let received = session.data.len() as u64;
        match session.expected {
            Some(total) if received > total => Err(bad(format!(
                "{received} bytes received, more than the upload's size {total}"
            ))),
            Some(total) if received == total => {
                let data = std::mem::take(&mut session.data);
                Ok(Some(Progress::Complete(
                    Box::new(session.prepared.clone()),
                    data,
                )))
            }
            _ => Ok(Some(Progress::Incomplete(received))),
        }
    }

    /// Records how the session ended; later requests to it get the same answer.
    pub fn finish(&self, upload_id: &str, finished: Finished) {
        if let Some(s) = self.lock().get_mut(upload_id) {
            s.finished = Some(finished);
            s.data = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse_in_every_form() {
        let r = |s: &str| ContentRange::parse(s);
        assert_eq!(
            r("bytes 0-99/1000"),
            Some(ContentRange {
                span: Some((0, 99)),
                total: Some(1000)
            })
        );
        assert_eq!(
            r("bytes 100-199/*"),
            Some(ContentRange {
                span: Some((100, 199)),
                total: None
            })
        );
        assert_eq!(
            r("bytes */0"),
            Some(ContentRange {
                span: None,
                total: Some(0)
            })
        );
        assert_eq!(
            r("bytes */*"),
            Some(ContentRange {
                span: None,
                total: None
            })
        );
        for bad in [
            "0-99/100",
            "bytes 9-1/10",
            "bytes a-b/10",
            "bytes 0-1/x",
            "",
        ] {
            assert_eq!(r(bad), None, "{bad}");
        }
    }
}
