//! Where each event's rows go: the destination names (fluentd's placeholders, rendered per
//! event and cached by what they read) and the buffer key they make. Shared by the BigQuery
//! outputs; no I/O.

use crate::buffer::Entry;
use crate::event::{Batch, Event, EventTime};
use crate::fluentd::accessor::KeyPath;
use crate::fluentd::template::Template;
use crate::format::time::Zone;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Where rows go: one buffer key per destination. Besides the table, what placeholders
/// render per event and the delivery needs (a `template_suffix`, a `schema_path` or
/// `fetch_schema_table` with placeholders) is part of the key, so a chunk's rows share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TableKey {
    pub project: String,
    pub dataset: String,
    /// May carry a partition decorator (`logs$20261125`).
    pub table: String,
    /// insertAll's `templateSuffix`: rows land in `table` + suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_suffix: Option<String>,
    /// `schema_path` with placeholders, rendered (a fixed path is read at start-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_path: Option<String>,
    /// `fetch_schema_table`, rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_table: Option<String>,
}

impl TableKey {
    /// The table without a partition decorator.
    pub fn base_table(&self) -> &str {
        self.table.split('$').next().unwrap_or(&self.table)
    }

    /// Why BigQuery cannot take rows for this destination, when a name rendered from a tag
    /// or a record is not a valid one (such rows are dead-lettered, never retried).
    pub fn invalid(&self) -> Option<String> {
        let (table, decorator) = match self.table.split_once('$') {
            Some((t, d)) => (t, Some(d)),
            None => (self.table.as_str(), None),
        };
        let suffixed = format!("{table}{}", self.template_suffix.as_deref().unwrap_or(""));
        // BigQuery's rules ("Table naming", "Dataset naming"); non-ASCII letters are left to
        // BigQuery to judge.
        let name_ok = |name: &str, extra: &[u8]| {
            !name.is_empty()
                && name.len() <= 1024
                && name.chars().all(|c| {
                    !c.is_control()
                        && (!c.is_ascii()
                            || c.is_ascii_alphanumeric()
                            || extra.contains(&(c as u8)))
                })
        };
        if !name_ok(&self.project, b"-_.:") {
            return Some(format!("invalid project id '{}'", self.project));
        }
        if !name_ok(&self.dataset, b"_") {
            return Some(format!(
                "invalid dataset id '{}' (letters, digits and underscores)",
                self.dataset
            ));
        }
        if !name_ok(&suffixed, b"_- ") {
            return Some(format!(
                "invalid table id '{suffixed}' (letters, digits, underscores, dashes, spaces)"
            ));
        }
        if let Some(d) = decorator.filter(|d| !name_ok(d, b"_")) {
            return Some(format!("invalid partition decorator '${d}'"));
        }
        if let Some(path) = &self.schema_path
            && std::path::Path::new(path)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Some(format!("schema_path '{path}' leaves its directory ('..')"));
        }
        None
    }
}

impl fmt::Display for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.project, self.dataset, self.table)
    }
}

/// The configured names, each a template (fluentd's placeholders).
pub struct Names {
    pub project: Template,
    pub dataset: Template,
    pub tables: Vec<Template>,
    pub template_suffix: Option<Template>,
    /// Only when the path has placeholders.
    pub schema_path: Option<Template>,
    pub schema_table: Option<Template>,
}

impl Names {
    pub fn all(&self) -> impl Iterator<Item = &Template> {
        [&self.project, &self.dataset]
            .into_iter()
            .chain(&self.tables)
            .chain(&self.template_suffix)
            .chain(&self.schema_path)
            .chain(&self.schema_table)
    }
}

/// The last destination handed out and what it was rendered from.
struct Last {
    table: usize,
    tag: Arc<str>,
    secs: i64,
    values: Vec<u8>,
    key: Arc<TableKey>,
}

/// Renders the destination of each event. Names change only with the tag, the second (cut
/// to `timekey` with a `time` chunk key) and the record values placeholders read, so the
/// last destination is reused while those stay the same (nearly always within a message)
/// and others are remembered by what they were rendered from.
pub struct Destinations {
    names: Names,
    /// Record keys any name reads (`${KEY}`, `${$.a.b}`).
    keys: Vec<KeyPath>,
    uses_time: bool,
    timekey: Option<i64>,
    zone: Zone,
    next_table: usize,
    /// The current event's values of `keys`, msgpack back to back (self-delimiting).
    values: Vec<u8>,
    /// The last second cut to its timekey: (second, start of its period).
    cut: (i64, i64),
    last: Option<Last>,
    seen: HashMap<Rendered, Arc<TableKey>>,
}

