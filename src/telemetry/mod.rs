//! Device telemetry: what an MDM agent publishes, and how warden reads it.
//!
//! [`parse`] is the sans-IO part (topic + payload bytes in, a [`Report`] or a
//! counted [`Refusal`] out); the MQTT shell that feeds it is `gateway::mqtt`.

pub mod access;
pub mod config;
pub mod parse;
pub mod report;

pub use parse::{Refusal, TopicPattern, parse_payload};
pub use report::{Report, UnixMillis};
