//! Filters (`<filter PATTERN>`): record_transformer and grep, compiled at config time and run
//! on msgpack records; a record is rebuilt only by a filter that changes it. No I/O.

pub mod grep;
pub mod record_transformer;

use crate::config::{ConfigError, Element, Section};
use crate::event::Event;
use std::sync::Arc;

pub const FILTER_TYPES: &[&str] = &["record_transformer", "grep"];

/// An event a filter could not process; it goes to the `@ERROR` label, as fluentd's
/// `Filter#filter_stream` sends it with `router.emit_error_event`.
#[derive(Debug)]
pub struct RecordError {
    pub event: Event,
    pub reason: String,
}

pub trait Filter: Send + Sync {
    fn id(&self) -> &str;

    fn type_name(&self) -> &'static str;

    /// The events kept, in order (possibly rewritten). Events it fails on go to `errors`;
    /// the others it does not return are dropped on purpose (counted by the router).
    fn filter(&self, tag: &str, events: Vec<Event>, errors: &mut Vec<RecordError>) -> Vec<Event>;

    /// One line for `bqforward check`.
    fn describe(&self) -> String;
}

/// Builds the filter a `<filter>` names, reading its section completely.
pub fn from_config(
    id: String,
    element: &Element,
) -> Result<(Arc<dyn Filter>, Vec<String>), ConfigError> {
    let s = Section::new(element);
    let _ = (s.log_level(), s.id());
    let type_name = s.type_name().ok_or_else(|| {
        ConfigError::at(
            &element.location,
            format!("{} needs @type", element.header()),
        )
    })?;
    match type_name {
        "record_transformer" => {
            let (f, w) = record_transformer::RecordTransformer::from_config(id, &s)?;
            Ok((Arc::new(f), w))
        }
        "grep" => {
            let (f, w) = grep::Grep::from_config(id, &s)?;
            Ok((Arc::new(f), w))
        }
        other => Err(ConfigError::at(
            &element.location,
            format!(
                "unknown @type '{other}' in {} (bqforward supports: {})",
                element.header(),
                FILTER_TYPES.join(", ")
            ),
        )),
    }
}
