//! bqforward: a Fluentd Forward protocol aggregator that streams logs into BigQuery.
//! This file wires the stages together; it is the only place that knows them all.

pub mod codec;
pub mod config;
