//! Schema evolution (`schema_update_options ALLOW_FIELD_ADDITION`): which fields of a chunk's
//! records the table lacks, what column each becomes, adding them with tables.patch under the
//! table's etag, and which rows must wait for BigQuery's streaming system to see them. Shared
//! by the BigQuery outputs: `plan` for insertAll and Storage Write (which patch the table),
//! `plan_job` for load jobs (whose schema adds the columns); see docs/schema-evolution.md.
//! Sends no rows.
//!
//! Limits: "Quotas and limits / Tables" (10,000 columns, nested and repeated ones included)
//! and "Specifying nested and repeated columns" (15 levels of nesting).

use super::classify::Failure;
use super::convert::{Cell, Conversion, Encoder, RowConverter, RowError, Stop, Target};
use super::dead_letter::Rejected;
use super::destination::TableKey;
use super::schema::{Field, FieldMode, FieldType, Schema, find_field};
use super::service::{BigQueryClient, TableMeta, TableRef};
use super::tables::Waiting;
use crate::buffer::Entry;
use crate::codec::msgpack::{Cursor, DEFAULT_MAX_DEPTH, Head, MsgpackError};
use crate::format::json::Extra;
use crate::format::{Extras, Inject};
use crate::internal_events::bigquery as events;
use crate::metrics::SinkDetail;
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// BigQuery's column limit per table, nested and repeated columns included.
pub const MAX_COLUMNS: usize = 10_000;
/// BigQuery's limit on RECORD nesting: a column at most this many levels deep.
pub const MAX_DEPTH: usize = 15;
/// How long rows wait before trying a column BigQuery's streaming system did not see yet.
pub const HOLD: Duration = Duration::from_secs(10);
/// How long a new column is taken as possibly unseen by insertAll (Google: "most of the
/// time, metadata changes are propagated within minutes"), unless rows carrying it land first.
const FRESH_FOR: Duration = Duration::from_secs(15 * 60);
/// How old a table's schema may be before it is read again (other writers add columns too).
const REFRESH: Duration = Duration::from_secs(10 * 60);
/// tables.patch attempts when other writers keep changing the table (412 each time).
const PATCH_ATTEMPTS: usize = 5;

/// fluent-plugin-bigquery's `schema_update_options` values (its load output passes them as
/// the load job's `schemaUpdateOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaUpdateOption {
    AllowFieldAddition,
    AllowFieldRelaxation,
}

impl SchemaUpdateOption {
    pub const NAMES: [&'static str; 2] = ["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ALLOW_FIELD_ADDITION" => Some(Self::AllowFieldAddition),
            "ALLOW_FIELD_RELAXATION" => Some(Self::AllowFieldRelaxation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowFieldAddition => Self::NAMES[0],
            Self::AllowFieldRelaxation => Self::NAMES[1],
        }
    }
}

/// `schema_update_types`: field paths (globs over the dotted path, ASCII case ignored) and the
/// column type a new field matching them gets, in the order written (the first match wins).
#[derive(Debug, Clone, Default)]
pub struct TypeRules {
    rules: Vec<(glob::Pattern, FieldType)>,
}

impl TypeRules {
    /// From the parameter's pairs; errors name the pair.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(pairs.len());
        for (pattern, type_name) in pairs {
            let glob = glob::Pattern::new(pattern)
                .map_err(|e| format!("schema_update_types: pattern '{pattern}': {e}"))?;
            let ty = FieldType::from_name(type_name).ok_or_else(|| {
                format!("schema_update_types: '{pattern}': unknown type '{type_name}'")
            })?;
            if ty == FieldType::Record {
                return Err(format!(
                    "schema_update_types: '{pattern}': RECORD is inferred from maps, not named"
                ));
            }
            rules.push((glob, ty));
        }
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The type the first pattern matching `path` names.
    pub fn type_for(&self, path: &str) -> Option<FieldType> {
        let options = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        self.rules
            .iter()
            .find(|(glob, _)| glob.matches_with(path, options))
            .map(|(_, ty)| *ty)
    }
}

/// What a value of a field the table lacks makes a column of: its type, whether it is an
/// array (REPEATED), and a RECORD's sub-fields.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    ty: FieldType,
    repeated: bool,
    fields: Vec<Field>,
}

impl Column {
    fn scalar(ty: FieldType) -> Self {
        Self {
            ty,
            repeated: false,
            fields: Vec::new(),
        }
    }

    fn into_field(self, name: String) -> Field {
        Field {
            name,
            field_type: self.ty,
            mode: if self.repeated {
                FieldMode::Repeated
            } else {
                FieldMode::Nullable
            },
            fields: self.fields,
        }
    }
}

/// A value's column: `Ok(None)` when it says nothing of its type (null, `[]`, `{}`), `Err`
/// when BigQuery cannot have such a column (with why).
type Inferred = Result<Option<Column>, String>;

/// Infers the column of the value at the cursor, which is consumed. `path`: the field's
/// dotted path, for `rules`; `depth`: its nesting level (1 for a top-level column).
fn infer(
    cur: &mut Cursor<'_>,
    path: &str,
    rules: &TypeRules,
    depth: usize,
) -> Result<Inferred, MsgpackError> {
    let start = cur.position();
    let head = cur.head()?;
    let skip_rest = |cur: &mut Cursor<'_>| -> Result<(), MsgpackError> {
        cur.set_position(start);
        cur.skip_value(DEFAULT_MAX_DEPTH).map(|_| ())
    };
    if let Some(ty) = rules.type_for(path) {
        skip_rest(cur)?;
        return Ok(match head {
            Head::Nil | Head::Array(0) => Ok(None),
            Head::Array(_) => Ok(Some(Column {
                repeated: true,
                ..Column::scalar(ty)
            })),
            _ => Ok(Some(Column::scalar(ty))),
        });
    }
    let scalar = |ty| Ok(Ok(Some(Column::scalar(ty))));
    match head {
        Head::Nil => Ok(Ok(None)),
        Head::Bool(_) => scalar(FieldType::Boolean),
        Head::Int(_) => scalar(FieldType::Integer),
        Head::Uint(n) if i64::try_from(n).is_ok() => scalar(FieldType::Integer),
        Head::Uint(_) => scalar(FieldType::Numeric),
        Head::F32(_) | Head::F64(_) => scalar(FieldType::Float),
        Head::Str(n) => {
            cur.take(n as usize)?;
            scalar(FieldType::String)
        }
        Head::Bin(n) => {
            cur.take(n as usize)?;
            scalar(FieldType::Bytes)
        }
        // fluentd's EventTime.
        Head::Ext(0, n @ (8 | 12)) => {
            cur.take(n as usize)?;
            scalar(FieldType::Timestamp)
        }
        Head::Ext(kind, n) => {
            cur.take(n as usize)?;
            Ok(Err(format!(
                "a msgpack extension (type {kind}) has no column type"
            )))
        }
        Head::Array(n) => {
            let mut element: Option<Column> = None;
            let mut refused = None;
            for _ in 0..n {
                let at = cur.position();
                if let Head::Array(m) = cur.head()? {
                    cur.set_position(at);
                    cur.skip_value(DEFAULT_MAX_DEPTH)?;
                    if m > 0 {
                        refused
                            .get_or_insert_with(|| "BigQuery has no arrays of arrays".to_owned());
                    }
                    continue;
                }
                cur.set_position(at);
                match infer(cur, path, rules, depth)? {
                    Err(why) => {
                        refused.get_or_insert(why);
                    }
                    Ok(None) => {}
                    Ok(Some(c)) => {
                        element = Some(match element {
                            None => c,
                            // An element of another type is left to the conversion rules.
                            Some(e) => unify(&e, &c).unwrap_or(e),
                        });
                    }
                }
            }
            Ok(match refused {
                Some(why) => Err(why),
                None => Ok(element.map(|c| Column {
                    repeated: true,
                    ..c
                })),
            })
        }
        Head::Map(pairs) => {
            if depth >= MAX_DEPTH {
                skip_rest(cur)?;
                return Ok(Err(format!(
                    "RECORD '{path}' would nest deeper than BigQuery's {MAX_DEPTH} levels"
                )));
            }
            let mut fields: Vec<Field> = Vec::new();
            let mut refused = None;
            for _ in 0..pairs {
                let key_at = cur.position();
                let key = match cur.head()? {
                    Head::Str(n) => {
                        let r = cur.take(n as usize)?;
                        String::from_utf8_lossy(cur.slice(r)).into_owned()
                    }
                    Head::Bin(n) => {
                        let r = cur.take(n as usize)?;
                        String::from_utf8_lossy(cur.slice(r)).into_owned()
                    }
                    _ => {
                        // A key that is not a string never names a column: skip it and its
                        // value.
                        cur.set_position(key_at);
                        cur.skip_value(DEFAULT_MAX_DEPTH)?;
                        cur.skip_value(DEFAULT_MAX_DEPTH)?;
                        continue;
                    }
                };
                let sub_path = format!("{path}.{key}");
                match infer(cur, &sub_path, rules, depth + 1)? {
                    Err(why) => {
                        refused.get_or_insert(why);
                    }
                    Ok(None) => {}
                    Ok(Some(c)) => merge_field(&mut fields, c.into_field(key)),
                }
            }
            Ok(match refused {
                Some(why) => Err(why),
                None if fields.is_empty() => Ok(None),
                None => Ok(Some(Column {
                    ty: FieldType::Record,
                    repeated: false,
                    fields,
                })),
            })
        }
    }
}

