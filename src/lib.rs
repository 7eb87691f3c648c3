//! warden: a network access control gateway.
//!
//! The planes, each a sans-IO core driven by a thin tokio shell:
//! - [`telemetry`]: MQTT device reports in;
//! - [`policy`]: what compliant means, evaluated by a pure function;
//! - [`compliance`]: the table of every device's verdict, and its changes;
//! - [`wireguard`]: remote devices' tunnels, every packet checked against the verdict;
//! - [`http`] and [`metrics`]: what operators and Prometheus read.
#![forbid(unsafe_code)]

pub mod audit;
pub mod certs;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod compliance;
pub mod config;
pub mod diag;
pub mod durable;
pub mod eap;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod mac;
pub mod metrics;
pub mod policy;
pub mod radius;
pub mod remediation;
pub mod report;
pub mod telemetry;
pub mod tokens;
pub mod users;
pub mod wireguard;
