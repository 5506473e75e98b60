// Owns the six BigQueryWrite RPCs: request checks, fault injection, counters, and the store calls
// behind CreateWriteStream, GetWriteStream, FinalizeWriteStream, BatchCommitWriteStreams and
// FlushRows; AppendRows is driven here and decided in `append`. Must not touch sockets.

use std::sync::Arc;

use bq_storage_proto::server::big_query_write_server::BigQueryWrite;
use bq_storage_proto::tonic::{self, Code, Request, Response, Status, Streaming};
use bq_storage_proto::v1::storage_error::StorageErrorCode;
use bq_storage_proto::v1::write_stream::{Type, WriteMode};
use bq_storage_proto::v1::{
    AppendRowsRequest, AppendRowsResponse, BatchCommitWriteStreamsRequest,
    BatchCommitWriteStreamsResponse, CreateWriteStreamRequest, FinalizeWriteStreamRequest,
    FinalizeWriteStreamResponse, FlushRowsRequest, FlushRowsResponse, GetWriteStreamRequest,
    StorageError, WriteStream, WriteStreamView,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ConnectionKill;
use super::append::AppendConnection;
use super::errors::{WriteError, kind_name};
use super::names::{
    StreamName, TableName, new_stream_id, now_micros, schema_fields, table_schema, timestamp,
};
use crate::faults::GrpcFault;
use crate::routes::now_ms;
use crate::stats::Stats;
use crate::store::{StreamError, StreamKind, StreamRecord, TableInfo, dataset_key};
use crate::{App, AppState};

/// Responses queued per AppendRows call before the reader waits for the client to read them.
const RESPONSE_QUEUE: usize = 16;

/// The observed answer to a throttled append ("Exceeds 'AppendRows throughput' quota", quoted by
/// several Write API clients that special-case it).
const QUOTA_MESSAGE: &str = "Exceeds 'AppendRows throughput' quota, user_id: bigquery-emulator";
const UNAVAILABLE_MESSAGE: &str = "The service is currently unavailable.";

pub struct WriteService {
    app: AppState,
}

impl WriteService {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }

    /// Records the call's bearer token and refuses it as the REST API does (`--require-token`,
    /// `/_emulator/auth`): UNAUTHENTICATED, Google's words, then the emulator's reason.
    fn authorize(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.app.tokens.check(authorization).map_err(|reason| {
            Status::unauthenticated(format!(
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. ({reason})"
            ))
        })
    }

    /// Runs a unary RPC's store work off the async workers, honouring a drop fault: the work is
    /// done, then the connection closes and the caller never hears back.
    async fn unary<T: Send + 'static>(
        &self,
        extensions: &tonic::Extensions,
        work: impl FnOnce(&App) -> Result<T, WriteError> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        Stats::add(&self.app.stats.grpc_requests, 1);
        let drop = apply_fault(&self.app, false).await?;
        let app = self.app.clone();
        let answer = tokio::task::spawn_blocking(move || work(&app))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))?;
        if drop {
            return lose_answer(extensions.get::<ConnectionKill>()).await;
        }
        answer.map(Response::new).map_err(Status::from)
    }
}

/// Applies the faults drawn for one gRPC request (a unary call, or one AppendRows request when
/// `is_append`): latency, then an error status, or `Ok(true)` when the answer is to be lost
/// (carry the request out, then drop the connection).
async fn apply_fault(app: &App, is_append: bool) -> Result<bool, Status> {
    let (latency, fault) = app.faults.draw_grpc(is_append);
    if let Some(delay) = latency {
        Stats::add(&app.stats.faults_delayed, 1);
        tokio::time::sleep(delay).await;
    }
    match fault {
        None => Ok(false),
        Some(GrpcFault::Drop) => {
            Stats::add(&app.stats.faults_grpc_dropped, 1);
            Ok(true)
        }
        Some(GrpcFault::Unavailable) => {
            Stats::add(&app.stats.faults_unavailable, 1);
            Err(Status::unavailable(UNAVAILABLE_MESSAGE))
        }
        Some(GrpcFault::ResourceExhausted) => {
            Stats::add(&app.stats.faults_resource_exhausted, 1);
            Err(Status::resource_exhausted(QUOTA_MESSAGE))
        }
    }
}

