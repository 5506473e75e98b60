//! From a parsed fluentd config to a validated pipeline: which plugin each `@type` names,
//! with typed settings, in config order. Everything is checked here, once, before anything
//! runs; what bqforward does not implement is an error or a warning that says so.

use crate::config::{ConfigError, ConfigErrors, Element, Section};
use crate::input::forward::ForwardConfig;
use crate::metrics::PluginCounters;
use crate::metrics::http::EndpointConfig;
use crate::output::bigquery::BigQueryOutput;
use crate::output::file::FileOutput;
use crate::output::stdout::StdoutOutput;
use crate::output::{Counted, NullOutput, Output};
use crate::router::pattern::MatchPatterns;
use crate::router::rewrite_tag::RewriteTagFilter;
use crate::router::{FilterRoute, Label, Route, Router, Store, Target};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

pub const SOURCE_TYPES: &[&str] = &["forward", "unix"];
pub const OUTPUT_TYPES: &[&str] = &[
    "bigquery_insert",
    "bigquery_storage_write",
    "bigquery_load",
    "stdout",
    "null",
    "file",
    "copy",
    "relabel",
    "rewrite_tag_filter",
];
/// What a `<store>` of `@type copy` may be.
const STORE_TYPES: &[&str] = &[
    "bigquery_insert",
    "bigquery_storage_write",
    "bigquery_load",
    "stdout",
    "null",
    "file",
    "relabel",
    "rewrite_tag_filter",
];
/// What a `<secondary>` (dead letters) may be.
pub const SECONDARY_TYPES: &[&str] = &["secondary_file", "file", "stdout", "null"];

/// fluent-plugin-prometheus's collectors: bqforward always exports what they would, so they
/// are accepted and need nothing.
const MONITOR_SOURCES: &[&str] = &["prometheus_monitor", "prometheus_output_monitor"];

const SYSTEM_IGNORED: &[&str] = &[
    "workers",
    "root_dir",
    "suppress_repeated_stacktrace",
    "emit_error_log_interval",
    "suppress_config_dump",
    "without_source",
    "rpc_endpoint",
    "enable_get_dump",
    "process_name",
    "enable_msgpack_time_support",
    "file_permission",
    "dir_permission",
    "enable_input_metrics",
    "enable_size_metrics",
    "enable_jit",
    "strict_config_value",
    "disable_shared_socket",
    "ignore_repeated_log_interval",
    "ignore_same_log_interval",
    "log",
];

/// A plugin metrics read through its counters.
pub struct Monitored {
    pub id: String,
    pub type_name: &'static str,
    /// fluentd lists it among outputs (relabel, copy and rewrite_tag_filter are outputs).
    pub output: bool,
    /// It drops events on purpose (filters, rewrite_tag_filter).
    pub drops: bool,
    pub counters: Arc<PluginCounters>,
}

#[derive(Debug, Clone, Default)]
pub struct SystemConfig {
    pub log_level: Option<String>,
}

pub struct Pipeline {
    pub system: SystemConfig,
    pub inputs: Vec<ForwardConfig>,
    /// The root label first, then each `<label>` in config order.
    pub labels: Vec<Label>,
    /// `<source> @type prometheus`, if any (without one the endpoint serves on 127.0.0.1).
    pub endpoint: Option<EndpointConfig>,
    /// Outputs with a buffer, which metrics read at scrape time.
    pub buffered: Vec<Arc<BigQueryOutput>>,
    /// Every other plugin's counters: outputs without a buffer (copy stores and
    /// `<secondary>`s included), routing outputs, filters.
    pub monitored: Vec<Monitored>,
    pub warnings: Vec<String>,
    /// Worth saying at start-up, not a problem (logged at info).
    pub notes: Vec<String>,
}

