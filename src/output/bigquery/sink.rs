//! `bigquery_insert`'s delivery of one buffered chunk to one table, in steps: prepare (the
//! client, the schema, the requests), send each request and read its answer, then settle
//! (dead letters written, what is left to retry). Every row ends in BigQuery or in the dead
//! letters with its reason (or, with no `<secondary>`, in a log line and a counter); nothing
//! is dropped silently.

use super::classify::{RowVerdict, Verdict, classify, classify_row};
use super::dead_letter::{DeadLetters, Rejected, reject};
use super::destination::TableKey;
use super::evolve::{self, Evolution, Rows};
use super::request_builder::{Request, RequestBuilder, RequestOptions};
use super::schema::Schema;
use super::service::{BigQueryClient, Connection, TableRef};
use super::tables::{Tables, Waiting};
use crate::buffer::{Chunk, Outcome, Sink};
use crate::event::BoxFuture;
use crate::format::Inject;
use crate::internal_events::bigquery as events;
use crate::metrics::{RequestOutcome, SinkDetail};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub struct BigQuerySink {
    pub id: String,
    pub connection: Connection,
    pub client: OnceCell<BigQueryClient>,
    pub tables: Tables,
    pub dead_letters: DeadLetters,
    pub inject: Inject,
    /// `schema_update_options ALLOW_FIELD_ADDITION`: new fields become columns.
    pub evolution: Option<Evolution>,
    pub options: RequestOptions,
    /// What metrics read: rows per table and reason, requests, tables, missing datasets.
    pub detail: Arc<SinkDetail>,
}

/// One delivery's progress: the requests still to send, and every row's fate so far.
struct Delivery<'a> {
    key: &'a TableKey,
    table: String,
    work: VecDeque<Request>,
    keep: Vec<u32>,
    dead: Vec<Rejected>,
    /// Set once something transient failed: the rest waits for the retry.
    waiting: Option<Waiting>,
    /// A 401 was answered once already: the request was sent again with a new token.
    reauthenticated: bool,
    /// Rows carrying a column insertAll may not see yet (sent in their own requests), sorted.
    carriers: Vec<u32>,
    /// The fresh columns the carriers carry.
    carried: Vec<String>,
    /// Rows held for a new column (or its addition): they wait, the other requests go on.
    hold: Option<Waiting>,
}

impl Delivery<'_> {
    fn retried(&self, detail: &SinkDetail, reason: &str, rows: usize) {
        events::RowsRetried {
            table: &self.table,
            reason,
            rows: rows as u64,
        }
        .emit(detail);
    }

    /// These rows wait for the next try, for `reason`.
    fn keep(&mut self, detail: &SinkDetail, indices: &[u32], reason: &str) {
        self.keep.extend(indices);
        self.retried(detail, reason, indices.len());
    }
}

impl BigQuerySink {
    async fn client(&self) -> Result<&BigQueryClient, String> {
        self.client
            .get_or_try_init(|| BigQueryClient::connect(&self.connection))
            .await
    }

    async fn deliver(&self, chunk: &Chunk<TableKey>) -> Outcome {
        let key = &*chunk.key;
        let mut run = Delivery {
            key,
            table: key.to_string(),
            work: VecDeque::new(),
            keep: Vec::new(),
            dead: Vec::new(),
            waiting: None,
            reauthenticated: false,
            carriers: Vec::new(),
            carried: Vec::new(),
            hold: None,
        };
        if let Some(why) = key.invalid() {
            // A name rendered from a tag or record that BigQuery cannot take: only these rows
            // pay for it.
            run.dead = reject(&chunk.pending_indices(), "invalid_destination", &why);
            return self.settle(chunk, run).await;
        }
        let (client, schema) = match self.prepare(key).await {
            Ok(ready) => ready,
            Err((reason, error)) => {
                run.retried(&self.detail, reason, chunk.pending_indices().len());
                return Outcome::Retry {
                    keep: None,
                    error,
                    after: None,
                    quiet: false,
                };
            }
        };
        let chunk_hex = chunk.id.hex();
        let mut inject = self.inject.clone();
        let pending = chunk.pending_indices();
        let (schema, groups) = match &self.evolution {
            None => (schema, vec![pending]),
            Some(evolution) => {
                let rows = Rows {
                    entries: &chunk.entries,
                    indices: &pending,
                    inject: &mut inject,
                    conversion: self.options.conversion,
                };
                match evolution.plan(client, key, schema, rows).await {
                    Ok(plan) => {
                        run.dead.extend(plan.dead);
                        if let Some(wait) = plan.wait {
                            run.keep(&self.detail, &plan.waiting, "schema_update");
                            run.hold = Some(wait);
                        }
                        run.carriers = plan.carriers.clone();
                        run.carried = plan.carried;
                        (plan.schema, vec![plan.ready, plan.carriers])
                    }
                    Err(wait) => {
                        run.keep(&self.detail, &pending, "schema_update");
                        run.waiting = Some(wait);
                        return self.settle(chunk, run).await;
                    }
                }
            }
        };
        let mut builder = RequestBuilder {
            chunk_hex: &chunk_hex,
            entries: &chunk.entries,
            schema: schema.as_deref(),
            inject: &mut inject,
            options: &self.options,
            template_suffix: key.template_suffix.as_deref(),
        };
        for group in groups.iter().filter(|g| !g.is_empty()) {
            let (requests, rejected) = builder.build(group);
            run.work.extend(requests);
            run.dead.extend(rejected);
        }
        while let Some(request) = run.work.pop_front() {
            if run.waiting.is_some() {
                // Something transient failed: keep the rest for the retry, don't hammer.
                run.keep(&self.detail, &request.indices, "deferred");
                continue;
            }
            self.send(client, schema.as_deref(), &mut builder, request, &mut run)
                .await;
        }
        self.settle(chunk, run).await
    }

