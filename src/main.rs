//! The `bqforward` command line: run, check, health, replay, and fluentd's own flags where they map
//! (`bqforward -c fluent.conf`, `--dry-run`). Nothing else lives here.

use bqforward::metrics::http::{DEFAULT_HEALTH_URL, probe};
use bqforward::pipeline::Pipeline;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bqforward",
    version,
    about = "A fluentd-compatible Forward protocol aggregator for BigQuery",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command: run the config (`bqforward -c fluent.conf`, as `fluentd -c`).
    #[command(flatten)]
    run: RunArgs,
    /// Check the config and exit, as `fluentd --dry-run`.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Parse and validate the config, print the resolved pipeline and every problem found;
    /// non-zero exit on error.
    Check(CheckArgs),
    /// Send the events of files bqforward wrote (the file output in json or out_file format,
    /// <secondary> dead letters; gzip or not) once through the config's pipeline, e.g. dead
    /// letters after fixing their table. Progress and a summary on stderr; non-zero exit when
    /// any event failed.
    Replay(ReplayArgs),
    /// Exit 0 when the local instance is ready (GET /readyz answers 200): for container
    /// health checks in images without curl.
    Health {
        /// The readiness URL (plain http).
        #[arg(long, env = "BQFORWARD_HEALTH_URL", default_value = DEFAULT_HEALTH_URL)]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// Config file in fluentd's format (as `fluentd -c`).
    #[arg(short = 'c', long = "config", env = "BQFORWARD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct LogArgs {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output (-q warn, -qq error).
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    log: LogArgs,
    /// Route every event with this tag, to the <match> that takes it (lines of the json
    /// format carry no tag; others keep their own without it).
    #[arg(long = "match", value_name = "TAG")]
    tag: Option<String>,
    /// The <label> events enter (default: the @label the config's sources send to, when they
    /// all send to one; else the root).
    #[arg(long, value_name = "@NAME")]
    label: Option<String>,
    /// How long the outputs may take to deliver once every line is read; what is left then
    /// goes to their <secondary> (and counts as failed).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Files or directories (read recursively, in name order).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    log: LogArgs,
    /// How long outputs may flush after SIGTERM before what is left is kept on disk (file
    /// buffers, spills) or dead-lettered; keep it under the orchestrator's stop timeout
    /// (ECS: 30s).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    shutdown_timeout: std::time::Duration,
    /// Threads that run the pipeline (default: one per CPU). Where bqforward shares its CPUs
    /// with other work (a sidecar beside the application), fewer threads spend less CPU per
    /// event: they hand less work to each other.
    #[arg(long, env = "BQFORWARD_THREADS")]
    threads: Option<std::num::NonZeroUsize>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    bqforward::config::value::parse_time(text)
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check) = match cli.command {
        Some(Command::Health { url, timeout }) => return health(&url, timeout),
        Some(Command::Replay(replay_args)) => return replay(replay_args),
        Some(Command::Check(check)) => (
            RunArgs {
                config: check.config,
                log: check.log,
                shutdown_timeout: std::time::Duration::ZERO,
                threads: None,
            },
            true,
        ),
        Some(Command::Run(run)) => (run, false),
        None => (cli.run, cli.dry_run),
    };
    let Some(config_path) = args.config.config.clone() else {
        eprintln!("error: no config file: pass -c FILE (fluentd's fluent.conf format)");
        return ExitCode::from(2);
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("bqforward-rt");
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Outputs start their flush workers as they are built, so building needs the runtime.
    runtime.block_on(async {
        let root = match bqforward::config::parse_file(&config_path) {
            Ok(root) => root,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        let system = Pipeline::system_of(&root).unwrap_or_default();
        init_logging(&args.log, system.log_level.as_deref());
        let pipeline = match Pipeline::from_root(&root) {
            Ok(pipeline) => pipeline,
            Err(errors) => {
                for err in &errors.0 {
                    eprintln!("error: {err}");
                }
                if errors.0.len() > 1 {
                    eprintln!("{} errors in {}", errors.0.len(), config_path.display());
                }
                return ExitCode::FAILURE;
            }
        };
        for warning in &pipeline.warnings {
            tracing::warn!("{warning}");
        }
        for note in &pipeline.notes {
            tracing::info!("{note}");
        }
        if check {
            print!("{}", pipeline.describe());
            println!("config OK: {}", config_path.display());
            return ExitCode::SUCCESS;
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config_path.display(), "bqforward starting");
        match bqforward::run(pipeline, shutdown, args.shutdown_timeout).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn replay(args: ReplayArgs) -> ExitCode {
    let Some(config_path) = args.config.config.clone() else {
        eprintln!("error: no config file: pass -c FILE (fluentd's fluent.conf format)");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bqforward-replay")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut root = match bqforward::config::parse_file(&config_path) {
            Ok(root) => root,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        let system = Pipeline::system_of(&root).unwrap_or_default();
        init_logging(&args.log, system.log_level.as_deref());
        let source_label = bqforward::replay::replay_config(&mut root);
        let pipeline = match Pipeline::from_root(&root) {
            Ok(pipeline) => pipeline,
            Err(errors) => {
                for err in &errors.0 {
                    eprintln!("error: {err}");
                }
                return ExitCode::FAILURE;
            }
        };
        let interrupt = CancellationToken::new();
        tokio::spawn(on_replay_signals(interrupt.clone()));
        let options = bqforward::replay::ReplayOptions {
            tag: args.tag,
            label: args.label.or(source_label),
            timeout: args.timeout,
        };
        let summary = bqforward::replay::replay(pipeline, &args.paths, &options, interrupt).await;
        eprintln!("{summary}");
        if summary.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn health(url: &str, timeout: u64) -> ExitCode {
    match probe(url, std::time::Duration::from_secs(timeout.max(1))) {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("unhealthy: {url} answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT as they come.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some(Self { term, int }),
            _ => {
                tracing::error!("cannot install signal handlers");
                None
            }
        }
    }

    /// The next one's name and number.
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", 15),
            _ = self.int.recv() => ("SIGINT", 2),
        }
    }
}

async fn on_signal(shutdown: CancellationToken) {
    let Some(mut signals) = Signals::install() else {
        return;
    };
    let (name, _) = signals.next().await;
    tracing::info!("{name} received");
    shutdown.cancel();
}

/// A replay's SIGINT and SIGTERM: the first stops the reading (what was read is still
/// delivered, within `--timeout`); a second exits at once (status 128 + the signal), as a
/// replay killed outright: a read blocked on a slow file, or a wait on an output that cannot
/// deliver, need not be sat out.
async fn on_replay_signals(interrupt: CancellationToken) {
    let Some(mut signals) = Signals::install() else {
        return;
    };
    signals.next().await;
    eprintln!(
        "replay: interrupted: no more lines are read; what was read is still delivered (within --timeout); interrupt again to stop at once"
    );
    interrupt.cancel();
    let (_, number) = signals.next().await;
    eprintln!(
        "replay: interrupted again: stopping at once; events read and not yet delivered are lost (the files are unchanged)"
    );
    std::process::exit(128 + number);
}

fn init_logging(cli: &LogArgs, system_level: Option<&str>) {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = match system_level.unwrap_or("info") {
        "fatal" | "error" => 0,
        "warn" => 1,
        "debug" => 3,
        "trace" => 4,
        _ => 2,
    };
    let level = (base + i32::from(cli.verbose) - i32::from(cli.quiet)).clamp(0, 4) as usize;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LEVELS[level]));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
