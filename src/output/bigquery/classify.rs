//! What a BigQuery answer means for the rows in a request: the one place that decides
//! between retrying, splitting, creating the table and dead-lettering. Pure; tested as a table.
//! Sources: "Troubleshoot errors" (cloud.google.com/bigquery/docs/error-messages) and
//! "Streaming data into BigQuery" (retry guidance, insertErrors).

/// What to do with a whole request after a request-level answer; the `Failure` says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: retry the rows later with backoff.
    Retry,
    /// The request is too large: split it and send the halves.
    Split,
    /// The table is missing.
    NotFound,
    /// The dataset is missing: a deployment problem no row can fix. Rows wait for it.
    DatasetNotFound,
    /// The credentials were refused: get a new token, then retry.
    Reauthenticate,
    /// Retrying as is cannot succeed: dead-letter the rows with the failure as the reason.
    DeadLetter,
}

/// A request-level failure as the client reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Connection refused, reset, TLS, or no complete answer.
    #[error("transport error: {0}")]
    Transport(String),
    #[error("request timed out")]
    Timeout,
    /// An HTTP error with Google's error body: status, `errors[].reason`, message.
    #[error("HTTP {status} {}: {message}", reasons.join(","))]
    Http {
        status: u16,
        reasons: Vec<String>,
        message: String,
    },
    /// An error answer whose body could not be read (not Google's JSON error).
    #[error("unreadable error answer: {0}")]
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
    let Failure::Http {
        status,
        reasons,
        message,
    } = failure
    else {
        // Transport errors, timeouts and unreadable answers are transient.
        return Verdict::Retry;
    };
    let has = |r: &str| reasons.iter().any(|x| x == r);
    let too_large = message.contains("payload size exceeds")
        || message.contains("Request Entity Too Large")
        || message.contains("request too large");
    match status {
        413 => Verdict::Split,
        400 if too_large => Verdict::Split,
        401 => Verdict::Reauthenticate,
        404 if message.contains("Not found: Dataset") => Verdict::DatasetNotFound,
        404 => Verdict::NotFound,
        408 | 429 | 500 | 502 | 503 | 504 => Verdict::Retry,
        // Quota and rate limits come as 403 with these reasons: back off.
        403 if RETRYABLE_REASONS.iter().any(|r| has(r)) => Verdict::Retry,
        // fluent-plugin-bigquery retries this one: a region move in progress.
        400 if message.contains("is not writable in the region") => Verdict::Retry,
        _ if RETRYABLE_REASONS.iter().any(|r| has(r)) => Verdict::Retry,
        _ => Verdict::DeadLetter,
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
                *v == Verdict::Retry
            }),
            (Failure::Timeout, |v| *v == Verdict::Retry),
            (Failure::Unreadable("html".into()), |v| *v == Verdict::Retry),
            (http(413, "", "Request Entity Too Large"), |v| {
                *v == Verdict::Split
            }),
            (
                http(
                    400,
                    "invalid",
                    "Request payload size exceeds the limit: 10485760 bytes.",
                ),
                |v| *v == Verdict::Split,
            ),
            (http(401, "authError", "Invalid Credentials"), |v| {
                *v == Verdict::Reauthenticate
            }),
            (http(403, "quotaExceeded", "Quota exceeded"), |v| {
                *v == Verdict::Retry
            }),
            (
                http(403, "rateLimitExceeded", "Exceeded rate limits"),
                |v| *v == Verdict::Retry,
            ),
            (http(403, "accessDenied", "Access Denied"), |v| {
                *v == Verdict::DeadLetter
            }),
            (http(404, "notFound", "Not found: Table p:d.t"), |v| {
                *v == Verdict::NotFound
            }),
            (http(404, "notFound", "Not found: Dataset p:d"), |v| {
                *v == Verdict::DatasetNotFound
            }),
            (http(408, "", "timeout"), |v| *v == Verdict::Retry),
            (http(429, "rateLimitExceeded", "Too many requests"), |v| {
                *v == Verdict::Retry
            }),
            (http(500, "internalError", "boom"), |v| *v == Verdict::Retry),
            (http(502, "", "bad gateway"), |v| *v == Verdict::Retry),
            (http(503, "backendError", "unavailable"), |v| {
                *v == Verdict::Retry
            }),
            (http(504, "", "gateway timeout"), |v| *v == Verdict::Retry),
            (http(400, "invalid", "Invalid table ID"), |v| {
                *v == Verdict::DeadLetter
            }),
            (
                http(400, "invalid", "Dataset is not writable in the region"),
                |v| *v == Verdict::Retry,
            ),
            (http(409, "duplicate", "Already Exists"), |v| {
                *v == Verdict::DeadLetter
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
