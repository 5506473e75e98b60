//! `bigquery_storage_write`'s delivery of one buffered chunk to one table: prepare (clients,
//! schema, writer schema; with schema evolution, new columns added first and the writer
//! schema rebuilt from the patched table), encode the pending rows to protobuf in requests
//! under the size limit, append them (to the `_default` stream, or with `exactly_once` to an
//! app-created COMMITTED stream at offsets recorded beforehand), then settle (dead letters,
//! what waits).
//! Every row ends in BigQuery or in the dead letters with its reason; nothing is dropped
//! silently.

use super::classify::{AppendVerdict, classify, storage_code, storage_code_of_call};
use super::client::{Append, WriteClient, code_of};
use super::descriptor::descriptor;
use super::encoder::{ProtoRowWriter, UNKNOWN_FIELD};
use super::tickets::{ExactlyOnce, Ticket, TicketBatch};
use crate::buffer::{Chunk, Outcome, Sink};
use crate::event::BoxFuture;
use crate::format::{Extras, Inject};
use crate::internal_events::bigquery as events;
use crate::metrics::{RequestOutcome, SinkDetail};
use crate::output::bigquery::convert::Conversion;
use crate::output::bigquery::dead_letter::{DeadLetters, Rejected, reject};
use crate::output::bigquery::destination::TableKey;
use crate::output::bigquery::evolve::{self, Evolution, Rows};
use crate::output::bigquery::schema::Schema;
use crate::output::bigquery::service::{BigQueryClient, Connection};
use crate::output::bigquery::tables::{SchemaSource, Tables, Waiting};
use bq_storage_proto::prost_types::DescriptorProto;
use bq_storage_proto::v1::append_rows_response::Response;
use bq_storage_proto::v1::{TableFieldSchema, TableSchema};
use bytes::Bytes;
use std::collections::HashMap;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// BigQuery's AppendRows limit is 10 MB per request; rows are packed up to this, leaving room
/// for the writer schema and the envelope.
pub const MAX_REQUEST_BYTES: usize = 9 * 1024 * 1024;
/// How long an AppendRows answer may take when `request_timeout_sec` is not set.
const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Stream replacements one delivery may make before it waits for the backoff.
const MAX_REPLACEMENTS: u32 = 3;
/// How soon rows refused for a column another writer added go again, once that column counts
/// as fresh (the next plan writes them without it).
const UNSEEN_RETRY: Duration = Duration::from_secs(1);
/// A schema read from the table is read again for rows with unknown keys at most this often.
const UNKNOWN_KEY_REFRESH: Duration = Duration::from_secs(60);

pub struct StorageWriteSink {
    pub id: String,
    /// REST: schemas (tables.get), auto-created tables and datasets.
    pub connection: Connection,
    pub rest: OnceCell<BigQueryClient>,
    pub storage_endpoint: String,
    pub grpc: OnceCell<WriteClient>,
    pub tables: Tables,
    pub dead_letters: DeadLetters,
    pub inject: Inject,
    pub conversion: Conversion,
    pub ignore_unknown: bool,
    pub max_request_bytes: usize,
    /// `exactly_once true`: app-created streams and offsets recorded with the chunk.
    pub exactly_once: Option<ExactlyOnce>,
    pub detail: Arc<SinkDetail>,
    /// When each table's schema was last read again for rows with unknown keys.
    pub refreshed: Mutex<HashMap<String, Instant>>,
    /// `schema_update_options ALLOW_FIELD_ADDITION`: new fields become columns first.
    pub evolution: Option<Evolution>,
    /// Buffers of answered requests, for the next requests' rows.
    pub buffers: RowBuffers,
}

/// A `ProtoRows.serialized_rows` field's key (field 1, length-delimited).
const ROW_KEY: u8 = 1 << 3 | 2;

/// Rows serialized for one AppendRows request, and the chunk entries they came from.
struct Batch {
    indices: Vec<u32>,
    /// The rows as the body of a `ProtoRows` message: each a `serialized_rows` field (key,
    /// length, row), as the request carries them.
    rows: Bytes,
    /// Where each row's field ends in `rows`.
    ends: Vec<usize>,
    /// The rows' own bytes (without their fields' keys and lengths), for the metrics.
    row_bytes: u64,
    /// Written against the table's whole schema (`Ready::schema`), not the settled one.
    full: bool,
    /// Rows carrying a column the write path may not see yet (schema evolution): refused
    /// for it, they are held, not dead-lettered.
    carriers: bool,
}

impl Batch {
    /// The row fields, each with its start in `rows`.
    fn fields(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let field = (start, &self.rows[start..end]);
            start = end;
            field
        })
    }

    /// The rows' own bytes (without their fields' keys and lengths).
    fn bytes(&self) -> u64 {
        self.row_bytes
    }

    /// `row_bytes` counted again from the fields (a batch cut down or split).
    fn counted(mut self) -> Batch {
        self.row_bytes = self.fields().map(|(_, field)| row_len(field) as u64).sum();
        self
    }

    /// Leaves out the rows at these positions (of this batch).
    fn without(self, positions: &HashSet<usize>) -> Batch {
        let mut rows = Vec::with_capacity(self.rows.len());
        let mut ends = Vec::with_capacity(self.ends.len());
        let mut indices = Vec::with_capacity(self.indices.len());
        for (i, (_, field)) in self.fields().enumerate() {
            if !positions.contains(&i) {
                rows.extend_from_slice(field);
                ends.push(rows.len());
                indices.push(self.indices[i]);
            }
        }
        Batch {
            indices,
            rows: rows.into(),
            ends,
            ..self
        }
        .counted()
    }

    fn split(mut self) -> (Batch, Batch) {
        let half = self.indices.len() / 2;
        let mid = match half {
            0 => 0,
            n => self.ends[n - 1],
        };
        let second = Batch {
            indices: self.indices.split_off(half),
            rows: self.rows.slice(mid..),
            ends: self
                .ends
                .split_off(half)
                .iter()
                .map(|end| end - mid)
                .collect(),
            row_bytes: 0,
            full: self.full,
            carriers: self.carriers,
        };
        self.rows.truncate(mid);
        (self.counted(), second.counted())
    }
}