    /// The client and the schema of the chunk's rows; `Err((reason, error))` when either is
    /// missing (the rows wait).
    async fn prepare(
        &self,
        key: &TableKey,
    ) -> Result<(&BigQueryClient, Option<Arc<Schema>>), (&'static str, String)> {
        let client = self.client().await.map_err(|e| ("no_client", e))?;
        match self.tables.schema_for(client, key).await {
            Ok(schema) => Ok((client, schema)),
            Err(error) => {
                tracing::error!(output = %self.id, table = %key, %error, "no schema for the rows; they wait");
                Err(("no_schema", error))
            }
        }
    }

    /// One insertAll request, and what its answer makes of its rows.
    async fn send(
        &self,
        client: &BigQueryClient,
        schema: Option<&Schema>,
        builder: &mut RequestBuilder<'_>,
        request: Request,
        run: &mut Delivery<'_>,
    ) {
        let key = run.key;
        let table = TableRef {
            project: &key.project,
            dataset: &key.dataset,
            table: &key.table,
        };
        let indices = request.indices;
        let raw_len = request.raw_len as u64;
        let started = Instant::now();
        let answer = client.insert_all(&table, request.body).await;
        let elapsed = started.elapsed();
        tracing::debug!(output = %self.id, table = %key, rows = indices.len(),
            bytes = request.raw_len, elapsed_ms = elapsed.as_millis() as u64, ok = answer.is_ok(), "insertAll");
        let failure = match answer {
            Ok(response) => {
                events::RequestFinished {
                    outcome: RequestOutcome::Ok,
                    elapsed,
                }
                .emit(&self.detail);
                self.tables.dataset_found(key);
                let (inserted, held) = self.sort_rows(
                    key,
                    &run.table,
                    &indices,
                    response.insert_errors.unwrap_or_default(),
                    &mut run.keep,
                    &mut run.dead,
                );
                // The request's JSON, shared out over its rows: the inserted rows' part.
                events::BytesAppended {
                    table: &run.table,
                    api: events::Api::InsertAll,
                    rows: inserted,
                    bytes: (raw_len * inserted)
                        .checked_div(indices.len() as u64)
                        .unwrap_or(0),
                }
                .emit(&self.detail);
                let carriers = indices
                    .first()
                    .is_some_and(|i| run.carriers.binary_search(i).is_ok());
                if held > 0 {
                    events::RowsHeldForSchema {
                        table: &run.table,
                        rows: held,
                    }
                    .emit(&self.detail);
                    run.hold.get_or_insert(Waiting {
                        error: format!(
                            "rows wait until insertAll sees the new columns of {}",
                            run.table
                        ),
                        after: Some(evolve::HOLD),
                        quiet: true,
                    });
                    return;
                }
                if let (true, Some(evolution)) = (carriers, &self.evolution) {
                    evolution.columns_seen(key, &run.carried);
                }
                if run.keep.iter().any(|i| indices.contains(i)) {
                    run.waiting.get_or_insert(Waiting {
                        error: "rows stopped by other rows' errors".into(),
                        after: Some(Duration::ZERO),
                        quiet: false,
                    });
                }
                return;
            }
            Err(failure) => failure,
        };
        let verdict = classify(&failure);
        events::RequestFinished {
            outcome: request_outcome(verdict),
            elapsed,
        }
        .emit(&self.detail);
        let e = failure.to_string();
        match verdict {
            // The client dropped the refused token: send once more with a new one now.
            Verdict::Reauthenticate if !run.reauthenticated => {
                run.reauthenticated = true;
                let (again, rejected) = builder.build(&indices);
                run.dead.extend(rejected);
                for request in again.into_iter().rev() {
                    run.work.push_front(request);
                }
                tracing::warn!(output = %self.id, table = %key, error = %e, "token refused; sending again with a new token");
            }
            Verdict::Retry | Verdict::Reauthenticate => {
                run.keep(&self.detail, &indices, "transient");
                run.waiting = Some(Waiting::backoff(e));
            }
            Verdict::Split if indices.len() > 1 => {
                let (first, second) = indices.split_at(indices.len() / 2);
                let (mut halves, rejected) = builder.build(first);
                let (more, rejected2) = builder.build(second);
                halves.extend(more);
                run.dead.extend(rejected.into_iter().chain(rejected2));
                for half in halves.into_iter().rev() {
                    run.work.push_front(half);
                }
                tracing::warn!(output = %self.id, table = %key, error = %e, "request too large; split in two");
            }
            Verdict::Split => run.dead.extend(reject(&indices, "request_too_large", &e)),
            Verdict::NotFound => match self.tables.on_not_found(client, key, schema, &e).await {
                Some(wait) => {
                    run.keep(&self.detail, &indices, "not_found");
                    run.waiting = Some(wait);
                }
                None => run.dead.extend(reject(&indices, "not_found", &e)),
            },
            Verdict::DatasetNotFound => {
                run.keep(&self.detail, &indices, "dataset_not_found");
                run.waiting = Some(self.tables.on_dataset_missing(client, key, e).await);
            }
            Verdict::DeadLetter => run.dead.extend(reject(&indices, "rejected", &e)),
        }
    }

