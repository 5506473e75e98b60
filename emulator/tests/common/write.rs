//! A blocking Storage Write client over the emulator's gRPC port (tonic, through bq-storage-proto)
//! and helpers to describe and encode rows the way a client library does: a DescriptorProto in a
//! package of its own (so nested type names are package-qualified) and rows encoded against it.
#![allow(dead_code)]

use bq_storage_proto::prost::Message;
use bq_storage_proto::tonic::transport::Channel;
use bq_storage_proto::tonic::{Code, Status};
use bq_storage_proto::v1::append_rows_request::{ProtoData, Rows};
use bq_storage_proto::v1::append_rows_response::Response;
use bq_storage_proto::v1::big_query_write_client::BigQueryWriteClient;
use bq_storage_proto::v1::storage_error::StorageErrorCode;
use bq_storage_proto::v1::write_stream::Type;
use bq_storage_proto::v1::{
    AppendRowsRequest, AppendRowsResponse, BatchCommitWriteStreamsRequest,
    BatchCommitWriteStreamsResponse, CreateWriteStreamRequest, FinalizeWriteStreamRequest,
    FlushRowsRequest, GetWriteStreamRequest, ProtoRows, ProtoSchema, StorageError, WriteStream,
    WriteStreamView,
};
use bq_storage_proto::{prost_types, rpc};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value as Proto};
use prost_types::field_descriptor_proto::{Label, Type as FieldType};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use serde_json::Value;

use super::{Emulator, PROJECT};

/// `projects/proj/datasets/d/tables/{table}`
pub fn table_path(table: &str) -> String {
    format!("projects/{PROJECT}/datasets/d/tables/{table}")
}

/// `projects/proj/datasets/d/tables/{table}/streams/_default`
pub fn default_stream(table: &str) -> String {
    format!("{}/streams/_default", table_path(table))
}

pub struct WriteClient {
    rt: tokio::runtime::Runtime,
    client: BigQueryWriteClient<Channel>,
}

/// What one AppendRows call got back: every response in order, then how the call ended.
#[derive(Debug)]
pub struct Call {
    pub responses: Vec<AppendRowsResponse>,
    pub end: Result<(), Status>,
}

impl WriteClient {
    pub fn connect(emu: &Emulator) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = emu.grpc_url();
        let client = rt.block_on(async {
            let channel = bq_storage_proto::tonic::transport::Endpoint::from_shared(url)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the emulator's gRPC port");
            BigQueryWriteClient::new(channel).max_decoding_message_size(64 << 20)
        });
        Self { rt, client }
    }

    pub fn create(&self, table: &str, kind: Type) -> Result<WriteStream, Status> {
        let mut client = self.client.clone();
        let request = CreateWriteStreamRequest {
            parent: table_path(table),
            write_stream: Some(WriteStream {
                r#type: kind as i32,
                ..WriteStream::default()
            }),
        };
        self.rt
            .block_on(client.create_write_stream(request))
            .map(|r| r.into_inner())
    }

    pub fn get(&self, name: &str, view: WriteStreamView) -> Result<WriteStream, Status> {
        let mut client = self.client.clone();
        let request = GetWriteStreamRequest {
            name: name.to_string(),
            view: view as i32,
        };
        self.rt
            .block_on(client.get_write_stream(request))
            .map(|r| r.into_inner())
    }

    pub fn finalize(&self, name: &str) -> Result<i64, Status> {
        let mut client = self.client.clone();
        let request = FinalizeWriteStreamRequest {
            name: name.to_string(),
        };
        self.rt
            .block_on(client.finalize_write_stream(request))
            .map(|r| r.into_inner().row_count)
    }

    pub fn commit(
        &self,
        table: &str,
        streams: &[&str],
    ) -> Result<BatchCommitWriteStreamsResponse, Status> {
        let mut client = self.client.clone();
        let request = BatchCommitWriteStreamsRequest {
            parent: table_path(table),
            write_streams: streams.iter().map(|s| s.to_string()).collect(),
        };
        self.rt
            .block_on(client.batch_commit_write_streams(request))
            .map(|r| r.into_inner())
    }

    pub fn flush(&self, name: &str, offset: Option<i64>) -> Result<i64, Status> {
        let mut client = self.client.clone();
        let request = FlushRowsRequest {
            write_stream: name.to_string(),
            offset,
        };
        self.rt
            .block_on(client.flush_rows(request))
            .map(|r| r.into_inner().offset)
    }

    /// An AppendRows call to send requests into one by one.
    pub fn session(&self) -> Session<'_> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = self.client.clone();
        let inbound = self
            .rt
            .block_on(client.append_rows(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .expect("AppendRows call")
            .into_inner();
        Session {
            rt: &self.rt,
            tx,
            inbound,
        }
    }

    /// One AppendRows call: sends every request, half-closes, and reads until the call ends.
    pub fn append(&self, requests: Vec<AppendRowsRequest>) -> Call {
        let mut client = self.client.clone();
        self.rt.block_on(async move {
            let mut responses = Vec::new();
            let call = client.append_rows(tokio_stream::iter(requests)).await;
            let mut inbound = match call {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    return Call {
                        responses,
                        end: Err(status),
                    };
                }
            };
            loop {
                match inbound.message().await {
                    Ok(Some(r)) => responses.push(r),
                    Ok(None) => {
                        return Call {
                            responses,
                            end: Ok(()),
                        };
                    }
                    Err(status) => {
                        return Call {
                            responses,
                            end: Err(status),
                        };
                    }
                }
            }
        })
    }
}

