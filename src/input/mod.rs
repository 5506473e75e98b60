//! Inputs: where events come from. Only the Forward protocol (TCP, UDP heartbeat, Unix).

pub mod forward;
pub mod security;
pub mod tls;