/// The length of the row in a `serialized_rows` field (key, varint length, row).
fn row_len(field: &[u8]) -> usize {
    let mut length = field.get(1..).unwrap_or_default();
    bq_storage_proto::prost::encoding::decode_varint(&mut length).map_or(0, |len| len as usize)
}

/// Writes the length of the row that follows the field's key at `field` and `guess` bytes
/// left for its length, moving the row when its length takes more or fewer.
fn seal_row(buf: &mut Vec<u8>, field: usize, guess: usize) {
    let start = field + 1 + guess;
    let len = buf.len() - start;
    let need = varint_len(len);
    if need > guess {
        buf.resize(buf.len() + need - guess, 0);
        buf.copy_within(start..start + len, start + need - guess);
    } else if need < guess {
        buf.copy_within(start..start + len, start - (guess - need));
        buf.truncate(buf.len() - (guess - need));
    }
    bq_storage_proto::prost::encoding::encode_varint(
        len as u64,
        &mut &mut buf[field + 1..field + 1 + need],
    );
}

/// How many bytes `n` takes as a varint.
fn varint_len(n: usize) -> usize {
    bq_storage_proto::prost::encoding::encoded_len_varint(n as u64)
}

/// Buffers of requests that were answered, for the next requests' rows: a request's rows
/// (~600 kB at 2,000 rows) in memory fresh from the allocator every time had their pages
/// faulted in anew (4 % of a Storage Write profile). Keeps at most `KEEP_BYTES` of them.
#[derive(Default)]
pub struct RowBuffers(Mutex<Vec<Vec<u8>>>);

impl RowBuffers {
    const KEEP_BYTES: usize = 16 * 1024 * 1024;

    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    /// Takes back a batch's rows, when nothing else holds them any more.
    fn give(&self, rows: Bytes) {
        let Ok(rows) = rows.try_into_mut() else {
            return;
        };
        let mut buf = Vec::from(rows);
        buf.clear();
        if let Ok(mut kept) = self.0.lock() {
            let held: usize = kept.iter().map(Vec::capacity).sum();
            if held + buf.capacity() <= Self::KEEP_BYTES {
                kept.push(buf);
            }
        }
    }
}

/// What one append came to.
enum Answer {
    Landed {
        /// The table's schema as the write path sees it now, when it changed
        /// (`AppendRowsResponse.updated_schema`).
        updated_schema: Option<TableSchema>,
    },
    /// The batch was refused for these rows (positions in the batch, BigQuery's message);
    /// none of its rows landed.
    RowErrors(Vec<(usize, String)>),
    Failed(AppendVerdict, String),
}

/// One delivery's progress.
struct Run {
    table: String,
    keep: Vec<u32>,
    dead: Vec<Rejected>,
    waiting: Option<Waiting>,
    /// Rows held for a column the write path does not see yet: the others go on.
    hold: Option<Waiting>,
}

impl Run {
    fn keep(&mut self, detail: &SinkDetail, indices: &[u32], reason: &str) {
        self.keep.extend(indices);
        events::RowsRetried {
            table: &self.table,
            reason,
            rows: indices.len() as u64,
        }
        .emit(detail);
    }

    fn wait(&mut self, waiting: Waiting) {
        self.waiting.get_or_insert(waiting);
    }
}

/// What a delivery works with, once prepared.
struct Ready<'a> {
    key: &'a TableKey,
    rest: &'a BigQueryClient,
    grpc: &'a WriteClient,
    /// The table's schema (with schema evolution, with the columns just added) and its
    /// writer schema.
    schema: Arc<Schema>,
    descriptor: DescriptorProto,
    /// Schema evolution: the schema without the columns the write path may not see yet, and
    /// its writer schema, for the rows that carry none of them.
    settled: Option<(Arc<Schema>, DescriptorProto)>,
    /// The fresh columns the carriers carry (`evolve::Plan::carried`).
    carried: Vec<String>,
    /// `projects/P/datasets/D/tables/T`.
    parent: String,
}

impl Ready<'_> {
    fn writer(&self, full: bool) -> (&Schema, &DescriptorProto) {
        match &self.settled {
            Some((schema, descriptor)) if !full => (schema, descriptor),
            _ => (&self.schema, &self.descriptor),
        }
    }
}

impl StorageWriteSink {
    async fn prepare<'a>(&'a self, key: &'a TableKey) -> Result<Ready<'a>, (&'static str, String)> {
        let rest = self
            .rest
            .get_or_try_init(|| BigQueryClient::connect(&self.connection))
            .await
            .map_err(|e| ("no_client", e))?;
        let grpc = self
            .grpc
            .get_or_try_init(|| async {
                WriteClient::new(
                    &self.storage_endpoint,
                    Arc::clone(&self.connection.credentials),
                    self.connection.open_timeout,
                    // An answer that never comes must not hold a chunk forever.
                    Some(
                        self.connection
                            .request_timeout
                            .unwrap_or(DEFAULT_ANSWER_TIMEOUT),
                    ),
                )
            })
            .await
            .map_err(|e| ("no_client", e))?;
        let schema = match self.tables.schema_for(rest, key).await {
            Ok(Some(schema)) => schema,
            Ok(None) => return Err(("no_schema", "no schema for the table".into())),
            Err(error) => {
                tracing::error!(output = %self.id, table = %key, %error, "no schema for the rows; they wait");
                return Err(("no_schema", error));
            }
        };
        Ok(Ready {
            key,
            rest,
            grpc,
            descriptor: descriptor(&schema),
            schema,
            settled: None,
            carried: Vec::new(),
            // A partition decorator is dropped: rows land in the partition their partitioning
            // column (or, for ingestion-time partitioning, the time they arrive) gives.
            parent: format!(
                "projects/{}/datasets/{}/tables/{}",
                key.project,
                key.dataset,
                key.base_table()
            ),
        })
    }