/// One AppendRows call kept open, to send a request and read its response at a time.
pub struct Session<'a> {
    rt: &'a tokio::runtime::Runtime,
    tx: tokio::sync::mpsc::Sender<AppendRowsRequest>,
    inbound: bq_storage_proto::tonic::Streaming<AppendRowsResponse>,
}

impl Session<'_> {
    /// Sends one request and waits for its response (or the status that ended the call).
    pub fn send(&mut self, request: AppendRowsRequest) -> Result<AppendRowsResponse, Status> {
        self.rt.block_on(async {
            self.tx
                .send(request)
                .await
                .map_err(|_| Status::unknown("the call has ended"))?;
            match self.inbound.message().await {
                Ok(Some(response)) => Ok(response),
                Ok(None) => Err(Status::unknown("the call ended without a response")),
                Err(status) => Err(status),
            }
        })
    }
}

/// A proto field of a scalar type.
pub fn field(name: &str, number: i32, ty: FieldType, label: Label) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_string()),
        number: Some(number),
        r#type: Some(ty as i32),
        label: Some(label as i32),
        ..FieldDescriptorProto::default()
    }
}

/// A field of a message or enum type, by its (package-qualified) name.
pub fn typed(
    name: &str,
    number: i32,
    ty: FieldType,
    type_name: &str,
    label: Label,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        type_name: Some(type_name.to_string()),
        ..field(name, number, ty, label)
    }
}

pub fn optional(name: &str, number: i32, ty: FieldType) -> FieldDescriptorProto {
    field(name, number, ty, Label::Optional)
}

pub fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.to_string()),
        field: fields,
        ..DescriptorProto::default()
    }
}

/// The descriptor as a client builds it: in package `test`, well-known types importable.
pub fn describe(descriptor: &DescriptorProto) -> MessageDescriptor {
    let file = FileDescriptorProto {
        name: Some("test_row.proto".into()),
        package: Some("test".into()),
        syntax: Some("proto2".into()),
        dependency: vec![
            "google/protobuf/timestamp.proto".into(),
            "google/protobuf/wrappers.proto".into(),
        ],
        message_type: vec![descriptor.clone()],
        ..FileDescriptorProto::default()
    };
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file)
        .expect("descriptor builds");
    pool.get_message_by_name(&format!("test.{}", descriptor.name()))
        .expect("message")
}

