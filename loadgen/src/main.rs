//! bqforward-loadgen: a bounded Forward-protocol load generator for the end-to-end benchmark.
//! Sends realistic records in any mode over N connections to 127.0.0.1 only, bounded in
//! count and time, and reports rate, the target's CPU per event, peak RSS and ack latency.

mod conn;
mod probe;
mod records;

use bqforward::codec;
use bqforward::event::EventTime;
use clap::{Parser, ValueEnum};
use probe::Emulator;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Hard bounds, whatever the arguments say.
const MAX_EVENTS: u64 = 1_000_000_000;
const MAX_SECONDS: f64 = 600.0;

#[derive(Parser, Debug)]
#[command(
    version,
    args_override_self = true,
    about = "Forward-protocol load for bqforward (127.0.0.1 only), with CPU, RSS and ack latency"
)]
struct Args {
    /// Forward port on 127.0.0.1 (no other host can be targeted).
    #[arg(long, default_value_t = 24224)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Mode::Packed)]
    mode: Mode,
    /// Ask for an ack per chunk (per message in Message mode) and time it.
    #[arg(long)]
    ack: bool,
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Events to send in total (at most 1e9).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per chunk (per write in Message mode).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Unacked chunks allowed in flight per connection (in Message mode: writes).
    #[arg(long, default_value_t = 2)]
    window: usize,
    /// Total events per second; unset = as fast as the server acks.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop writing after this many seconds even if events remain (at most 600).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds to wait for acks, rows or idleness after the last write.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    #[arg(long, default_value = "app.bench")]
    tag: String,
    /// The process under load: its CPU time and peak RSS are reported.
    #[arg(long)]
    pid: Option<u32>,
    /// bigquery-emulator base URL (http://127.0.0.1:PORT), for `--until rows`.
    #[arg(long)]
    emulator: Option<String>,
    /// When the run is complete: every ack received; the emulator has received every row;
    /// or the target's CPU time stopped growing (for servers that flush on a timer).
    #[arg(long, value_enum, default_value_t = Until::Acks)]
    until: Until,
    /// The emulator's counter `--until rows` waits on: `rows_received` (insertAll, Storage
    /// Write), `rows_loaded` (load jobs).
    #[arg(long, default_value = "rows_received")]
    rows_counter: String,
    /// Seconds without CPU growth that count as idle (`--until idle`).
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Name of the scenario in the report row.
    #[arg(long, default_value = "run")]
    label: String,
    /// Print the BigQuery schema of the generated records (for `schema_path`) and exit.
    #[arg(long)]
    print_schema: bool,
}

/// The Forward mode to send in, as the command line names it.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Message,
    Forward,
    Packed,
    Compressed,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Until {
    Acks,
    Rows,
    Idle,
}

