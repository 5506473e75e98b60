// Owns one AppendRows connection's state (its destination stream, writer schema and schema
// baseline) and turns each request into its response, in order. Must not do I/O on sockets or
// draw faults: the service drives it, one request at a time, on a blocking worker.
//
// What ends the call (an `Err(Status)`) and what is answered in the response stream (an
// `AppendRowsResponse.error`) follows the Write API: offsets, finalized streams, bad rows and
// schema mismatches are per-request answers on a connection that stays usable; an unknown stream
// or table, a first request without a destination, or an unsupported format end the call.

use std::sync::Arc;

use bq_storage_proto::prost::Message;
use bq_storage_proto::tonic::{Code, Status};
use bq_storage_proto::v1::append_rows_request::{ProtoData, Rows};
use bq_storage_proto::v1::append_rows_response::{AppendResult, Response};
use bq_storage_proto::v1::row_error::RowErrorCode;
use bq_storage_proto::v1::storage_error::StorageErrorCode;
use bq_storage_proto::v1::{AppendRowsRequest, AppendRowsResponse, RowError, TableSchema};
use serde_json::json;

use super::errors::WriteError;
use super::names::{StreamName, checked_table_schema, schema_fields, table_schema};
use crate::App;
use crate::proto_rows::WriterSchema;
use crate::routes::now_ms;
use crate::schema::Schema;
use crate::stats::Stats;
use crate::store::{NewRow, StreamTarget, dataset_key, schema_of};

/// Where the connection writes and with which schema.
struct Destination {
    /// The name as the client wrote it (echoed in `write_stream`).
    given: String,
    name: StreamName,
    /// The writer schema bound to the table, or why it could not be.
    writer: Option<Result<Arc<WriterSchema>, WriteError>>,
    /// The table schema the writer schema was checked against (for a created stream, first its
    /// creation-time schema): when the one the write path sees differs, responses carry
    /// `updated_schema`.
    baseline: Arc<Schema>,
}

/// One AppendRows call.
pub struct AppendConnection {
    app: Arc<App>,
    destination: Option<Destination>,
}

