//! The Storage Write API over gRPC (tonic, with bq-storage-proto's stubs): one HTTP/2 channel
//! (h2c for an `http://` endpoint, TLS for `https://`), AppendRows connections kept open per
//! stream and reused (one request in flight on each, so one per flush worker at most),
//! CreateWriteStream for exactly-once streams. Turns no answer into a verdict (`classify`
//! does) and retries nothing.
//!
//! AppendRows requests go through the generic gRPC client with `RowsRequest`, an
//! `AppendRowsRequest` whose rows arrive already serialized as one `ProtoRows` message body
//! (`encoder::RowsBuffer`): no `Bytes` per row to clone, count and drop, and the request is
//! one copy of that body into the HTTP/2 buffer.

use crate::output::bigquery::credentials::Credentials;
use bq_storage_proto::prost::{self, DecodeError, Message as _};
use bq_storage_proto::prost_types::DescriptorProto;
use bq_storage_proto::tonic::codec::Streaming;
use bq_storage_proto::tonic::codegen::http::uri::PathAndQuery;
use bq_storage_proto::tonic::{self, Code, GrpcMethod, Status};
use bq_storage_proto::tonic_prost::ProstCodec;
use bq_storage_proto::v1::big_query_write_client::BigQueryWriteClient;
use bq_storage_proto::v1::write_stream::Type as StreamType;
use bq_storage_proto::v1::{
    AppendRowsRequest, AppendRowsResponse, CreateWriteStreamRequest, ProtoSchema, WriteStream,
};
use bytes::{BufMut, Bytes};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Google's endpoint, used when `storage_endpoint` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";

/// Idle AppendRows connections kept per stream.
const IDLE_PER_STREAM: usize = 16;

/// The AppendRows method, as the generated client names it.
const SERVICE: &str = "google.cloud.bigquery.storage.v1.BigQueryWrite";
const APPEND_ROWS: &str = "/google.cloud.bigquery.storage.v1.BigQueryWrite/AppendRows";

pub struct WriteClient {
    client: BigQueryWriteClient<tonic::transport::Channel>,
    /// The same channel for AppendRows with `RowsRequest` messages.
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
    /// The output's credentials, shared with its REST client.
    credentials: Arc<Credentials>,
    timeout: Option<Duration>,
    idle: Mutex<HashMap<String, Vec<AppendConnection>>>,
}

/// One open AppendRows call.
struct AppendConnection {
    requests: mpsc::Sender<RowsRequest>,
    responses: Streaming<AppendRowsResponse>,
    /// The writer schema this call has been given (rows after it are read with it).
    descriptor: DescriptorProto,
    /// The credentials' generation when the call opened with its token.
    generation: u64,
}

/// One append: rows already serialized against `descriptor`.
pub struct Append<'a> {
    pub stream: &'a str,
    pub descriptor: &'a DescriptorProto,
    /// The rows as the body of a `ProtoRows` message: each one a `serialized_rows` field.
    pub rows: Bytes,
    /// Only for app-created streams (the default stream refuses offsets).
    pub offset: Option<i64>,
}

