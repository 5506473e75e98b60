//! `bigquery_load`'s delivery of one buffered chunk: one load job. Steps: the table (exists?
//! where? created by the job?), the chunk's job if an earlier attempt or process made one
//! (found by its derived id), else the chunk written as NDJSON (gzipped with `<buffer>
//! compress gzip`) and uploaded with
//! jobs.insert; then jobs.get every `wait_job_interval` until DONE. The chunk leaves the
//! buffer only when its job is DONE without error, or its rows are in `<secondary>`.

use super::super::classify::{Failure, Verdict, classify};
use super::super::dead_letter::{DeadLetters, Rejected, reject};
use super::super::destination::TableKey;
use super::super::evolve::{Evolution, JobPlan, Rows};
use super::super::rows::Conversion;
use super::super::schema::Schema;
use super::super::service::{BigQueryClient, Connection, TableRef};
use super::super::tables::{AutoCreate, Tables, Waiting};
use super::job::{self, Create, JobError, JobState, LoadSettings};
use super::ndjson::{self, Encoding, LoadData, Ndjson};
use super::service::{LoadService, MULTIPART_MAX, UPLOAD_PIECE};
use crate::buffer::{Chunk, ChunkId, Outcome, Sink, blocking};
use crate::event::BoxFuture;
use crate::format::Inject;
use crate::internal_events::bigquery as events;
use crate::metrics::SinkDetail;
use bytes::Bytes;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// How long one delivery polls a job before handing the chunk back to the buffer (fluentd's
/// `delayed_commit_timeout` as the plugin sets it); the next attempt finds the same job.
const POLL_LIMIT: Duration = Duration::from_secs(1800);
/// Failed jobs.get in a row before the delivery is retried later.
const POLL_FAILURES: u32 = 5;
/// A chunk's jobs that failed transiently, at most (each retry takes the next job id).
const MAX_GENERATIONS: u32 = 10_000;
/// How often a job still PENDING or RUNNING is warned about while it is polled.
pub const SLOW_JOB_WARNING: Duration = Duration::from_secs(60);
/// Overrides `SLOW_JOB_WARNING` (seconds, a decimal number above 0): for tests, and for
/// operators whose jobs are always slow.
pub const SLOW_JOB_WARNING_ENV: &str = "BQFORWARD_LOAD_JOB_WARN_AFTER";

/// `SLOW_JOB_WARNING`, or `BQFORWARD_LOAD_JOB_WARN_AFTER` when set: `Err` says why a value set
/// is not taken (the default is then used).
pub fn slow_job_warning() -> Result<Duration, String> {
    let Some(text) = std::env::var(SLOW_JOB_WARNING_ENV)
        .ok()
        .filter(|t| !t.is_empty())
    else {
        return Ok(SLOW_JOB_WARNING);
    };
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!(
                "{SLOW_JOB_WARNING_ENV}={text:?} is not a number of seconds above 0; load jobs still running are warned about every {}s",
                SLOW_JOB_WARNING.as_secs()
            )
        })
}

pub struct LoadSink {
    pub id: String,
    pub connection: Connection,
    pub service: OnceCell<LoadService>,
    /// For the parts shared with bigquery_insert: fetch_schema, auto_create_dataset.
    pub client: OnceCell<BigQueryClient>,
    pub tables: Tables,
    pub dead_letters: DeadLetters,
    pub inject: Inject,
    pub conversion: Conversion,
    pub settings: LoadSettings,
    pub wait_job_interval: Duration,
    pub detail: Arc<SinkDetail>,
    /// Plain NDJSON, or gzipped (`<buffer> compress gzip`).
    pub encoding: Encoding,
    /// `schema_update_options ALLOW_FIELD_ADDITION`: new fields become columns of the job's
    /// schema.
    pub evolution: Option<Evolution>,
    /// A job still PENDING or RUNNING is warned about this often while it is polled.
    pub slow_job_warning: Duration,
    /// Per chunk in flight: the generation of its next job id, so a retry does not walk its
    /// failed jobs again. Rebuilt by walking after a restart.
    generations: Mutex<HashMap<ChunkId, u32>>,
    /// Upload buffers kept between jobs (`UploadBuffers`).
    buffers: UploadBuffers,
}

