// Owns the delay between a schema change and the streaming paths seeing it: which schema each
// table's insertAll and Storage Write appends check rows against right now. Must not touch the
// store, HTTP or gRPC: tables.get and tabledata.list always see the current schema; only the two
// streaming paths ask here.
//
// BigQuery documents the delay ("Metadata errors for streaming inserts",
// <https://cloud.google.com/bigquery/docs/troubleshoot-storage-api>): "modifications to the
// underlying table metadata are eventually consistent when interacting with the streaming
// system. Most of the time, metadata changes are propagated within minutes", so rows carrying a
// new column keep getting "no such field" for a while after the patch. Kept in memory only: after
// a restart every table's current schema is visible at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::schema::Schema;

/// Default delay: "within minutes" in Google's words; two minutes is also the wait pandas-gbq
/// adopted (after Google's issue tracker 35905247) before streaming into a table recreated with a
/// new schema (googleapis/python-bigquery-pandas#75).
pub const DEFAULT_DELAY: Duration = Duration::from_secs(120);

/// Per table: schemas with the instant each becomes visible to insertAll, oldest first. The
/// first entry is already visible. Tables without pending changes have no entry.
type Pending = HashMap<String, Vec<(Instant, Arc<Schema>)>>;

#[derive(Default)]
pub struct SchemaPropagation {
    tables: Mutex<Pending>,
}

impl SchemaPropagation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `key`'s schema changed from `old` to `new`; insertAll sees `new` after `delay`.
    pub fn changed(&self, key: &str, old: Arc<Schema>, new: Arc<Schema>, delay: Duration) {
        let mut tables = self.lock();
        if delay.is_zero() {
            tables.remove(key);
            return;
        }
        let now = Instant::now();
        tables
            .entry(key.to_string())
            .or_insert_with(|| vec![(now, old)])
            .push((now + delay, new));
    }

    /// The schema insertAll validates `key`'s rows against: the newest one already visible.
    pub fn visible(&self, key: &str, current: &Arc<Schema>) -> Arc<Schema> {
        let mut tables = self.lock();
        let Some(versions) = tables.get_mut(key) else {
            return current.clone();
        };
        let now = Instant::now();
        let newest_visible = versions.iter().rposition(|(at, _)| *at <= now).unwrap_or(0);
        versions.drain(..newest_visible);
        match versions.as_slice() {
            // The latest change has propagated: nothing pending any more.
            [_] | [] => {
                tables.remove(key);
                current.clone()
            }
            [(_, first), ..] => first.clone(),
        }
    }

    /// Forgets a table (deleted or created anew).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(n: usize) -> Arc<Schema> {
        let fields: Vec<crate::schema::FieldJson> = (0..n)
            .map(|i| {
                serde_json::from_value(
                    serde_json::json!({"name": format!("c{i}"), "type": "STRING"}),
                )
                .unwrap()
            })
            .collect();
        Arc::new(Schema::from_json(&fields).unwrap())
    }

    #[test]
    fn insert_all_sees_the_old_schema_until_the_delay_has_passed() {
        let p = SchemaPropagation::default();
        let (v1, v2, v3) = (schema(1), schema(2), schema(3));
        p.changed("t", v1.clone(), v2.clone(), Duration::from_millis(80));
        assert_eq!(p.visible("t", &v2).fields.len(), 1);
        std::thread::sleep(Duration::from_millis(40));
        p.changed("t", v2.clone(), v3.clone(), Duration::from_millis(80));
        assert_eq!(p.visible("t", &v3).fields.len(), 1);
        std::thread::sleep(Duration::from_millis(50));
        // The first change has propagated, the second not yet.
        assert_eq!(p.visible("t", &v3).fields.len(), 2);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.visible("t", &v3).fields.len(), 3);
        assert!(p.lock().is_empty());
    }

    #[test]
    fn zero_delay_is_immediate() {
        let p = SchemaPropagation::default();
        p.changed("t", schema(1), schema(2), Duration::ZERO);
        assert_eq!(p.visible("t", &schema(2)).fields.len(), 2);
    }
}
