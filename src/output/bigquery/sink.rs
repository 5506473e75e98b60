//! Delivering one buffered chunk to one table: build requests, send, read the answers row
//! by row, and sort every row into inserted, to resend, or dead letter. Every row ends in
//! BigQuery or in the dead letters with its reason (or, with no `<secondary>`, in a log line
//! and a counter); nothing is dropped silently.

use super::TableKey;
use super::classify::{RowVerdict, Verdict, classify, classify_row};
use super::client::{AuthMethod, BigQueryClient, TableRef};
use super::request::{Rejected, Request, RequestBuilder, RequestOptions};
use super::schema::Schema;
use crate::buffer::{Chunk, Outcome, Sink};
use crate::codec::msgpack;
use crate::event::Event;
use crate::event::{Batch, BoxFuture};
use crate::format::Inject;
use crate::internal_events::bigquery as events;
use crate::metrics::{RequestOutcome, SinkDetail};
use crate::output::Output;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long after creating a table a 404 is taken for BigQuery catching up, not for absence.
const CREATED_GRACE: Duration = Duration::from_secs(300);

pub enum SchemaSource {
    None,
    Static(Arc<Schema>),
    /// `schema_path` with placeholders: each rendered path read once (as the plugin caches
    /// it per path).
    Files(Mutex<HashMap<String, Arc<Schema>>>),
    /// tables.get of `fetch_schema_table` (rendered) or the destination, cached per table
    /// for `expire`.
    Fetch {
        expire: Duration,
        cache: tokio::sync::Mutex<HashMap<String, (Arc<Schema>, Instant)>>,
    },
}

/// What `auto_create_table` creates besides the schema: partitioning and clustering.
pub struct AutoCreate {
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub struct Connection {
    pub auth: AuthMethod,
    pub endpoint: Option<String>,
    pub request_timeout: Option<Duration>,
    pub open_timeout: Duration,
}

pub struct BigQuerySink {
    pub id: String,
    pub connection: Connection,
    pub client: OnceCell<BigQueryClient>,
    pub schema: SchemaSource,
    pub inject: Inject,
    pub options: RequestOptions,
    pub auto_create: Option<AutoCreate>,
    /// `auto_create_dataset`: create a missing dataset (in `location`, when set).
    pub auto_create_dataset: bool,
    pub location: Option<String>,
    pub created: Mutex<HashMap<String, Instant>>,
    /// One table or dataset creation at a time, so concurrent chunks for a missing table
    /// create it once and the others wait for it.
    pub creating: tokio::sync::Mutex<()>,
    pub secondary: Option<Arc<dyn Output>>,
    /// What metrics read: rows per table and reason, requests, tables, missing datasets.
    pub detail: Arc<SinkDetail>,
}

/// Rows for the dead letters: (entry index, reason, location, message).
type Dead = Vec<Rejected>;

/// Why a delivery left rows for later, and how soon to try again.
struct Waiting {
    error: String,
    /// `None`: the buffer's backoff.
    after: Option<Duration>,
    /// An expected wait (a table being created), logged at debug, not as a failure.
    quiet: bool,
}

impl Waiting {
    fn backoff(error: String) -> Self {
        Self {
            error,
            after: None,
            quiet: false,
        }
    }
}

impl BigQuerySink {
    async fn client(&self) -> Result<&BigQueryClient, String> {
        let c = &self.connection;
        self.client
            .get_or_try_init(|| {
                BigQueryClient::connect(
                    &c.auth,
                    c.endpoint.as_deref(),
                    c.request_timeout,
                    c.open_timeout,
                )
            })
            .await
    }