/// What a destination was rendered from: table index, tag, second, record values.
type Rendered = (usize, Arc<str>, i64, Box<[u8]>);

/// Marks a missing key among the values (a byte msgpack never uses).
const MISSING: u8 = 0xc1;
const MAX_SEEN: usize = 4096;

impl Destinations {
    pub fn new(names: Names, timekey: Option<i64>, zone: Zone) -> Self {
        let mut keys: Vec<KeyPath> = Vec::new();
        for key in names.all().flat_map(Template::keys) {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        let uses_time = names.all().any(Template::has_time);
        Self {
            names,
            keys,
            uses_time,
            timekey,
            zone,
            next_table: 0,
            values: Vec::new(),
            cut: (i64::MIN, 0),
            last: None,
            seen: HashMap::new(),
        }
    }

    /// The second names are rendered for: the event's, cut to its timekey period.
    fn second(&mut self, secs: i64) -> i64 {
        let Some(period) = self.timekey.filter(|_| self.uses_time) else {
            return if self.uses_time { secs } else { 0 };
        };
        if self.cut.0 != secs {
            self.cut = (secs, self.zone.timekey(secs, period));
        }
        self.cut.1
    }

    fn key(&mut self, table: usize, tag: &Arc<str>, event: &Event) -> &Arc<TableKey> {
        let secs = self.second(event.time.secs);
        self.values.clear();
        for key in &self.keys {
            match key.get(&event.record) {
                Some(value) => self.values.extend_from_slice(value),
                None => self.values.push(MISSING),
            }
        }
        let last = match self.last.take() {
            Some(last)
                if last.table == table
                    && last.secs == secs
                    && (Arc::ptr_eq(&last.tag, tag) || *last.tag == **tag)
                    && (self.keys.is_empty() || last.values == self.values) =>
            {
                last
            }
            other => {
                let key = self.lookup(table, tag, secs, &event.record);
                let mut values = other.map(|last| last.values).unwrap_or_default();
                values.clear();
                values.extend_from_slice(&self.values);
                Last {
                    table,
                    tag: Arc::clone(tag),
                    secs,
                    values,
                    key,
                }
            }
        };
        &self.last.insert(last).key
    }

    /// Groups a batch's events by destination table, in order.
    pub fn group(&mut self, batch: Batch) -> Vec<(Arc<TableKey>, Vec<Entry>)> {
        let mut groups: Vec<(Arc<TableKey>, Vec<Entry>)> = Vec::new();
        let dest = self;
        // With `tables`, batches take the tables in turn (the plugin rotates per chunk).
        let table = dest.next_table % dest.names.tables.len();
        dest.next_table = dest.next_table.wrapping_add(1);
        let mut events = batch.events.into_iter();
        while let Some(event) = events.next() {
            let key = dest.key(table, &batch.tag, &event);
            let entry = Entry {
                tag: Arc::clone(&batch.tag),
                event,
            };
            match groups.last_mut() {
                Some((last, entries)) if Arc::ptr_eq(last, key) => entries.push(entry),
                _ => {
                    // Room for the rest of the batch: usually all of it goes to one table.
                    let mut entries = Vec::with_capacity(events.len() + 1);
                    entries.push(entry);
                    groups.push((Arc::clone(key), entries));
                }
            }
        }
        groups
    }

    fn lookup(&mut self, table: usize, tag: &Arc<str>, secs: i64, record: &[u8]) -> Arc<TableKey> {
        let seen = (table, Arc::clone(tag), secs, Box::from(&self.values[..]));
        if let Some(key) = self.seen.get(&seen) {
            return Arc::clone(key);
        }
        let time = EventTime::new(secs, 0);
        let render = |t: &Template| t.render(tag, time, record);
        let n = &self.names;
        let key = Arc::new(TableKey {
            project: render(&n.project),
            dataset: render(&n.dataset),
            table: render(&n.tables[table]),
            template_suffix: n.template_suffix.as_ref().map(render),
            schema_path: n.schema_path.as_ref().map(render),
            schema_table: n.schema_table.as_ref().map(render),
        });
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(seen, Arc::clone(&key));
        key
    }
}