/// Closes the caller's connection and then never completes, so no answer can be sent before the
/// connection (and with it this future) is gone.
async fn lose_answer<T>(kill: Option<&ConnectionKill>) -> Result<T, Status> {
    match kill {
        Some(kill) => {
            kill.0.cancel();
            std::future::pending().await
        }
        // Every request served by `grpc::serve` carries one; answer like a lost backend.
        None => Err(Status::unavailable(UNAVAILABLE_MESSAGE)),
    }
}

fn table_name(parent: &str) -> Result<TableName, WriteError> {
    TableName::parse(parent)
        .ok_or_else(|| WriteError::invalid(format!("Invalid table name: {parent}.")))
}

fn stream_name(name: &str) -> Result<StreamName, WriteError> {
    StreamName::parse(name)
        .ok_or_else(|| WriteError::invalid(format!("Invalid stream name: {name}.")))
}

/// The table behind a name, or BigQuery's NOT_FOUND for it.
fn table_info(app: &App, table: &TableName, entity: &str) -> Result<TableInfo, WriteError> {
    app.store
        .dataset(&dataset_key(&table.project, &table.dataset))
        .and_then(|_| app.store.table(&table.key()))
        .ok_or_else(|| WriteError::not_found(entity, StorageErrorCode::TableNotFound))
}

fn kind_of(r#type: i32) -> Option<StreamKind> {
    match Type::try_from(r#type).ok()? {
        Type::Committed => Some(StreamKind::Committed),
        Type::Pending => Some(StreamKind::Pending),
        Type::Buffered => Some(StreamKind::Buffered),
        Type::Unspecified => None,
    }
}

fn type_of(kind: StreamKind) -> Type {
    match kind {
        StreamKind::Committed => Type::Committed,
        StreamKind::Pending => Type::Pending,
        StreamKind::Buffered => Type::Buffered,
    }
}

