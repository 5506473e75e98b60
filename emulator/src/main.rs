// Owns the command line: flags → `Config`, logging setup, exit code.
// Must not contain emulator logic; everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bigquery_emulator::{
    Config, DEFAULT_LOAD_JOBS_PER_TABLE_PER_DAY, DEFAULT_SCHEMA_UPDATE_DELAY, FaultConfig,
    FaultScope, Limits, LoadLimits, TokenPolicy,
};
use clap::Parser;

/// A local stand-in for BigQuery's REST API (datasets, tables, insertAll, tabledata.list, load
/// jobs) and its Storage Write API (gRPC).
#[derive(Debug, Parser)]
#[command(name = "bigquery-emulator", version)]
struct Cli {
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free port (printed as `listening on HOST:PORT`).
    #[arg(long, default_value_t = 9050)]
    port: u16,
    /// Port for the Storage Write API (gRPC `BigQueryWrite`, plaintext HTTP/2); 0 picks a free
    /// port (printed as `grpc listening on HOST:PORT`). Omitted = not served.
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Directory for the durable store; omitted = in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Most rows accepted in one insertAll request (BigQuery: 50,000).
    #[arg(long, default_value_t = 50_000)]
    max_rows_per_request: usize,
    /// Largest insertAll request (measured uncompressed) or AppendRows request, in bytes
    /// (BigQuery: 10 MB).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Largest single row in bytes (BigQuery: 10 MB).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    max_row_bytes: usize,
    /// insertId de-duplication window in seconds (BigQuery: about a minute).
    #[arg(long, default_value_t = 60)]
    dedup_window_secs: u64,
    /// Added latency per request in scope, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests in scope answered 429 rateLimitExceeded.
    #[arg(long, default_value_t = 0.0)]
    error_429_rate: f64,
    /// Share of requests in scope answered 500 internalError.
    #[arg(long, default_value_t = 0.0)]
    error_500_rate: f64,
    /// Share of requests in scope answered 503 backendError.
    #[arg(long, default_value_t = 0.0)]
    error_503_rate: f64,
    /// Share of requests in scope whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Share of requests in scope carried out whose answer is lost (the connection closes).
    #[arg(long, default_value_t = 0.0)]
    drop_response_rate: f64,
    /// Share of load jobs that finish with a backendError instead of loading.
    #[arg(long, default_value_t = 0.0)]
    job_failure_rate: f64,
    /// Share of gRPC requests in scope answered UNAVAILABLE (an AppendRows call ends).
    #[arg(long, default_value_t = 0.0)]
    grpc_unavailable_rate: f64,
    /// Share of gRPC requests in scope answered RESOURCE_EXHAUSTED (an AppendRows call ends).
    #[arg(long, default_value_t = 0.0)]
    grpc_resource_exhausted_rate: f64,
    /// Share of gRPC requests in scope carried out whose connection then closes unanswered.
    #[arg(long, default_value_t = 0.0)]
    grpc_drop_rate: f64,
    /// Accept and discard insertAll bodies and AppendRows rows (count rows, answer success) for
    /// benchmarks.
    #[arg(long)]
    null_mode: bool,
    /// Which requests faults apply to.
    #[arg(long, value_enum, default_value_t = FaultScope::InsertAll)]
    fault_scope: FaultScope,
    /// Milliseconds after a schema change during which insertAll and Storage Write appends
    /// still check rows against the previous schema (BigQuery: "metadata changes are
    /// propagated within minutes").
    #[arg(long, default_value_t = DEFAULT_SCHEMA_UPDATE_DELAY.as_millis() as u64)]
    schema_update_delay_ms: u64,
    /// Milliseconds a job takes: PENDING for the first half, RUNNING for the second, then DONE
    /// (0: done before jobs.insert answers).
    #[arg(long, default_value_t = 500)]
    job_delay_ms: u64,
    /// Largest load job upload, and largest uncompressed load data, in bytes.
    #[arg(long, default_value_t = LoadLimits::default().max_bytes)]
    max_load_bytes: usize,
    /// Largest row of load data in bytes (BigQuery: 100 MB).
    #[arg(long, default_value_t = LoadLimits::default().max_row_bytes)]
    max_load_row_bytes: usize,
    /// Load jobs per table per day before they fail with quotaExceeded (BigQuery: 1,500).
    #[arg(long, default_value_t = DEFAULT_LOAD_JOBS_PER_TABLE_PER_DAY)]
    max_load_jobs_per_table_per_day: u64,
    /// Accept only this bearer token on the REST API (repeatable; others get 401 authError).
    /// Every token seen is listed at `GET /_emulator/auth` either way.
    #[arg(long = "require-token", value_name = "TOKEN")]
    require_tokens: Vec<String>,
}

impl Cli {
    fn into_config(self) -> Config {
        Config {
            host: self.host,
            port: self.port,
            grpc_port: self.grpc_port,
            data_dir: self.data_dir,
            limits: Limits {
                max_rows: self.max_rows_per_request,
                max_request_bytes: self.max_request_bytes,
                max_row_bytes: self.max_row_bytes,
            },
            load_limits: LoadLimits {
                max_bytes: self.max_load_bytes,
                max_row_bytes: self.max_load_row_bytes,
            },
            load_jobs_per_table_per_day: self.max_load_jobs_per_table_per_day,
            dedup_window: Duration::from_secs(self.dedup_window_secs),
            faults: FaultConfig {
                latency_ms: self.latency_ms,
                error_429_rate: self.error_429_rate,
                error_500_rate: self.error_500_rate,
                error_503_rate: self.error_503_rate,
                drop_rate: self.drop_rate,
                grpc_unavailable_rate: self.grpc_unavailable_rate,
                grpc_resource_exhausted_rate: self.grpc_resource_exhausted_rate,
                grpc_drop_rate: self.grpc_drop_rate,
                drop_response_rate: self.drop_response_rate,
                job_failure_rate: self.job_failure_rate,
                null_mode: self.null_mode,
                scope: self.fault_scope,
                schema_update_delay_ms: self.schema_update_delay_ms,
                job_delay_ms: self.job_delay_ms,
            },
            tokens: TokenPolicy {
                require: self.require_tokens,
                refuse: Vec::new(),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only for a terminal: a log file or a pipe (docker logs, CI) gets plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bigquery-emulator: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bigquery_emulator::run(cli.into_config())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bigquery-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