    async fn deliver(&self, chunk: &Chunk<TableKey>) -> Outcome {
        let key = &*chunk.key;
        let mut run = Run {
            table: key.to_string(),
            keep: Vec::new(),
            dead: Vec::new(),
            waiting: None,
            hold: None,
        };
        if let Some(why) = key.invalid() {
            run.dead = reject(&chunk.pending_indices(), "invalid_destination", &why);
            return self.settle(chunk, run).await;
        }
        if key.template_suffix.is_some() {
            // `check` refuses template_suffix; a chunk from an older buffer may still have one.
            run.dead = reject(
                &chunk.pending_indices(),
                "invalid_destination",
                "template_suffix has no Storage Write API equivalent",
            );
            return self.settle(chunk, run).await;
        }
        let mut ready = match self.prepare(key).await {
            Ok(ready) => ready,
            Err((reason, error)) => {
                run.keep(&self.detail, &chunk.pending_indices(), reason);
                return Outcome::Retry {
                    keep: Some(run.keep),
                    error,
                    after: None,
                    quiet: false,
                };
            }
        };
        match &self.exactly_once {
            None => self.deliver_default(chunk, &mut ready, &mut run).await,
            Some(eo) => {
                self.deliver_exactly_once(eo, chunk, &mut ready, &mut run)
                    .await
            }
        }
        self.settle(chunk, run).await
    }

    /// At least once: every batch to the table's `_default` stream.
    async fn deliver_default(&self, chunk: &Chunk<TableKey>, ready: &mut Ready<'_>, run: &mut Run) {
        let stream = format!("{}/streams/_default", ready.parent);
        let groups = self
            .evolve(chunk, ready, chunk.pending_indices(), run)
            .await;
        let ready = &*ready;
        let mut work: VecDeque<Batch> = VecDeque::new();
        for group in groups {
            let (batches, rejected) = self.encode(chunk, ready, &group);
            run.dead.extend(rejected);
            work.extend(batches);
        }
        while let Some(batch) = work.pop_front() {
            if run.waiting.is_some() {
                run.keep(&self.detail, &batch.indices, "deferred");
                continue;
            }
            let answer = self.append(ready, &stream, &batch, None).await;
            self.settle_batch(ready, &stream, run, batch, answer, &mut work)
                .await;
        }
    }

    /// Schema evolution's plan for `indices` (new fields added as columns by tables.patch,
    /// `evolve::Evolution::plan`): `ready` takes the table's schema with them; returns the
    /// rows to send in groups (the plain rows, then those carrying a column the write path
    /// may not see yet, sent apart). Dead and waiting rows go to `run`. Without schema
    /// evolution: every row, in one group.
    async fn evolve(
        &self,
        chunk: &Chunk<TableKey>,
        ready: &mut Ready<'_>,
        indices: Vec<u32>,
        run: &mut Run,
    ) -> Vec<Group> {
        let Some(evolution) = &self.evolution else {
            return vec![Group {
                indices,
                full: true,
                carriers: false,
            }];
        };
        if indices.is_empty() {
            return Vec::new();
        }
        let mut inject = self.inject.clone();
        let rows = Rows {
            entries: &chunk.entries,
            indices: &indices,
            inject: &mut inject,
            conversion: self.conversion,
        };
        let plan = match evolution
            .plan(ready.rest, ready.key, Some(Arc::clone(&ready.schema)), rows)
            .await
        {
            Ok(plan) => plan,
            Err(wait) => {
                run.keep(&self.detail, &indices, "schema_update");
                run.wait(wait);
                return Vec::new();
            }
        };
        run.dead.extend(plan.dead);
        if let Some(wait) = plan.wait {
            run.keep(&self.detail, &plan.waiting, "schema_update");
            run.hold.get_or_insert(wait);
        }
        if let Some(schema) = plan.schema
            && !Arc::ptr_eq(&schema, &ready.schema)
        {
            ready.descriptor = descriptor(&schema);
            ready.schema = schema;
        }
        ready.settled = plan
            .settled
            .filter(|settled| **settled != *ready.schema)
            .map(|settled| {
                let d = descriptor(&settled);
                (settled, d)
            });
        ready.carried = plan.carried;
        vec![
            Group {
                indices: plan.ready,
                full: false,
                carriers: false,
            },
            Group {
                indices: plan.carriers,
                full: true,
                carriers: true,
            },
        ]
    }

    /// What an answer makes of a batch sent without an offset; batches to send again go to
    /// the front of `work`.
    async fn settle_batch(
        &self,
        ready: &Ready<'_>,
        stream: &str,
        run: &mut Run,
        batch: Batch,
        answer: Answer,
        work: &mut VecDeque<Batch>,
    ) {
        match answer {
            Answer::Landed { updated_schema } => {
                self.landed(ready, run, &batch, updated_schema.as_ref())
                    .await;
                self.buffers.give(batch.rows);
            }
            Answer::RowErrors(errors) => {
                let bad = self.row_errors(run, &batch, errors);
                let rest = batch.without(&bad);
                if !rest.indices.is_empty() {
                    work.push_front(rest);
                }
            }
            Answer::Failed(verdict, error) => {
                if let Some(halves) = self.failed(ready, stream, run, batch, verdict, error).await {
                    work.push_front(halves.1);
                    work.push_front(halves.0);
                }
            }
        }
    }

    async fn landed(
        &self,
        ready: &Ready<'_>,
        run: &Run,
        batch: &Batch,
        updated_schema: Option<&TableSchema>,
    ) {
        self.tables.dataset_found(ready.key);
        if let Some(evolution) = &self.evolution {
            if batch.carriers {
                // The write path sees the columns these rows carried.
                evolution.columns_seen(ready.key, &ready.carried);
            }
            if let Some(updated) = updated_schema {
                // "If backend detects a schema update, pass it to user so that user can use
                // it to input new type of message": the columns it names are seen.
                evolution.columns_seen(ready.key, &dotted_paths(&updated.fields));
            }
        }
        events::RowsInserted {
            table: &run.table,
            rows: batch.indices.len() as u64,
        }
        .emit(&self.detail);
        events::BytesAppended {
            table: &run.table,
            api: events::Api::StorageWrite,
            rows: batch.indices.len() as u64,
            bytes: batch.bytes(),
        }
        .emit(&self.detail);
        if updated_schema.is_some() && matches!(self.tables.schema, SchemaSource::Fetch { .. }) {
            // The table has changed: read its schema again for the next chunks. (A fixed
            // `schema` / `schema_path` stays what the rows are written with.)
            tracing::info!(output = %self.id, table = %run.table, "the table's schema changed (updated_schema); reading it again");
            self.tables.forget_schema(ready.key).await;
        }
    }

