//! Where events go: per label (the root and each `<label @NAME>`), the `<filter>`s whose
//! patterns match a tag, in config order, then the first matching `<match>`'s target (an
//! output, relabel, rewrite_tag_filter or copy). Knows outputs only through the Output trait.

pub mod pattern;
pub mod rewrite_tag;

use crate::event::Event;
use crate::event::{Batch, BoxFuture};
use crate::filter::{Filter, RecordError};
use crate::metrics::PluginCounters;
use crate::output::{Output, OutputError};
use pattern::MatchPatterns;
use rewrite_tag::RewriteTagFilter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How many times events may be re-emitted (relabel, rewrite_tag_filter, @ERROR) on their
/// way to an output; beyond it the config loops.
pub const MAX_REEMIT: u8 = 8;
const MAX_CACHED_PLANS: usize = 4096;
pub const ERROR_LABEL: &str = "@ERROR";

pub struct FilterRoute {
    pub patterns: MatchPatterns,
    pub filter: Arc<dyn Filter>,
    /// Events it dropped, and events it could not process.
    pub counters: Arc<PluginCounters>,
}

pub enum Target {
    Output(Arc<dyn Output>),
    /// `@type relabel`: into the label with this index.
    Relabel {
        id: String,
        label: usize,
        counters: Arc<PluginCounters>,
    },
    /// Re-tagged events start again at the top of `label` (its own `@label`, or the label
    /// it is in).
    RewriteTag {
        filter: Arc<RewriteTagFilter>,
        label: usize,
        counters: Arc<PluginCounters>,
    },
    Copy {
        id: String,
        stores: Vec<Store>,
        counters: Arc<PluginCounters>,
    },
}

pub struct Store {
    pub target: Target,
    /// `<store ignore_error>`: this store's error does not fail the copy.
    pub ignore_error: bool,
    /// `<store ignore_if_prev_success>`: skipped when the store before it succeeded.
    pub ignore_if_prev_success: bool,
}

pub struct Route {
    pub patterns: MatchPatterns,
    pub target: Target,
}

/// A label: `""` for the root, else its name (`@ERROR`, `@STAGING`, ...).
pub struct Label {
    pub name: String,
    pub filters: Vec<FilterRoute>,
    pub routes: Vec<Route>,
}

/// What happens to a tag in a label: which filters run (indexes, in order) and which route
/// takes what is left. Resolved once per tag and cached.
#[derive(Debug)]
pub struct Plan {
    pub label: usize,
    pub filters: Vec<usize>,
    pub route: Option<usize>,
}

/// Plans of re-emitted tags, per (label, tag).
type PlanCache = HashMap<(usize, Arc<str>), Arc<Plan>>;

#[derive(Clone, Copy)]
struct Hop {
    depth: u8,
    in_error: bool,
}

pub struct Router {
    labels: Vec<Label>,
    error_label: Option<usize>,
    plans: RwLock<PlanCache>,
    unmatched: AtomicU64,
    unmatched_events: AtomicU64,
    filtered_events: AtomicU64,
    error_events: AtomicU64,
}

impl Router {
    /// `labels[0]` is the root label.
    pub fn new(labels: Vec<Label>) -> Self {
        let error_label = labels.iter().position(|l| l.name == ERROR_LABEL);
        Self {
            labels,
            error_label,
            plans: RwLock::default(),
            unmatched: AtomicU64::new(0),
            unmatched_events: AtomicU64::new(0),
            filtered_events: AtomicU64::new(0),
            error_events: AtomicU64::new(0),
        }
    }

    pub fn label_index(&self, name: &str) -> Option<usize> {
        self.labels.iter().position(|l| l.name == name)
    }

    /// The plan for `tag` in `label`. Inputs cache it per tag; re-emitted tags use the
    /// router's own cache.
    pub fn plan(&self, label: usize, tag: &str) -> Arc<Plan> {
        let Some(l) = self.labels.get(label) else {
            return Arc::new(Plan {
                label,
                filters: Vec::new(),
                route: None,
            });
        };
        Arc::new(Plan {
            label,
            filters: (0..l.filters.len())
                .filter(|i| l.filters[*i].patterns.matches(tag))
                .collect(),
            route: l.routes.iter().position(|r| r.patterns.matches(tag)),
        })
    }

    fn cached_plan(&self, label: usize, tag: &Arc<str>) -> Arc<Plan> {
        let key = (label, Arc::clone(tag));
        if let Ok(plans) = self.plans.read()
            && let Some(plan) = plans.get(&key)
        {
            return Arc::clone(plan);
        }
        let plan = self.plan(label, tag);
        if let Ok(mut plans) = self.plans.write() {
            if plans.len() >= MAX_CACHED_PLANS {
                plans.clear();
            }
            plans.insert(key, Arc::clone(&plan));
        }
        plan
    }