/// The upload buffers of finished jobs, lent to the next: each upload writes its pieces into
/// one buffer of about `UPLOAD_PIECE` bytes, and memory already faulted in is cheaper than
/// fresh pages for every job (2,400 page faults per job of a large chunk, about 3 % of its
/// CPU: docs/performance.md, Load jobs). At most one per delivery that ran at once is kept
/// (`flush_thread_count` of them, 9 MiB each), for as long as the output lives.
#[derive(Default)]
struct UploadBuffers(Mutex<Vec<Vec<u8>>>);

impl UploadBuffers {
    /// A buffer with room for a piece and the rows that overflow it, given back when the
    /// loan is dropped.
    fn take(&self) -> Lent<'_> {
        let kept = self.0.lock().ok().and_then(|mut kept| kept.pop());
        let buffer = kept.unwrap_or_else(|| Vec::with_capacity(UPLOAD_PIECE + UPLOAD_PIECE / 8));
        Lent {
            buffers: self,
            buffer,
        }
    }
}

/// An upload buffer lent by `UploadBuffers`.
struct Lent<'a> {
    buffers: &'a UploadBuffers,
    buffer: Vec<u8>,
}

impl Drop for Lent<'_> {
    /// Keeps the buffer for the next upload; one without the room of a piece is dropped.
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        if buffer.capacity() < UPLOAD_PIECE {
            return;
        }
        buffer.clear();
        if let Ok(mut kept) = self.buffers.0.lock() {
            kept.push(buffer);
        }
    }
}

/// The table as tables.get found it.
struct Destination {
    /// Where jobs run (the table's location), for jobs.get.
    location: Option<String>,
    /// The table is missing and the job creates it.
    create: bool,
    /// The table's `schema.fields` as tables.get gave them (an existing table).
    fields: Option<Vec<Value>>,
}

/// The rows a job loads and the schema they are converted with.
struct JobRows<'a> {
    /// The chunk's pending rows less those schema evolution sent to the dead letters
    /// (borrowed when it sent none: no copy of a large chunk's indices).
    indices: Cow<'a, [u32]>,
    schema: Option<Arc<Schema>>,
    /// Schema evolution's dead letters (conflicts, limits), written with the conversion's.
    dead: Vec<Rejected>,
    /// Schema evolution: the job's schema (the table's with the new columns).
    plan: Option<JobPlan>,
}

/// Why a delivery stopped short of Done.
enum Stop {
    Retry(Waiting),
    DeadLetter(Vec<Rejected>),
}