impl Pipeline {
    fn empty() -> Self {
        Pipeline {
            system: SystemConfig::default(),
            inputs: Vec::new(),
            labels: vec![Label {
                name: String::new(),
                filters: Vec::new(),
                routes: Vec::new(),
            }],
            endpoint: None,
            buffered: Vec::new(),
            monitored: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::from_root(&crate::config::parse_file(path)?)
    }

    /// Only `<system>`: read before the rest so logging is set up before plugins start
    /// (a file buffer logs its recovery while it is built).
    pub fn system_of(root: &Element) -> Result<SystemConfig, ConfigError> {
        let mut pipeline = Self::empty();
        for element in root.elements_named("system") {
            pipeline.read_system(element)?;
        }
        Ok(pipeline.system)
    }

    /// Reads every directive. A directive with an error is reported and the next one read,
    /// so one run names every problem the config has, in line order.
    pub fn from_root(root: &Element) -> Result<Self, ConfigErrors> {
        let mut pipeline = Self::empty();
        let mut counter = 0usize;
        let mut errors: Vec<ConfigError> = root
            .params
            .iter()
            .map(|param| {
                ConfigError::at(
                    &param.location,
                    format!("parameter '{}' outside any section", param.key),
                )
            })
            .collect();
        pipeline.declare_labels(root)?;
        for element in &root.elements {
            counter += 1;
            let read = match element.name.as_str() {
                "system" => pipeline.read_system(element),
                "source" => pipeline.add_source(element, counter),
                "match" => pipeline.add_match(element, counter, 0),
                "filter" => pipeline.add_filter(element, counter, 0),
                "label" => pipeline.add_label(element, &mut counter, &mut errors),
                "worker" => Err(ConfigError::at(
                    &element.location,
                    format!(
                        "{} is not supported by bqforward (it uses every core in one process)",
                        element.header()
                    ),
                )),
                other => Err(ConfigError::at(
                    &element.location,
                    format!("unknown directive <{other}>"),
                )),
            };
            if let Err(error) = read {
                errors.push(error);
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors::sorted(errors));
        }
        if pipeline.inputs.is_empty() {
            pipeline
                .warnings
                .push("no <source> of a supported type: bqforward will receive nothing".into());
        }
        Ok(pipeline)
    }

    fn read_system(&mut self, element: &Element) -> Result<(), ConfigError> {
        let s = Section::new(element);
        self.system.log_level = s
            .one_of(
                "log_level",
                &["trace", "debug", "info", "warn", "error", "fatal"],
            )?
            .map(str::to_owned);
        if let Some(workers) = s.int::<u32>("workers")?.filter(|w| *w > 1) {
            self.warnings.push(format!(
                "{}: workers {workers} ignored: bqforward uses every core in one process",
                element.location
            ));
        }
        let _ = s.sections("log");
        self.warnings.extend(s.finish(SYSTEM_IGNORED)?);
        Ok(())
    }

    fn add_source(&mut self, element: &Element, n: usize) -> Result<(), ConfigError> {
        let s = Section::new(element);
        let type_name = plugin_type(&s, element)?;
        match type_name {
            "prometheus" => return self.add_prometheus(&s, element),
            "monitor_agent" => {
                self.warnings.push(format!(
                    "{}: <source> @type monitor_agent is skipped: bqforward serves its /api/plugins.json on the metrics endpoint (<source> @type prometheus)",
                    element.location
                ));
                return Ok(());
            }
            t if MONITOR_SOURCES.contains(&t) => return self.add_monitor(&s, element, t),
            _ => {}
        }
        if !SOURCE_TYPES.contains(&type_name) {
            return Err(unknown_type(element, type_name, SOURCE_TYPES));
        }
        let id = plugin_id(&s, type_name, n);
        let label = match s.label() {
            Some(name) => Some(self.label_named(name, element)?),
            None => None,
        };
        let _ = s.log_level();
        let (mut config, warnings) = ForwardConfig::from_config(id, &s, type_name == "unix")?;
        config.label = label.map(|i| self.labels[i].name.clone());
        self.inputs.push(config);
        self.warnings.extend(warnings);
        Ok(())
    }

    fn add_prometheus(&mut self, s: &Section<'_>, element: &Element) -> Result<(), ConfigError> {
        if self.endpoint.is_some() {
            return Err(ConfigError::at(
                &element.location,
                "only one <source> @type prometheus is supported",
            ));
        }
        let _ = (s.id(), s.log_level());
        let (config, warnings) = EndpointConfig::from_config(s)?;
        self.endpoint = Some(config);
        self.warnings.extend(warnings);
        Ok(())
    }

    fn add_monitor(
        &mut self,
        s: &Section<'_>,
        element: &Element,
        type_name: &str,
    ) -> Result<(), ConfigError> {
        let _ = (s.id(), s.log_level(), s.time("interval")?);
        if s.bool("gauge_all")? == Some(false) {
            self.warnings.push(format!(
                "{}: gauge_all false is ignored: bqforward exports fluentd_output_status_* as gauges (gauge_all true, the plugin's default)",
                element.location
            ));
        }
        self.notes.push(format!(
            "{}: <source> @type {type_name}: its metrics are always exported on the metrics endpoint; nothing to configure",
            element.location
        ));
        self.warnings.extend(s.finish(&["labels"])?);
        Ok(())
    }

    /// Every `<label>` name first, so `@label` may name a label defined further down.
    fn declare_labels(&mut self, root: &Element) -> Result<(), ConfigError> {
        for element in root.elements_named("label") {
            let name = element.arg.trim();
            if name.is_empty() {
                return Err(ConfigError::at(
                    &element.location,
                    "<label> needs a name, e.g. <label @ERROR>",
                ));
            }
            if self.labels.iter().any(|l| l.name == name) {
                return Err(ConfigError::at(
                    &element.location,
                    format!("label {name} is defined twice"),
                ));
            }
            if name == "@FLUENT_LOG" {
                self.warnings.push(format!(
                    "{}: <label @FLUENT_LOG> receives nothing: bqforward logs to stderr, not as events",
                    element.location
                ));
            }
            self.labels.push(Label {
                name: name.to_owned(),
                filters: Vec::new(),
                routes: Vec::new(),
            });
        }
        Ok(())
    }

    fn label_named(&self, name: &str, element: &Element) -> Result<usize, ConfigError> {
        self.labels
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| {
                ConfigError::at(
                    &element.location,
                    format!("@label {name}: no <label {name}> in the config"),
                )
            })
    }