impl Mode {
    fn packing(self) -> codec::Mode {
        match self {
            Mode::Message => codec::Mode::Message,
            Mode::Forward => codec::Mode::Forward,
            Mode::Packed => codec::Mode::PackedForward,
            Mode::Compressed => codec::Mode::CompressedPackedForward,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_schema {
        print!("{}", records::SCHEMA_JSON);
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bqforward-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Totals {
    events: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

fn run(args: &Args) -> Result<(), String> {
    let events = args.events.clamp(1, MAX_EVENTS);
    let connections = args.connections.clamp(1, 1024);
    let pid = args.pid.map(|p| p.to_string());
    let emulator = args.emulator.as_deref().map(Emulator::parse).transpose()?;
    if args.until == Until::Rows && emulator.is_none() {
        return Err("--until rows needs --emulator".into());
    }
    if args.until == Until::Idle && pid.is_none() {
        return Err("--until idle needs --pid".into());
    }
    let rows_before = match &emulator {
        Some(e) if args.until == Until::Rows => e.counter(&args.rows_counter)?,
        _ => 0,
    };
    let cpu_before = pid.as_deref().and_then(probe::cpu_seconds);
    let self_before = probe::cpu_seconds("self");
    let load = probe::load_average();
    let start = Instant::now();
    let totals = send(args, events, connections, start)?;
    let acked = start.elapsed();
    let done = match args.until {
        Until::Acks => acked,
        Until::Rows => wait_rows(
            emulator.as_ref().ok_or("no emulator")?,
            &args.rows_counter,
            rows_before + totals.events,
            start,
            args.timeout,
        )?,
        Until::Idle => wait_idle(
            pid.as_deref().unwrap_or("self"),
            start,
            args.idle,
            args.timeout,
        ),
    };
    if args.until != Until::Idle {
        // Let the last responses and timers finish before reading the CPU time.
        std::thread::sleep(Duration::from_millis(300));
    }
    let cpu = match (cpu_before, pid.as_deref().and_then(probe::cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let rss = pid.as_deref().and_then(probe::peak_rss_mib);
    let gen_cpu = match (self_before, probe::cpu_seconds("self")) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    report(args, &totals, done, acked, cpu, rss, gen_cpu, &load);
    Ok(())
}

fn send(args: &Args, events: u64, connections: u32, start: Instant) -> Result<Totals, String> {
    let seconds = args.duration.clamp(0.1, MAX_SECONDS);
    let send_until = start + Duration::from_secs_f64(seconds);
    let give_up = send_until + Duration::from_secs_f64(args.timeout.clamp(1.0, MAX_SECONDS));
    let time = EventTime::now();
    let per_conn = events / u64::from(connections);
    let handles: Vec<_> = (0..connections)
        .map(|conn| {
            let extra = u64::from(conn == 0) * (events % u64::from(connections));
            let plan = conn::Plan {
                port: args.port,
                conn,
                packing: args.mode.packing(),
                tag: args.tag.clone(),
                events: per_conn + extra,
                batch: args.batch.clamp(1, 1_000_000),
                ack: args.ack,
                window: args.window,
                rate: args.rate.map(|r| r.max(1.0) / f64::from(connections)),
                send_until,
                give_up,
                time,
            };
            std::thread::spawn(move || conn::run(plan))
        })
        .collect();
    let mut totals = Totals {
        events: 0,
        bytes: 0,
        latencies_us: Vec::new(),
    };
    for handle in handles {
        let outcome = handle
            .join()
            .map_err(|_| "connection thread panicked".to_string())??;
        totals.events += outcome.events;
        totals.bytes += outcome.bytes;
        totals.latencies_us.extend(outcome.latencies_us);
    }
    Ok(totals)
}

/// Polls the emulator until it has received `target` rows; returns when it had.
fn wait_rows(
    emulator: &Emulator,
    counter: &str,
    target: u64,
    start: Instant,
    timeout: f64,
) -> Result<Duration, String> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        let rows = emulator.counter(counter)?;
        if rows >= target {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the emulator received {rows} of {target} rows before the timeout"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `pid`'s CPU time has not grown for `idle` seconds; returns when it last grew.
fn wait_idle(pid: &str, start: Instant, idle: f64, timeout: f64) -> Duration {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let mut last = probe::cpu_seconds(pid).unwrap_or_default();
    let mut last_change = start.elapsed();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = probe::cpu_seconds(pid).unwrap_or_default();
        if now > last {
            last = now;
            last_change = start.elapsed();
        } else if start.elapsed() - last_change > Duration::from_secs_f64(idle) {
            break;
        }
    }
    last_change
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    totals: &Totals,
    done: Duration,
    acked: Duration,
    cpu: Option<f64>,
    rss: Option<f64>,
    gen_cpu: f64,
    load: &str,
) {
    let secs = done.as_secs_f64().max(1e-9);
    let n = totals.events as f64;
    let mut lat = totals.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> String {
        if lat.is_empty() {
            return "-".into();
        }
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        format!("{:.1}", f64::from(lat[rank - 1]) / 1000.0)
    };
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
    eprintln!(
        "{}: {} events in {:.2}s ({:.2}s to the last ack), {:.0} events/s, {:.1} MB/s on the wire; \
         target CPU {} s, peak RSS {} MiB; {} acks timed; generator CPU {:.2} s; load {}",
        args.label,
        totals.events,
        secs,
        acked.as_secs_f64(),
        n / secs,
        totals.bytes as f64 / 1e6 / secs,
        opt(cpu, &|c| format!("{c:.2}")),
        opt(rss, &|r| format!("{r:.1}")),
        lat.len(),
        gen_cpu,
        load,
    );
    println!(
        "| {} | {} | {:.0} k | {:.1} | {} | {} | {} | {} / {} / {} | {} |",
        args.label,
        totals.events,
        n / secs / 1000.0,
        totals.bytes as f64 / 1e6 / secs,
        opt(cpu, &|c| format!("{:.3}", c / n * 1e6)),
        opt(cpu, &|c| format!("{:.2}", n / c.max(1e-9) / 1e6)),
        opt(rss, &|r| format!("{r:.0}")),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        load,
    );
}