impl WriteClient {
    /// A client for `endpoint` (`http://` = plaintext h2c). Connects lazily.
    pub fn new(
        endpoint: &str,
        credentials: Arc<Credentials>,
        open_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Result<Self, String> {
        let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("storage_endpoint {endpoint}: {e}"))?
            .connect_timeout(open_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if endpoint.starts_with("https://") {
            channel = channel
                .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| format!("storage_endpoint {endpoint}: TLS: {e}"))?;
        }
        let channel = channel.connect_lazy();
        // An answer carries at most a schema and row errors; requests are capped at 10 MB.
        let grpc = tonic::client::Grpc::new(channel.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        let client = BigQueryWriteClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        Ok(Self {
            client,
            grpc,
            credentials,
            timeout,
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// A request with the credentials and the routing header BigQuery asks for.
    async fn request<T>(
        &self,
        message: T,
        stream_or_parent: &str,
    ) -> Result<tonic::Request<T>, Status> {
        let mut request = tonic::Request::new(message);
        let bearer = self
            .credentials
            .authorization()
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let value = bearer
            .parse()
            .map_err(|_| Status::unauthenticated("access token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
        let key = if stream_or_parent.contains("/streams/") {
            "write_stream"
        } else {
            "parent"
        };
        if let Ok(value) = format!("{key}={stream_or_parent}").parse() {
            request
                .metadata_mut()
                .insert("x-goog-request-params", value);
        }
        Ok(request)
    }

    /// A new COMMITTED stream on `table` (`projects/P/datasets/D/tables/T`): rows are
    /// visible as each append succeeds, and offsets make resends land once.
    pub async fn create_committed_stream(&self, table: &str) -> Result<WriteStream, Status> {
        let message = CreateWriteStreamRequest {
            parent: table.to_owned(),
            write_stream: Some(WriteStream {
                r#type: StreamType::Committed as i32,
                ..WriteStream::default()
            }),
        };
        let generation = self.credentials.generation();
        let request = self.request(message, table).await?;
        let mut client = self.client.clone();
        let call = client.create_write_stream(request);
        let answer = match self.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| Status::deadline_exceeded("CreateWriteStream timed out"))?,
            None => call.await,
        };
        match answer {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => Err(self.refused(status, generation).await),
        }
    }

    /// Sends one AppendRows request and waits for its answer. `Err`: the call ended (the
    /// connection is dropped; what the request did is unknown unless the status says). A
    /// connection kept open between requests may have been closed by the server meanwhile:
    /// a request it ends without an answer goes once more on a new one.
    pub async fn append(&self, append: Append<'_>) -> Result<AppendRowsResponse, Status> {
        let Append {
            stream,
            descriptor,
            rows,
            offset,
        } = append;
        let reused = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.get_mut(stream).and_then(Vec::pop));
        let message = RowsRequest {
            header: AppendRowsRequest {
                write_stream: stream.to_owned(),
                offset,
                ..AppendRowsRequest::default()
            },
            writer_schema: None,
            rows,
        };
        let Some(connection) = reused else {
            return self.send(None, stream, descriptor, message).await;
        };
        // The rows are `Bytes`: the copy shares them.
        let again = message.clone();
        match self
            .send(Some(connection), stream, descriptor, message)
            .await
        {
            Err(status) if stale(&status) => {
                tracing::debug!(stream, %status, "kept AppendRows call had ended; sending on a new one");
                self.send(None, stream, descriptor, again).await
            }
            answer => answer,
        }
    }

    /// Sends `message` on `connection` (a new one when `None`) and reads the answer; the
    /// connection is kept for the next request if it answered.
    async fn send(
        &self,
        connection: Option<AppendConnection>,
        stream: &str,
        descriptor: &DescriptorProto,
        mut message: RowsRequest,
    ) -> Result<AppendRowsResponse, Status> {
        let mut connection = match connection {
            Some(mut connection) => {
                if connection.descriptor != *descriptor {
                    message.set_schema(descriptor);
                    connection.descriptor = descriptor.clone();
                }
                if let Err(mpsc::error::SendError(back)) = connection.requests.send(message).await {
                    // The call had ended while idle: open another.
                    message = back;
                    message.set_schema(descriptor);
                    self.open(stream, descriptor, message).await?
                } else {
                    connection
                }
            }
            None => {
                message.set_schema(descriptor);
                self.open(stream, descriptor, message).await?
            }
        };
        let next = connection.responses.message();
        let answer = match self.timeout {
            Some(t) => tokio::time::timeout(t, next)
                .await
                .map_err(|_| Status::deadline_exceeded("AppendRows answer timed out"))?,
            None => next.await,
        };
        match answer {
            Ok(Some(response)) => {
                if let Ok(mut idle) = self.idle.lock() {
                    let list = idle.entry(stream.to_owned()).or_default();
                    if list.len() < IDLE_PER_STREAM {
                        list.push(connection);
                    }
                }
                Ok(response)
            }
            Ok(None) => Err(Status::unavailable(CLOSED)),
            Err(status) => Err(self.refused(status, connection.generation).await),
        }
    }

    /// An UNAUTHENTICATED answer drops the token the call carried (sent at `generation`), so
    /// the retry after the backoff fetches a new one; any status is passed on.
    async fn refused(&self, status: Status, generation: u64) -> Status {
        if status.code() == Code::Unauthenticated {
            self.credentials.refused(generation).await;
        }
        status
    }

    /// Opens an AppendRows call whose first request is `first`.
    async fn open(
        &self,
        stream: &str,
        descriptor: &DescriptorProto,
        first: RowsRequest,
    ) -> Result<AppendConnection, Status> {
        let (requests, rx) = mpsc::channel(1);
        // The first request is queued before the call opens: servers may answer headers only
        // once it arrives.
        requests
            .send(first)
            .await
            .map_err(|_| Status::internal("request queue closed"))?;
        let generation = self.credentials.generation();
        let mut request = self.request(ReceiverStream::new(rx), stream).await?;
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "AppendRows"));
        let mut grpc = self.grpc.clone();
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
            let codec = ProstCodec::<RowsRequest, AppendRowsResponse>::default();
            grpc.streaming(request, PathAndQuery::from_static(APPEND_ROWS), codec)
                .await
        };
        let opened = match self.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| Status::deadline_exceeded("AppendRows call did not open in time"))?,
            None => call.await,
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(status) => return Err(self.refused(status, generation).await),
        };
        Ok(AppendConnection {
            requests,
            responses: opened.into_inner(),
            descriptor: descriptor.clone(),
            generation,
        })
    }

    /// Drops the idle connections of `stream` (a stream being replaced).
    pub fn forget(&self, stream: &str) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove(stream);
        }
    }
}

