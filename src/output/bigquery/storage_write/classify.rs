//! What a Storage Write answer means for the rows of one AppendRows request: the one place
//! that decides for this API, tested as a table. Sources: "Storage Write API: error handling"
//! (https://cloud.google.com/bigquery/docs/write-api#error_handling) and the `StorageError`
//! codes of google.cloud.bigquery.storage.v1.

use bq_storage_proto::prost::Message;
use bq_storage_proto::tonic::Code;
use bq_storage_proto::v1::StorageError;
use bq_storage_proto::v1::storage_error::StorageErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendVerdict {
    /// The rows are in the table (for an offset behind the stream's end: they were already).
    Landed,
    /// Transient, or the outcome is unknown: try again with the buffer's backoff.
    Retry,
    /// The request is over the size limit: split it.
    Split,
    /// The table (or its dataset) is missing.
    NotFound,
    /// The app-created stream can take no more rows (finalized, gone): use a new one.
    ReplaceStream,
    /// The writer schema no longer fits the table: read the table's schema again, then retry.
    RefreshSchema,
    /// No retry can make these rows land: dead letters.
    DeadLetter,
}

const STORAGE_ERROR: &str = "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError";

/// The `StorageError` code among a status's details (`google.rpc.Status.details`).
pub fn storage_code(details: &[bq_storage_proto::prost_types::Any]) -> Option<StorageErrorCode> {
    details
        .iter()
        .filter(|d| d.type_url == STORAGE_ERROR)
        .find_map(|d| StorageError::decode(d.value.as_slice()).ok())
        .and_then(|e| StorageErrorCode::try_from(e.code).ok())
}

/// The `StorageError` code in a call's status (`grpc-status-details-bin` holds a
/// `google.rpc.Status`).
pub fn storage_code_of_call(status: &bq_storage_proto::tonic::Status) -> Option<StorageErrorCode> {
    let details = bq_storage_proto::rpc::Status::decode(status.details()).ok()?;
    storage_code(&details.details)
}

/// An error answer (a call's status, or `AppendRowsResponse.error` without row errors).
pub fn classify(code: Code, message: &str, storage: Option<StorageErrorCode>) -> AppendVerdict {
    use StorageErrorCode as S;
    match (code, storage) {
        (Code::Ok, _) | (Code::AlreadyExists, _) => AppendVerdict::Landed,
        (_, Some(S::StreamFinalized | S::StreamNotFound | S::InvalidStreamState)) => {
            AppendVerdict::ReplaceStream
        }
        (_, Some(S::SchemaMismatchExtraFields)) => AppendVerdict::RefreshSchema,
        (_, Some(S::TableNotFound)) => AppendVerdict::NotFound,
        (Code::InvalidArgument, _) if message.contains("too large") => AppendVerdict::Split,
        (Code::InvalidArgument, _)
            if message.contains("mismatched with BigQuery field")
                || message.contains("more fields than BigQuery schema") =>
        {
            AppendVerdict::RefreshSchema
        }
        (Code::InvalidArgument, _) if message.contains("finalized") => {
            AppendVerdict::ReplaceStream
        }
        (Code::NotFound, _) => AppendVerdict::NotFound,
        (Code::FailedPrecondition, _) => AppendVerdict::ReplaceStream,
        // OUT_OF_RANGE: an earlier append of this stream has not landed yet.
        (
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::OutOfRange
            // Credentials are a deployment problem rows cannot fix: they wait for it.
            | Code::Unauthenticated
            | Code::PermissionDenied,
            _,
        ) => AppendVerdict::Retry,
        _ => AppendVerdict::DeadLetter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StorageErrorCode as S;

    #[test]
    fn every_answer_has_its_verdict() {
        use AppendVerdict::*;
        let cases: &[(Code, &str, Option<StorageErrorCode>, AppendVerdict)] = &[
            (Code::Ok, "", None, Landed),
            (
                Code::AlreadyExists,
                "The offset is within stream",
                Some(S::OffsetAlreadyExists),
                Landed,
            ),
            (
                Code::OutOfRange,
                "The offset is beyond stream",
                Some(S::OffsetOutOfRange),
                Retry,
            ),
            (Code::Unavailable, "", None, Retry),
            (Code::ResourceExhausted, "quota", None, Retry),
            (Code::Aborted, "", None, Retry),
            (Code::Internal, "", None, Retry),
            (Code::DeadlineExceeded, "", None, Retry),
            (Code::Unauthenticated, "", None, Retry),
            (Code::PermissionDenied, "", None, Retry),
            (
                Code::InvalidArgument,
                "AppendRows request too large: 19923131 limit 10485760",
                None,
                Split,
            ),
            (
                Code::InvalidArgument,
                "Stream has been finalized and cannot be appended",
                Some(S::StreamFinalized),
                ReplaceStream,
            ),
            (
                Code::NotFound,
                "Requested entity was not found",
                Some(S::StreamNotFound),
                ReplaceStream,
            ),
            (
                Code::NotFound,
                "Requested entity was not found",
                Some(S::TableNotFound),
                NotFound,
            ),
            (Code::NotFound, "Table not found", None, NotFound),
            (
                Code::InvalidArgument,
                "Input schema has more fields than BigQuery schema",
                Some(S::SchemaMismatchExtraFields),
                RefreshSchema,
            ),
            (
                Code::InvalidArgument,
                "The proto field mismatched with BigQuery field at Row.x",
                None,
                RefreshSchema,
            ),
            (
                Code::InvalidArgument,
                "Rows must be specified",
                None,
                DeadLetter,
            ),
            (Code::Unimplemented, "", None, DeadLetter),
        ];
        for (code, message, storage, want) in cases {
            assert_eq!(
                classify(*code, message, *storage),
                *want,
                "{code:?} {message}"
            );
        }
    }
}