    /// The rows BigQuery named go to the dead letters; returns their positions in the batch.
    fn row_errors(
        &self,
        run: &mut Run,
        batch: &Batch,
        errors: Vec<(usize, String)>,
    ) -> HashSet<usize> {
        let mut bad = HashSet::new();
        for (position, message) in errors {
            let Some(&index) = batch.indices.get(position) else {
                continue;
            };
            if bad.insert(position) {
                run.dead.push(Rejected {
                    index,
                    reason: "invalid".into(),
                    location: String::new(),
                    message,
                });
            }
        }
        if bad.is_empty() {
            // Row errors that name no row of the batch: the whole batch is suspect.
            for (position, &index) in batch.indices.iter().enumerate() {
                bad.insert(position);
                run.dead.push(Rejected {
                    index,
                    reason: "invalid".into(),
                    location: String::new(),
                    message: "row errors that name no row of the request".into(),
                });
            }
        }
        bad
    }

    /// A failed append: the rows wait, are dead-lettered, or (split) come back as halves.
    async fn failed(
        &self,
        ready: &Ready<'_>,
        stream: &str,
        run: &mut Run,
        batch: Batch,
        verdict: AppendVerdict,
        error: String,
    ) -> Option<(Batch, Batch)> {
        match verdict {
            AppendVerdict::Landed => unreachable_landed(),
            AppendVerdict::Split if batch.indices.len() > 1 => {
                tracing::warn!(output = %self.id, table = %run.table, %error, "request too large; split in two");
                return Some(batch.split());
            }
            AppendVerdict::Split => {
                run.dead
                    .extend(reject(&batch.indices, "request_too_large", &error))
            }
            AppendVerdict::NotFound => {
                match self
                    .tables
                    .on_not_found(ready.rest, ready.key, Some(&ready.schema), &error)
                    .await
                {
                    Some(wait) => {
                        run.keep(&self.detail, &batch.indices, "not_found");
                        run.wait(wait);
                    }
                    None => run.dead.extend(reject(&batch.indices, "not_found", &error)),
                }
            }
            AppendVerdict::RefreshSchema if self.evolution.is_some() => {
                // The table has the columns (tables.patch answered, or tables.get showed
                // them), the write path does not see them yet: "Input schema has more fields
                // than BigQuery schema" until the change propagates. The rows wait; the others
                // of the chunk go on. The connection that bound the refused writer schema is
                // dropped: the next try opens one that sends it again (as Google's clients
                // reopen their writer).
                ready.grpc.forget(stream);
                // Rows without a column named here were refused for the writer schema alone
                // (another writer's column, read before the write path saw it): the column
                // counts as fresh, and they go again soon without it.
                let unseen = extra_fields(&error);
                let soon = match &self.evolution {
                    Some(evolution) if unseen.is_empty() => {
                        // Not an unseen column ("The proto field mismatched with BigQuery
                        // field"): the table is read again before the rows go again.
                        evolution.read_again(ready.key);
                        false
                    }
                    Some(evolution) => {
                        !batch.carriers && evolution.columns_unseen(ready.key, &unseen)
                    }
                    None => false,
                };
                events::RowsHeldForSchema {
                    table: &run.table,
                    rows: batch.indices.len() as u64,
                }
                .emit(&self.detail);
                run.keep(&self.detail, &batch.indices, "schema_update");
                run.hold.get_or_insert(Waiting {
                    error: format!(
                        "rows wait until the Storage Write API sees the new columns of {}",
                        run.table
                    ),
                    after: Some(if soon { UNSEEN_RETRY } else { evolve::HOLD }),
                    quiet: true,
                });
            }
            AppendVerdict::RefreshSchema => {
                ready.grpc.forget(stream);
                self.tables.forget_schema(ready.key).await;
                run.keep(&self.detail, &batch.indices, "schema_mismatch");
                run.wait(Waiting::backoff(error));
            }
            AppendVerdict::Retry | AppendVerdict::ReplaceStream => {
                run.keep(&self.detail, &batch.indices, "transient");
                run.wait(Waiting::backoff(error));
            }
            AppendVerdict::DeadLetter => {
                run.dead.extend(reject(&batch.indices, "rejected", &error))
            }
        }
        None
    }