impl LoadSink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        connection: Connection,
        tables: Tables,
        dead_letters: DeadLetters,
        inject: Inject,
        conversion: Conversion,
        settings: LoadSettings,
        wait_job_interval: Duration,
        detail: Arc<SinkDetail>,
        encoding: Encoding,
        evolution: Option<Evolution>,
    ) -> Self {
        Self {
            id,
            connection,
            service: OnceCell::new(),
            client: OnceCell::new(),
            tables,
            dead_letters,
            inject,
            conversion,
            settings,
            wait_job_interval,
            detail,
            encoding,
            evolution,
            slow_job_warning: SLOW_JOB_WARNING,
            generations: Mutex::new(HashMap::new()),
            buffers: UploadBuffers::default(),
        }
    }

    async fn deliver(&self, chunk: &Chunk<TableKey>) -> Outcome {
        let key = &*chunk.key;
        let table = key.to_string();
        let pending = chunk.pending_indices();
        let stop = if let Some(why) = key.invalid() {
            // A name rendered from a tag or record that BigQuery cannot take.
            Stop::DeadLetter(reject(&pending, "invalid_destination", &why))
        } else {
            match self.load(chunk, &pending, &table).await {
                Ok(()) => {
                    self.forget(&chunk.id);
                    return Outcome::Done;
                }
                Err(stop) => stop,
            }
        };
        match stop {
            Stop::Retry(waiting) => Outcome::Retry {
                keep: None,
                error: waiting.error,
                after: waiting.after,
                quiet: waiting.quiet,
            },
            Stop::DeadLetter(dead) => {
                if self.dead_letters.write(chunk, &dead, &table).await {
                    self.forget(&chunk.id);
                    Outcome::Done
                } else {
                    Outcome::Retry {
                        keep: None,
                        error: "secondary output did not accept dead letters".into(),
                        after: None,
                        quiet: false,
                    }
                }
            }
        }
    }

    /// The chunk loaded (Ok), or why not.
    async fn load(
        &self,
        chunk: &Chunk<TableKey>,
        pending: &[u32],
        table: &str,
    ) -> Result<(), Stop> {
        let key = &*chunk.key;
        let service = self
            .service
            .get_or_try_init(|| LoadService::connect(&self.connection))
            .await
            .map_err(|e| Stop::Retry(Waiting::backoff(e)))?;
        let client = self
            .client
            .get_or_try_init(|| BigQueryClient::connect(&self.connection))
            .await
            .map_err(|e| Stop::Retry(Waiting::backoff(e)))?;
        let schema = self.tables.schema_for(client, key).await.map_err(|e| {
            tracing::error!(output = %self.id, table, error = %e, "no schema for the rows; they wait");
            Stop::Retry(Waiting::backoff(e))
        })?;
        let destination = self
            .destination(service, client, key, schema.as_deref(), pending)
            .await?;
        let location = self
            .settings
            .location
            .clone()
            .or(destination.location.clone());
        let mut rows = self.job_rows(chunk, pending, schema.clone(), &destination)?;

        // An earlier attempt (or process) may have made this chunk's job: walk its ids.
        let mut generation = self.generation(&chunk.id);
        let job_id = loop {
            let job_id = job::job_id(&chunk.id, key, generation);
            let Some(found) = service
                .job(&key.project, &job_id, location.as_deref())
                .await
                .map_err(|f| transient(&f))?
            else {
                break job_id;
            };
            // A job that fails while this attempt waits for it is retried after the backoff;
            // one found failed already is history: the walk goes on to the next id.
            let was_done = job::state(&found) != JobState::Running;
            match self
                .finish(service, key, &job_id, found, None, None)
                .await?
                .map(|e| self.raced(table, &rows, e))
            {
                Some(error) if error.retry && !was_done => {
                    self.set_generation(&chunk.id, generation + 1);
                    return Err(Stop::Retry(Waiting::backoff(format!(
                        "load job {job_id}: {}: {}",
                        error.reason, error.message
                    ))));
                }
                Some(error) if error.retry && generation < MAX_GENERATIONS => {
                    generation += 1;
                    self.set_generation(&chunk.id, generation);
                }
                Some(error) => {
                    return Err(self.job_rows_dead(chunk, pending, &rows, &error));
                }
                None => return Ok(()),
            }
        };

        let auto = self.tables.auto_create.as_ref();
        let create = match (destination.create, auto, rows.schema.as_deref()) {
            (true, Some(AutoCreate { extra }), Some(schema)) => Some(Create { schema, extra }),
            _ => None,
        };
        let grown = rows
            .plan
            .as_ref()
            .filter(|plan| plan.changes_schema() && !destination.create)
            .map(|plan| plan.fields.as_slice());
        let resource = job::resource(
            key,
            &job_id,
            location.as_deref(),
            &self.settings,
            create,
            grown,
        );
        let started = Instant::now();
        let dead = std::mem::take(&mut rows.dead);
        let (data, answer) = match self
            .upload(service, chunk, &rows, dead, &resource, table)
            .await?
        {
            Some(uploaded) => uploaded,
            // Every row was refused (and is in `<secondary>`): no job.
            None => return Ok(()),
        };
        let job = match answer {
            Ok(job) => {
                events::LoadJobStarted {
                    output: &self.id,
                    table,
                    job_id: &job_id,
                    rows: data.rows,
                    bytes: data.raw_len,
                }
                .emit(&self.detail);
                job
            }
            // The job exists: made by an attempt whose answer was lost. Find it next time.
            Err(Failure::Http { status: 409, .. }) => {
                match service
                    .job(&key.project, &job_id, location.as_deref())
                    .await
                {
                    Ok(Some(job)) => job,
                    _ => {
                        return Err(Stop::Retry(Waiting {
                            error: format!("job {job_id} exists; looking for it again"),
                            after: Some(self.wait_job_interval),
                            quiet: false,
                        }));
                    }
                }
            }
            Err(failure) => return Err(self.refused(&failure, pending, &data)),
        };
        match self
            .finish(service, key, &job_id, job, Some(started), Some(&data))
            .await?
            .map(|e| self.raced(table, &rows, e))
        {
            None => {
                if let (Some(evolution), Some(plan)) = (&self.evolution, &rows.plan) {
                    evolution.job_added(key, plan);
                }
                Ok(())
            }
            Some(error) if error.retry => {
                self.set_generation(&chunk.id, generation + 1);
                Err(Stop::Retry(Waiting::backoff(format!(
                    "load job {job_id}: {}: {}",
                    error.reason, error.message
                ))))
            }
            Some(error) => Err(Stop::DeadLetter(job_rows(pending, &data.rejected, &error))),
        }
    }

    /// The job's rows written as NDJSON while they are uploaded with jobs.insert: up to
    /// `MULTIPART_MAX` bytes in one multipart request, a larger upload in `UPLOAD_PIECE`
    /// pieces of a resumable session, each sent as soon as it is written (one piece in memory,
    /// not the chunk's whole NDJSON). Rows conversion refused, and schema evolution's `dead`,
    /// go to `<secondary>` before the last byte is sent, which is what creates the job: the
    /// order a crash cannot undo. `None`: no row to load (no job); else the data's account and
    /// jobs.insert's answer. The buffer the pieces are written into is lent by
    /// `self.buffers` and given back after.
    async fn upload(
        &self,
        service: &LoadService,
        chunk: &Chunk<TableKey>,
        rows: &JobRows<'_>,
        dead: Vec<Rejected>,
        resource: &Value,
        table: &str,
    ) -> Result<Option<(LoadData, Result<Value, Failure>)>, Stop> {
        let mut lent = self.buffers.take();
        let body = &mut lent.buffer;
        let project = &chunk.key.project;
        let evolving = self.evolution.is_some() && self.settings.adds();
        let mut ndjson = Ndjson::new(
            &chunk.entries,
            &rows.indices,
            rows.schema.as_deref(),
            self.inject.clone(),
            self.conversion,
            evolving,
            self.encoding,
        );
        let mut dead = Some(dead);
        if fill(&mut ndjson, body, MULTIPART_MAX)? {
            self.dead_letters_first(chunk, &mut ndjson, &mut dead, table)
                .await?;
            if ndjson.rows == 0 {
                return Ok(None);
            }
            let answer = service.insert_job(project, resource, body).await;
            return Ok(Some((ndjson.into_data(Vec::new()), answer)));
        }
        // What a refused upload is judged against: every row's conversion.
        let refused = |mut ndjson: Ndjson<'_>, dead: Option<Vec<Rejected>>, failure| {
            blocking(|| ndjson.drain())
                .map_err(|e| Stop::Retry(Waiting::backoff(format!("load data: {e}"))))?;
            ndjson.rejected.extend(dead.into_iter().flatten());
            Ok(Some((ndjson.into_data(Vec::new()), Err(failure))))
        };
        let session = match service.open_session(project, resource).await {
            Ok(session) => session,
            Err(failure) => return refused(ndjson, dead, failure),
        };
        let mut offset = 0u64;
        let mut finished = false;
        // The rows written past a piece's end, while the piece is sent (less than a stage).
        let mut tail = Vec::new();
        loop {
            while body.len() <= UPLOAD_PIECE && !finished {
                finished = fill(&mut ndjson, body, UPLOAD_PIECE)?;
            }
            if body.len() > UPLOAD_PIECE {
                // More follows: a piece of exactly UPLOAD_PIECE (a multiple of 256 KiB). The
                // bytes past it wait aside; the piece is sent without a copy, its buffer taken
                // back and written on from them (memory already faulted in, not fresh pages
                // for every piece, nor a second buffer).
                tail.clear();
                tail.extend_from_slice(&body[UPLOAD_PIECE..]);
                body.truncate(UPLOAD_PIECE);
                let piece = Bytes::from(std::mem::take(body));
                let sent = service.send_piece(&session, offset, &piece, false).await;
                *body = reclaim(piece);
                body.extend_from_slice(&tail);
                if let Err(failure) = sent {
                    return refused(ndjson, dead, failure);
                }
                offset += UPLOAD_PIECE as u64;
                continue;
            }
            self.dead_letters_first(chunk, &mut ndjson, &mut dead, table)
                .await?;
            let piece = Bytes::from(std::mem::take(body));
            let answer = service
                .send_piece(&session, offset, &piece, true)
                .await
                .and_then(|job| {
                    job.ok_or_else(|| {
                        Failure::Unreadable("the upload ended without the job".into())
                    })
                });
            *body = reclaim(piece);
            return Ok(Some((ndjson.into_data(Vec::new()), answer)));
        }
    }

    /// Writes the rows conversion refused, with schema evolution's `dead`, to `<secondary>`
    /// (once the conversion has ended); they stay counted in `ndjson.rejected`.
    async fn dead_letters_first(
        &self,
        chunk: &Chunk<TableKey>,
        ndjson: &mut Ndjson<'_>,
        dead: &mut Option<Vec<Rejected>>,
        table: &str,
    ) -> Result<(), Stop> {
        ndjson.rejected.extend(dead.take().into_iter().flatten());
        if !ndjson.rejected.is_empty()
            && !self
                .dead_letters
                .write(chunk, &ndjson.rejected, table)
                .await
        {
            return Err(Stop::Retry(Waiting::backoff(
                "secondary output did not accept dead letters".into(),
            )));
        }
        Ok(())
    }

    /// tables.get: the table's location, or whether the job should create it. A missing
    /// dataset waits (created with `auto_create_dataset`); a missing table without
    /// `auto_create_table` sends the rows to `<secondary>`, as the plugin does.
    async fn destination(
        &self,
        service: &LoadService,
        client: &BigQueryClient,
        key: &TableKey,
        schema: Option<&Schema>,
        pending: &[u32],
    ) -> Result<Destination, Stop> {
        let table_ref = TableRef {
            project: &key.project,
            dataset: &key.dataset,
            table: key.base_table(),
        };
        let failure = match service.table(&table_ref).await {
            Ok(table) => {
                self.tables.dataset_found(key);
                return Ok(Destination {
                    location: table["location"].as_str().map(str::to_owned),
                    create: false,
                    fields: Some(
                        table["schema"]["fields"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    ),
                });
            }
            Err(failure) => failure,
        };
        let e = failure.to_string();
        match classify(&failure) {
            Verdict::DatasetNotFound => Err(Stop::Retry(
                self.tables.on_dataset_missing(client, key, e).await,
            )),
            Verdict::NotFound if self.tables.auto_create.is_some() && schema.is_some() => {
                // The job runs where the dataset is; jobs.get needs that outside US and EU.
                let dataset = service
                    .dataset(&key.project, &key.dataset)
                    .await
                    .map_err(|f| transient(&f))?;
                Ok(Destination {
                    location: dataset["location"].as_str().map(str::to_owned),
                    create: true,
                    fields: None,
                })
            }
            Verdict::NotFound if self.tables.auto_create.is_some() => Err(Stop::Retry(
                Waiting::backoff(format!("{e}; auto_create_table has no schema for {key}")),
            )),
            Verdict::NotFound => Err(Stop::DeadLetter(reject(pending, "not_found", &e))),
            Verdict::DeadLetter => Err(Stop::DeadLetter(reject(pending, "rejected", &e))),
            _ => Err(Stop::Retry(Waiting::backoff(e))),
        }
    }

    /// Polls `job` until DONE: `None` when it loaded, else its error.
    async fn finish(
        &self,
        service: &LoadService,
        key: &TableKey,
        job_id: &str,
        mut job: Value,
        started: Option<Instant>,
        data: Option<&LoadData>,
    ) -> Result<Option<JobError>, Stop> {
        let table = key.to_string();
        let polling = Instant::now();
        let mut warned = 0u32;
        let mut failures = 0;
        let location = job::location(&job);
        loop {
            match job::state(&job) {
                JobState::Loaded { rows, bad } => {
                    events::LoadJobDone {
                        output: &self.id,
                        table: &table,
                        job_id,
                        rows,
                        bytes: data.map_or(0, |d| d.raw_len),
                        bad_records: bad,
                        elapsed: started.map(|s| s.elapsed()),
                    }
                    .emit(&self.detail);
                    return Ok(None);
                }
                JobState::Failed(error) => {
                    events::LoadJobFailed {
                        output: &self.id,
                        table: &table,
                        job_id,
                        reason: &error.reason,
                        message: &error.message,
                        retry: error.retry,
                    }
                    .emit(&self.detail);
                    return Ok(Some(error));
                }
                JobState::Running => {}
            }
            let waited = polling.elapsed();
            if waited >= self.slow_job_warning.saturating_mul(warned + 1) {
                // Counted from when this attempt began to poll: a job found running by a
                // later attempt (or process) says how long it has run in `creationTime`.
                events::LoadJobSlow {
                    output: &self.id,
                    table: &table,
                    job_id,
                    state: job["status"]["state"].as_str().unwrap_or("unknown"),
                    waited,
                    first: warned == 0,
                }
                .emit(&self.detail);
                warned = (waited.as_secs_f64() / self.slow_job_warning.as_secs_f64()) as u32;
            }
            if waited >= POLL_LIMIT {
                return Err(Stop::Retry(Waiting {
                    error: format!("load job {job_id} not done after {POLL_LIMIT:?}"),
                    after: Some(self.wait_job_interval),
                    quiet: false,
                }));
            }
            tokio::time::sleep(self.wait_job_interval).await;
            match service.job(&key.project, job_id, location.as_deref()).await {
                Ok(Some(next)) => {
                    failures = 0;
                    job = next;
                }
                Ok(None) => {
                    return Err(Stop::Retry(Waiting::backoff(format!(
                        "load job {job_id} not found while polling"
                    ))));
                }
                Err(failure) => {
                    failures += 1;
                    if failures >= POLL_FAILURES {
                        return Err(transient(&failure));
                    }
                }
            }
        }
    }

    /// The rows the job loads. With schema evolution, the fields the table lacks (the
    /// schema a job that creates the table gives it) become new columns of the job's schema
    /// (`Evolution::plan_job`); rows whose values conflict with a column, or whose field
    /// BigQuery cannot have, go to the dead letters.
    fn job_rows<'a>(
        &self,
        chunk: &Chunk<TableKey>,
        pending: &'a [u32],
        schema: Option<Arc<Schema>>,
        destination: &Destination,
    ) -> Result<JobRows<'a>, Stop> {
        let plain = |schema| JobRows {
            indices: Cow::Borrowed(pending),
            schema,
            dead: Vec::new(),
            plan: None,
        };
        let Some(evolution) = &self.evolution else {
            return Ok(plain(schema));
        };
        let fields = match (&destination.fields, &schema) {
            (Some(fields), _) => fields.clone(),
            (None, Some(schema)) => schema.to_json()["fields"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            (None, None) => return Ok(plain(schema)),
        };
        let mut inject = self.inject.clone();
        let rows = Rows {
            entries: &chunk.entries,
            indices: pending,
            inject: &mut inject,
            conversion: self.conversion,
        };
        let mut plan = evolution
            .plan_job(
                &chunk.key,
                &fields,
                self.settings.adds(),
                self.settings.relaxes(),
                rows,
            )
            .map_err(|e| Stop::Retry(Waiting::backoff(e)))?;
        Ok(JobRows {
            indices: Cow::Owned(std::mem::take(&mut plan.ready)),
            schema: Some(Arc::clone(&plan.schema)),
            dead: std::mem::take(&mut plan.dead),
            plan: Some(plan),
        })
    }

    /// The chunk's NDJSON, built on this worker thread (a 1 GiB chunk takes seconds).
    fn data(
        &self,
        chunk: &Chunk<TableKey>,
        pending: &[u32],
        schema: Option<&Schema>,
    ) -> Result<LoadData, Stop> {
        let evolving = self.evolution.is_some() && self.settings.adds();
        let build = || {
            ndjson::build(
                &chunk.entries,
                pending,
                schema,
                &self.inject,
                self.conversion,
                evolving,
                self.encoding,
            )
        };
        blocking(build).map_err(|e| Stop::Retry(Waiting::backoff(format!("load data: {e}"))))
    }

    /// A job found failed for good by an earlier attempt: its rows (the chunk's, less those
    /// conversion refused, which went to `<secondary>` before the job) follow.
    fn job_rows_dead(
        &self,
        chunk: &Chunk<TableKey>,
        pending: &[u32],
        rows: &JobRows<'_>,
        error: &JobError,
    ) -> Stop {
        match self.data(chunk, &rows.indices, rows.schema.as_deref()) {
            Ok(mut data) => {
                // Conversion errors and conflicts went to `<secondary>` before the job.
                data.rejected.extend(rows.dead.iter().cloned());
                Stop::DeadLetter(job_rows(pending, &data.rejected, error))
            }
            Err(stop) => stop,
        }
    }

    /// jobs.insert refused: transient answers retry; the rest sends the job's rows to
    /// `<secondary>` with the answer.
    fn refused(&self, failure: &Failure, pending: &[u32], data: &LoadData) -> Stop {
        match classify(failure) {
            Verdict::DeadLetter | Verdict::Split => {
                let error = JobError {
                    retry: false,
                    reason: "rejected".into(),
                    location: String::new(),
                    message: failure.to_string(),
                };
                Stop::DeadLetter(job_rows(pending, &data.rejected, &error))
            }
            _ => transient(failure),
        }
    }

    /// A job that changed the schema and failed because the table changed since it was read
    /// (another writer added a column: "Field x is missing in new schema", or the same column
    /// with another type) is loaded again after the table is read again, not dead-lettered.
    fn raced(&self, table: &str, rows: &JobRows<'_>, mut error: JobError) -> JobError {
        let grew = rows.plan.as_ref().is_some_and(JobPlan::changes_schema);
        if grew
            && (error.message.contains("is missing in new schema")
                || error.message.contains("has changed type from"))
        {
            tracing::warn!(output = %self.id, table, error = %error.message,
                "another writer changed the table while the job ran; loading again with its schema read again");
            error.retry = true;
        }
        error
    }

    fn generation(&self, chunk: &ChunkId) -> u32 {
        self.generations
            .lock()
            .ok()
            .and_then(|g| g.get(chunk).copied())
            .unwrap_or(0)
    }

    fn set_generation(&self, chunk: &ChunkId, generation: u32) {
        if let Ok(mut g) = self.generations.lock() {
            g.insert(*chunk, generation);
        }
    }

    fn forget(&self, chunk: &ChunkId) {
        if let Ok(mut g) = self.generations.lock() {
            g.remove(chunk);
        }
    }
}

