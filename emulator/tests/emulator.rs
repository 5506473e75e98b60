//! Black-box tests: each starts the real `bigquery-emulator` binary with `--port 0`, reads the
//! printed port and talks HTTP to it. Expected bodies are BigQuery's documented (or observed and
//! cited) answers, not whatever the code returns.

mod common;

#[path = "emulator/admin_faults.rs"]
mod admin_faults;
#[path = "emulator/datasets_tables.rs"]
mod datasets_tables;
#[path = "emulator/insert_all.rs"]
mod insert_all;
#[path = "emulator/lifecycle.rs"]
mod lifecycle;
#[path = "emulator/load_jobs.rs"]
mod load_jobs;
#[path = "emulator/load_jobs_faults.rs"]
mod load_jobs_faults;
#[path = "emulator/python_client.rs"]
mod python_client;
#[path = "emulator/query_params.rs"]
mod query_params;
#[path = "emulator/schema_update.rs"]
mod schema_update;
#[path = "emulator/storage_write.rs"]
mod storage_write;
#[path = "emulator/storage_write_python.rs"]
mod storage_write_python;
#[path = "emulator/tabledata_list.rs"]
mod tabledata_list;