    async fn schema_for(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
    ) -> Result<Option<Arc<Schema>>, String> {
        match &self.schema {
            SchemaSource::None => Ok(None),
            SchemaSource::Static(schema) => Ok(Some(Arc::clone(schema))),
            SchemaSource::Files(files) => {
                let Some(path) = &key.schema_path else {
                    return Ok(None);
                };
                if let Some(schema) = files.lock().ok().and_then(|f| f.get(path).cloned()) {
                    return Ok(Some(schema));
                }
                let path = path.clone();
                let schema = tokio::task::spawn_blocking(move || Schema::from_file(&path))
                    .await
                    .map_err(|e| e.to_string())??;
                let schema = Arc::new(schema);
                if let (Ok(mut files), Some(path)) = (files.lock(), &key.schema_path) {
                    files.insert(path.clone(), Arc::clone(&schema));
                }
                Ok(Some(schema))
            }
            SchemaSource::Fetch { expire, cache } => {
                let name = key
                    .schema_table
                    .clone()
                    .unwrap_or_else(|| key.base_table().to_owned());
                let mut cache = cache.lock().await;
                if let Some((schema, _)) = cache.get(&name).filter(|(_, at)| at.elapsed() < *expire)
                {
                    return Ok(Some(Arc::clone(schema)));
                }
                let table_ref = TableRef {
                    project: &key.project,
                    dataset: &key.dataset,
                    table: &name,
                };
                let fetched = client
                    .table_schema(&table_ref)
                    .await
                    .map_err(|f| f.to_string())
                    .and_then(|json| Schema::from_json(&json));
                match (fetched, cache.get(&name)) {
                    (Ok(schema), _) => {
                        let schema = Arc::new(schema);
                        cache.insert(name, (Arc::clone(&schema), Instant::now()));
                        Ok(Some(schema))
                    }
                    // As the plugin: keep the previous schema when a refresh fails.
                    (Err(err), Some((old, _))) => {
                        tracing::warn!(output = %self.id, table = %name, error = %err, "schema refresh failed; using the cached schema");
                        Ok(Some(Arc::clone(old)))
                    }
                    (Err(err), None) => Err(format!("fetch_schema for {name}: {err}")),
                }
            }
        }
    }

    async fn deliver(&self, chunk: &Chunk<TableKey>) -> Outcome {
        let key = &*chunk.key;
        let table_name = key.to_string();
        let retried = |reason: &str, n: usize| {
            events::RowsRetried {
                table: &table_name,
                reason,
                rows: n as u64,
            }
            .emit(&self.detail);
        };
        if let Some(why) = key.invalid() {
            // A name rendered from a tag or record that BigQuery cannot take: only these rows
            // pay for it.
            let dead = reject(&chunk.pending_indices(), "invalid_destination", &why);
            return self.settle_dead(chunk, dead, Vec::new(), None, None).await;
        }
        let client = match self.client().await {
            Ok(client) => client,
            Err(error) => {
                retried("no_client", chunk.pending_indices().len());
                return retry_all(error, None);
            }
        };
        let schema = match self.schema_for(client, key).await {
            Ok(schema) => schema,
            Err(error) => {
                retried("no_schema", chunk.pending_indices().len());
                tracing::error!(output = %self.id, table = %key, %error, "no schema for the rows; they wait");
                return retry_all(error, None);
            }
        };
        let chunk_hex = chunk.id.hex();
        let mut inject = self.inject.clone();
        let mut builder = RequestBuilder {
            chunk_hex: &chunk_hex,
            entries: &chunk.entries,
            schema: schema.as_deref(),
            inject: &mut inject,
            options: &self.options,
            template_suffix: key.template_suffix.as_deref(),
        };
        let (requests, mut dead) = builder.build(&chunk.pending_indices());
        let mut work: VecDeque<Request> = requests.into();
        let mut keep: Vec<u32> = Vec::new();
        let mut error: Option<Waiting> = None;
        let table = TableRef {
            project: &key.project,
            dataset: &key.dataset,
            table: &key.table,
        };
        while let Some(request) = work.pop_front() {
            if error.is_some() {
                // Something transient failed: keep the rest for the retry, don't hammer.
                keep.extend(&request.indices);
                retried("deferred", request.indices.len());
                continue;
            }
            let indices = request.indices.clone();
            let started = Instant::now();
            let answer = client.insert_all(&table, request.body).await;
            let elapsed = started.elapsed();
            tracing::debug!(output = %self.id, table = %key, rows = indices.len(),
                bytes = request.raw_len, elapsed_ms = started.elapsed().as_millis() as u64, ok = answer.is_ok(), "insertAll");
            match answer {
                Ok(response) => {
                    events::RequestFinished {
                        outcome: RequestOutcome::Ok,
                        elapsed,
                    }
                    .emit(&self.detail);
                    self.dataset_found(key);
                    self.sort_rows(
                        &table_name,
                        &indices,
                        response.insert_errors.unwrap_or_default(),
                        &mut keep,
                        &mut dead,
                    );
                    if keep.iter().any(|i| indices.contains(i)) {
                        error.get_or_insert(Waiting {
                            error: "rows stopped by other rows' errors".into(),
                            after: Some(Duration::ZERO),
                            quiet: false,
                        });
                    }
                }
                Err(failure) => {
                    let verdict = classify(&failure);
                    events::RequestFinished {
                        outcome: request_outcome(verdict),
                        elapsed,
                    }
                    .emit(&self.detail);
                    let e = failure.to_string();
                    match verdict {
                        Verdict::Retry | Verdict::Reauthenticate => {
                            keep.extend(&indices);
                            retried("transient", indices.len());
                            error = Some(Waiting::backoff(e));
                        }
                        Verdict::Split if indices.len() > 1 => {
                            let (first, second) = indices.split_at(indices.len() / 2);
                            let (mut halves, rejected) = builder.build(first);
                            let (more, rejected2) = builder.build(second);
                            halves.extend(more);
                            dead.extend(rejected.into_iter().chain(rejected2));
                            for half in halves.into_iter().rev() {
                                work.push_front(half);
                            }
                            tracing::warn!(output = %self.id, table = %key, error = %e, "request too large; split in two");
                        }
                        Verdict::Split => dead.extend(reject(&indices, "request_too_large", &e)),
                        Verdict::NotFound => {
                            match self.on_not_found(client, key, schema.as_deref(), &e).await {
                                Some(wait) => {
                                    keep.extend(&indices);
                                    retried("not_found", indices.len());
                                    error = Some(wait);
                                }
                                None => dead.extend(reject(&indices, "not_found", &e)),
                            }
                        }
                        Verdict::DatasetNotFound => {
                            keep.extend(&indices);
                            retried("dataset_not_found", indices.len());
                            error = Some(self.on_dataset_missing(client, key, e).await);
                        }
                        Verdict::DeadLetter => dead.extend(reject(&indices, "rejected", &e)),
                    }
                }
            }
        }
        self.settle_dead(chunk, dead, keep, error, Some(&table_name))
            .await
    }

