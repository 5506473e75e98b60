//! fluentd's semantics that several stages share, each in one place: name templates (buffer
//! placeholders), record accessors and regexp parameters, and Ruby's text forms and number
//! coercions of values. Pure functions; no I/O, no stage logic.

pub mod accessor;
pub mod pattern;
pub mod ruby;
pub mod template;