/// The column both values fit, by widening where BigQuery's conversions allow (INTEGER into
/// FLOAT or NUMERIC; RECORDs merged field by field); `None` when they disagree.
fn unify(a: &Column, b: &Column) -> Option<Column> {
    use FieldType::{Float, Integer, Numeric, Record};
    if a.repeated != b.repeated {
        return None;
    }
    let ty = match (a.ty, b.ty) {
        (x, y) if x == y => x,
        (Integer, Float) | (Float, Integer) => Float,
        (Integer, Numeric) | (Numeric, Integer) => Numeric,
        _ => return None,
    };
    let mut fields = a.fields.clone();
    if ty == Record {
        for f in &b.fields {
            merge_field(&mut fields, f.clone());
        }
    }
    Some(Column {
        ty,
        repeated: a.repeated,
        fields,
    })
}

/// Adds `field` to `fields`, merged with a same-named one (ASCII case ignored, as BigQuery
/// compares column names); a disagreeing type keeps the first.
fn merge_field(fields: &mut Vec<Field>, field: Field) {
    let Some(existing) = fields
        .iter_mut()
        .find(|f| f.name.eq_ignore_ascii_case(&field.name))
    else {
        fields.push(field);
        return;
    };
    let column = |f: &Field| Column {
        ty: f.field_type,
        repeated: f.mode == FieldMode::Repeated,
        fields: f.fields.clone(),
    };
    if let Some(merged) = unify(&column(existing), &column(&field)) {
        *existing = merged.into_field(std::mem::take(&mut existing.name));
    }
}

/// A column to add: its path (names from the top, its own last) and field.
type Addition = (Vec<String>, Field);

/// A field one row has and the schema lacks: its path (names from the top) and column.
#[derive(Debug)]
struct Found {
    path: Vec<String>,
    column: Inferred,
}

/// An `Encoder` that writes nothing: it walks a record as the converter does and notes every
/// key the schema lacks, with the column its value would make. The converter's errors are the
/// row's conflicts with the schema.
struct Probe<'r> {
    rules: &'r TypeRules,
    /// Injected fields carrying the event time (`<inject>` `time_type float`): TIMESTAMP.
    time_keys: &'r [String],
    /// Names of the RECORDs open around the current key.
    open: Vec<String>,
    /// The last key, copied only where cheap: a top-level key's name is shared, a nested
    /// key's is written into `nested` (reused), since a value is rarely unknown.
    current: Current,
    nested: String,
    found: Vec<Found>,
}

enum Current {
    None,
    Top(Rc<str>),
    Nested,
}

impl Encoder for Probe<'_> {
    type Key = Rc<str>;

    fn make_key(&self, name: &[u8], _target: Target<'_>) -> Rc<str> {
        Rc::from(String::from_utf8_lossy(name).as_ref())
    }
    fn begin_row(&mut self) -> Result<(), Stop> {
        self.open.clear();
        Ok(())
    }
    fn end_row(&mut self) -> Result<(), Stop> {
        Ok(())
    }
    fn key(&mut self, key: &Rc<str>) -> Result<(), Stop> {
        self.current = Current::Top(Rc::clone(key));
        Ok(())
    }
    fn nested_key(&mut self, name: &[u8], _target: Target<'_>) -> Result<(), Stop> {
        self.nested.clear();
        self.nested.push_str(&String::from_utf8_lossy(name));
        self.current = Current::Nested;
        Ok(())
    }
    fn raw_key(&mut self, _key: &[u8]) -> Result<(), Stop> {
        self.current = Current::None;
        Ok(())
    }
    fn value(&mut self, _field: &Field, _cell: Cell<'_>) -> Result<(), Stop> {
        Ok(())
    }
    fn unknown(&mut self, value: &[u8]) -> Result<(), Stop> {
        let name = match std::mem::replace(&mut self.current, Current::None) {
            Current::None => return Ok(()),
            Current::Top(name) => name.to_string(),
            Current::Nested => self.nested.clone(),
        };
        let mut path = self.open.clone();
        path.push(name);
        let dotted = path.join(".");
        let column = if path.len() > MAX_DEPTH {
            Err(format!(
                "column '{dotted}' would nest deeper than BigQuery's {MAX_DEPTH} levels"
            ))
        } else if path.len() == 1
            && self.time_keys.iter().any(|k| k == &path[0])
            && self.rules.type_for(&dotted).is_none()
        {
            Ok(Some(Column::scalar(FieldType::Timestamp)))
        } else {
            infer(&mut Cursor::new(value), &dotted, self.rules, path.len())?
        };
        self.found.push(Found { path, column });
        Ok(())
    }
    fn begin_record(&mut self, field: &Field) -> Result<(), Stop> {
        self.open.push(field.name.clone());
        Ok(())
    }
    fn end_record(&mut self, _field: &Field) -> Result<(), Stop> {
        self.open.pop();
        Ok(())
    }
    fn begin_array(&mut self, _field: &Field) -> Result<(), Stop> {
        Ok(())
    }
    fn element(&mut self, _field: &Field) -> Result<(), Stop> {
        Ok(())
    }
    fn end_array(&mut self, _field: &Field) -> Result<(), Stop> {
        Ok(())
    }
}

/// The rows of one delivery, as the outputs hold them.
pub struct Rows<'a> {
    pub entries: &'a [Entry],
    pub indices: &'a [u32],
    pub inject: &'a mut Inject,
    pub conversion: Conversion,
}

/// What one row is, against a schema.
struct RowProbe {
    index: u32,
    found: Vec<Found>,
    error: Option<RowError>,
}

/// A row the grown schema still cannot take, with its reason: a missing REQUIRED value is the
/// row's own fault (`conversion_error`), anything else a type disagreement (`schema_conflict`).
fn row_rejected(index: u32, err: &RowError) -> Rejected {
    let reason = if err.reason == "missing required field" {
        "conversion_error"
    } else {
        "schema_conflict"
    };
    Rejected {
        index,
        reason: reason.into(),
        location: err.field.clone(),
        message: err.to_string(),
    }
}