    /// Runs `batch` through `plan` (filters, then the target). Resolves once every output
    /// the events went to has accepted them; an input acks only after that.
    pub fn dispatch<'a>(
        &'a self,
        plan: &'a Plan,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), OutputError>> {
        let hop = Hop {
            depth: 0,
            in_error: false,
        };
        Box::pin(self.run_plan(plan, batch, hop))
    }

    async fn run_plan(&self, plan: &Plan, mut batch: Batch, hop: Hop) -> Result<(), OutputError> {
        let label = &self.labels[plan.label];
        if !plan.filters.is_empty() {
            let mut errors = Vec::new();
            for &i in &plan.filters {
                let route = &label.filters[i];
                let before = batch.events.len();
                let events = std::mem::take(&mut batch.events);
                batch.events = route.filter.filter(&batch.tag, events, &mut errors);
                let lost = before - batch.events.len();
                let dropped = lost.saturating_sub(errors.len());
                self.filtered_events
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                route.counters.dropped(dropped);
                if !errors.is_empty() {
                    let errors = std::mem::take(&mut errors);
                    let by = route.filter.id();
                    self.emit_errors(by, Some(&route.counters), &batch.tag, errors, hop)
                        .await?;
                }
                if batch.events.is_empty() {
                    return Ok(());
                }
            }
        }
        let Some(route) = plan.route.and_then(|r| label.routes.get(r)) else {
            self.note_unmatched(&batch.tag, batch.events.len());
            return Ok(());
        };
        self.deliver(&route.target, batch, hop).await
    }

    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        batch: Batch,
        hop: Hop,
    ) -> BoxFuture<'a, Result<(), OutputError>> {
        Box::pin(async move {
            match target {
                Target::Output(output) => self.emit(output, batch, hop).await,
                Target::Relabel {
                    id,
                    label,
                    counters,
                } => {
                    let records = batch.events.len();
                    let result = self.reemit(id, counters, *label, batch, hop).await;
                    counters.emitted(records, result.is_ok(), false);
                    result
                }
                Target::RewriteTag {
                    filter,
                    label,
                    counters,
                } => {
                    let records = batch.events.len();
                    let rewritten = filter.rewrite(&batch.tag, batch.events);
                    self.filtered_events
                        .fetch_add(rewritten.dropped as u64, Ordering::Relaxed);
                    counters.dropped(rewritten.dropped);
                    let mut result = Ok(());
                    for (tag, events) in rewritten.groups {
                        let batch = Batch {
                            tag: Arc::from(tag),
                            events,
                        };
                        result = self.reemit(filter.id(), counters, *label, batch, hop).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    counters.emitted(records, result.is_ok(), false);
                    result
                }
                Target::Copy {
                    id,
                    stores,
                    counters,
                } => {
                    let records = batch.events.len();
                    let result = self.copy(id, stores, batch, hop).await;
                    counters.emitted(records, result.is_ok(), false);
                    result
                }
            }
        })
    }

    /// fluentd's out_copy: stores in order; a store's error ends the copy unless that store
    /// has `ignore_error`. Records are immutable bytes, so every copy_mode is the same here.
    async fn copy(
        &self,
        id: &str,
        stores: &[Store],
        batch: Batch,
        hop: Hop,
    ) -> Result<(), OutputError> {
        let mut prev_ok = false;
        for store in stores {
            if store.ignore_if_prev_success && prev_ok {
                continue;
            }
            match self.deliver(&store.target, batch.clone(), hop).await {
                Ok(()) => prev_ok = true,
                Err(err) if store.ignore_error => {
                    prev_ok = false;
                    tracing::error!(copy = id, error = %err, "a <store ignore_error> failed; the copy goes on");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn reemit(
        &self,
        by: &str,
        counters: &PluginCounters,
        label: usize,
        batch: Batch,
        hop: Hop,
    ) -> Result<(), OutputError> {
        if hop.depth >= MAX_REEMIT {
            let reason = format!(
                "events of tag '{}' were re-emitted more than {MAX_REEMIT} times (relabel / rewrite_tag_filter loop)",
                batch.tag
            );
            tracing::error!(plugin = by, "{reason}");
            let errors = batch
                .events
                .into_iter()
                .map(|event| RecordError {
                    event,
                    reason: reason.clone(),
                })
                .collect();
            return self
                .emit_errors(by, Some(counters), &batch.tag, errors, hop)
                .await;
        }
        let plan = self.cached_plan(label, &batch.tag);
        let next = Hop {
            depth: hop.depth + 1,
            ..hop
        };
        Box::pin(self.run_plan(&plan, batch, next)).await
    }

    /// Emits to an output; events it refuses one by one (`OutputError::Record`) go to @ERROR.
    async fn emit(
        &self,
        output: &Arc<dyn Output>,
        batch: Batch,
        hop: Hop,
    ) -> Result<(), OutputError> {
        if self.error_label.is_none() || hop.in_error {
            return output.emit(batch).await;
        }
        match output.emit(batch.clone()).await {
            Err(OutputError::Record { .. }) => {}
            other => return other,
        }
        // Find the refused events: the rest are written (at least once, as on any retry).
        let mut errors = Vec::new();
        for event in batch.events {
            let one = Batch {
                tag: Arc::clone(&batch.tag),
                events: vec![event.clone()],
            };
            match output.emit(one).await {
                Ok(()) => {}
                Err(OutputError::Record { detail, .. }) => errors.push(RecordError {
                    event,
                    reason: detail,
                }),
                Err(err) => return Err(err),
            }
        }
        self.emit_errors(output.id(), output.counters(), &batch.tag, errors, hop)
            .await
    }

    /// fluentd's `emit_error_event`: into `@ERROR` if the config has it; otherwise logged and
    /// dropped, as fluentd does.
    async fn emit_errors(
        &self,
        by: &str,
        counters: Option<&PluginCounters>,
        tag: &Arc<str>,
        errors: Vec<RecordError>,
        hop: Hop,
    ) -> Result<(), OutputError> {
        if errors.is_empty() {
            return Ok(());
        }
        self.error_events
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
        let label = self.error_label.filter(|_| !hop.in_error);
        if let Some(counters) = counters {
            counters.errors(errors.len(), label.is_some());
        }
        let first = &errors[0].reason;
        let Some(label) = label else {
            if hop.in_error {
                return Err(OutputError::Refused {
                    output: by.to_owned(),
                    detail: format!("an event in @ERROR failed again: {first}"),
                });
            }
            tracing::warn!(plugin = by, tag = %tag, events = errors.len(), error = %first,
                "dropping error events (no <label @ERROR> to send them to)");
            return Ok(());
        };
        tracing::warn!(plugin = by, tag = %tag, events = errors.len(), error = %first,
            "sending error events to @ERROR");
        let batch = Batch {
            tag: Arc::clone(tag),
            events: errors.into_iter().map(|e| e.event).collect::<Vec<Event>>(),
        };
        let plan = self.cached_plan(label, tag);
        let next = Hop {
            depth: 0,
            in_error: true,
        };
        Box::pin(self.run_plan(&plan, batch, next)).await
    }

    /// Every output, each once (copy stores included), for shutdown.
    pub fn outputs(&self) -> Vec<Arc<dyn Output>> {
        fn collect(target: &Target, out: &mut Vec<Arc<dyn Output>>) {
            match target {
                Target::Output(o) => out.push(Arc::clone(o)),
                Target::Copy { stores, .. } => stores.iter().for_each(|s| collect(&s.target, out)),
                Target::Relabel { .. } | Target::RewriteTag { .. } => {}
            }
        }
        let mut out = Vec::new();
        for label in &self.labels {
            for route in &label.routes {
                collect(&route.target, &mut out);
            }
        }
        out
    }

    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Counts events no `<match>` took, warning as fluentd does: on the 1st, 2nd, 4th, ...
    /// 256th unmatched batch, then every 512th.
    pub fn note_unmatched(&self, tag: &str, events: usize) {
        self.unmatched_events
            .fetch_add(events as u64, Ordering::Relaxed);
        let count = self.unmatched.fetch_add(1, Ordering::Relaxed) + 1;
        let warn = if count < 512 {
            count.is_power_of_two()
        } else {
            count.is_multiple_of(512)
        };
        if warn {
            tracing::warn!(tag, events, total_unmatched = count, "no patterns matched");
        }
    }

    pub fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }

    /// Events (not batches) no `<match>` took.
    pub fn unmatched_events(&self) -> u64 {
        self.unmatched_events.load(Ordering::Relaxed)
    }

    /// Events a filter (grep, or a rewrite_tag_filter with no rule for them) dropped on
    /// purpose: not a loss, but counted.
    pub fn filtered_events(&self) -> u64 {
        self.filtered_events.load(Ordering::Relaxed)
    }

    /// Events a plugin could not process (emit_error_event), whether or not @ERROR exists.
    pub fn error_events(&self) -> u64 {
        self.error_events.load(Ordering::Relaxed)
    }
}