    /// Writes the dead letters, then says what is left to retry. Rows the secondary
    /// refused are kept too, so nothing is lost.
    async fn settle(&self, chunk: &Chunk<TableKey>, mut run: Delivery<'_>) -> Outcome {
        if !run.dead.is_empty() && !self.dead_letters.write(chunk, &run.dead, &run.table).await {
            let refused: Vec<u32> = run.dead.iter().map(|d| d.index).collect();
            run.keep(&self.detail, &refused, "secondary_refused");
            run.waiting.get_or_insert_with(|| {
                Waiting::backoff("secondary output did not accept dead letters".into())
            });
        }
        if run.keep.is_empty() {
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

    /// Sorts a 200 answer's rows: unlisted rows were inserted. Returns how many were inserted
    /// and how many were held because insertAll does not see a column the table has yet
    /// (schema evolution).
    fn sort_rows(
        &self,
        key: &TableKey,
        table: &str,
        indices: &[u32],
        errors: Vec<gcp_bigquery_client::model::table_data_insert_all_response_insert_errors::TableDataInsertAllResponseInsertErrors>,
        keep: &mut Vec<u32>,
        dead: &mut Vec<Rejected>,
    ) -> (u64, u64) {
        let mut failed = 0u64;
        let mut held = 0u64;
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
                RowVerdict::DeadLetter
                    if self.evolution.as_ref().is_some_and(|evolution| {
                        protos
                            .iter()
                            .filter(|p| p.reason.as_deref() != Some("stopped"))
                            .all(|p| {
                                evolution.is_unseen_column(
                                    key,
                                    p.location.as_deref().unwrap_or(""),
                                    p.message.as_deref().unwrap_or(""),
                                )
                            })
                    }) =>
                {
                    keep.push(index);
                    held += 1;
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
        let inserted = (indices.len() as u64).saturating_sub(failed);
        events::RowsInserted {
            table,
            rows: inserted,
        }
        .emit(&self.detail);
        (inserted, held)
    }
}

fn request_outcome(verdict: Verdict) -> RequestOutcome {
    match verdict {
        Verdict::Retry | Verdict::Reauthenticate => RequestOutcome::Retryable,
        Verdict::Split => RequestOutcome::TooLarge,
        Verdict::NotFound | Verdict::DatasetNotFound => RequestOutcome::NotFound,
        Verdict::DeadLetter => RequestOutcome::Rejected,
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