    fn add_label(
        &mut self,
        element: &Element,
        counter: &mut usize,
        errors: &mut Vec<ConfigError>,
    ) -> Result<(), ConfigError> {
        let label = self.label_named(element.arg.trim(), element)?;
        if let Some(param) = element.params.first() {
            return Err(ConfigError::at(
                &param.location,
                format!(
                    "parameter '{}' in {}: a label holds only <filter> and <match>",
                    param.key,
                    element.header()
                ),
            ));
        }
        for child in &element.elements {
            *counter += 1;
            let read = match child.name.as_str() {
                "filter" => self.add_filter(child, *counter, label),
                "match" => self.add_match(child, *counter, label),
                _ => Err(ConfigError::at(
                    &child.location,
                    format!(
                        "{} in {}: a label holds only <filter> and <match>",
                        child.header(),
                        element.header()
                    ),
                )),
            };
            if let Err(error) = read {
                errors.push(error);
            }
        }
        Ok(())
    }

    fn add_filter(&mut self, element: &Element, n: usize, label: usize) -> Result<(), ConfigError> {
        let patterns = MatchPatterns::parse(&element.arg)
            .map_err(|e| ConfigError::at(&element.location, e.replace("<match>", "<filter>")))?;
        let s = Section::new(element);
        let type_name = plugin_type(&s, element)?;
        let id = plugin_id(&s, type_name, n);
        let (filter, warnings) = crate::filter::from_config(id, element)?;
        self.warnings.extend(warnings);
        let counters = self.monitor(filter.id(), filter.type_name(), false, true);
        self.labels[label].filters.push(FilterRoute {
            patterns,
            filter,
            counters,
        });
        Ok(())
    }

    fn monitor(
        &mut self,
        id: &str,
        type_name: &'static str,
        output: bool,
        drops: bool,
    ) -> Arc<PluginCounters> {
        let counters = Arc::new(PluginCounters::default());
        self.monitored.push(Monitored {
            id: id.to_owned(),
            type_name,
            output,
            drops,
            counters: Arc::clone(&counters),
        });
        counters
    }

    fn add_match(&mut self, element: &Element, n: usize, label: usize) -> Result<(), ConfigError> {
        let patterns = MatchPatterns::parse(&element.arg)
            .map_err(|e| ConfigError::at(&element.location, e))?;
        let target = self.build_target(element, n, label, OUTPUT_TYPES)?;
        self.labels[label].routes.push(Route { patterns, target });
        Ok(())
    }