    /// One AppendRows request and its answer.
    async fn append(
        &self,
        ready: &Ready<'_>,
        stream: &str,
        batch: &Batch,
        offset: Option<i64>,
    ) -> Answer {
        let started = Instant::now();
        let result = ready
            .grpc
            .append(Append {
                stream,
                descriptor: ready.writer(batch.full).1,
                rows: batch.rows.clone(),
                offset,
            })
            .await;
        let elapsed = started.elapsed();
        let answer = match result {
            Ok(response) => match response.response {
                Some(Response::AppendResult(_)) => Answer::Landed {
                    updated_schema: response.updated_schema,
                },
                Some(Response::Error(status)) if !response.row_errors.is_empty() => {
                    let errors = response
                        .row_errors
                        .into_iter()
                        .filter_map(|e| usize::try_from(e.index).ok().map(|i| (i, e.message)))
                        .collect();
                    row_errors_or_status(errors, status)
                }
                Some(Response::Error(status)) => Answer::Failed(
                    classify(
                        code_of(&status),
                        &status.message,
                        storage_code(&status.details),
                    ),
                    format!("{:?}: {}", code_of(&status), status.message),
                ),
                None => Answer::Failed(
                    AppendVerdict::Retry,
                    "AppendRows answer with neither a result nor an error".into(),
                ),
            },
            Err(status) => Answer::Failed(
                classify(
                    status.code(),
                    status.message(),
                    storage_code_of_call(&status),
                ),
                format!("{:?}: {}", status.code(), status.message()),
            ),
        };
        // ALREADY_EXISTS: an offset behind the stream's end, rows that landed before.
        let answer = match answer {
            Answer::Failed(AppendVerdict::Landed, error) => {
                tracing::debug!(output = %self.id, stream, ?offset, %error, "rows already in the stream: counted as landed");
                Answer::Landed {
                    updated_schema: None,
                }
            }
            other => other,
        };
        let outcome = match &answer {
            Answer::Landed { .. } => RequestOutcome::Ok,
            Answer::RowErrors(_) => RequestOutcome::Rejected,
            Answer::Failed(verdict, _) => match verdict {
                AppendVerdict::Landed => RequestOutcome::Ok,
                AppendVerdict::Retry
                | AppendVerdict::ReplaceStream
                | AppendVerdict::RefreshSchema => RequestOutcome::Retryable,
                AppendVerdict::Split => RequestOutcome::TooLarge,
                AppendVerdict::NotFound => RequestOutcome::NotFound,
                AppendVerdict::DeadLetter => RequestOutcome::Rejected,
            },
        };
        events::RequestFinished { outcome, elapsed }.emit(&self.detail);
        tracing::debug!(output = %self.id, stream, rows = batch.indices.len(), ?offset,
            elapsed_ms = elapsed.as_millis() as u64, "AppendRows");
        answer
    }

    /// Serializes the entries at `indices` into batches under the request limit; entries
    /// that cannot become rows are rejected with the reason.
    fn encode(
        &self,
        chunk: &Chunk<TableKey>,
        ready: &Ready<'_>,
        group: &Group,
    ) -> (Vec<Batch>, Vec<Rejected>) {
        let indices = &group.indices[..];
        let (schema, _) = ready.writer(group.full);
        let mut writer = ProtoRowWriter::new(schema, self.conversion, self.ignore_unknown);
        if self.evolution.is_some() {
            writer.drop_untyped_unknown();
        }
        let mut inject = self.inject.clone();
        let mut batches = Vec::new();
        let mut rejected = Vec::new();
        let max = self.max_request_bytes;
        // The rows, and the room the last one is first written into (`ProtoRowWriter`).
        let (size, largest) = indices
            .iter()
            .filter_map(|&i| chunk.entries.get(i as usize))
            .map(|e| e.event.record.len())
            .fold((0, 0), |(size, largest), len| {
                (size + len + 48, largest.max(len))
            });
        let size = size + 2 * largest + 256;
        let mut buf = self.buffers.take(size.min(max + max / 8));
        let mut ends: Vec<usize> = Vec::new();
        let mut taken: Vec<u32> = Vec::new();
        // The rows' own bytes in `buf`, for the request's size as it was always counted.
        let mut raw = 0usize;
        // Each row is written straight into the request's body, behind its field's key and
        // as many bytes of length as the last row took; moved when it needs more or fewer.
        let mut last = 0usize;
        for &index in indices {
            let Some(entry) = chunk.entries.get(index as usize) else {
                continue;
            };
            let field = buf.len();
            let guess = varint_len(last);
            buf.push(ROW_KEY);
            buf.resize(field + 1 + guess, 0);
            let start = buf.len();
            let mut extras = Extras::default();
            inject.extras_into(&entry.tag, entry.event.time, &mut extras);
            if let Err(err) = writer.write(&entry.event.record, &extras, &mut buf) {
                buf.truncate(field);
                rejected.push(Rejected {
                    index,
                    reason: "conversion_error".into(),
                    location: err.field.clone(),
                    message: err.to_string(),
                });
                continue;
            }
            let len = buf.len() - start;
            // Each row costs its bytes and a tag and length in the request.
            if len + 16 > max {
                buf.truncate(field);
                rejected.push(Rejected {
                    index,
                    reason: "row_too_large".into(),
                    location: String::new(),
                    message: format!(
                        "row of {len} bytes cannot fit in a {max}-byte request (BigQuery's limit is 10 MB)"
                    ),
                });
                continue;
            }
            seal_row(&mut buf, field, guess);
            last = len;
            if !taken.is_empty() && raw + 8 * (taken.len() + 1) + len > max {
                let row = buf[field..].to_vec();
                buf.truncate(field);
                batches.push(finish(&mut buf, &mut ends, std::mem::take(&mut taken), raw));
                buf = self.buffers.take(size.min(max + max / 8));
                buf.extend_from_slice(&row);
                raw = 0;
            }
            raw += len;
            ends.push(buf.len());
            taken.push(index);
        }
        if !taken.is_empty() {
            batches.push(finish(&mut buf, &mut ends, taken, raw));
        }
        for batch in &mut batches {
            batch.full = group.full;
            batch.carriers = group.carriers;
        }
        (batches, rejected)
    }

    /// Rows dead for a key the cached schema lacks, when the schema is read from the table:
    /// the table may have gained the column since. Its schema is read again (at most once a
    /// minute per table) and those rows wait for it instead of becoming dead letters.
    async fn recheck_unknown(&self, key: &TableKey, run: &mut Run) {
        if !matches!(self.tables.schema, SchemaSource::Fetch { .. })
            || !run.dead.iter().any(|d| d.message.contains(UNKNOWN_FIELD))
        {
            return;
        }
        let due = self.refreshed.lock().is_ok_and(|mut refreshed| {
            let last = refreshed.entry(run.table.clone()).or_insert_with(|| {
                Instant::now()
                    .checked_sub(UNKNOWN_KEY_REFRESH)
                    .unwrap_or_else(Instant::now)
            });
            let due = last.elapsed() >= UNKNOWN_KEY_REFRESH;
            if due {
                *last = Instant::now();
            }
            due
        });
        if !due {
            return;
        }
        self.tables.forget_schema(key).await;
        let (unknown, dead): (Vec<Rejected>, Vec<Rejected>) = std::mem::take(&mut run.dead)
            .into_iter()
            .partition(|d| d.message.contains(UNKNOWN_FIELD));
        run.dead = dead;
        let indices: Vec<u32> = unknown.iter().map(|d| d.index).collect();
        tracing::info!(output = %self.id, table = %run.table, rows = indices.len(),
            "rows with keys the cached schema lacks: reading the table's schema again before calling them unknown");
        run.keep(&self.detail, &indices, "unknown_field");
        run.wait(Waiting {
            error: "rows with keys the cached schema lacks wait for it to be read again".into(),
            after: Some(Duration::from_secs(1)),
            quiet: true,
        });
    }