fn probe_rows(schema: &Schema, rows: &mut Rows<'_>, rules: &TypeRules) -> Vec<RowProbe> {
    let mut converter: RowConverter<'_, Rc<str>> = RowConverter::new(schema, rows.conversion);
    // The injected fields carrying the event time: the same for every row.
    let time_keys: Vec<String> = match rows
        .indices
        .first()
        .and_then(|&i| rows.entries.get(i as usize))
    {
        Some(entry) => {
            let mut extras = Extras::default();
            rows.inject
                .extras_into(&entry.tag, entry.event.time, &mut extras);
            extras
                .iter()
                .filter(|(_, e)| matches!(e, Extra::Time(_)))
                .map(|(name, _)| (*name).to_owned())
                .collect()
        }
        None => Vec::new(),
    };
    let mut probe = Probe {
        rules,
        time_keys: &time_keys,
        open: Vec::new(),
        current: Current::None,
        nested: String::new(),
        found: Vec::new(),
    };
    let mut out = Vec::with_capacity(rows.indices.len());
    for &index in rows.indices {
        let Some(entry) = rows.entries.get(index as usize) else {
            continue;
        };
        let mut extras = Extras::default();
        rows.inject
            .extras_into(&entry.tag, entry.event.time, &mut extras);
        let error = match converter.convert(&entry.event.record, &extras, &mut probe) {
            Ok(()) => None,
            Err(Stop::Row(err)) => Some(err),
            // The probe writes nothing, so it is never full.
            Err(Stop::Full) => None,
        };
        out.push(RowProbe {
            index,
            found: std::mem::take(&mut probe.found),
            error,
        });
    }
    out
}

/// What a delivery does with its rows once the table has the columns they need.
#[derive(Default)]
pub struct Plan {
    /// The table's schema, with the columns added now: the rows are converted with it.
    pub schema: Option<Arc<Schema>>,
    /// `schema` without the columns the streaming system may not see yet (`fresh`): what
    /// `ready` rows need, and all a Storage Write writer schema for them may name (BigQuery
    /// refuses a writer schema with a column its write path does not see yet).
    pub settled: Option<Arc<Schema>>,
    /// Rows to send at once.
    pub ready: Vec<u32>,
    /// Rows carrying a column that insertAll may not see yet: send them in their own
    /// requests, so that "no such field" for them holds only them (`Evolution::is_unseen_column`).
    pub carriers: Vec<u32>,
    /// The fresh columns (lower-cased dotted paths) the carriers carry: once a request of
    /// them lands, `columns_seen` with these.
    pub carried: Vec<String>,
    /// Rows that cannot land as they are: a value its column cannot take (`schema_conflict`),
    /// a column BigQuery cannot have (`schema_limit`) or refused (`schema_rejected`).
    pub dead: Vec<Rejected>,
    /// Rows whose columns could not be added now (a transient failure): they wait.
    pub waiting: Vec<u32>,
    pub wait: Option<Waiting>,
}

/// What a load job does with its rows (`Evolution::plan_job`).
#[derive(Debug)]
pub struct JobPlan {
    /// The table's schema with the new columns: the rows are converted with it.
    pub schema: Arc<Schema>,
    /// The same as the job's `schema.fields`: the table's fields as given, the new ones added.
    pub fields: Vec<Value>,
    /// Rows to load.
    pub ready: Vec<u32>,
    /// Rows that cannot land as they are (`schema_conflict`, `schema_limit`).
    pub dead: Vec<Rejected>,
    /// The columns the job adds (`path TYPE`), for the log and the metric once it loaded.
    pub added: Vec<String>,
    /// REQUIRED columns the job makes NULLABLE (ALLOW_FIELD_RELAXATION), dotted paths.
    pub relaxed: Vec<String>,
}

impl JobPlan {
    /// Whether the job's schema differs from the table's (and must be sent).
    pub fn changes_schema(&self) -> bool {
        !self.added.is_empty() || !self.relaxed.is_empty()
    }
}

/// The table's schema as this process knows it.
struct TableState {
    schema: Arc<Schema>,
    /// `schema.fields` of the table resource as BigQuery gave it (with descriptions, policy
    /// tags...), which a patch sends back unchanged with the new fields appended.
    raw_fields: Vec<Value>,
    etag: String,
    read_at: Instant,
    /// Columns added lately (lower-cased dotted paths) that insertAll may not see yet.
    fresh: Vec<(String, Instant)>,
}

/// One output's schema evolution: the tables' schemas, and column additions.
pub struct Evolution {
    pub id: String,
    pub rules: TypeRules,
    pub detail: Arc<SinkDetail>,
    tables: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<TableState>>>>>,
    /// The schemas of `tables`, for answers read while a table's state is locked.
    known: Mutex<HashMap<String, Arc<Schema>>>,
}

fn table_ref(key: &TableKey) -> TableRef<'_> {
    TableRef {
        project: &key.project,
        dataset: &key.dataset,
        table: key.base_table(),
    }
}

fn table_name(key: &TableKey) -> String {
    format!("{}.{}.{}", key.project, key.dataset, key.base_table())
}

