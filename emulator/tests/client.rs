//! gcp-bigquery-client 0.28 pointed at the emulator: create a dataset and a table, insert rows
//! (the client gzips insertAll bodies) and read them back, as bqforward will.

mod common;

use std::sync::Arc;

use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::tabledata::ListQueryParameters;
use serde_json::json;

use common::{Emulator, PROJECT};

/// A fixed token: the emulator accepts any Authorization header.
#[derive(Clone)]
struct FixedToken;

#[async_trait::async_trait]
impl Authenticator for FixedToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator-token".to_string())
    }
}

#[test]
fn gcp_bigquery_client_creates_inserts_and_reads_back() {
    let emu = Emulator::start(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(exercise(emu.base_url()));
    // The bad row of the last request was not stored.
    assert_eq!(emu.count_in("logs", "events"), 2);
}

async fn exercise(base_url: String) {
    let client = ClientBuilder::new()
        .with_v2_base_url(base_url)
        .build_from_authenticator(Arc::new(FixedToken))
        .await
        .expect("client");

    let dataset = client
        .dataset()
        .create(Dataset::new(PROJECT, "logs"))
        .await
        .expect("dataset.create");
    assert_eq!(dataset.dataset_reference.dataset_id, "logs");

    let schema = TableSchema::new(vec![
        TableFieldSchema::string("message"),
        TableFieldSchema::integer("level"),
    ]);
    client
        .table()
        .create(Table::new(PROJECT, "logs", "events", schema))
        .await
        .expect("table.create");

    let mut request = TableDataInsertAllRequest::new();
    request
        .add_row(
            Some("id-1".to_string()),
            json!({"message": "hello", "level": 1}),
        )
        .expect("row");
    request
        .add_row(
            Some("id-2".to_string()),
            json!({"message": "world", "level": 2}),
        )
        .expect("row");
    let answer = client
        .tabledata()
        .insert_all(PROJECT, "logs", "events", request)
        .await
        .expect("insertAll");
    assert!(answer.insert_errors.is_none(), "{answer:?}");

    let table = client
        .table()
        .get(PROJECT, "logs", "events", None)
        .await
        .expect("table.get");
    assert_eq!(table.num_rows.as_deref(), Some("2"));

    let page = client
        .tabledata()
        .list(
            PROJECT,
            "logs",
            "events",
            ListQueryParameters {
                start_index: None,
                max_results: Some(10),
                page_token: None,
                selected_fields: None,
                format_options: None,
            },
        )
        .await
        .expect("tabledata.list");
    assert_eq!(page.total_rows.as_deref(), Some("2"));
    let values: Vec<Vec<serde_json::Value>> = page
        .rows
        .unwrap_or_default()
        .into_iter()
        .map(|row| {
            row.columns
                .unwrap_or_default()
                .into_iter()
                .map(|cell| cell.value.unwrap_or_default())
                .collect()
        })
        .collect();
    assert_eq!(
        values,
        vec![
            vec![json!("hello"), json!("1")],
            vec![json!("world"), json!("2")]
        ]
    );

    // A bad row comes back as insertErrors through the client's own types.
    let mut bad = TableDataInsertAllRequest::new();
    bad.add_row(None, json!({"nope": 1})).expect("row");
    let answer = client
        .tabledata()
        .insert_all(PROJECT, "logs", "events", bad)
        .await
        .expect("insertAll");
    let errors = answer.insert_errors.expect("insertErrors");
    assert_eq!(errors.len(), 1);
}