    /// Writes the dead letters, then says what is left to retry. Rows the secondary
    /// refused are kept too, so nothing is lost.
    async fn settle_dead(
        &self,
        chunk: &Chunk<TableKey>,
        dead: Dead,
        mut keep: Vec<u32>,
        mut error: Option<Waiting>,
        table: Option<&str>,
    ) -> Outcome {
        let table = table.map_or_else(|| chunk.key.to_string(), str::to_owned);
        if !dead.is_empty() && !self.dead_letter(chunk, &dead, &table).await {
            keep.extend(dead.iter().map(|d| d.index));
            events::RowsRetried {
                table: &table,
                reason: "secondary_refused",
                rows: dead.len() as u64,
            }
            .emit(&self.detail);
            error.get_or_insert_with(|| {
                Waiting::backoff("secondary output did not accept dead letters".into())
            });
        }
        if keep.is_empty() {
            return Outcome::Done;
        }
        keep.sort_unstable();
        keep.dedup();
        let waiting = error.unwrap_or_else(|| Waiting::backoff(String::new()));
        Outcome::Retry {
            keep: Some(keep),
            error: waiting.error,
            after: waiting.after,
            quiet: waiting.quiet,
        }
    }

    /// Sorts a 200 answer's rows: unlisted rows were inserted.
    fn sort_rows(
        &self,
        table: &str,
        indices: &[u32],
        errors: Vec<gcp_bigquery_client::model::table_data_insert_all_response_insert_errors::TableDataInsertAllResponseInsertErrors>,
        keep: &mut Vec<u32>,
        dead: &mut Dead,
    ) {
        let mut failed = 0u64;
        for row in errors {
            let Some(&index) = row
                .index
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| indices.get(i))
            else {
                continue;
            };
            failed += 1;
            let protos = row.errors.unwrap_or_default();
            let reasons = protos.iter().map(|p| p.reason.as_deref().unwrap_or(""));
            match classify_row(reasons) {
                RowVerdict::Resend => {
                    keep.push(index);
                    let reason = protos
                        .iter()
                        .find_map(|p| p.reason.as_deref().filter(|r| *r != "stopped"))
                        .unwrap_or("stopped");
                    events::RowsRetried {
                        table,
                        reason,
                        rows: 1,
                    }
                    .emit(&self.detail);
                }
                RowVerdict::DeadLetter => {
                    let first = protos
                        .iter()
                        .find(|p| p.reason.as_deref() != Some("stopped"))
                        .or(protos.first());
                    dead.push(Rejected {
                        index,
                        reason: first.and_then(|p| p.reason.clone()).unwrap_or_default(),
                        location: first.and_then(|p| p.location.clone()).unwrap_or_default(),
                        message: first.and_then(|p| p.message.clone()).unwrap_or_default(),
                    });
                }
            }
        }
        events::RowsInserted {
            table,
            rows: (indices.len() as u64).saturating_sub(failed),
        }
        .emit(&self.detail);
    }