impl Evolution {
    pub fn new(id: String, rules: TypeRules, detail: Arc<SinkDetail>) -> Self {
        Self {
            id,
            rules,
            detail,
            tables: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &TableKey) -> Arc<tokio::sync::Mutex<Option<TableState>>> {
        let name = table_name(key);
        match self.tables.lock() {
            Ok(mut tables) => Arc::clone(tables.entry(name).or_default()),
            Err(_) => Arc::default(),
        }
    }

    /// The chunk's plan: the table's schema (tables.get, cached), the fields its rows add
    /// (added by tables.patch with the table's etag), and which rows go now, apart, to
    /// the dead letters or wait. `fallback`: the configured schema, used while the table does
    /// not exist (the sink creates it from that; the next delivery adds the columns).
    pub async fn plan(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        fallback: Option<Arc<Schema>>,
        mut rows: Rows<'_>,
    ) -> Result<Plan, Waiting> {
        let slot = self.slot(key);
        let mut state = slot.lock().await;
        if state.as_ref().is_none_or(|s| s.read_at.elapsed() > REFRESH) {
            match self.read(client, key, state.as_ref()).await {
                Ok(Some(fresh)) => *state = Some(fresh),
                Ok(None) => {
                    return Ok(Plan {
                        schema: fallback,
                        ready: rows.indices.to_vec(),
                        ..Plan::default()
                    });
                }
                Err(wait) => match state.as_mut() {
                    // As fetch_schema does: keep the schema read before when a refresh fails.
                    Some(old) => {
                        tracing::warn!(output = %self.id, table = %table_name(key), error = %wait.error, "schema refresh failed; using the schema read before");
                        old.read_at = Instant::now();
                    }
                    None => return Err(wait),
                },
            }
        }
        let Some(table) = state.as_mut() else {
            return Err(Waiting::backoff(format!(
                "no schema for {}",
                table_name(key)
            )));
        };
        table.fresh.retain(|(_, at)| at.elapsed() < FRESH_FOR);
        let settled = without(&table.schema, &table.fresh);
        let probes = probe_rows(&settled, &mut rows, &self.rules);
        if probes
            .iter()
            .all(|p| p.found.is_empty() && p.error.is_none())
        {
            return Ok(Plan {
                schema: Some(Arc::clone(&table.schema)),
                settled: Some(settled),
                ready: probes.iter().map(|p| p.index).collect(),
                ..Plan::default()
            });
        }
        let (additions, refused) = self.additions(&table.schema, &probes);
        let mut plan = Plan::default();
        let mut failed: HashMap<String, (String, String)> = HashMap::new();
        if !additions.is_empty() {
            match self.add(client, key, table, additions).await {
                Ok(rejected) => failed.extend(rejected),
                Err(wait) => {
                    // The rows that need the columns wait; the others go.
                    for p in &probes {
                        if p.found.iter().any(|f| !has_path(&table.schema, &f.path)) {
                            plan.waiting.push(p.index);
                        }
                    }
                    plan.wait = Some(wait);
                }
            }
        }
        let schema = Arc::clone(&table.schema);
        plan.settled = Some(without(&schema, &table.fresh));
        let fresh: Vec<String> = table.fresh.iter().map(|(p, _)| p.clone()).collect();
        drop(state);
        // The rows again, against the table as it is now: what still fails to convert
        // conflicts with its column.
        let waiting = std::mem::take(&mut plan.waiting);
        let indices: Vec<u32> = probes
            .iter()
            .map(|p| p.index)
            .filter(|i| !waiting.contains(i))
            .collect();
        let again = probe_rows(
            &schema,
            &mut Rows {
                entries: rows.entries,
                indices: &indices,
                inject: rows.inject,
                conversion: rows.conversion,
            },
            &self.rules,
        );
        for (p, before) in again
            .iter()
            .zip(probes.iter().filter(|p| !waiting.contains(&p.index)))
        {
            if let Some(err) = &p.error {
                plan.dead.push(row_rejected(p.index, err));
                continue;
            }
            let not_added = p.found.iter().find_map(|f| {
                let dotted = f.path.join(".").to_ascii_lowercase();
                refused
                    .get(&dotted)
                    .map(|why| ("schema_limit", f, why.clone()))
                    .or_else(|| {
                        failed
                            .get(&dotted)
                            .map(|(r, why)| (r.as_str(), f, why.clone()))
                    })
                    .map(|(r, f, why)| (r.to_owned(), f.path.join("."), why))
            });
            if let Some((reason, location, message)) = not_added {
                plan.dead.push(Rejected {
                    index: p.index,
                    reason,
                    location,
                    message,
                });
                continue;
            }
            let mut carries = false;
            for f in &before.found {
                let dotted = f.path.join(".").to_ascii_lowercase();
                for p in &fresh {
                    if (dotted == *p || dotted.starts_with(&format!("{p}.")))
                        && !plan.carried.contains(p)
                    {
                        plan.carried.push(p.clone());
                    }
                    carries |= dotted == *p || dotted.starts_with(&format!("{p}."));
                }
            }
            if carries {
                plan.carriers.push(p.index);
            } else {
                plan.ready.push(p.index);
            }
        }
        plan.waiting = waiting;
        self.conflicts(key, &plan.dead);
        plan.schema = Some(schema);
        Ok(plan)
    }

    /// Counts and logs the dead letters that are schema conflicts or limits.
    fn conflicts(&self, key: &TableKey, dead: &[Rejected]) {
        if !dead.iter().any(|d| d.reason.starts_with("schema_")) {
            return;
        }
        let mut reasons: Vec<(&str, u64)> = Vec::new();
        for d in dead.iter().filter(|d| d.reason.starts_with("schema_")) {
            match reasons.iter_mut().find(|(r, _)| *r == d.reason) {
                Some((_, n)) => *n += 1,
                None => reasons.push((d.reason.as_str(), 1)),
            }
        }
        events::SchemaConflicts {
            output: &self.id,
            table: &table_name(key),
            reasons: &reasons,
            first: dead
                .iter()
                .find(|d| d.reason.starts_with("schema_"))
                .map_or("", |d| d.message.as_str()),
        }
        .emit(&self.detail);
    }

    /// A load job's plan: the fields `rows` bring that the table lacks become columns of the
    /// job's schema (BigQuery adds them when the job commits, `schemaUpdateOptions`
    /// ALLOW_FIELD_ADDITION), typed, merged and limited as `plan` adds them, with the same
    /// conflict rule. `fields`: the table's `schema.fields` as tables.get gave them (or the
    /// schema a job creating the table gives it). `add` (ALLOW_FIELD_ADDITION): new fields
    /// become columns (else they stay unknown keys). `relax` (ALLOW_FIELD_RELAXATION): a
    /// REQUIRED column a row has no value for becomes NULLABLE in the job's schema instead
    /// of the row being refused. Sends nothing.
    pub fn plan_job(
        &self,
        key: &TableKey,
        fields: &[Value],
        add: bool,
        relax: bool,
        mut rows: Rows<'_>,
    ) -> Result<JobPlan, String> {
        let name = table_name(key);
        let schema = Schema::from_json(&serde_json::json!({ "fields": fields }))
            .map_err(|e| format!("schema of {name}: {e}"))?;
        let probes = probe_rows(&schema, &mut rows, &self.rules);
        let (additions, refused) = if add {
            self.additions(&schema, &probes)
        } else {
            (Vec::new(), HashMap::new())
        };
        let mut refused: HashMap<String, (String, String)> = refused
            .into_iter()
            .map(|(path, why)| (path, ("schema_limit".to_owned(), why)))
            .collect();
        let mut columns = count_fields(&schema.fields);
        let mut job_fields = fields.to_vec();
        let mut added = Vec::new();
        for (path, field) in additions {
            let n = 1 + count_fields(&field.fields);
            if columns + n > MAX_COLUMNS {
                refused.insert(
                    path.join(".").to_ascii_lowercase(),
                    (
                        "schema_limit".into(),
                        format!(
                            "adding column '{}' ({n} columns) to {name} would pass BigQuery's {MAX_COLUMNS} columns (it has {columns})",
                            path.join(".")
                        ),
                    ),
                );
                continue;
            }
            columns += n;
            added.push(format!(
                "{} {}{}",
                path.join("."),
                mode_prefix(&field),
                field.field_type.as_str()
            ));
            insert_raw(&mut job_fields, &path, field_json(&field));
        }
        let mut grown = Schema::from_json(&serde_json::json!({ "fields": job_fields }))
            .map_err(|e| format!("schema of {name} with the new fields: {e}"))?;
        // The rows again, against the schema the job gives the table: what still fails to
        // convert conflicts with its column. (Without new columns, the first walk says it.)
        let mut again = (!added.is_empty()).then(|| probe_rows(&grown, &mut rows, &self.rules));
        let mut relaxed = Vec::new();
        if relax {
            for p in again.as_deref().unwrap_or(&probes) {
                if let Some(err) = p
                    .error
                    .as_ref()
                    .filter(|e| e.reason == "missing required field")
                {
                    let path: Vec<String> = column_path(&err.field);
                    let dotted = path.join(".");
                    if !relaxed.contains(&dotted) && relax_raw(&mut job_fields, &path) {
                        relaxed.push(dotted);
                    }
                }
            }
            if !relaxed.is_empty() {
                grown = Schema::from_json(&serde_json::json!({ "fields": job_fields }))
                    .map_err(|e| format!("schema of {name} relaxed: {e}"))?;
                again = Some(probe_rows(&grown, &mut rows, &self.rules));
            }
        }
        let again = again.as_deref().unwrap_or(&probes);
        let mut plan = JobPlan {
            schema: Arc::new(grown),
            fields: job_fields,
            ready: Vec::new(),
            dead: Vec::new(),
            added,
            relaxed,
        };
        for (p, before) in again.iter().zip(&probes) {
            if let Some(err) = &p.error {
                plan.dead.push(row_rejected(p.index, err));
                continue;
            }
            let not_added = before.found.iter().find_map(|f| {
                refused
                    .get(&f.path.join(".").to_ascii_lowercase())
                    .map(|(reason, why)| (reason.clone(), f.path.join("."), why.clone()))
            });
            match not_added {
                Some((reason, location, message)) => plan.dead.push(Rejected {
                    index: p.index,
                    reason,
                    location,
                    message,
                }),
                None => plan.ready.push(p.index),
            }
        }
        self.conflicts(key, &plan.dead);
        Ok(plan)
    }

    /// A load job that carried `plan_job`'s schema loaded: its columns are the table's now.
    pub fn job_added(&self, key: &TableKey, plan: &JobPlan) {
        if !plan.relaxed.is_empty() {
            tracing::info!(output = %self.id, table = %table_name(key), columns = ?plan.relaxed, "REQUIRED columns made NULLABLE (ALLOW_FIELD_RELAXATION)");
        }
        if plan.added.is_empty() {
            return;
        }
        events::ColumnsAdded {
            output: &self.id,
            table: &table_name(key),
            columns: &plan.added,
        }
        .emit(&self.detail);
    }

    /// The fields `rows` bring that `schema` lacks, merged and widened across rows as `plan`
    /// would add them, without adding them: for an output that lets BigQuery add them (a
    /// load job's `schemaUpdateOptions` with a schema that names them). Each is its path
    /// (names from the top, its own last) and field.
    pub fn new_fields(&self, schema: &Schema, mut rows: Rows<'_>) -> Vec<(Vec<String>, Field)> {
        let probes = probe_rows(schema, &mut rows, &self.rules);
        self.additions(schema, &probes).0
    }

    /// The new fields the rows bring (merged and widened across rows, in the order first
    /// seen), and those BigQuery could not have (lower-cased dotted path → why).
    fn additions(
        &self,
        schema: &Schema,
        probes: &[RowProbe],
    ) -> (Vec<Addition>, HashMap<String, String>) {
        let mut additions: Vec<Addition> = Vec::new();
        let mut refused: HashMap<String, String> = HashMap::new();
        for found in probes.iter().flat_map(|p| &p.found) {
            if has_path(schema, &found.path) {
                continue;
            }
            let dotted = found.path.join(".").to_ascii_lowercase();
            let column = match &found.column {
                Ok(Some(column)) => column.clone(),
                Ok(None) => continue,
                Err(why) => {
                    refused.entry(dotted).or_insert_with(|| why.clone());
                    continue;
                }
            };
            if let Some(why) = name_problem(found.path.last().map_or("", String::as_str)) {
                refused.entry(dotted).or_insert(why);
                continue;
            }
            let name = found.path[found.path.len() - 1].clone();
            let field = column.into_field(name);
            match additions
                .iter_mut()
                .find(|(p, _)| same_path(p, &found.path))
            {
                Some((_, existing)) => {
                    let mut siblings = vec![existing.clone()];
                    merge_field(&mut siblings, field);
                    *existing = siblings.swap_remove(0);
                }
                None => additions.push((found.path.clone(), field)),
            }
        }
        (additions, refused)
    }
}

impl Evolution {
    /// tables.get of the destination; `None` when the table does not exist. Columns that
    /// appeared since `previous` (another writer's) are fresh here too.
    async fn read(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        previous: Option<&TableState>,
    ) -> Result<Option<TableState>, Waiting> {
        match client.table_meta(&table_ref(key)).await {
            Ok(meta) => {
                let fresh = previous.map(|p| {
                    let mut fresh = p.fresh.clone();
                    let now = Instant::now();
                    if let Ok(state) = state_from(&meta, Vec::new()) {
                        for path in all_paths(&state.schema.fields) {
                            if !has_dotted(&p.schema, &path) {
                                fresh.push((path, now));
                            }
                        }
                    }
                    fresh
                });
                let state = state_from(&meta, fresh.unwrap_or_default())
                    .map_err(|e| Waiting::backoff(format!("schema of {}: {e}", table_name(key))))?;
                self.publish(key, &state.schema);
                Ok(Some(state))
            }
            Err(Failure::Http { status: 404, .. }) => Ok(None),
            Err(failure) => Err(Waiting::backoff(format!(
                "reading the schema of {}: {failure}",
                table_name(key)
            ))),
        }
    }

