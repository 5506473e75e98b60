//! BigQuery output: table schemas and record → insertAll row conversion (pure, no I/O yet).
//! Must not know about sockets, buffers or HTTP; requests, retries and the client come later.

pub mod rows;
pub mod schema;
