// Owns the emulator's counters (one place defines every counter name) and their JSON snapshot.
// Must not decide anything: handlers and the fault layer only bump these.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters exposed at `GET /_emulator/stats`; field names are the JSON keys.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
        }

        impl Stats {
            fn fields(&self) -> Vec<(&'static str, &AtomicU64)> {
                vec![$((stringify!($name), &self.$name),)*]
            }
        }
    };
}

counters!(
    requests,
    insert_all_requests,
    rows_received,
    rows_accepted,
    rows_inserted,
    rows_invalid,
    rows_stopped,
    rows_deduplicated,
    rows_discarded,
    faults_delayed,
    faults_429,
    faults_500,
    faults_503,
    faults_dropped,
    grpc_requests,
    append_rows_requests,
    faults_unavailable,
    faults_resource_exhausted,
    faults_grpc_dropped,
    faults_response_dropped,
    faults_job_failures,
    upload_requests,
    jobs_inserted,
    jobs_duplicate,
    jobs_succeeded,
    jobs_failed,
    jobs_cancelled,
    rows_loaded,
    load_bad_records,
);

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (name, c) in self.fields() {
            map.insert(name.to_string(), json!(c.load(Ordering::Relaxed)));
        }
        let injected = self.faults_429.load(Ordering::Relaxed)
            + self.faults_500.load(Ordering::Relaxed)
            + self.faults_503.load(Ordering::Relaxed)
            + self.faults_dropped.load(Ordering::Relaxed)
            + self.faults_unavailable.load(Ordering::Relaxed)
            + self.faults_resource_exhausted.load(Ordering::Relaxed)
            + self.faults_grpc_dropped.load(Ordering::Relaxed)
            + self.faults_response_dropped.load(Ordering::Relaxed)
            + self.faults_job_failures.load(Ordering::Relaxed);
        map.insert("faults_injected".to_string(), json!(injected));
        Value::Object(map)
    }

    pub fn reset(&self) {
        for (_, c) in self.fields() {
            c.store(0, Ordering::Relaxed);
        }
    }
}
