// Owns the Storage Write API's error answers: canonical codes, BigQuery's messages and the
// `StorageError` detail Google attaches, both as an RPC status and in `AppendRowsResponse.error`.
// Must not decide when an error happens; callers pick the constructor.
//
// Messages are BigQuery's where they were observed (googleapis' java-bigquerystorage integration
// tests and issue threads, cited per constructor); the others are modelled on them.

use bq_storage_proto::prost::Message;
use bq_storage_proto::prost_types::Any;
use bq_storage_proto::rpc;
use bq_storage_proto::tonic::{Code, Status};
use bq_storage_proto::v1::StorageError;
use bq_storage_proto::v1::storage_error::StorageErrorCode;

use crate::proto_rows::BindError;
use crate::store::{StreamError, StreamKind};

const STORAGE_ERROR_TYPE: &str =
    "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError";

/// One failure: its code, message and (when BigQuery gives one) `StorageError` detail.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    pub code: Code,
    pub message: String,
    pub storage: Option<(StorageErrorCode, String)>,
}

impl WriteError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            storage: None,
        }
    }

    fn with_storage(mut self, code: StorageErrorCode, entity: &str) -> Self {
        self.storage = Some((code, entity.to_string()));
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// Observed: "NOT_FOUND: Requested entity was not found. Entity: projects/…/streams/…".
    pub fn not_found(entity: &str, code: StorageErrorCode) -> Self {
        Self::new(
            Code::NotFound,
            format!("Requested entity was not found. Entity: {entity}"),
        )
        .with_storage(code, entity)
    }

    /// Observed ("AppendRows request too large: 19923131 limit 10485760"), INVALID_ARGUMENT.
    pub fn too_large(size: usize, limit: usize) -> Self {
        Self::invalid(format!(
            "AppendRows request too large: {size} limit {limit}"
        ))
    }

    /// Observed with `row_errors` (googleapis/python-bigquery-storage#717).
    pub fn row_errors(stream: &str) -> Self {
        Self::invalid(format!(
            "Errors found while processing rows. Please refer to the row_errors field for details. The list may not be complete because of the size limitations. Entity: {stream}"
        ))
    }

    pub fn schema(e: &BindError, stream: &str) -> Self {
        let error = Self::invalid(format!("{e} Entity: {stream}"));
        match e {
            BindError::ExtraFields(_) => {
                error.with_storage(StorageErrorCode::SchemaMismatchExtraFields, stream)
            }
            _ => error,
        }
    }

    /// A refused stream operation. Observed texts: "The offset is within stream, expected
    /// offset 1, received 0" (ALREADY_EXISTS), "The offset is beyond stream, expected offset 0,
    /// received 10" (OUT_OF_RANGE), "Stream has been finalized and cannot be appended"
    /// (INVALID_ARGUMENT); each with its StorageError code.
    pub fn stream(e: &StreamError, stream: &str) -> Self {
        use StorageErrorCode as S;
        match e {
            StreamError::NoTable(_) => Self::not_found(stream, S::TableNotFound),
            StreamError::NoStream(name) => Self::not_found(name, S::StreamNotFound),
            StreamError::Finalized(name) => Self::invalid(format!(
                "Stream has been finalized and cannot be appended. Entity: {name}"
            ))
            .with_storage(S::StreamFinalized, name),
            StreamError::OffsetAlreadyExists { expected, received } => Self::new(
                Code::AlreadyExists,
                format!(
                    "The offset is within stream, expected offset {expected}, received {received} Entity: {stream}"
                ),
            )
            .with_storage(S::OffsetAlreadyExists, stream),
            StreamError::OffsetOutOfRange { expected, received } => Self::new(
                Code::OutOfRange,
                format!(
                    "The offset is beyond stream, expected offset {expected}, received {received} Entity: {stream}"
                ),
            )
            .with_storage(S::OffsetOutOfRange, stream),
            StreamError::WrongType { name, kind, wanted } => Self::invalid(format!(
                "Stream is of type {}, the operation needs a {} stream. Entity: {name}",
                kind_name(*kind),
                kind_name(*wanted)
            ))
            .with_storage(S::InvalidStreamType, name),
            StreamError::NotFinalized(name) => Self::invalid(format!(
                "Stream is not finalized and cannot be committed. Entity: {name}"
            ))
            .with_storage(S::InvalidStreamState, name),
            StreamError::AlreadyCommitted(name) => {
                Self::invalid(format!("Stream is already committed. Entity: {name}"))
                    .with_storage(S::StreamAlreadyCommitted, name)
            }
            StreamError::OtherTable { stream, table } => Self::invalid(format!(
                "Stream {stream} does not belong to the parent table {table}"
            )),
            StreamError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                Self::new(Code::Internal, e.to_string())
            }
        }
    }

    fn detail(&self) -> Vec<Any> {
        self.storage
            .iter()
            .map(|(code, entity)| Any {
                type_url: STORAGE_ERROR_TYPE.to_string(),
                value: StorageError {
                    code: *code as i32,
                    entity: entity.clone(),
                    error_message: self.message.clone(),
                }
                .encode_to_vec(),
            })
            .collect()
    }

    /// `google.rpc.Status` for `AppendRowsResponse.error`.
    pub fn to_rpc(&self) -> rpc::Status {
        rpc::Status {
            code: self.code as i32,
            message: self.message.clone(),
            details: self.detail(),
        }
    }

    /// The RPC's status, details in `grpc-status-details-bin` as Google sends them.
    pub fn to_status(&self) -> Status {
        let details = self.to_rpc().encode_to_vec();
        Status::with_details(self.code, self.message.clone(), details.into())
    }
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        e.to_status()
    }
}

/// The name of a stream type in BigQuery's enum.
pub fn kind_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Committed => "COMMITTED",
        StreamKind::Pending => "PENDING",
        StreamKind::Buffered => "BUFFERED",
    }
}