    /// What a `<match>` or `<store>` sends events to.
    fn build_target(
        &mut self,
        element: &Element,
        n: usize,
        label: usize,
        allowed: &[&str],
    ) -> Result<Target, ConfigError> {
        let s = Section::new(element);
        let type_name = plugin_type(&s, element)?;
        if !allowed.contains(&type_name) {
            return Err(unknown_type(element, type_name, allowed));
        }
        let id = plugin_id(&s, type_name, n);
        let _ = s.log_level();
        // `@label` on an output names where it emits to; only relabel and
        // rewrite_tag_filter emit, others accept it as fluentd does.
        let emit_label = match s.label() {
            Some(name) => Some(self.label_named(name, element)?),
            None => None,
        };
        match type_name {
            "relabel" => {
                let label = emit_label.ok_or_else(|| {
                    ConfigError::at(&element.location, "@type relabel needs @label")
                })?;
                self.warnings.extend(s.finish(&[])?);
                let counters = self.monitor(&id, "relabel", true, false);
                Ok(Target::Relabel {
                    id,
                    label,
                    counters,
                })
            }
            "rewrite_tag_filter" => {
                let (filter, warnings) = RewriteTagFilter::from_config(id, &s)?;
                self.warnings.extend(warnings);
                let counters = self.monitor(filter.id(), "rewrite_tag_filter", true, true);
                Ok(Target::RewriteTag {
                    filter: Arc::new(filter),
                    label: emit_label.unwrap_or(label),
                    counters,
                })
            }
            "copy" => {
                let _ = s.one_of("copy_mode", &["no_copy", "shallow", "deep", "marshal"])?;
                let mut stores = Vec::new();
                for (i, store) in s.sections("store").into_iter().enumerate() {
                    let flags: Vec<&str> = store.arg.split_whitespace().collect();
                    if let Some(bad) = flags
                        .iter()
                        .find(|f| !["ignore_error", "ignore_if_prev_success"].contains(f))
                    {
                        return Err(ConfigError::at(
                            &store.location,
                            format!(
                                "<store {bad}>: supported are ignore_error and ignore_if_prev_success"
                            ),
                        ));
                    }
                    let default_n = n * 100 + i + 1;
                    stores.push(Store {
                        target: self.build_target(store, default_n, label, STORE_TYPES)?,
                        ignore_error: flags.contains(&"ignore_error"),
                        ignore_if_prev_success: flags.contains(&"ignore_if_prev_success"),
                    });
                }
                if stores.is_empty() {
                    return Err(ConfigError::at(
                        &element.location,
                        "@type copy needs at least one <store>",
                    ));
                }
                self.warnings.extend(s.finish(&["deep_copy"])?);
                let counters = self.monitor(&id, "copy", true, false);
                Ok(Target::Copy {
                    id,
                    stores,
                    counters,
                })
            }
            "bigquery_insert" | "bigquery_storage_write" | "bigquery_load" => {
                let secondary = match s.section("secondary")? {
                    Some(secondary) => Some(self.build_simple_output(
                        secondary,
                        &format!("{id}.secondary"),
                        SECONDARY_TYPES,
                    )?),
                    None => None,
                };
                let (output, warnings, notes) = match type_name {
                    "bigquery_storage_write" => {
                        crate::output::bigquery::storage_write::from_config(id, &s, secondary)?
                    }
                    "bigquery_load" => {
                        crate::output::bigquery::load::from_config(id, &s, secondary)?
                    }
                    _ => BigQueryOutput::from_config(id, &s, secondary)?,
                };
                self.warnings.extend(warnings);
                self.notes.extend(notes);
                let output = Arc::new(output);
                self.buffered.push(Arc::clone(&output));
                Ok(Target::Output(output as Arc<dyn Output>))
            }
            _ => {
                let output = self.build_output(&s, element, type_name, id, allowed)?;
                // fluentd accepts these on every output; these outputs have no use for them.
                self.warnings
                    .extend(s.finish(crate::output::COMMON_OUTPUT_PARAMS)?);
                Ok(Target::Output(output))
            }
        }
    }

    /// A `<secondary>`: one of the local outputs, read completely.
    fn build_simple_output(
        &mut self,
        element: &Element,
        default_id: &str,
        allowed: &[&str],
    ) -> Result<Arc<dyn Output>, ConfigError> {
        let s = Section::new(element);
        let type_name = plugin_type(&s, element)?;
        let id = s.id().map_or_else(|| default_id.to_owned(), str::to_owned);
        let _ = s.log_level();
        let output = self.build_output(&s, element, type_name, id, allowed)?;
        self.warnings.extend(s.finish(&[])?);
        Ok(output)
    }