/// Encodes a row given as JSON: numbers and strings take the field's proto type, arrays are
/// repeated fields (or the bytes of a `bytes` field), objects nested messages.
pub fn encode(desc: &MessageDescriptor, row: &Value) -> Vec<u8> {
    to_message(desc, row).encode_to_vec()
}

fn to_message(desc: &MessageDescriptor, row: &Value) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    for (name, value) in row.as_object().expect("row is an object") {
        let field = desc
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("no field {name}"));
        let proto = if field.is_list() {
            let items = value.as_array().expect("array for a repeated field");
            Proto::List(items.iter().map(|v| scalar(&field.kind(), v)).collect())
        } else {
            scalar(&field.kind(), value)
        };
        m.set_field(&field, proto);
    }
    m
}

fn scalar(kind: &Kind, v: &Value) -> Proto {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Proto::I32(v.as_i64().expect("int") as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Proto::I64(v.as_i64().expect("int")),
        Kind::Uint32 | Kind::Fixed32 => Proto::U32(v.as_u64().expect("uint") as u32),
        Kind::Uint64 | Kind::Fixed64 => Proto::U64(v.as_u64().expect("uint")),
        Kind::Double => Proto::F64(v.as_f64().expect("number")),
        Kind::Float => Proto::F32(v.as_f64().expect("number") as f32),
        Kind::Bool => Proto::Bool(v.as_bool().expect("bool")),
        Kind::String => Proto::String(v.as_str().expect("string").to_string()),
        Kind::Bytes => Proto::Bytes(
            match v {
                Value::Array(bytes) => bytes
                    .iter()
                    .map(|b| b.as_u64().expect("byte") as u8)
                    .collect(),
                other => other.as_str().expect("bytes as text").as_bytes().to_vec(),
            }
            .into(),
        ),
        Kind::Enum(_) => Proto::EnumNumber(v.as_i64().expect("enum number") as i32),
        Kind::Message(m) => Proto::Message(to_message(m, v)),
    }
}

/// An AppendRows request: stream (or "" to keep the connection's), optional writer schema, rows.
pub fn request(
    stream: &str,
    schema: Option<&DescriptorProto>,
    desc: &MessageDescriptor,
    rows: &[Value],
    offset: Option<i64>,
) -> AppendRowsRequest {
    AppendRowsRequest {
        write_stream: stream.to_string(),
        offset,
        rows: Some(Rows::ProtoRows(ProtoData {
            writer_schema: schema.map(|d| ProtoSchema {
                proto_descriptor: Some(d.clone()),
            }),
            rows: Some(ProtoRows {
                serialized_rows: rows.iter().map(|r| encode(desc, r).into()).collect(),
            }),
        })),
        ..AppendRowsRequest::default()
    }
}

/// The offset of a successful response (`Some(None)` for a success without one), or `None` for
/// an error response.
pub fn offset_of(response: &AppendRowsResponse) -> Option<Option<i64>> {
    match &response.response {
        Some(Response::AppendResult(r)) => Some(r.offset),
        _ => None,
    }
}

/// The error of an error response.
pub fn error_of(response: &AppendRowsResponse) -> &rpc::Status {
    match &response.response {
        Some(Response::Error(e)) => e,
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// The StorageError codes attached to a status's details.
pub fn storage_codes(details: &[prost_types::Any]) -> Vec<StorageErrorCode> {
    details
        .iter()
        .filter(|d| {
            d.type_url
                .ends_with("google.cloud.bigquery.storage.v1.StorageError")
        })
        .filter_map(|d| StorageError::decode(d.value.as_slice()).ok())
        .filter_map(|e| StorageErrorCode::try_from(e.code).ok())
        .collect()
}

/// The StorageError codes in an RPC status's `grpc-status-details-bin`.
pub fn status_storage_codes(status: &Status) -> Vec<StorageErrorCode> {
    rpc::Status::decode(status.details())
        .map(|s| storage_codes(&s.details))
        .unwrap_or_default()
}

pub fn code_of(status: &rpc::Status) -> Code {
    Code::from_i32(status.code)
}