    /// A missing table: create it if configured (then wait), or wait briefly if it was just
    /// created. `None`: dead-letter the rows. Creating a table is an expected step, not a
    /// failure: its waits are quiet, and "created table" is logged once.
    async fn on_not_found(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        schema: Option<&Schema>,
        error: &str,
    ) -> Option<Waiting> {
        let name = key.to_string();
        let wait = |secs| Waiting {
            error: format!("waiting for table {name} (created by auto_create_table)"),
            after: Some(Duration::from_secs(secs)),
            quiet: true,
        };
        if self.recently_created(&name) {
            return Some(wait(2));
        }
        let auto = self.auto_create.as_ref()?;
        let Some(schema) = schema else {
            return Some(Waiting::backoff(format!(
                "{error}; auto_create_table has no schema for {name}"
            )));
        };
        let _creating = self.creating.lock().await;
        if self.recently_created(&name) {
            return Some(wait(1));
        }
        let mut resource = auto.extra.clone();
        resource.insert(
            "tableReference".into(),
            serde_json::json!({"projectId": key.project, "datasetId": key.dataset, "tableId": key.base_table()}),
        );
        resource.insert("schema".into(), schema.to_json());
        match client
            .create_table(serde_json::Value::Object(resource))
            .await
        {
            Ok(()) => {
                events::TableCreated {
                    output: &self.id,
                    table: &name,
                }
                .emit(&self.detail);
                if let Ok(mut created) = self.created.lock() {
                    created.insert(name.clone(), Instant::now());
                }
                Some(wait(1))
            }
            Err(failure) => {
                tracing::warn!(output = %self.id, table = %name, error = %failure, "could not create table; will retry");
                Some(Waiting {
                    error: format!("creating table {name}: {failure}"),
                    after: Some(Duration::from_secs(5)),
                    quiet: false,
                })
            }
        }
    }

    fn recently_created(&self, name: &str) -> bool {
        self.created
            .lock()
            .ok()
            .and_then(|c| c.get(name).copied())
            .is_some_and(|at| at.elapsed() < CREATED_GRACE)
    }

    /// A missing dataset is a deployment problem, not the rows': they wait (with the
    /// buffer's backoff) until it exists, and `/readyz` reports it. With
    /// `auto_create_dataset`, it is created.
    async fn on_dataset_missing(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        error: String,
    ) -> Waiting {
        let dataset = format!("{}.{}", key.project, key.dataset);
        if self.auto_create_dataset {
            let _creating = self.creating.lock().await;
            let name = format!("dataset {dataset}");
            if self.recently_created(&name) {
                return Waiting {
                    error: format!("waiting for {name} (created by auto_create_dataset)"),
                    after: Some(Duration::from_secs(1)),
                    quiet: true,
                };
            }
            match client
                .create_dataset(&key.project, &key.dataset, self.location.as_deref())
                .await
            {
                Ok(()) => {
                    tracing::info!(output = %self.id, %dataset, "created dataset (auto_create_dataset)");
                    if let Ok(mut created) = self.created.lock() {
                        created.insert(name, Instant::now());
                    }
                    return Waiting {
                        error: format!("dataset {dataset} created"),
                        after: Some(Duration::ZERO),
                        quiet: true,
                    };
                }
                Err(failure) => {
                    tracing::error!(output = %self.id, %dataset, error = %failure, "could not create dataset; rows wait");
                }
            }
        }
        events::DatasetMissing {
            output: &self.id,
            dataset: &dataset,
            error: &error,
        }
        .emit(&self.detail);
        Waiting::backoff(format!("dataset {dataset} not found: {error}"))
    }

    fn dataset_found(&self, key: &TableKey) {
        if self.detail.missing_datasets().is_empty() {
            return;
        }
        events::DatasetFound {
            output: &self.id,
            dataset: &format!("{}.{}", key.project, key.dataset),
        }
        .emit(&self.detail);
    }