/// Where the table's dataset lives (`location` of the dataset resource; BigQuery's default US).
fn location(app: &App, table: &TableName) -> String {
    app.store
        .dataset(&dataset_key(&table.project, &table.dataset))
        .and_then(|d| {
            d.get("location")
                .and_then(|l| l.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "US".to_string())
}

/// A created stream as the API shows it; `full` adds the table's current schema.
fn write_stream(app: &App, name: &str, record: &StreamRecord, full: bool) -> WriteStream {
    let table = StreamName::parse(name).map(|n| n.table);
    let committed = match record.kind {
        StreamKind::Committed => Some(record.created_us),
        _ => record.committed_us,
    };
    WriteStream {
        name: name.to_string(),
        r#type: type_of(record.kind) as i32,
        create_time: Some(timestamp(record.created_us)),
        commit_time: committed.map(timestamp),
        table_schema: full
            .then(|| app.store.table(&record.table))
            .flatten()
            .map(|info| table_schema(&schema_fields(&info.resource))),
        write_mode: WriteMode::Insert as i32,
        location: table.map(|t| location(app, &t)).unwrap_or_default(),
    }
}

/// The `_default` stream: COMMITTED, created with its table.
fn default_stream(app: &App, name: &StreamName, info: &TableInfo, full: bool) -> WriteStream {
    let created_us = info
        .resource
        .get("creationTime")
        .and_then(|v| v.as_str())
        .and_then(|ms| ms.parse::<i64>().ok())
        .map_or(0, |ms| ms * 1_000);
    WriteStream {
        name: name.canonical(),
        r#type: Type::Committed as i32,
        create_time: Some(timestamp(created_us)),
        commit_time: Some(timestamp(created_us)),
        table_schema: full.then(|| table_schema(&schema_fields(&info.resource))),
        write_mode: WriteMode::Insert as i32,
        location: location(app, &name.table),
    }
}

fn create(app: &App, request: CreateWriteStreamRequest) -> Result<WriteStream, WriteError> {
    let table = table_name(&request.parent)?;
    let info = table_info(app, &table, &request.parent)?;
    let requested = request.write_stream.unwrap_or_default();
    let kind = kind_of(requested.r#type).ok_or_else(|| {
        WriteError::invalid("WriteStream.type must be COMMITTED, PENDING or BUFFERED.")
    })?;
    let name = table.stream(&new_stream_id());
    let record = StreamRecord {
        table: table.key(),
        kind,
        created_us: now_micros(),
        rows: 0,
        flushed: 0,
        finalized_us: None,
        committed_us: None,
        schema: schema_fields(&info.resource),
    };
    app.store
        .create_stream(&name, record.clone())
        .map_err(|e| WriteError::stream(&e, &request.parent))?;
    tracing::debug!(stream = %name, kind = kind_name(kind), "write stream created");
    // CreateWriteStream returns the FULL view, schema included.
    Ok(write_stream(app, &name, &record, true))
}

fn get(app: &App, request: GetWriteStreamRequest) -> Result<WriteStream, WriteError> {
    let name = stream_name(&request.name)?;
    let entity = name.canonical();
    let info = table_info(app, &name.table, &entity)?;
    let full = request.view == WriteStreamView::Full as i32;
    if name.is_default() {
        return Ok(default_stream(app, &name, &info, full));
    }
    let record = app
        .store
        .stream(&entity)
        .ok_or_else(|| WriteError::not_found(&entity, StorageErrorCode::StreamNotFound))?;
    Ok(write_stream(app, &entity, &record, full))
}

fn finalize(
    app: &App,
    request: FinalizeWriteStreamRequest,
) -> Result<FinalizeWriteStreamResponse, WriteError> {
    let name = stream_name(&request.name)?;
    let entity = name.canonical();
    if name.is_default() {
        return Err(WriteError::invalid(format!(
            "FinalizeWriteStream is not supported on the _default stream. Entity: {entity}"
        )));
    }
    let rows = app
        .store
        .finalize_stream(&entity, now_micros())
        .map_err(|e| WriteError::stream(&e, &entity))?;
    Ok(FinalizeWriteStreamResponse {
        row_count: rows as i64,
    })
}

fn commit(
    app: &App,
    request: BatchCommitWriteStreamsRequest,
) -> Result<BatchCommitWriteStreamsResponse, WriteError> {
    let table = table_name(&request.parent)?;
    table_info(app, &table, &request.parent)?;
    if request.write_streams.is_empty() {
        return Err(WriteError::invalid(
            "BatchCommitWriteStreams needs at least one stream in write_streams.",
        ));
    }
    let mut names = Vec::with_capacity(request.write_streams.len());
    for given in &request.write_streams {
        names.push(stream_name(given)?.canonical());
    }
    let now = now_micros();
    let outcome = app
        .store
        .commit_streams(&table.key(), &names, now, now_ms())
        .map_err(|e| WriteError::stream(&e, &request.parent))?;
    match outcome {
        Ok(visible) => {
            Stats::add(&app.stats.rows_inserted, visible);
            Ok(BatchCommitWriteStreamsResponse {
                commit_time: Some(timestamp(now)),
                stream_errors: Vec::new(),
            })
        }
        Err(refused) => {
            if let Some((_, e @ StreamError::OtherTable { .. })) = refused.first() {
                return Err(WriteError::stream(e, &request.parent));
            }
            let stream_errors = refused
                .iter()
                .map(|(name, e)| {
                    let error = WriteError::stream(e, name);
                    let (code, entity) = error
                        .storage
                        .clone()
                        .unwrap_or((StorageErrorCode::Unspecified, name.clone()));
                    StorageError {
                        code: code as i32,
                        entity,
                        error_message: error.message,
                    }
                })
                .collect();
            Ok(BatchCommitWriteStreamsResponse {
                commit_time: None,
                stream_errors,
            })
        }
    }
}

fn flush(app: &App, request: FlushRowsRequest) -> Result<FlushRowsResponse, WriteError> {
    let name = stream_name(&request.write_stream)?;
    let entity = name.canonical();
    if name.is_default() {
        return Err(WriteError::invalid(format!(
            "FlushRows is not supported on the _default stream. Entity: {entity}"
        )));
    }
    let offset = match request.offset {
        Some(o) if o < 0 => {
            return Err(WriteError::invalid(format!(
                "Offset cannot be negative: {o}."
            )));
        }
        o => o.map(|o| o as u64),
    };
    let (flushed, visible) = app
        .store
        .flush_stream(&entity, offset, now_ms())
        .map_err(|e| match e {
            StreamError::OffsetOutOfRange { expected, received } => WriteError {
                code: Code::OutOfRange,
                message: format!(
                    "Flush offset {received} is beyond the end of the stream ({expected} rows appended). Entity: {entity}"
                ),
                storage: Some((StorageErrorCode::OffsetOutOfRange, entity.clone())),
            },
            other => WriteError::stream(&other, &entity),
        })?;
    Stats::add(&app.stats.rows_inserted, visible);
    Ok(FlushRowsResponse {
        offset: flushed as i64,
    })
}

#[tonic::async_trait]
impl BigQueryWrite for WriteService {
    async fn create_write_stream(
        &self,
        request: Request<CreateWriteStreamRequest>,
    ) -> Result<Response<WriteStream>, Status> {
        self.authorize(request.metadata())?;
        let (_, extensions, request) = request.into_parts();
        self.unary(&extensions, move |app| create(app, request))
            .await
    }

    type AppendRowsStream = ReceiverStream<Result<AppendRowsResponse, Status>>;

    async fn append_rows(
        &self,
        request: Request<Streaming<AppendRowsRequest>>,
    ) -> Result<Response<Self::AppendRowsStream>, Status> {
        self.authorize(request.metadata())?;
        Stats::add(&self.app.stats.grpc_requests, 1);
        let kill = request.extensions().get::<ConnectionKill>().cloned();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(drive_append(self.app.clone(), inbound, tx, kill));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_write_stream(
        &self,
        request: Request<GetWriteStreamRequest>,
    ) -> Result<Response<WriteStream>, Status> {
        self.authorize(request.metadata())?;
        let (_, extensions, request) = request.into_parts();
        self.unary(&extensions, move |app| get(app, request)).await
    }

    async fn finalize_write_stream(
        &self,
        request: Request<FinalizeWriteStreamRequest>,
    ) -> Result<Response<FinalizeWriteStreamResponse>, Status> {
        self.authorize(request.metadata())?;
        let (_, extensions, request) = request.into_parts();
        self.unary(&extensions, move |app| finalize(app, request))
            .await
    }

    async fn batch_commit_write_streams(
        &self,
        request: Request<BatchCommitWriteStreamsRequest>,
    ) -> Result<Response<BatchCommitWriteStreamsResponse>, Status> {
        self.authorize(request.metadata())?;
        let (_, extensions, request) = request.into_parts();
        self.unary(&extensions, move |app| commit(app, request))
            .await
    }

    async fn flush_rows(
        &self,
        request: Request<FlushRowsRequest>,
    ) -> Result<Response<FlushRowsResponse>, Status> {
        self.authorize(request.metadata())?;
        let (_, extensions, request) = request.into_parts();
        self.unary(&extensions, move |app| flush(app, request))
            .await
    }
}

/// Reads an AppendRows call's requests in order and answers each, until the client half-closes,
/// a request ends the call, or a fault does. Responses queue in a bounded channel, so a client
/// that stops reading stops this reader too.
async fn drive_append(
    app: Arc<App>,
    mut inbound: Streaming<AppendRowsRequest>,
    tx: mpsc::Sender<Result<AppendRowsResponse, Status>>,
    kill: Option<ConnectionKill>,
) {
    let mut connection = AppendConnection::new(app.clone());
    loop {
        let request = match inbound.message().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        Stats::add(&app.stats.append_rows_requests, 1);
        let drop = match apply_fault(&app, true).await {
            Ok(drop) => drop,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let handled = tokio::task::spawn_blocking(move || {
            let answer = connection.handle(request);
            (connection, answer)
        })
        .await;
        let answer;
        (connection, answer) = match handled {
            Ok(pair) => pair,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("worker failed: {e}"))))
                    .await;
                return;
            }
        };
        if drop {
            // The request was carried out; its answer is lost with the connection. Hold the
            // response stream open until the connection is gone, so no status reaches the client.
            match &kill {
                Some(kill) => kill.0.cancel(),
                None => {
                    let _ = tx.send(Err(Status::unavailable(UNAVAILABLE_MESSAGE))).await;
                    return;
                }
            }
            tx.closed().await;
            return;
        }
        let ends = answer.is_err();
        if tx.send(answer).await.is_err() || ends {
            return;
        }
    }
}