    /// Adds `additions` to the table with tables.patch under its etag; on 412 (another
    /// writer changed it) reads it again, keeps what it added, and patches the rest. Returns
    /// the fields that could not be added (lower-cased dotted path → reason, message); `Err`:
    /// try again later.
    async fn add(
        &self,
        client: &BigQueryClient,
        key: &TableKey,
        table: &mut TableState,
        additions: Vec<Addition>,
    ) -> Result<HashMap<String, (String, String)>, Waiting> {
        let name = table_name(key);
        let mut refused: HashMap<String, (String, String)> = HashMap::new();
        let mut columns = count_fields(&table.schema.fields);
        let mut pending: Vec<Addition> = Vec::new();
        for (path, field) in additions {
            let n = 1 + count_fields(&field.fields);
            if columns + n > MAX_COLUMNS {
                refused.insert(
                    path.join(".").to_ascii_lowercase(),
                    (
                        "schema_limit".into(),
                        format!(
                            "adding column '{}' ({n} columns) to {name} would pass BigQuery's {MAX_COLUMNS} columns (it has {columns})",
                            path.join(".")
                        ),
                    ),
                );
                continue;
            }
            columns += n;
            pending.push((path, field));
        }
        // After a 400 for several fields at once, they are tried one by one, so one field
        // BigQuery refuses does not keep the others out.
        let mut one_by_one = false;
        let mut attempts = 0;
        loop {
            pending.retain(|(path, _)| !has_path(&table.schema, path));
            if pending.is_empty() {
                return Ok(refused);
            }
            attempts += 1;
            if attempts > PATCH_ATTEMPTS + pending.len() {
                return Err(Waiting::backoff(format!(
                    "adding columns to {name}: the table kept changing under {PATCH_ATTEMPTS} patches"
                )));
            }
            let batch = if one_by_one { 1 } else { pending.len() };
            let mut fields = table.raw_fields.clone();
            for (path, field) in &pending[..batch] {
                insert_raw(&mut fields, path, field_json(field));
            }
            let body = serde_json::json!({ "schema": { "fields": fields } });
            match client
                .patch_table(&table_ref(key), &body, &table.etag)
                .await
            {
                Ok(meta) => {
                    let now = Instant::now();
                    let mut fresh = std::mem::take(&mut table.fresh);
                    fresh.extend(
                        pending[..batch]
                            .iter()
                            .map(|(p, _)| (p.join(".").to_ascii_lowercase(), now)),
                    );
                    *table = state_from(&meta, fresh)
                        .map_err(|e| Waiting::backoff(format!("schema of {name}: {e}")))?;
                    self.publish(key, &table.schema);
                    let added: Vec<String> = pending[..batch]
                        .iter()
                        .map(|(p, f)| {
                            format!(
                                "{} {}{}",
                                p.join("."),
                                mode_prefix(f),
                                f.field_type.as_str()
                            )
                        })
                        .collect();
                    events::ColumnsAdded {
                        output: &self.id,
                        table: &name,
                        columns: &added,
                    }
                    .emit(&self.detail);
                }
                // 412: another writer changed the table since it was read. A 400 saying a
                // column "is missing in new schema" means the same without an etag check
                // (a column added by someone else, unknown here).
                Err(Failure::Http {
                    status, message, ..
                }) if status == 412
                    || (status == 400 && message.contains("is missing in new schema")) =>
                {
                    tracing::info!(output = %self.id, table = %name, status, "another writer changed the table; reading it again to add the columns beside its own");
                    match self.read(client, key, Some(table)).await? {
                        Some(state) => *table = state,
                        None => {
                            return Err(Waiting::backoff(format!("table {name} disappeared")));
                        }
                    }
                }
                Err(Failure::Http {
                    status: 400,
                    message,
                    ..
                }) => {
                    if batch > 1 {
                        one_by_one = true;
                        continue;
                    }
                    let (path, _) = pending.remove(0);
                    tracing::error!(output = %self.id, table = %name, column = %path.join("."), error = %message, "BigQuery refused the new column");
                    refused.insert(
                        path.join(".").to_ascii_lowercase(),
                        ("schema_rejected".into(), message),
                    );
                }
                Err(failure) => {
                    tracing::warn!(output = %self.id, table = %name, error = %failure, "could not add columns; their rows wait");
                    return Err(Waiting::backoff(format!(
                        "adding columns to {name}: {failure}"
                    )));
                }
            }
        }
    }

