//! What a BigQuery answer means for the rows in a request: the one place that decides
//! between retrying, splitting, creating the table and dead-lettering. Pure; tested as a table.
//! Sources: "Troubleshoot errors" (cloud.google.com/bigquery/docs/error-messages) and
//! "Streaming data into BigQuery" (retry guidance, insertErrors).

/// What to do with a whole request after a request-level answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: retry the rows later with backoff.
    Retry(String),
    /// The request is too large: split it and send the halves.
    Split(String),
    /// The table is missing.
    NotFound(String),
    /// The dataset is missing: a deployment problem no row can fix. Rows wait for it.
    DatasetNotFound(String),
    /// The credentials were refused: get a new token, then retry.
    Reauthenticate(String),
    /// Retrying as is cannot succeed: dead-letter the rows with this reason.
    DeadLetter(String),
}

/// A request-level failure as the client reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused, reset, TLS, or no complete answer.
    Transport(String),
    Timeout,
    /// An HTTP error with Google's error body: status, `errors[].reason`, message.
    Http {
        status: u16,
        reasons: Vec<String>,
        message: String,
    },
    /// An error answer whose body could not be read (not Google's JSON error).
    Unreadable(String),
}

const RETRYABLE_REASONS: &[&str] = &[
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "quotaExceeded",
    "timeout",
    "tableUnavailable",
];

pub fn classify(failure: &Failure) -> Verdict {
    match failure {
        Failure::Transport(detail) => Verdict::Retry(format!("transport error: {detail}")),
        Failure::Timeout => Verdict::Retry("request timed out".into()),
        Failure::Unreadable(detail) => Verdict::Retry(format!("unreadable error answer: {detail}")),
        Failure::Http {
            status,
            reasons,
            message,
        } => {
            let has = |r: &str| reasons.iter().any(|x| x == r);
            let text = format!("HTTP {status} {}: {message}", reasons.join(","));
            let too_large = message.contains("payload size exceeds")
                || message.contains("Request Entity Too Large")
                || message.contains("request too large");
            match status {
                413 => Verdict::Split(text),
                400 if too_large => Verdict::Split(text),
                401 => Verdict::Reauthenticate(text),
                404 if message.contains("Not found: Dataset") => Verdict::DatasetNotFound(text),
                404 => Verdict::NotFound(text),
                408 | 429 | 500 | 502 | 503 | 504 => Verdict::Retry(text),
                // Quota and rate limits come as 403 with these reasons: back off.
                403 if RETRYABLE_REASONS.iter().any(|r| has(r)) => Verdict::Retry(text),
                // fluent-plugin-bigquery retries this one: a region move in progress.
                400 if message.contains("is not writable in the region") => Verdict::Retry(text),
                _ if RETRYABLE_REASONS.iter().any(|r| has(r)) => Verdict::Retry(text),
                _ => Verdict::DeadLetter(text),
            }
        }
    }
}

/// What to do with one row listed in a 200 answer's `insertErrors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowVerdict {
    /// Not inserted through no fault of its own (`stopped`) or transiently: send again.
    Resend,
    /// BigQuery rejects the row itself: dead-letter it.
    DeadLetter,
}

/// A row's verdict from all the reasons given for it: any permanent reason makes it a dead
/// letter; only `stopped` and transient reasons make it resendable.
pub fn classify_row<'a>(reasons: impl IntoIterator<Item = &'a str>) -> RowVerdict {
    let mut any = false;
    for reason in reasons {
        any = true;
        if reason != "stopped" && !RETRYABLE_REASONS.contains(&reason) {
            return RowVerdict::DeadLetter;
        }
    }
    if any {
        RowVerdict::Resend
    } else {
        // An entry in insertErrors with no reason: BigQuery did not insert it; resending is
        // safe (insertId de-duplicates) and loses nothing.
        RowVerdict::Resend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, reason: &str, message: &str) -> Failure {
        Failure::Http {
            status,
            reasons: vec![reason.into()],
            message: message.into(),
        }
    }

    #[test]
    fn every_status_and_reason_has_its_verdict() {
        type Check = fn(&Verdict) -> bool;
        let table: Vec<(Failure, Check)> = vec![
            (Failure::Transport("connection refused".into()), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (Failure::Timeout, |v| matches!(v, Verdict::Retry(_))),
            (Failure::Unreadable("html".into()), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(413, "", "Request Entity Too Large"), |v| {
                matches!(v, Verdict::Split(_))
            }),
            (
                http(
                    400,
                    "invalid",
                    "Request payload size exceeds the limit: 10485760 bytes.",
                ),
                |v| matches!(v, Verdict::Split(_)),
            ),
            (http(401, "authError", "Invalid Credentials"), |v| {
                matches!(v, Verdict::Reauthenticate(_))
            }),
            (http(403, "quotaExceeded", "Quota exceeded"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (
                http(403, "rateLimitExceeded", "Exceeded rate limits"),
                |v| matches!(v, Verdict::Retry(_)),
            ),
            (http(403, "accessDenied", "Access Denied"), |v| {
                matches!(v, Verdict::DeadLetter(_))
            }),
            (http(404, "notFound", "Not found: Table p:d.t"), |v| {
                matches!(v, Verdict::NotFound(_))
            }),
            (http(404, "notFound", "Not found: Dataset p:d"), |v| {
                matches!(v, Verdict::DatasetNotFound(_))
            }),
            (http(408, "", "timeout"), |v| matches!(v, Verdict::Retry(_))),
            (http(429, "rateLimitExceeded", "Too many requests"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(500, "internalError", "boom"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(502, "", "bad gateway"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(503, "backendError", "unavailable"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(504, "", "gateway timeout"), |v| {
                matches!(v, Verdict::Retry(_))
            }),
            (http(400, "invalid", "Invalid table ID"), |v| {
                matches!(v, Verdict::DeadLetter(_))
            }),
            (
                http(400, "invalid", "Dataset is not writable in the region"),
                |v| matches!(v, Verdict::Retry(_)),
            ),
            (http(409, "duplicate", "Already Exists"), |v| {
                matches!(v, Verdict::DeadLetter(_))
            }),
        ];
        for (failure, check) in table {
            let verdict = classify(&failure);
            assert!(check(&verdict), "{failure:?} gave {verdict:?}");
        }
    }

    #[test]
    fn row_reasons() {
        assert_eq!(classify_row(["stopped"]), RowVerdict::Resend);
        assert_eq!(classify_row(["backendError"]), RowVerdict::Resend);
        assert_eq!(classify_row(["timeout"]), RowVerdict::Resend);
        assert_eq!(classify_row(["invalid"]), RowVerdict::DeadLetter);
        assert_eq!(classify_row(["invalid", "stopped"]), RowVerdict::DeadLetter);
        assert_eq!(classify_row(["accessDenied"]), RowVerdict::DeadLetter);
        assert_eq!(classify_row(Vec::<&str>::new()), RowVerdict::Resend);
    }
}