const CLOSED: &str = "AppendRows call closed by the server without an answer";

/// The call ended under the request without a verdict on it: the server closed it (idle too
/// long) or the connection went away.
fn stale(status: &Status) -> bool {
    status.message() == CLOSED
        || matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        )
}

/// An `AppendRowsRequest` with `proto_rows` (`ProtoData`) whose `rows` (`ProtoRows`) are
/// given as their serialized body: on the wire the same message as the generated type's.
/// Only ever encoded.
#[derive(Clone, Debug, Default)]
struct RowsRequest {
    /// Every field but `proto_rows` (its `rows` is `None`).
    header: AppendRowsRequest,
    /// `ProtoData.writer_schema`.
    writer_schema: Option<ProtoSchema>,
    /// The body of `ProtoData.rows`.
    rows: Bytes,
}

/// Field keys (number << 3 | wire type 2, length-delimited) of the fields `RowsRequest`
/// writes itself: `AppendRowsRequest.proto_rows` = 4, `ProtoData.writer_schema` = 1,
/// `ProtoData.rows` = 2.
const PROTO_ROWS_KEY: u8 = 4 << 3 | 2;
const WRITER_SCHEMA_KEY: u8 = 1 << 3 | 2;
const ROWS_KEY: u8 = 2 << 3 | 2;

impl RowsRequest {
    fn set_schema(&mut self, descriptor: &DescriptorProto) {
        self.writer_schema = Some(ProtoSchema {
            proto_descriptor: Some(descriptor.clone()),
        });
    }

    /// The length of the `ProtoData` body.
    fn data_len(&self) -> usize {
        let schema = self.writer_schema.as_ref().map_or(0, |schema| {
            let len = schema.encoded_len();
            1 + prost::length_delimiter_len(len) + len
        });
        schema + 1 + prost::length_delimiter_len(self.rows.len()) + self.rows.len()
    }
}

impl prost::Message for RowsRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.header.encode_raw(buf);
        buf.put_u8(PROTO_ROWS_KEY);
        prost::encoding::encode_varint(self.data_len() as u64, buf);
        if let Some(schema) = &self.writer_schema {
            buf.put_u8(WRITER_SCHEMA_KEY);
            prost::encoding::encode_varint(schema.encoded_len() as u64, buf);
            schema.encode_raw(buf);
        }
        buf.put_u8(ROWS_KEY);
        prost::encoding::encode_varint(self.rows.len() as u64, buf);
        buf.put_slice(&self.rows);
    }

    /// Never decoded; a decode would read into the header.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), DecodeError> {
        self.header.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let data = self.data_len();
        self.header.encoded_len() + 1 + prost::length_delimiter_len(data) + data
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The gRPC code of a status the server sent in an `AppendRowsResponse.error`.
pub fn code_of(status: &bq_storage_proto::rpc::Status) -> Code {
    Code::from_i32(status.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bq_storage_proto::v1::ProtoRows;
    use bq_storage_proto::v1::append_rows_request::{ProtoData, Rows};

    /// `RowsRequest` is on the wire the `AppendRowsRequest` the generated type writes.
    #[test]
    fn a_rows_request_is_the_generated_request_byte_for_byte() {
        let rows = [b"first".to_vec(), Vec::new(), vec![3; 300]];
        let mut body = Vec::new();
        for row in &rows {
            body.push(1 << 3 | 2);
            prost::encoding::encode_varint(row.len() as u64, &mut body);
            body.extend_from_slice(row);
        }
        let descriptor = DescriptorProto {
            name: Some("row".into()),
            ..DescriptorProto::default()
        };
        for (offset, schema) in [(None, None), (Some(42), Some(&descriptor))] {
            let mut ours = RowsRequest {
                header: AppendRowsRequest {
                    write_stream: "projects/p/datasets/d/tables/t/streams/_default".into(),
                    offset,
                    ..AppendRowsRequest::default()
                },
                writer_schema: None,
                rows: Bytes::from(body.clone()),
            };
            if let Some(descriptor) = schema {
                ours.set_schema(descriptor);
            }
            let generated = AppendRowsRequest {
                rows: Some(Rows::ProtoRows(ProtoData {
                    writer_schema: ours.writer_schema.clone(),
                    rows: Some(ProtoRows {
                        serialized_rows: rows.iter().map(|r| Bytes::from(r.clone())).collect(),
                    }),
                })),
                ..ours.header.clone()
            };
            assert_eq!(ours.encoded_len(), generated.encoded_len());
            assert_eq!(ours.encode_to_vec(), generated.encode_to_vec());
        }
    }
}
