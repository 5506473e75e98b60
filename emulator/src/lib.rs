//! `bigquery-emulator`: a local stand-in for the part of BigQuery's REST API that bqforward uses
//! (datasets, tables, `tabledata.insertAll`, `tabledata.list`, load jobs with their uploads and
//! jobs.get/list/cancel) and for the Storage Write API (`BigQueryWrite` over gRPC, with
//! `--grpc-port`), with fault injection and counters for tests. See `emulator/README.md` for
//! flags and admin paths.
//!
//! Storage: rows and metadata live in one [redb](https://docs.rs/redb) file under `--data-dir`
//! (pure Rust, ACID, crash-safe copy-on-write B-trees, one fsync per insertAll request or append),
//! or in redb's in-memory backend when no data dir is given, so both modes run the same code.
//!
//! Layout (data flows one way): `server` (sockets) → `routes` (HTTP, faults layer) →
//! `insert` / `schema` (pure validation) → `dedup` → `store` (redb); for load jobs, `routes` →
//! `uploads` (resumable sessions) → `jobs` (states, dispositions) → `load` (pure: data, schema,
//! bad records) → `store`; and `grpc` (sockets, RPCs, AppendRows) → `proto_rows` (pure row
//! decoding) → `store`. `stats`, `faults` and `propagation` (when insertAll sees a schema
//! change) are read by both sides and depend on nothing but `schema`.

// Wires the stages together; the only module that knows them all. Must not hold request logic.

mod auth;
mod dedup;
mod error;
mod faults;
mod grpc;
mod insert;
mod jobs;
mod load;
mod propagation;
mod proto_rows;
mod routes;
mod schema;
mod server;
mod stats;
mod store;
mod table;
mod uploads;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use auth::TokenPolicy;
pub use faults::{FaultConfig, FaultScope};
pub use insert::Limits;
pub use jobs::DEFAULT_LOAD_JOBS_PER_TABLE_PER_DAY;
pub use load::LoadLimits;
pub use propagation::DEFAULT_DELAY as DEFAULT_SCHEMA_UPDATE_DELAY;

/// Everything a REST handler or a gRPC service may use.
pub struct App {
    pub store: store::Store,
    pub faults: faults::Faults,
    pub stats: stats::Stats,
    pub dedup: dedup::Dedup,
    pub propagation: propagation::SchemaPropagation,
    pub limits: Limits,
    pub load_limits: LoadLimits,
    /// Load jobs per table per day before `quotaExceeded`.
    pub load_jobs_per_table_per_day: u64,
    pub uploads: uploads::Sessions,
    /// Bearer tokens seen, and which are accepted (`--require-token`, `/_emulator/auth`).
    pub tokens: auth::Tokens,
}

pub type AppState = Arc<App>;

/// Everything the emulator needs to start, parsed from the CLI by `main.rs`.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Port for the Storage Write API (gRPC); `None` = not served.
    pub grpc_port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub limits: Limits,
    pub load_limits: LoadLimits,
    pub load_jobs_per_table_per_day: u64,
    pub dedup_window: Duration,
    pub faults: FaultConfig,
    /// Which bearer tokens the API accepts (default: any).
    pub tokens: auth::TokenPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open data dir: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid fault settings: {0}")]
    Faults(String),
}

/// Opens the store, binds, prints `listening on HOST:PORT` (and `grpc listening on HOST:PORT`
/// with a gRPC port) on stdout, and serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    config.faults.validate().map_err(StartError::Faults)?;
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || store::Store::open(data_dir.as_deref()))
        .await
        .map_err(|e| store::StoreError::Backend(e.to_string()))??;
    let app = Arc::new(App {
        store,
        faults: faults::Faults::new(config.faults.clone()),
        stats: stats::Stats::default(),
        dedup: dedup::Dedup::new(config.dedup_window),
        propagation: propagation::SchemaPropagation::default(),
        limits: config.limits,
        load_limits: config.load_limits,
        load_jobs_per_table_per_day: config.load_jobs_per_table_per_day,
        uploads: uploads::Sessions::default(),
        tokens: auth::Tokens::new(config.tokens.clone()),
    });
    // Jobs a previous run left PENDING or RUNNING carry on from where they were.
    routes::resume_jobs(&app);
    let (listener, local) = bind(&config.host, config.port).await?;
    let grpc = match config.grpc_port {
        Some(port) => Some(bind(&config.host, port).await?),
        None => None,
    };
    {
        // Tests read these lines to learn the ports: the REST one first, always.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {local}");
        if let Some((_, grpc_local)) = &grpc {
            let _ = writeln!(out, "grpc listening on {grpc_local}");
        }
        let _ = out.flush();
    }
    tracing::info!(%local, grpc = ?grpc.as_ref().map(|g| g.1), data_dir = ?config.data_dir, "bigquery-emulator started");
    let shutdown = CancellationToken::new();
    let grpc_task = grpc
        .map(|(listener, _)| tokio::spawn(grpc::serve(listener, app.clone(), shutdown.clone())));
    let signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    server::serve(listener, routes::router(app), shutdown.cancelled_owned()).await;
    if let Some(task) = grpc_task {
        let _ = task.await;
    }
    Ok(())
}

async fn bind(host: &str, port: u16) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let addr = format!("{host}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
