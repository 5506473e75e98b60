// Generates the BigQueryWrite *server* stub (the crate we take the messages and the client from
// ships clients only). The service is described here in Rust, not in a `.proto`: its six methods,
// their route names and message types are facts from googleapis'
// google/cloud/bigquery/storage/v1/storage.proto; the messages come from the dependency.

use tonic_build::manual::{Builder, Method, Service};

fn method(
    name: &str,
    route: &str,
    input: &str,
    output: &str,
) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::v1::{input}"))
        .output_type(format!("crate::v1::{output}"))
        .codec_path("tonic_prost::ProstCodec")
}

fn main() {
    let service = Service::builder()
        .name("BigQueryWrite")
        .package("google.cloud.bigquery.storage.v1")
        .comment("BigQuery Write API: https://cloud.google.com/bigquery/docs/write-api")
        .method(
            method(
                "create_write_stream",
                "CreateWriteStream",
                "CreateWriteStreamRequest",
                "WriteStream",
            )
            .build(),
        )
        .method(
            method(
                "append_rows",
                "AppendRows",
                "AppendRowsRequest",
                "AppendRowsResponse",
            )
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "get_write_stream",
                "GetWriteStream",
                "GetWriteStreamRequest",
                "WriteStream",
            )
            .build(),
        )
        .method(
            method(
                "finalize_write_stream",
                "FinalizeWriteStream",
                "FinalizeWriteStreamRequest",
                "FinalizeWriteStreamResponse",
            )
            .build(),
        )
        .method(
            method(
                "batch_commit_write_streams",
                "BatchCommitWriteStreams",
                "BatchCommitWriteStreamsRequest",
                "BatchCommitWriteStreamsResponse",
            )
            .build(),
        )
        .method(
            method(
                "flush_rows",
                "FlushRows",
                "FlushRowsRequest",
                "FlushRowsResponse",
            )
            .build(),
        )
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