    fn publish(&self, key: &TableKey, schema: &Arc<Schema>) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(table_name(key), Arc::clone(schema));
        }
    }

    /// Whether a row error is insertAll not seeing a column the table has: `no such field`
    /// for a column this process knows (it added it, or read it since). Such rows wait and
    /// are sent again; BigQuery keeps answering so for minutes after a schema change.
    pub fn is_unseen_column(&self, key: &TableKey, location: &str, message: &str) -> bool {
        let Some(rest) = message.strip_prefix("no such field") else {
            return false;
        };
        let named = rest.trim_start_matches(':').trim().trim_end_matches('.');
        let path = if location.is_empty() { named } else { location };
        // `items[2].x` → `items.x`: element indices name no column.
        let mut dotted = String::with_capacity(path.len());
        let mut in_index = false;
        for c in path.chars() {
            match c {
                '[' => in_index = true,
                ']' => in_index = false,
                c if !in_index => dotted.push(c.to_ascii_lowercase()),
                _ => {}
            }
        }
        if dotted.is_empty() {
            return false;
        }
        self.known
            .lock()
            .ok()
            .and_then(|known| known.get(&table_name(key)).cloned())
            .is_some_and(|schema| has_dotted(&schema, &dotted))
    }

    /// The streaming path refused columns the table has as unknown (Storage Write's "Input
    /// schema has more fields than BigQuery schema, extra fields: 'a,b.c'"): another writer
    /// added them lately, or they were read before it saw them. They count as fresh again,
    /// so the next plan sends the rows that do not carry them without them. Returns whether
    /// one was not fresh yet. (Skipped while another delivery holds the table.)
    pub fn columns_unseen(&self, key: &TableKey, paths: &[String]) -> bool {
        let slot = self.slot(key);
        let Ok(mut state) = slot.try_lock() else {
            return false;
        };
        let Some(table) = state.as_mut() else {
            return false;
        };
        let now = Instant::now();
        let mut marked = false;
        for path in paths {
            let path = path.to_ascii_lowercase();
            if has_dotted(&table.schema, &path) && !table.fresh.iter().any(|(p, _)| *p == path) {
                table.fresh.push((path, now));
                marked = true;
            }
        }
        marked
    }

    /// The table's schema is read again by the next plan (a writer schema built from it was
    /// refused for something other than a column not seen yet). (Skipped while another
    /// delivery holds the table: it reads it when due anyway.)
    pub fn read_again(&self, key: &TableKey) {
        let slot = self.slot(key);
        if let Ok(mut state) = slot.try_lock()
            && let Some(table) = state.as_mut()
            && let Some(past) = Instant::now().checked_sub(REFRESH * 2)
        {
            table.read_at = past;
        }
    }

    /// Rows carrying the fresh columns `paths` (`Plan::carried`) landed: insertAll sees them
    /// now, so rows carrying them need not be sent apart any more. (Skipped while another
    /// delivery holds the table: they stay fresh a little longer, which costs nothing.)
    pub fn columns_seen(&self, key: &TableKey, paths: &[String]) {
        let slot = self.slot(key);
        if let Ok(mut state) = slot.try_lock()
            && let Some(table) = state.as_mut()
        {
            table.fresh.retain(|(p, _)| !paths.contains(p));
        }
    }
}

fn mode_prefix(field: &Field) -> &'static str {
    if field.mode == FieldMode::Repeated {
        "REPEATED "
    } else {
        ""
    }
}

fn state_from(meta: &TableMeta, fresh: Vec<(String, Instant)>) -> Result<TableState, String> {
    let raw_fields = meta.resource["schema"]["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let schema = Schema::from_json(&serde_json::json!({ "fields": raw_fields }))?;
    Ok(TableState {
        schema: Arc::new(schema),
        raw_fields,
        etag: meta.etag.clone(),
        read_at: Instant::now(),
        fresh,
    })
}

fn field_json(field: &Field) -> Value {
    let schema = Schema {
        fields: vec![field.clone()],
    };
    schema.to_json()["fields"][0].clone()
}

/// Appends `field` (JSON) at `path` (its own name last) in a table resource's fields.
fn insert_raw(fields: &mut Vec<Value>, path: &[String], field: Value) {
    let [parent, rest @ ..] = path else {
        return;
    };
    if rest.is_empty() {
        fields.push(field);
        return;
    }
    let Some(record) = fields.iter_mut().find(|f| {
        f["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(parent))
    }) else {
        return;
    };
    if !record["fields"].is_array() {
        record["fields"] = Value::Array(Vec::new());
    }
    if let Some(sub) = record["fields"].as_array_mut() {
        insert_raw(sub, rest, field);
    }
}

/// A row error's field (`a.b`, `items[2].x`) as the column path (`a`, `b` / `items`, `x`).
fn column_path(field: &str) -> Vec<String> {
    let mut dotted = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => dotted.push(c),
            _ => {}
        }
    }
    dotted.split('.').map(str::to_owned).collect()
}

/// Makes the REQUIRED field at `path` NULLABLE in a table resource's fields; whether it was
/// REQUIRED there.
fn relax_raw(fields: &mut [Value], path: &[String]) -> bool {
    let [first, rest @ ..] = path else {
        return false;
    };
    let Some(field) = fields.iter_mut().find(|f| {
        f["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(first))
    }) else {
        return false;
    };
    if rest.is_empty() {
        let required = field["mode"]
            .as_str()
            .is_some_and(|m| m.eq_ignore_ascii_case("REQUIRED"));
        if required {
            field["mode"] = "NULLABLE".into();
        }
        return required;
    }
    match field["fields"].as_array_mut() {
        Some(sub) => relax_raw(sub, rest),
        None => false,
    }
}

fn count_fields(fields: &[Field]) -> usize {
    fields.iter().map(|f| 1 + count_fields(&f.fields)).sum()
}

/// Lower-cased dotted paths of every field.
fn all_paths(fields: &[Field]) -> Vec<String> {
    let mut out = Vec::new();
    for f in fields {
        let name = f.name.to_ascii_lowercase();
        for sub in all_paths(&f.fields) {
            out.push(format!("{name}.{sub}"));
        }
        out.push(name);
    }
    out
}

fn lookup<'s>(fields: &'s [Field], path: &[String]) -> Option<&'s Field> {
    let (first, rest) = path.split_first()?;
    let field = find_field(fields, first.as_bytes())?;
    if rest.is_empty() {
        Some(field)
    } else {
        lookup(&field.fields, rest)
    }
}

fn has_path(schema: &Schema, path: &[String]) -> bool {
    lookup(&schema.fields, path).is_some()
}

fn has_dotted(schema: &Schema, dotted: &str) -> bool {
    let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
    has_path(schema, &path)
}

