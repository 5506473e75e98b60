//! `bigquery-emulator`: a local stand-in for the part of BigQuery's REST API that bqforward uses
//! (datasets, tables, `tabledata.insertAll`, `tabledata.list`), with fault injection and counters
//! for tests. See `emulator/README.md` for flags and admin paths.
//!
//! Storage: rows and metadata live in one [redb](https://docs.rs/redb) file under `--data-dir`
//! (pure Rust, ACID, crash-safe copy-on-write B-trees, one fsync per insertAll request), or in
//! redb's in-memory backend when no data dir is given, so both modes run the same code.
//!
//! Layout (data flows one way): `server` (sockets) → `routes` (HTTP, faults layer) →
//! `insert` / `schema` (pure validation) → `dedup` → `store` (redb). `stats`, `faults` and
//! `propagation` (when insertAll sees a schema change) are read by the routes and depend on
//! nothing but `schema`.

// Wires the stages together; the only module that knows them all. Must not hold request logic.

mod dedup;
mod error;
mod faults;
mod insert;
mod propagation;
mod routes;
mod schema;
mod server;
mod stats;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use faults::{FaultConfig, FaultScope};
pub use insert::Limits;
pub use propagation::DEFAULT_DELAY as DEFAULT_SCHEMA_UPDATE_DELAY;

/// Everything the emulator needs to start, parsed from the CLI by `main.rs`.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub data_dir: Option<PathBuf>,
    pub limits: Limits,
    pub dedup_window: Duration,
    pub faults: FaultConfig,
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

/// Opens the store, binds, prints `listening on HOST:PORT` on stdout, and serves until Ctrl-C
/// or SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    config.faults.validate().map_err(StartError::Faults)?;
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || store::Store::open(data_dir.as_deref()))
        .await
        .map_err(|e| store::StoreError::Backend(e.to_string()))??;
    let app = Arc::new(routes::App {
        store,
        faults: faults::Faults::new(config.faults.clone()),
        stats: stats::Stats::default(),
        dedup: dedup::Dedup::new(config.dedup_window),
        propagation: propagation::SchemaPropagation::default(),
        limits: config.limits,
    });
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: addr.clone(),
        source,
    })?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {local}");
        let _ = out.flush();
    }
    tracing::info!(%local, data_dir = ?config.data_dir, "bigquery-emulator started");
    server::serve(listener, routes::router(app), shutdown_signal()).await;
    Ok(())
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
