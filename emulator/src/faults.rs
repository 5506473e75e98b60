// Owns fault injection: the settings (CLI or `POST /_emulator/faults`), the per-request draw for
// REST requests and gRPC calls alike, and the per-job draw. Must not build answers itself; it
// returns a `Fault` or a `GrpcFault` and the server layers act on it.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which requests faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// Only the data path (the default: table setup stays reliable): `tabledata.insertAll`
    /// requests and each request message of a Storage Write `AppendRows` call.
    #[default]
    InsertAll,
    /// Only uploads (`/upload/bigquery/v2/.../jobs`: multipart, resumable sessions and chunks).
    Upload,
    /// Uploads and every jobs request (jobs.insert, get, list, cancel).
    Jobs,
    /// Every request under `/bigquery/v2` and `/upload/bigquery/v2`, and every Storage Write RPC.
    All,
}

/// What a request is, for `FaultScope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    InsertAll,
    Upload,
    Jobs,
    Other,
}

impl FaultScope {
    fn covers(self, kind: RequestKind) -> bool {
        match self {
            Self::All => true,
            Self::InsertAll => kind == RequestKind::InsertAll,
            Self::Upload => kind == RequestKind::Upload,
            Self::Jobs => matches!(kind, RequestKind::Upload | RequestKind::Jobs),
        }
    }
}

/// Fault settings. Rates are shares in [0, 1]. They are applied deterministically (an
/// accumulator per kind fires every 1/rate-th request), so a test with rate 0.5 sees exactly every
/// second request fail, never a random streak. The `error_*` and `drop_rate` rates apply to REST
/// requests, the `grpc_*` rates to Storage Write (gRPC) requests; each side has its own
/// accumulators, so one never shifts the other's pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    pub latency_ms: u64,
    pub error_429_rate: f64,
    pub error_500_rate: f64,
    pub error_503_rate: f64,
    pub drop_rate: f64,
    /// gRPC requests answered UNAVAILABLE (an `AppendRows` call ends with it, nothing appended).
    pub grpc_unavailable_rate: f64,
    /// gRPC requests answered RESOURCE_EXHAUSTED (BigQuery's throughput-quota answer).
    pub grpc_resource_exhausted_rate: f64,
    /// gRPC requests carried out whose answer is lost: the connection is closed instead.
    pub grpc_drop_rate: f64,
    /// Requests carried out whose answer is lost: the connection is closed instead (a job is
    /// created, rows are inserted, and the client cannot know).
    pub drop_response_rate: f64,
    /// Load jobs that finish with a backendError (retryable) instead of loading. Not subject to
    /// `scope`: it applies to jobs, not requests.
    pub job_failure_rate: f64,
    pub null_mode: bool,
    pub scope: FaultScope,
    /// How long after a schema change insertAll still validates rows against the previous
    /// schema (see `propagation`). Not a fault of a request, so `scope` does not apply; left out
    /// of a `POST /_emulator/faults` body it is 0, so tests see schema changes at once.
    pub schema_update_delay_ms: u64,
    /// How long a new job takes: PENDING for the first half, RUNNING for the second, then DONE.
    /// Like `schema_update_delay_ms`, left out of a `POST /_emulator/faults` body it is 0.
    pub job_delay_ms: u64,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_429_rate", self.error_429_rate),
            ("error_500_rate", self.error_500_rate),
            ("error_503_rate", self.error_503_rate),
            ("drop_rate", self.drop_rate),
            ("grpc_unavailable_rate", self.grpc_unavailable_rate),
            (
                "grpc_resource_exhausted_rate",
                self.grpc_resource_exhausted_rate,
            ),
            ("grpc_drop_rate", self.grpc_drop_rate),
            ("drop_response_rate", self.drop_response_rate),
            ("job_failure_rate", self.job_failure_rate),
        ];
        for (name, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        Ok(())
    }
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without carrying the request out.
    Drop,
    /// Carry the request out, then close the connection without answering.
    DropResponse,
    Status(u16),
}

/// What to do to one gRPC request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcFault {
    /// Carry the request out, then close the connection without answering.
    Drop,
    Unavailable,
    ResourceExhausted,
}

#[derive(Default)]
struct Accumulators {
    drop: f64,
    drop_response: f64,
    e429: f64,
    e500: f64,
    e503: f64,
    grpc_drop: f64,
    grpc_unavailable: f64,
    grpc_exhausted: f64,
    job_failure: f64,
}

// Small epsilon so that e.g. 0.1 summed ten times fires on the tenth request.
const FIRE: f64 = 1.0 - 1e-9;

/// Adds each rate to its accumulator (every kind keeps its own rhythm) and returns the first
/// kind, in order, whose accumulator reached one.
fn fire<T: Copy, const N: usize>(slots: [(&mut f64, f64, T); N]) -> Option<T> {
    let mut fired = None;
    for (acc, rate, kind) in slots {
        *acc += rate;
        if fired.is_none() && *acc >= FIRE {
            *acc -= 1.0;
            fired = Some(kind);
        }
    }
    fired
}