/// `Ndjson::fill` on this worker thread.
fn fill(ndjson: &mut Ndjson<'_>, body: &mut Vec<u8>, want: usize) -> Result<bool, Stop> {
    blocking(|| ndjson.fill(body, want))
        .map_err(|e| Stop::Retry(Waiting::backoff(format!("load data: {e}"))))
}

/// A sent piece's buffer, emptied, when the request let go of it (`send_piece` returns with
/// the caller's handle the only one); else a new one.
fn reclaim(piece: Bytes) -> Vec<u8> {
    match piece.try_into_mut() {
        Ok(buffer) => {
            let mut buffer = Vec::from(buffer);
            buffer.clear();
            buffer
        }
        Err(_) => Vec::with_capacity(UPLOAD_PIECE + UPLOAD_PIECE / 8),
    }
}

fn transient(failure: &Failure) -> Stop {
    Stop::Retry(Waiting::backoff(failure.to_string()))
}

/// The job's rows (`pending` less those conversion `rejected`) as dead letters with its error.
fn job_rows(pending: &[u32], rejected: &[Rejected], error: &JobError) -> Vec<Rejected> {
    let refused: std::collections::HashSet<u32> = rejected.iter().map(|r| r.index).collect();
    pending
        .iter()
        .filter(|i| !refused.contains(i))
        .map(|&index| Rejected {
            index,
            reason: error.reason.clone(),
            location: error.location.clone(),
            message: error.message.clone(),
        })
        .collect()
}

impl Sink<TableKey> for LoadSink {
    fn write<'a>(&'a self, chunk: &'a Chunk<TableKey>) -> BoxFuture<'a, Outcome> {
        Box::pin(self.deliver(chunk))
    }

    fn give_up<'a>(&'a self, chunk: &'a Chunk<TableKey>, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dead = reject(&chunk.pending_indices(), "retries_exhausted", reason);
            let table = chunk.key.to_string();
            self.forget(&chunk.id);
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
