//! What happens inside bqforward that an operator sees, one struct per kind of happening,
//! whose `emit` writes the log line and moves the counters together (Vector's
//! `internal_events`): a call site cannot log without counting or count without logging.
//! Events depend on `metrics` for their counters and on no stage.

pub mod bigquery;
pub mod buffer;