    fn build_output(
        &mut self,
        s: &Section<'_>,
        element: &Element,
        type_name: &str,
        id: String,
        allowed: &[&str],
    ) -> Result<Arc<dyn Output>, ConfigError> {
        let (output, warnings): (Arc<dyn Output>, Vec<String>) = match type_name {
            "stdout" if allowed.contains(&"stdout") => {
                let (o, w) = StdoutOutput::from_config(id, s)?;
                (Arc::new(o), w)
            }
            "file" if allowed.contains(&"file") => {
                let (o, w) = FileOutput::from_config(id, s)?;
                (Arc::new(o), w)
            }
            "secondary_file" if allowed.contains(&"secondary_file") => {
                let (o, w) = FileOutput::secondary_from_config(id, s)?;
                (Arc::new(o), w)
            }
            "null" if allowed.contains(&"null") => {
                let mut warnings = Vec::new();
                if let Some(buffer) = s.section("buffer")? {
                    warnings.extend(Section::new(buffer).finish(crate::output::BUFFER_PARAMS)?);
                }
                (Arc::new(NullOutput::new(id)), warnings)
            }
            other => return Err(unknown_type(element, other, allowed)),
        };
        self.warnings.extend(warnings);
        let writes = output.type_name() != "null";
        let counters = self.monitor(output.id(), output.type_name(), true, false);
        Ok(Arc::new(Counted::new(output, counters, writes)))
    }

    pub fn into_router(self) -> (Vec<ForwardConfig>, Router) {
        (self.inputs, Router::new(self.labels))
    }

    /// The resolved pipeline, for `bqforward check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "sources:");
        for input in &self.inputs {
            let label = input
                .label
                .as_ref()
                .map(|l| format!(" -> label {l}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} ({}){label}", input.id, input.describe());
        }
        let endpoint = self.endpoint.clone().unwrap_or_default();
        let _ = writeln!(out, "metrics: {}", endpoint.describe());
        for label in &self.labels {
            let indent = if label.name.is_empty() {
                ""
            } else {
                let _ = writeln!(out, "label {}:", label.name);
                "  "
            };
            if !label.filters.is_empty() {
                let _ = writeln!(out, "{indent}filters (in order, every match applies):");
                for f in &label.filters {
                    let _ = writeln!(
                        out,
                        "{indent}  <filter {}> {} (@type {}): {}",
                        f.patterns,
                        f.filter.id(),
                        f.filter.type_name(),
                        f.filter.describe()
                    );
                }
            }
            let _ = writeln!(out, "{indent}matches (first match wins):");
            for route in &label.routes {
                let _ = write!(out, "{indent}  <match {}> -> ", route.patterns);
                describe_target(
                    &mut out,
                    &route.target,
                    &self.labels,
                    &format!("{indent}    "),
                );
            }
        }
        out
    }
}

fn describe_target(out: &mut String, target: &Target, labels: &[Label], indent: &str) {
    match target {
        Target::Output(o) => {
            let _ = writeln!(out, "{} (@type {})", o.id(), o.type_name());
        }
        Target::Relabel { id, label, .. } => {
            let _ = writeln!(out, "{id} (@type relabel) -> label {}", labels[*label].name);
        }
        Target::RewriteTag { filter, label, .. } => {
            let name = &labels[*label].name;
            let into = if name.is_empty() {
                "the root label"
            } else {
                name
            };
            let _ = writeln!(
                out,
                "{} (@type rewrite_tag_filter) {}, re-emitted into {into}",
                filter.id(),
                filter.describe()
            );
        }
        Target::Copy { id, stores, .. } => {
            let _ = writeln!(out, "{id} (@type copy):");
            for store in stores {
                let flags = match (store.ignore_error, store.ignore_if_prev_success) {
                    (true, true) => " ignore_error ignore_if_prev_success",
                    (true, false) => " ignore_error",
                    (false, true) => " ignore_if_prev_success",
                    (false, false) => "",
                };
                let _ = write!(out, "{indent}<store{flags}> -> ");
                describe_target(out, &store.target, labels, &format!("{indent}  "));
            }
        }
    }
}

fn plugin_type<'a>(s: &Section<'a>, element: &Element) -> Result<&'a str, ConfigError> {
    s.type_name().ok_or_else(|| {
        ConfigError::at(
            &element.location,
            format!("{} needs @type", element.header()),
        )
    })
}

fn plugin_id(s: &Section<'_>, type_name: &str, n: usize) -> String {
    s.id()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{type_name}.{n}"))
}

fn unknown_type(element: &Element, type_name: &str, supported: &[&str]) -> ConfigError {
    ConfigError::at(
        &element.location,
        format!(
            "unknown @type '{type_name}' in {} (bqforward supports: {})",
            element.header(),
            supported.join(", ")
        ),
    )
}
