// Owns fault injection: the settings (CLI or `POST /_emulator/faults`) and the per-request draw.
// Must not build HTTP answers itself; it returns a `Fault` and the server layer acts on it.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which requests faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    /// Only `tabledata.insertAll` requests (the default: table setup stays reliable).
    #[default]
    InsertAll,
    /// Every request under `/bigquery/v2`.
    All,
}

/// Fault settings. Rates are shares in [0, 1]. They are applied deterministically (an
/// accumulator per kind fires every 1/rate-th request), so a test with rate 0.5 sees exactly every
/// second request fail, never a random streak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    pub latency_ms: u64,
    pub error_429_rate: f64,
    pub error_500_rate: f64,
    pub error_503_rate: f64,
    pub drop_rate: f64,
    pub null_mode: bool,
    pub scope: FaultScope,
    /// How long after a schema change insertAll still validates rows against the previous
    /// schema (see `propagation`). Not a fault of a request, so `scope` does not apply; left out
    /// of a `POST /_emulator/faults` body it is 0, so tests see schema changes at once.
    pub schema_update_delay_ms: u64,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_429_rate", self.error_429_rate),
            ("error_500_rate", self.error_500_rate),
            ("error_503_rate", self.error_503_rate),
            ("drop_rate", self.drop_rate),
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
    Drop,
    Status(u16),
}

#[derive(Default)]
struct Accumulators {
    drop: f64,
    e429: f64,
    e500: f64,
    e503: f64,
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

    /// Latency to add and the fault (if any) for a request; `is_insert_all` decides scope.
    pub fn draw(&self, is_insert_all: bool) -> (Option<Duration>, Option<Fault>) {
        let mut guard = self.lock();
        let (config, acc) = &mut *guard;
        if config.scope == FaultScope::InsertAll && !is_insert_all {
            return (None, None);
        }
        let latency = (config.latency_ms > 0).then(|| Duration::from_millis(config.latency_ms));
        acc.drop += config.drop_rate;
        acc.e429 += config.error_429_rate;
        acc.e500 += config.error_500_rate;
        acc.e503 += config.error_503_rate;
        // Small epsilon so that e.g. 0.1 summed ten times fires on the tenth request.
        const FIRE: f64 = 1.0 - 1e-9;
        let slots: [(&mut f64, Fault); 4] = [
            (&mut acc.drop, Fault::Drop),
            (&mut acc.e429, Fault::Status(429)),
            (&mut acc.e500, Fault::Status(500)),
            (&mut acc.e503, Fault::Status(503)),
        ];
        for (slot, fault) in slots {
            if *slot >= FIRE {
                *slot -= 1.0;
                return (latency, Some(fault));
            }
        }
        (latency, None)
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
        let fired: Vec<bool> = (0..8).map(|_| faults.draw(true).1.is_some()).collect();
        assert_eq!(
            fired,
            [false, false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn insert_all_scope_spares_other_requests() {
        let faults = Faults::new(FaultConfig {
            error_500_rate: 1.0,
            ..FaultConfig::default()
        });
        assert_eq!(faults.draw(false).1, None);
        assert_eq!(faults.draw(true).1, Some(Fault::Status(500)));
    }
}