    /// Writes dead letters to `<secondary>`; without one, logs and counts them. `false` if
    /// the secondary refused them.
    async fn dead_letter(&self, chunk: &Chunk<TableKey>, dead: &[Rejected], table: &str) -> bool {
        let reasons = reason_counts(dead);
        let Some(secondary) = &self.secondary else {
            events::RowsDropped {
                output: &self.id,
                table,
                reasons: &reasons,
                first: dead.first().map_or("", |d| d.message.as_str()),
                cause: "rejected and no <secondary> configured",
            }
            .emit(&self.detail);
            return true;
        };
        let mut batches: Vec<Batch> = Vec::new();
        for d in dead {
            let Some(entry) = chunk.entries.get(d.index as usize) else {
                continue;
            };
            let record = dead_letter_record(table, d, entry);
            let event = Event {
                time: entry.event.time,
                record,
            };
            match batches.last_mut() {
                Some(batch) if batch.tag == entry.tag => batch.events.push(event),
                _ => batches.push(Batch {
                    tag: Arc::clone(&entry.tag),
                    events: vec![event],
                }),
            }
        }
        for batch in batches {
            if let Err(err) = secondary.emit(batch).await {
                tracing::error!(output = %self.id, error = %err, "secondary output refused dead letters");
                return false;
            }
        }
        events::RowsDeadLettered {
            output: &self.id,
            table,
            secondary: secondary.id(),
            reasons: &reasons,
        }
        .emit(&self.detail);
        true
    }
}

/// How many of `dead` have each reason, in the order the reasons first appear.
fn reason_counts(dead: &[Rejected]) -> Vec<(&str, u64)> {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for d in dead {
        match counts.iter_mut().find(|(r, _)| *r == d.reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((&d.reason, 1)),
        }
    }
    counts
}

/// `{"table","reason","location","message","tag","time","record"}` as a msgpack map.
fn dead_letter_record(table: &str, dead: &Rejected, entry: &crate::buffer::Entry) -> bytes::Bytes {
    let mut out = Vec::with_capacity(entry.event.record.len() + 256);
    msgpack::write_map_len(&mut out, 7);
    for (key, value) in [
        ("table", table),
        ("reason", dead.reason.as_str()),
        ("location", dead.location.as_str()),
        ("message", dead.message.as_str()),
        ("tag", &entry.tag),
    ] {
        msgpack::write_str(&mut out, key);
        msgpack::write_str(&mut out, value);
    }
    msgpack::write_str(&mut out, "time");
    let _ = rmp::encode::write_f64(&mut out, entry.event.time.as_f64());
    msgpack::write_str(&mut out, "record");
    out.extend_from_slice(&entry.event.record);
    out.into()
}

fn reject(indices: &[u32], reason: &str, message: &str) -> Vec<Rejected> {
    indices
        .iter()
        .map(|&index| Rejected {
            index,
            reason: reason.into(),
            location: String::new(),
            message: message.into(),
        })
        .collect()
}

fn request_outcome(verdict: Verdict) -> RequestOutcome {
    match verdict {
        Verdict::Retry | Verdict::Reauthenticate => RequestOutcome::Retryable,
        Verdict::Split => RequestOutcome::TooLarge,
        Verdict::NotFound | Verdict::DatasetNotFound => RequestOutcome::NotFound,
        Verdict::DeadLetter => RequestOutcome::Rejected,
    }
}

fn retry_all(error: String, after: Option<Duration>) -> Outcome {
    Outcome::Retry {
        keep: None,
        error,
        after,
        quiet: false,
    }
}

impl Sink<TableKey> for BigQuerySink {
    fn write<'a>(&'a self, chunk: &'a Chunk<TableKey>) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver(chunk))
    }

    fn give_up<'a>(&'a self, chunk: &'a Chunk<TableKey>, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dead = reject(&chunk.pending_indices(), "retries_exhausted", reason);
            let table = chunk.key.to_string();
            if !self.dead_letter(chunk, &dead, &table).await {
                events::RowsDropped {
                    output: &self.id,
                    table: &table,
                    reasons: &[("retries_exhausted", dead.len() as u64)],
                    first: reason,
                    cause: "retries exhausted and the secondary output refused them",
                }
                .emit(&self.detail);
            }
        })
    }
}