    /// Writes the dead letters, then says what is left to retry. Rows the secondary refused
    /// are kept too, so nothing is lost.
    async fn settle(&self, chunk: &Chunk<TableKey>, mut run: Run) -> Outcome {
        self.recheck_unknown(&chunk.key, &mut run).await;
        if !run.dead.is_empty() && !self.dead_letters.write(chunk, &run.dead, &run.table).await {
            let refused: Vec<u32> = run.dead.iter().map(|d| d.index).collect();
            run.keep(&self.detail, &refused, "secondary_refused");
            run.wait(Waiting::backoff(
                "secondary output did not accept dead letters".into(),
            ));
        }
        if run.keep.is_empty() {
            if let Some(eo) = &self.exactly_once {
                eo.delivered(&chunk.id);
            }
            return Outcome::Done;
        }
        run.keep.sort_unstable();
        run.keep.dedup();
        let waiting = run
            .waiting
            .or(run.hold)
            .unwrap_or_else(|| Waiting::backoff(String::new()));
        Outcome::Retry {
            keep: Some(run.keep),
            error: waiting.error,
            after: waiting.after,
            quiet: waiting.quiet,
        }
    }
}

/// The columns a SCHEMA_MISMATCH_EXTRA_FIELDS answer names ("Input schema has more fields
/// than BigQuery schema, extra fields: 'a,b.c'"), as dotted paths.
fn extra_fields(message: &str) -> Vec<String> {
    let Some((_, rest)) = message.split_once("extra fields: '") else {
        return Vec::new();
    };
    let names = rest.split('\'').next().unwrap_or_default();
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lower-cased dotted paths of every field of an `updated_schema` (as `evolve` names columns).
fn dotted_paths(fields: &[TableFieldSchema]) -> Vec<String> {
    let mut out = Vec::new();
    for f in fields {
        let name = f.name.to_ascii_lowercase();
        for sub in dotted_paths(&f.fields) {
            out.push(format!("{name}.{sub}"));
        }
        out.push(name);
    }
    out
}

#[cold]
fn unreachable_landed() {
    tracing::error!("an append counted as landed reached the failure path");
}

/// Row errors that list no row fall back to the status's verdict.
fn row_errors_or_status(
    errors: Vec<(usize, String)>,
    status: bq_storage_proto::rpc::Status,
) -> Answer {
    if errors.is_empty() {
        return Answer::Failed(
            classify(
                code_of(&status),
                &status.message,
                storage_code(&status.details),
            ),
            status.message,
        );
    }
    Answer::RowErrors(errors)
}

/// The row fields written into `buf` (ending at `ends`) as one batch; `buf` and `ends` are
/// left empty.
fn finish(buf: &mut Vec<u8>, ends: &mut Vec<usize>, indices: Vec<u32>, row_bytes: usize) -> Batch {
    Batch {
        indices,
        rows: Bytes::from(std::mem::take(buf)),
        ends: std::mem::take(ends),
        row_bytes: row_bytes as u64,
        full: true,
        carriers: false,
    }
}

/// Rows encoded and sent together: with the whole schema or the settled one, carriers or not.
struct Group {
    indices: Vec<u32>,
    full: bool,
    carriers: bool,
}

// ---- exactly once ------------------------------------------------------------------------

impl StorageWriteSink {
    /// Exactly once: the chunk's ticket (batches already given a stream and an offset) is
    /// replayed first, at the same offsets, so what landed before a crash or a lost answer
    /// answers ALREADY_EXISTS; then the other pending rows get offsets in the table's current
    /// stream, recorded in the ticket on disk before each append.
    async fn deliver_exactly_once(
        &self,
        eo: &ExactlyOnce,
        chunk: &Chunk<TableKey>,
        ready: &mut Ready<'_>,
        run: &mut Run,
    ) {
        let pending = chunk.pending_indices();
        let pending_set: HashSet<u32> = pending.iter().copied().collect();
        let mut ticket = eo.load(&chunk.id);
        // Schema evolution plans the rows no recorded append holds: a recorded append is
        // sent again as it was (its columns existed then), whatever the table says now.
        let recorded: HashSet<u32> = ticket
            .batches
            .iter()
            .filter(|b| !b.rows.is_empty() && b.rows.iter().all(|i| pending_set.contains(i)))
            .flat_map(|b| b.rows.iter().copied())
            .collect();
        let unrecorded: Vec<u32> = pending
            .iter()
            .copied()
            .filter(|i| !recorded.contains(i))
            .collect();
        let mut groups = self.evolve(chunk, ready, unrecorded, run).await;
        let ready = &*ready;
        let mut in_ticket: HashSet<u32> = HashSet::new();
        // 1. Replay: batches whose rows are still pending.
        for b in 0..ticket.batches.len() {
            let rows = ticket.batches[b].rows.clone();
            if rows.is_empty() || !rows.iter().all(|i| pending_set.contains(i)) {
                continue;
            }
            if run.waiting.is_some() {
                run.keep(&self.detail, &rows, "deferred");
                in_ticket.extend(&rows);
                continue;
            }
            let resent = self.replay(eo, chunk, ready, run, &mut ticket, b).await;
            match resent {
                Replayed::Settled => in_ticket.extend(&rows),
                // The stream is gone: its rows are sent again as new rows.
                Replayed::Orphaned => {}
            }
        }
        // 2. Rows no ticket batch holds: the planned groups, and the rows of recorded appends
        // whose stream is gone (written with the whole schema, as they were).
        let mut orphaned: Vec<u32> = recorded
            .iter()
            .copied()
            .filter(|i| !in_ticket.contains(i))
            .collect();
        orphaned.sort_unstable();
        if !orphaned.is_empty() {
            groups.push(Group {
                indices: orphaned,
                full: true,
                carriers: self.evolution.is_some(),
            });
        }
        groups.retain(|g| !g.indices.is_empty());
        if groups.is_empty() {
            return;
        }
        if run.waiting.is_some() {
            for g in &groups {
                run.keep(&self.detail, &g.indices, "deferred");
            }
            return;
        }
        let mut work: VecDeque<Batch> = VecDeque::new();
        for group in &groups {
            let (batches, rejected) = self.encode(chunk, ready, group);
            run.dead.extend(rejected);
            work.extend(batches);
        }
        let slot = eo.slot(&ready.parent);
        let mut current = slot.lock().await;
        let mut replacements = 0;
        while let Some(mut batch) = work.pop_front() {
            if run.waiting.is_some() {
                run.keep(&self.detail, &batch.indices, "deferred");
                continue;
            }
            if current.is_none() {
                match ready.grpc.create_committed_stream(&ready.parent).await {
                    Ok(stream) => {
                        tracing::info!(output = %self.id, table = %run.table, stream = %stream.name, "created a committed stream (exactly_once)");
                        *current = Some((stream.name, 0));
                    }
                    Err(status) => {
                        let verdict = classify(
                            status.code(),
                            status.message(),
                            storage_code_of_call(&status),
                        );
                        let error = format!("CreateWriteStream: {status}");
                        let verdict = match verdict {
                            AppendVerdict::NotFound => AppendVerdict::NotFound,
                            _ => AppendVerdict::Retry,
                        };
                        let _ = self
                            .failed(ready, &ready.parent, run, batch, verdict, error)
                            .await;
                        continue;
                    }
                }
            }
            let Some((stream, next)) = current.as_ref().map(|(s, n)| (s.clone(), *n)) else {
                continue;
            };
            let stream = stream.as_str();
            ticket.batches.push(TicketBatch {
                stream: stream.to_owned(),
                offset: next,
                rows: batch.indices.clone(),
            });
            if let Err(e) = eo.save(&chunk.id, &ticket) {
                ticket.batches.pop();
                run.keep(&self.detail, &batch.indices, "ticket_unwritten");
                run.wait(Waiting::backoff(format!(
                    "cannot record the append's offset beside the chunk: {e}"
                )));
                continue;
            }
            let answer = self.append(ready, stream, &batch, Some(next)).await;
            match answer {
                Answer::Landed { updated_schema } => {
                    if let Some((_, next)) = current.as_mut() {
                        *next += batch.indices.len() as i64;
                    }
                    self.landed(ready, run, &batch, updated_schema.as_ref())
                        .await;
                    self.buffers.give(batch.rows);
                }
                Answer::RowErrors(errors) => {
                    // Nothing of the batch landed: the rest goes at the same offset.
                    let bad = self.row_errors(run, &batch, errors);
                    batch = batch.without(&bad);
                    ticket.batches.pop();
                    if let Err(e) = eo.save(&chunk.id, &ticket) {
                        tracing::warn!(output = %self.id, error = %e, "cannot rewrite the chunk's ticket");
                    }
                    if !batch.indices.is_empty() {
                        work.push_front(batch);
                    }
                }
                Answer::Failed(AppendVerdict::Retry, error) => {
                    // The outcome is unknown: the batch keeps its offset in this stream, which
                    // no other chunk will write to again; new rows go to a new stream.
                    eo.replaced(&self.detail, &run.table);
                    ready.grpc.forget(stream);
                    *current = None;
                    run.keep(&self.detail, &batch.indices, "transient");
                    run.wait(Waiting::backoff(error));
                }
                Answer::Failed(AppendVerdict::ReplaceStream, error) => {
                    // A finalized or broken stream refuses the append: nothing landed.
                    ticket.batches.pop();
                    let _ = eo.save(&chunk.id, &ticket);
                    eo.replaced(&self.detail, &run.table);
                    ready.grpc.forget(stream);
                    *current = None;
                    replacements += 1;
                    if replacements > MAX_REPLACEMENTS {
                        run.keep(&self.detail, &batch.indices, "transient");
                        run.wait(Waiting::backoff(error));
                    } else {
                        tracing::warn!(output = %self.id, table = %run.table, %error, "write stream replaced");
                        work.push_front(batch);
                    }
                }
                Answer::Failed(verdict, error) => {
                    // Refused as a whole (too large, schema, missing table, invalid): nothing
                    // landed at this offset.
                    ticket.batches.pop();
                    let _ = eo.save(&chunk.id, &ticket);
                    if let Some(halves) =
                        self.failed(ready, stream, run, batch, verdict, error).await
                    {
                        work.push_front(halves.1);
                        work.push_front(halves.0);
                    }
                }
            }
        }
    }

    /// Sends ticket batch `b` again at its stream and offset.
    async fn replay(
        &self,
        eo: &ExactlyOnce,
        chunk: &Chunk<TableKey>,
        ready: &Ready<'_>,
        run: &mut Run,
        ticket: &mut Ticket,
        b: usize,
    ) -> Replayed {
        let TicketBatch {
            stream,
            offset,
            rows,
        } = ticket.batches[b].clone();
        let group = Group {
            indices: rows.clone(),
            full: true,
            carriers: false,
        };
        let (mut batches, rejected) = self.encode(chunk, ready, &group);
        // One batch as first sent (the schema could have grown since: then more).
        let mut batch = match batches.len() {
            1 => batches.remove(0),
            _ => {
                let all: Vec<u32> = rows.clone();
                run.keep(&self.detail, &all, "replay_unencodable");
                run.wait(Waiting::backoff(
                    "a recorded append no longer encodes as it was sent".into(),
                ));
                return Replayed::Settled;
            }
        };
        if !rejected.is_empty() {
            run.dead.extend(rejected);
            ticket.batches[b].rows = batch.indices.clone();
            let _ = eo.save(&chunk.id, ticket);
        }
        loop {
            match self.append(ready, &stream, &batch, Some(offset)).await {
                Answer::Landed { updated_schema } => {
                    self.landed(ready, run, &batch, updated_schema.as_ref())
                        .await;
                    self.buffers.give(batch.rows);
                    return Replayed::Settled;
                }
                Answer::RowErrors(errors) => {
                    let bad = self.row_errors(run, &batch, errors);
                    batch = batch.without(&bad);
                    ticket.batches[b].rows = batch.indices.clone();
                    let _ = eo.save(&chunk.id, ticket);
                    if batch.indices.is_empty() {
                        return Replayed::Settled;
                    }
                }
                Answer::Failed(AppendVerdict::ReplaceStream | AppendVerdict::NotFound, error) => {
                    tracing::warn!(output = %self.id, table = %run.table, %stream, %error,
                        "the stream of a recorded append is gone: its rows are sent again to a new stream (they may land twice)");
                    ticket.batches[b].rows.clear();
                    let _ = eo.save(&chunk.id, ticket);
                    return Replayed::Orphaned;
                }
                Answer::Failed(AppendVerdict::DeadLetter, error) => {
                    run.dead.extend(reject(&batch.indices, "rejected", &error));
                    ticket.batches[b].rows.clear();
                    let _ = eo.save(&chunk.id, ticket);
                    return Replayed::Settled;
                }
                Answer::Failed(_, error) => {
                    run.keep(&self.detail, &batch.indices, "transient");
                    run.wait(Waiting::backoff(error));
                    return Replayed::Settled;
                }
            }
        }
    }
}

enum Replayed {
    /// Landed, dead-lettered, or waiting for the next try at the same offset.
    Settled,
    /// Its stream is gone; the rows are fresh again.
    Orphaned,
}

impl Sink<TableKey> for StorageWriteSink {
    fn write<'a>(&'a self, chunk: &'a Chunk<TableKey>) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver(chunk))
    }

    fn give_up<'a>(&'a self, chunk: &'a Chunk<TableKey>, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dead = reject(&chunk.pending_indices(), "retries_exhausted", reason);
            let table = chunk.key.to_string();
            if !self.dead_letters.write(chunk, &dead, &table).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written as `encode` writes them: each behind its key and the last row's length
    /// of length bytes, moved when that was wrong.
    fn batch_of(rows: &[Vec<u8>]) -> Batch {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        let mut last = 0;
        for row in rows {
            let field = buf.len();
            let guess = varint_len(last);
            buf.push(ROW_KEY);
            buf.resize(field + 1 + guess, 0);
            buf.extend_from_slice(row);
            seal_row(&mut buf, field, guess);
            last = row.len();
            ends.push(buf.len());
        }
        let total = rows.iter().map(Vec::len).sum();
        finish(&mut buf, &mut ends, (0..rows.len() as u32).collect(), total)
    }

    fn decoded(batch: &Batch) -> Vec<Vec<u8>> {
        use bq_storage_proto::prost::Message;
        bq_storage_proto::v1::ProtoRows::decode(batch.rows.clone())
            .unwrap()
            .serialized_rows
            .into_iter()
            .map(|row| row.to_vec())
            .collect()
    }

    #[test]
    fn rows_are_one_proto_rows_body_that_splits_and_shrinks() {
        let rows: Vec<Vec<u8>> = [0usize, 5, 127, 128, 300, 16_383, 16_384, 3, 200_000, 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8 + 1; n])
            .collect();
        let batch = batch_of(&rows);
        assert_eq!(decoded(&batch), rows);
        let total: usize = rows.iter().map(Vec::len).sum();
        assert_eq!(batch.bytes(), total as u64);
        let (first, second) = batch.split();
        assert_eq!(decoded(&first), rows[..5]);
        assert_eq!(first.indices, [0, 1, 2, 3, 4]);
        assert_eq!(decoded(&second), rows[5..]);
        assert_eq!(second.indices, [5, 6, 7, 8, 9]);
        assert_eq!(
            second.bytes(),
            rows[5..].iter().map(|r| r.len() as u64).sum::<u64>()
        );
        let rest = second.without(&HashSet::from([0, 3]));
        assert_eq!(rest.indices, [6, 7, 9]);
        assert_eq!(
            decoded(&rest),
            [rows[6].clone(), rows[7].clone(), rows[9].clone()]
        );
        assert_eq!(rest.ends.len(), 3);
        let (one, none) = batch_of(&rows[..1]).split();
        assert!(one.indices.is_empty() && one.rows.is_empty());
        assert_eq!(decoded(&none), rows[..1]);
    }

    #[test]
    fn answered_buffers_are_taken_again() {
        let buffers = RowBuffers::default();
        let mut buf = buffers.take(100_000);
        buf.extend_from_slice(&[7; 1000]);
        let capacity = buf.capacity();
        let rows = Bytes::from(buf);
        let held = rows.clone();
        buffers.give(rows);
        // Still held elsewhere (a request being resent): not taken back.
        assert!(buffers.0.lock().unwrap().is_empty());
        buffers.give(held);
        let again = buffers.take(10);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn extra_fields_are_read_from_the_answer() {
        assert_eq!(
            extra_fields(
                "InvalidArgument: Input schema has more fields than BigQuery schema, extra fields: 'x,user.email' Entity: projects/p/datasets/d/tables/t/streams/_default"
            ),
            ["x", "user.email"]
        );
        assert!(extra_fields("The proto field mismatched with BigQuery field").is_empty());
    }

    #[test]
    fn updated_schema_fields_are_dotted_paths() {
        let field = |name: &str, fields: Vec<TableFieldSchema>| TableFieldSchema {
            name: name.into(),
            fields,
            ..TableFieldSchema::default()
        };
        let fields = vec![
            field("A", vec![field("B", Vec::new())]),
            field("c", Vec::new()),
        ];
        assert_eq!(dotted_paths(&fields), ["a.b", "a", "c"]);
    }
}