fn same_path(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// `schema` without the fields at `paths` (lower-cased dotted).
fn without(schema: &Arc<Schema>, paths: &[(String, Instant)]) -> Arc<Schema> {
    if paths.is_empty() {
        return Arc::clone(schema);
    }
    fn strip(fields: &[Field], prefix: &str, paths: &[(String, Instant)]) -> Vec<Field> {
        fields
            .iter()
            .filter_map(|f| {
                let path = if prefix.is_empty() {
                    f.name.to_ascii_lowercase()
                } else {
                    format!("{prefix}.{}", f.name.to_ascii_lowercase())
                };
                if paths.iter().any(|(p, _)| *p == path) {
                    return None;
                }
                let mut f = f.clone();
                f.fields = strip(&f.fields, &path, paths);
                Some(f)
            })
            .collect()
    }
    Arc::new(Schema {
        fields: strip(&schema.fields, "", paths),
    })
}

/// Why BigQuery cannot take `name` as a column name, if it cannot ("Column names").
fn name_problem(name: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "_table_",
        "_file_",
        "_partition",
        "_row_timestamp",
        "__root__",
        "_colidentifier",
    ];
    if name.is_empty() {
        return Some("an empty key cannot be a column name".into());
    }
    if name.chars().count() > 300 {
        return Some(format!(
            "'{name}' is longer than BigQuery's 300 characters for a column name"
        ));
    }
    let lower = name.to_ascii_lowercase();
    RESERVED.iter().find(|p| lower.starts_with(*p)).map(|p| {
        format!(
            "'{name}': column names cannot start with {}",
            p.to_uppercase()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventTime};
    use serde_json::json;

    fn msgpack(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec(value).unwrap()
    }

    fn infer_json(value: Value, rules: &TypeRules) -> Inferred {
        let bytes = msgpack(&value);
        let mut cur = Cursor::new(&bytes);
        let inferred = infer(&mut cur, "f", rules, 1).unwrap();
        assert_eq!(cur.position(), bytes.len(), "the value is consumed");
        inferred
    }

    fn field(name: &str, ty: FieldType, mode: FieldMode) -> Field {
        Field {
            name: name.into(),
            field_type: ty,
            mode,
            fields: Vec::new(),
        }
    }

    fn ty(value: Value) -> Option<(FieldType, bool)> {
        infer_json(value, &TypeRules::default())
            .unwrap()
            .map(|c| (c.ty, c.repeated))
    }

    #[test]
    fn values_infer_their_column() {
        use FieldType::*;
        assert_eq!(ty(json!("x")), Some((String, false)));
        assert_eq!(ty(json!(-3)), Some((Integer, false)));
        assert_eq!(ty(json!(u64::MAX)), Some((Numeric, false)));
        assert_eq!(ty(json!(1.5)), Some((Float, false)));
        assert_eq!(ty(json!(true)), Some((Boolean, false)));
        assert_eq!(ty(json!(["a", null, "b"])), Some((String, true)));
        // Mixed integers and floats widen to FLOAT.
        assert_eq!(ty(json!([1, 2.5])), Some((Float, true)));
        // Nothing to tell the type from: no column.
        for untyped in [
            json!(null),
            json!([]),
            json!({}),
            json!([null]),
            json!({"a": null}),
        ] {
            assert_eq!(ty(untyped.clone()), None, "{untyped}");
        }
        let record = infer_json(
            json!({"a": 1, "b": {"c": "x"}, "n": null}),
            &TypeRules::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(record.ty, Record);
        let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(record.fields[1].fields[0].field_type, String);
        // Keys that are not strings (even containers) are skipped with their values.
        let mut bytes = Vec::new();
        rmp::encode::write_map_len(&mut bytes, 3).unwrap();
        rmp::encode::write_array_len(&mut bytes, 1).unwrap();
        rmp::encode::write_sint(&mut bytes, 1).unwrap();
        rmp::encode::write_str(&mut bytes, "v").unwrap();
        rmp::encode::write_sint(&mut bytes, 7).unwrap();
        rmp::encode::write_bool(&mut bytes, true).unwrap();
        rmp::encode::write_str(&mut bytes, "k").unwrap();
        rmp::encode::write_sint(&mut bytes, 2).unwrap();
        let mut cur = Cursor::new(&bytes);
        let column = infer(&mut cur, "f", &TypeRules::default(), 1)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(cur.position(), bytes.len());
        assert_eq!(
            column.fields,
            vec![field("k", Integer, FieldMode::Nullable)]
        );
        // An array of maps is a REPEATED RECORD with the union of their fields.
        let items = infer_json(json!([{"a": 1}, {"b": true}]), &TypeRules::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (items.ty, items.repeated, items.fields.len()),
            (Record, true, 2)
        );
    }

    #[test]
    fn event_time_is_a_timestamp() {
        let mut bytes = Vec::new();
        rmp::encode::write_ext_meta(&mut bytes, 8, 0).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        let mut cur = Cursor::new(&bytes);
        let column = infer(&mut cur, "t", &TypeRules::default(), 1)
            .unwrap()
            .unwrap();
        assert_eq!(column.map(|c| c.ty), Some(FieldType::Timestamp));
    }

    #[test]
    fn what_bigquery_cannot_have_is_refused_with_why() {
        let arrays = infer_json(json!([[1, 2]]), &TypeRules::default()).unwrap_err();
        assert!(arrays.contains("arrays of arrays"), "{arrays}");
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!({ "d": deep });
        }
        let err = infer_json(deep, &TypeRules::default()).unwrap_err();
        assert!(err.contains("15 levels"), "{err}");
        // 14 more levels under a top-level column: 15 in all, allowed.
        let mut ok = json!(1);
        for _ in 0..MAX_DEPTH - 1 {
            ok = json!({ "d": ok });
        }
        assert!(infer_json(ok, &TypeRules::default()).is_ok());
        assert!(name_problem("_PARTITIONTIME").is_some());
        assert!(name_problem(&"x".repeat(301)).is_some());
        assert!(name_problem("").is_some());
        assert_eq!(name_problem("user_id"), None);
    }

    #[test]
    fn patterns_name_the_type_first_match_wins() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
        };
        let rules = TypeRules::parse(&pairs(&[
            ("*_at", "TIMESTAMP"),
            ("f", "string"),
            ("*", "JSON"),
        ]))
        .unwrap();
        assert_eq!(rules.type_for("created_AT"), Some(FieldType::Timestamp));
        assert_eq!(rules.type_for("user.seen_at"), Some(FieldType::Timestamp));
        assert_eq!(rules.type_for("other"), Some(FieldType::Json));
        // The rule's type, REPEATED for an array.
        let c = infer_json(json!([1, 2]), &rules).unwrap().unwrap();
        assert_eq!((c.ty, c.repeated), (FieldType::String, true));
        let err = TypeRules::parse(&pairs(&[("x", "RECORD")])).unwrap_err();
        assert!(err.contains("RECORD is inferred"), "{err}");
        let err = TypeRules::parse(&pairs(&[("x", "TEXT")])).unwrap_err();
        assert!(err.contains("unknown type 'TEXT'"), "{err}");
        assert!(TypeRules::parse(&pairs(&[("[", "STRING")])).is_err());
    }

    #[test]
    fn widening_follows_what_bigquery_converts() {
        let c = |ty, repeated| Column {
            ty,
            repeated,
            fields: Vec::new(),
        };
        use FieldType::*;
        assert_eq!(
            unify(&c(Integer, false), &c(Float, false)).map(|u| u.ty),
            Some(Float)
        );
        assert_eq!(
            unify(&c(Numeric, false), &c(Integer, false)).map(|u| u.ty),
            Some(Numeric)
        );
        assert_eq!(unify(&c(Integer, false), &c(String, false)), None);
        assert_eq!(unify(&c(String, true), &c(String, false)), None);
        let mut fields = vec![field("a", Integer, FieldMode::Nullable)];
        merge_field(&mut fields, field("A", Float, FieldMode::Nullable));
        merge_field(&mut fields, field("b", Boolean, FieldMode::Nullable));
        merge_field(&mut fields, field("b", String, FieldMode::Nullable));
        assert_eq!(
            fields,
            vec![
                field("a", Float, FieldMode::Nullable),
                field("b", Boolean, FieldMode::Nullable)
            ]
        );
    }

    #[test]
    fn a_patch_keeps_what_the_table_said_of_its_fields() {
        let mut raw = vec![
            json!({"name": "msg", "type": "STRING", "description": "kept", "policyTags": {"names": ["t"]}}),
            json!({"name": "user", "type": "RECORD", "fields": [{"name": "id", "type": "INTEGER"}]}),
        ];
        insert_raw(
            &mut raw,
            &["level".into()],
            json!({"name": "level", "type": "INTEGER"}),
        );
        insert_raw(
            &mut raw,
            &["USER".into(), "email".into()],
            json!({"name": "email", "type": "STRING"}),
        );
        assert_eq!(raw[0]["description"], "kept");
        assert_eq!(raw[0]["policyTags"], json!({"names": ["t"]}));
        assert_eq!(raw[1]["fields"][1]["name"], "email");
        assert_eq!(raw[2]["name"], "level");
        let f = field_json(&field("tags", FieldType::String, FieldMode::Repeated));
        assert_eq!(
            f,
            json!({"name": "tags", "type": "STRING", "mode": "REPEATED"})
        );
    }

    #[test]
    fn the_probe_finds_nested_new_fields_and_conflicts() {
        let schema = Schema::from_json(&json!([
            {"name": "n", "type": "INTEGER"},
            {"name": "user", "type": "RECORD", "fields": [{"name": "id", "type": "INTEGER"}]},
            {"name": "items", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "k", "type": "STRING"}]},
        ]))
        .unwrap();
        let records = [
            json!({"n": 1, "user": {"id": 2, "email": "e"}, "items": [{"k": "a", "v": 1.5}], "top": [true]}),
            json!({"n": "x"}),
        ];
        let entries: Vec<Entry> = records
            .iter()
            .map(|r| Entry {
                tag: "t".into(),
                event: Event {
                    time: EventTime::new(1, 0),
                    record: msgpack(r).into(),
                },
            })
            .collect();
        let mut inject = Inject::default();
        let mut rows = Rows {
            entries: &entries,
            indices: &[0, 1],
            inject: &mut inject,
            conversion: Conversion::Strict,
        };
        let probes = probe_rows(&schema, &mut rows, &TypeRules::default());
        let found: Vec<(String, Option<FieldType>, bool)> = probes[0]
            .found
            .iter()
            .map(|f| {
                let c = f.column.clone().unwrap().unwrap();
                (f.path.join("."), Some(c.ty), c.repeated)
            })
            .collect();
        // (serde_json writes the record's keys sorted.)
        assert_eq!(
            found,
            [
                ("items.v".to_owned(), Some(FieldType::Float), false),
                ("top".to_owned(), Some(FieldType::Boolean), true),
                ("user.email".to_owned(), Some(FieldType::String), false),
            ]
        );
        assert!(probes[0].error.is_none());
        let err = probes[1].error.as_ref().unwrap();
        assert_eq!(err.field, "n");
    }

    #[test]
    fn keys_the_table_lacks_without_a_value_are_left_out_of_rows() {
        let schema = Schema::from_json(&json!([
            {"name": "a", "type": "STRING"},
            {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "STRING"}]},
        ]))
        .unwrap();
        let record = msgpack(&json!({
            "a": "x", "e": [], "k": 1, "l": [null], "m": {}, "n": null, "o": {"p": [null]},
            "r": {"u": null, "x": "y"}, "z": [null, 1]
        }));
        let mut writer = super::super::rows::RowWriter::new(Some(&schema), Conversion::Strict);
        writer.drop_untyped_unknown();
        let mut out = Vec::new();
        writer.write(&record, &[], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":"x","k":1,"r":{"x":"y"},"z":[null,1]}"#
        );
        // Without schema evolution they are written, for BigQuery to judge.
        let mut plain = super::super::rows::RowWriter::new(Some(&schema), Conversion::Strict);
        let mut out = Vec::new();
        plain.write(&record, &[], &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains(r#""n":null"#));
    }

    /// BigQuery's 10,000 columns: what would pass it is refused before any request (the
    /// endpoint here answers nothing), the rest would be patched.
    #[tokio::test]
    async fn columns_past_bigquerys_limit_are_refused_without_a_request() {
        let client = BigQueryClient::connect(&super::super::service::Connection {
            credentials: std::sync::Arc::new(
                super::super::credentials::Credentials::new(
                    &super::super::service::AuthMethod::None,
                )
                .unwrap(),
            ),
            endpoint: Some("http://127.0.0.1:9".into()),
            request_timeout: Some(Duration::from_secs(2)),
            open_timeout: Duration::from_secs(2),
        })
        .await
        .unwrap();
        let fields: Vec<Field> = (0..MAX_COLUMNS - 2)
            .map(|i| field(&format!("c{i}"), FieldType::String, FieldMode::Nullable))
            .collect();
        let mut table = TableState {
            raw_fields: Vec::new(),
            schema: Arc::new(Schema { fields }),
            etag: "e".into(),
            read_at: Instant::now(),
            fresh: Vec::new(),
        };
        let mut record = field("r", FieldType::Record, FieldMode::Nullable);
        record.fields = vec![
            field("a", FieldType::String, FieldMode::Nullable),
            field("b", FieldType::String, FieldMode::Nullable),
        ];
        let key = TableKey {
            project: "p".into(),
            dataset: "d".into(),
            table: "t".into(),
            template_suffix: None,
            schema_path: None,
            schema_table: None,
        };
        let evolution = Evolution::new("o".into(), TypeRules::default(), Arc::default());
        let Ok(refused) = evolution
            .add(&client, &key, &mut table, vec![(vec!["r".into()], record)])
            .await
        else {
            panic!("refusing made a request");
        };
        let (reason, message) = &refused["r"];
        assert_eq!(reason, "schema_limit");
        assert!(message.contains("10000 columns (it has 9998)"), "{message}");
        // One that fits is patched: here the endpoint does not answer, so the rows wait.
        let one = field("x", FieldType::String, FieldMode::Nullable);
        let Err(wait) = evolution
            .add(&client, &key, &mut table, vec![(vec!["x".into()], one)])
            .await
        else {
            panic!("patched a table nobody serves");
        };
        assert!(
            wait.error.contains("adding columns to p.d.t"),
            "{}",
            wait.error
        );
    }

    #[test]
    fn fresh_columns_are_left_out_of_the_settled_schema() {
        let schema = Arc::new(
            Schema::from_json(&json!([
                {"name": "a", "type": "STRING"},
                {"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "STRING"}, {"name": "y", "type": "STRING"}]},
            ]))
            .unwrap(),
        );
        let settled = without(&schema, &[("r.y".into(), Instant::now())]);
        assert!(has_dotted(&settled, "r.x"));
        assert!(!has_dotted(&settled, "r.y"));
        assert!(has_dotted(&schema, "R.Y".to_ascii_lowercase().as_str()));
        assert_eq!(count_fields(&schema.fields), 4);
    }

    #[test]
    fn a_load_jobs_schema_keeps_the_tables_fields_and_adds_relaxes_or_refuses() {
        let fields = vec![
            json!({"name": "seq", "type": "INTEGER", "mode": "REQUIRED", "description": "kept"}),
            json!({"name": "user", "type": "RECORD", "fields": [
                {"name": "id", "type": "INTEGER", "mode": "REQUIRED"}]}),
        ];
        let records = [
            json!({"seq": 1, "user": {"id": 1, "email": "e"}, "level": 3}),
            json!({"seq": 2, "user": {}}),
            json!({"user": {"id": 3}, "created_at": "2026-12-01T10:00:00Z"}),
            json!({"seq": 4, "user": {"id": 4}, "level": "high"}),
        ];
        let entries: Vec<Entry> = records
            .iter()
            .map(|r| Entry {
                tag: "t".into(),
                event: Event {
                    time: EventTime::new(1, 0),
                    record: msgpack(r).into(),
                },
            })
            .collect();
        let key = TableKey {
            project: "p".into(),
            dataset: "d".into(),
            table: "t".into(),
            template_suffix: None,
            schema_path: None,
            schema_table: None,
        };
        let rules = TypeRules::parse(&[("*_at".into(), "TIMESTAMP".into())]).unwrap();
        let evolution = Evolution::new("o".into(), rules, Arc::default());
        let plan_with = |add: bool, relax: bool| {
            let mut inject = Inject::default();
            let rows = Rows {
                entries: &entries,
                indices: &[0, 1, 2, 3],
                inject: &mut inject,
                conversion: Conversion::Strict,
            };
            evolution.plan_job(&key, &fields, add, relax, rows).unwrap()
        };

        let plan = plan_with(true, true);
        // (serde_json writes the records' keys sorted.)
        assert_eq!(
            plan.added,
            ["level INTEGER", "user.email STRING", "created_at TIMESTAMP"]
        );
        assert_eq!(plan.relaxed, ["user.id", "seq"]);
        assert!(plan.changes_schema());
        // The table's fields as given (description kept), relaxed, new ones after them.
        assert_eq!(plan.fields[0]["description"], "kept");
        assert_eq!(plan.fields[0]["mode"], "NULLABLE");
        assert_eq!(plan.fields[1]["fields"][1]["name"], "email");
        assert_eq!(plan.fields[2]["name"], "level");
        assert_eq!(plan.ready, [0, 1, 2]);
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.dead[0].index, 3);
        assert_eq!(plan.dead[0].reason, "schema_conflict");
        assert_eq!(plan.dead[0].location, "level");
        assert!(has_dotted(&plan.schema, "created_at"));

        // Without ALLOW_FIELD_RELAXATION, a missing REQUIRED value is the row's own fault;
        // without ALLOW_FIELD_ADDITION, nothing is added.
        let plan = plan_with(false, false);
        assert!(plan.added.is_empty() && plan.relaxed.is_empty() && !plan.changes_schema());
        let reasons: Vec<(u32, &str)> = plan
            .dead
            .iter()
            .map(|d| (d.index, d.reason.as_str()))
            .collect();
        assert_eq!(reasons, [(1, "conversion_error"), (2, "conversion_error")]);
        assert_eq!(plan.ready, [0, 3]);
    }

    #[test]
    fn row_error_fields_name_their_columns() {
        assert_eq!(column_path("items[2].x"), ["items", "x"]);
        assert_eq!(column_path("a"), ["a"]);
        let mut fields = vec![json!({"name": "R", "type": "RECORD", "fields": [
            {"name": "x", "type": "STRING", "mode": "REQUIRED"}]})];
        assert!(relax_raw(&mut fields, &["r".into(), "X".into()]));
        assert_eq!(fields[0]["fields"][0]["mode"], "NULLABLE");
        assert!(!relax_raw(&mut fields, &["r".into(), "x".into()]));
        assert!(!relax_raw(&mut fields, &["nope".into()]));
    }
}