pub struct Faults {
    inner: Mutex<(FaultConfig, Accumulators)>,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        Self {
            inner: Mutex::new((config, Accumulators::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (FaultConfig, Accumulators)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> FaultConfig {
        self.lock().0.clone()
    }

    /// Replaces the settings and restarts the accumulators.
    pub fn set(&self, config: FaultConfig) {
        *self.lock() = (config, Accumulators::default());
    }

    pub fn null_mode(&self) -> bool {
        self.lock().0.null_mode
    }

    pub fn schema_update_delay(&self) -> Duration {
        Duration::from_millis(self.lock().0.schema_update_delay_ms)
    }

    pub fn job_delay(&self) -> Duration {
        Duration::from_millis(self.lock().0.job_delay_ms)
    }

    /// Latency to add and the fault (if any) for a request of `kind`; `scope` decides whether it
    /// is subject to faults at all.
    pub fn draw(&self, kind: RequestKind) -> (Option<Duration>, Option<Fault>) {
        let mut guard = self.lock();
        let (config, acc) = &mut *guard;
        if !config.scope.covers(kind) {
            return (None, None);
        }
        let latency = (config.latency_ms > 0).then(|| Duration::from_millis(config.latency_ms));
        let fault = fire([
            (&mut acc.drop, config.drop_rate, Fault::Drop),
            (
                &mut acc.drop_response,
                config.drop_response_rate,
                Fault::DropResponse,
            ),
            (&mut acc.e429, config.error_429_rate, Fault::Status(429)),
            (&mut acc.e500, config.error_500_rate, Fault::Status(500)),
            (&mut acc.e503, config.error_503_rate, Fault::Status(503)),
        ]);
        (latency, fault)
    }

    /// Latency to add and the fault (if any) for one gRPC request: a unary RPC, or one request
    /// message of an `AppendRows` call (`is_append`, the data path).
    pub fn draw_grpc(&self, is_append: bool) -> (Option<Duration>, Option<GrpcFault>) {
        let mut guard = self.lock();
        let (config, acc) = &mut *guard;
        let covered = match config.scope {
            FaultScope::All => true,
            FaultScope::InsertAll => is_append,
            FaultScope::Upload | FaultScope::Jobs => false,
        };
        if !covered {
            return (None, None);
        }
        let latency = (config.latency_ms > 0).then(|| Duration::from_millis(config.latency_ms));
        let fault = fire([
            (&mut acc.grpc_drop, config.grpc_drop_rate, GrpcFault::Drop),
            (
                &mut acc.grpc_exhausted,
                config.grpc_resource_exhausted_rate,
                GrpcFault::ResourceExhausted,
            ),
            (
                &mut acc.grpc_unavailable,
                config.grpc_unavailable_rate,
                GrpcFault::Unavailable,
            ),
        ]);
        (latency, fault)
    }

    /// Whether the next load job fails with a backendError (`job_failure_rate`).
    pub fn draw_job_failure(&self) -> bool {
        let mut guard = self.lock();
        let (config, acc) = &mut *guard;
        fire([(&mut acc.job_failure, config.job_failure_rate, ())]).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_spreads_faults_evenly() {
        let faults = Faults::new(FaultConfig {
            error_503_rate: 0.25,
            ..FaultConfig::default()
        });
        let fired: Vec<bool> = (0..8)
            .map(|_| faults.draw(RequestKind::InsertAll).1.is_some())
            .collect();
        assert_eq!(
            fired,
            [false, false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn grpc_rates_keep_their_own_rhythm() {
        let faults = Faults::new(FaultConfig {
            error_503_rate: 0.5,
            grpc_unavailable_rate: 0.5,
            ..FaultConfig::default()
        });
        assert_eq!(faults.draw(RequestKind::InsertAll).1, None);
        assert_eq!(faults.draw_grpc(true).1, None);
        assert_eq!(
            faults.draw(RequestKind::InsertAll).1,
            Some(Fault::Status(503))
        );
        assert_eq!(faults.draw_grpc(true).1, Some(GrpcFault::Unavailable));
        assert_eq!(
            faults.draw_grpc(false).1,
            None,
            "unary RPCs are out of scope"
        );
    }

    #[test]
    fn insert_all_scope_spares_other_requests() {
        let faults = Faults::new(FaultConfig {
            error_500_rate: 1.0,
            ..FaultConfig::default()
        });
        assert_eq!(faults.draw(RequestKind::Other).1, None);
        assert_eq!(faults.draw(RequestKind::Upload).1, None);
        assert_eq!(
            faults.draw(RequestKind::InsertAll).1,
            Some(Fault::Status(500))
        );
    }

    #[test]
    fn job_scopes_cover_uploads_and_jobs_requests() {
        let faults = Faults::new(FaultConfig {
            drop_response_rate: 1.0,
            scope: FaultScope::Upload,
            ..FaultConfig::default()
        });
        assert_eq!(faults.draw(RequestKind::Jobs).1, None);
        assert_eq!(
            faults.draw(RequestKind::Upload).1,
            Some(Fault::DropResponse)
        );
        faults.set(FaultConfig {
            error_503_rate: 1.0,
            scope: FaultScope::Jobs,
            ..FaultConfig::default()
        });
        assert_eq!(faults.draw(RequestKind::InsertAll).1, None);
        assert_eq!(faults.draw(RequestKind::Jobs).1, Some(Fault::Status(503)));
    }

    #[test]
    fn job_failures_keep_their_own_rhythm() {
        let faults = Faults::new(FaultConfig {
            job_failure_rate: 0.5,
            ..FaultConfig::default()
        });
        let failed: Vec<bool> = (0..4).map(|_| faults.draw_job_failure()).collect();
        assert_eq!(failed, [false, true, false, true]);
    }
}