impl AppendConnection {
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            destination: None,
        }
    }

    /// Handles one request: `Ok` is the response to send (success or a per-request error),
    /// `Err` ends the call with that status.
    pub fn handle(&mut self, request: AppendRowsRequest) -> Result<AppendRowsResponse, Status> {
        let mut destination = self.switch(&request.write_stream)?;
        let answer = self.process(&mut destination, request);
        self.destination = Some(destination);
        answer
    }

    fn process(
        &self,
        destination: &mut Destination,
        request: AppendRowsRequest,
    ) -> Result<AppendRowsResponse, Status> {
        let size = request.encoded_len();
        let limit = self.app.limits.max_request_bytes;
        if size > limit {
            return Ok(failed(
                destination,
                WriteError::too_large(size, limit),
                Vec::new(),
            ));
        }
        let data = match request.rows {
            Some(Rows::ProtoRows(data)) => data,
            Some(Rows::ArrowRows(_)) => {
                return Err(Status::unimplemented(
                    "bigquery-emulator accepts proto_rows only; arrow_rows are not implemented",
                ));
            }
            None => {
                let error = WriteError::invalid("Rows must be specified in an AppendRowsRequest.");
                return Ok(failed(destination, error, Vec::new()));
            }
        };
        let offset = match request.offset {
            Some(o) if o < 0 => {
                let error = WriteError::invalid(format!("Offset cannot be negative: {o}."));
                return Ok(failed(destination, error, Vec::new()));
            }
            Some(_) if destination.name.is_default() => {
                let error = WriteError::invalid(format!(
                    "Offset is not supported on the _default stream; omit it. Entity: {}",
                    destination.name.canonical()
                ));
                return Ok(failed(destination, error, Vec::new()));
            }
            o => o.map(|o| o as u64),
        };
        if self.app.faults.null_mode() {
            let n = data.rows.as_ref().map_or(0, |r| r.serialized_rows.len()) as u64;
            let stats = &self.app.stats;
            Stats::add(&stats.rows_received, n);
            Stats::add(&stats.rows_accepted, n);
            Stats::add(&stats.rows_discarded, n);
            return Ok(succeeded(destination, offset, None));
        }
        self.append(destination, data, offset)
    }

    /// The destination for a request's `write_stream`: required in the first request, optional
    /// afterwards (omitted means the previous one).
    fn switch(&mut self, write_stream: &str) -> Result<Destination, Status> {
        let current = self.destination.take();
        match current {
            Some(d) if write_stream.is_empty() || d.given == write_stream => return Ok(d),
            None if write_stream.is_empty() => {
                return Err(WriteError::invalid(
                    "The first AppendRowsRequest on a connection must set write_stream.",
                )
                .into());
            }
            _ => {}
        }
        let name = StreamName::parse(write_stream).ok_or_else(|| {
            Status::from(WriteError::invalid(format!(
                "Invalid stream name: {write_stream}."
            )))
        })?;
        let baseline = if self.app.faults.null_mode() {
            Arc::new(Schema::default())
        } else {
            self.lookup(&name)?
        };
        Ok(Destination {
            given: write_stream.to_string(),
            name,
            writer: None,
            baseline,
        })
    }

    /// Checks the stream (and its table) exist; returns the schema baseline.
    fn lookup(&self, name: &StreamName) -> Result<Arc<Schema>, Status> {
        let store = &self.app.store;
        let entity = name.canonical();
        let table = &name.table;
        let info = store
            .dataset(&dataset_key(&table.project, &table.dataset))
            .and_then(|_| store.table(&table.key()))
            .ok_or_else(|| WriteError::not_found(&entity, StorageErrorCode::TableNotFound))?;
        if name.is_default() {
            return Ok(self.app.propagation.visible(&table.key(), &info.schema));
        }
        let record = store
            .stream(&entity)
            .ok_or_else(|| WriteError::not_found(&entity, StorageErrorCode::StreamNotFound))?;
        // The stored creation-time schema was a valid table schema; should it not parse, the
        // current one stands in (the worst case is one missing `updated_schema`).
        let created = schema_of(&json!({"schema": {"fields": record.schema}}))
            .map(Arc::new)
            .unwrap_or_else(|_| info.schema.clone());
        Ok(created)
    }

    fn append(
        &self,
        destination: &mut Destination,
        data: ProtoData,
        offset: Option<u64>,
    ) -> Result<AppendRowsResponse, Status> {
        let entity = destination.name.canonical();
        let table_key = destination.name.table.key();
        let Some(info) = self.app.store.table(&table_key) else {
            return Err(WriteError::not_found(&entity, StorageErrorCode::TableNotFound).into());
        };
        // The write path sees a schema change only once it has propagated (see `propagation`).
        let visible = self.app.propagation.visible(&table_key, &info.schema);
        let writer = match writer(destination, &data, &visible, &entity) {
            Ok(writer) => writer,
            Err(e) => return Ok(failed(destination, e, Vec::new())),
        };
        let serialized = data.rows.map(|r| r.serialized_rows).unwrap_or_default();
        if serialized.is_empty() {
            let error = WriteError::invalid("ProtoRows must contain at least one row.");
            return Ok(failed(destination, error, Vec::new()));
        }
        let stats = &self.app.stats;
        Stats::add(&stats.rows_received, serialized.len() as u64);
        let mut rows = Vec::with_capacity(serialized.len());
        let mut row_errors = Vec::new();
        for (index, bytes) in serialized.iter().enumerate() {
            match writer.decode(bytes) {
                Ok(row) => rows.push(NewRow {
                    partition: info.partition_for(None, &row),
                    row,
                }),
                Err(message) => row_errors.push(RowError {
                    index: index as i64,
                    code: RowErrorCode::FieldsError as i32,
                    message,
                }),
            }
        }
        if !row_errors.is_empty() {
            // As insertAll: the bad rows are invalid, the others stopped (none is written).
            Stats::add(&stats.rows_invalid, row_errors.len() as u64);
            Stats::add(&stats.rows_stopped, rows.len() as u64);
            return Ok(failed(
                destination,
                WriteError::row_errors(&entity),
                row_errors,
            ));
        }
        let count = rows.len() as u64;
        let target = if destination.name.is_default() {
            StreamTarget::Default { table: &table_key }
        } else {
            StreamTarget::Named { name: &entity }
        };
        let appended = match self.app.store.append_stream(target, offset, rows, now_ms()) {
            Ok(appended) => appended,
            Err(e) => {
                let error = WriteError::stream(&e, &entity);
                return match error.code {
                    Code::NotFound | Code::Internal => Err(error.into()),
                    _ => Ok(failed(destination, error, Vec::new())),
                };
            }
        };
        Stats::add(&stats.rows_accepted, count);
        Stats::add(&stats.rows_inserted, appended.visible);
        let updated = (*visible != *destination.baseline).then(|| {
            if *visible == *info.schema {
                table_schema(&schema_fields(&info.resource))
            } else {
                checked_table_schema(&visible)
            }
        });
        Ok(succeeded(destination, appended.offset, updated))
    }
}

/// The writer schema for this request: a new one binds now (against the table as it is),
/// otherwise the connection's earlier one.
fn writer(
    destination: &mut Destination,
    data: &ProtoData,
    visible: &Arc<Schema>,
    entity: &str,
) -> Result<Arc<WriterSchema>, WriteError> {
    if let Some(descriptor) = data
        .writer_schema
        .as_ref()
        .and_then(|s| s.proto_descriptor.as_ref())
    {
        let bound = WriterSchema::bind(descriptor, visible)
            .map(Arc::new)
            .map_err(|e| WriteError::schema(&e, entity));
        if destination.writer.is_some() {
            // A client that sends a new writer schema has seen the table as it is now.
            destination.baseline = visible.clone();
        }
        destination.writer = Some(bound);
    }
    match &destination.writer {
        Some(bound) => bound.clone(),
        None => Err(WriteError::invalid(format!(
            "The first AppendRowsRequest for a stream must carry proto_rows.writer_schema. Entity: {entity}"
        ))),
    }
}

/// A per-request error response.
fn failed(
    destination: &Destination,
    error: WriteError,
    row_errors: Vec<RowError>,
) -> AppendRowsResponse {
    AppendRowsResponse {
        response: Some(Response::Error(error.to_rpc())),
        row_errors,
        write_stream: destination.given.clone(),
        ..AppendRowsResponse::default()
    }
}

fn succeeded(
    destination: &Destination,
    offset: Option<u64>,
    updated: Option<TableSchema>,
) -> AppendRowsResponse {
    AppendRowsResponse {
        response: Some(Response::AppendResult(AppendResult {
            offset: offset.map(|o| o as i64),
        })),
        updated_schema: updated,
        write_stream: destination.given.clone(),
        ..AppendRowsResponse::default()
    }
}
