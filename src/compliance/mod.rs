//! The compliance table: every device's last report and verdict.
//!
//! [`Engine`] is the one writer (sans-IO: telemetry, policies and `now` in,
//! verdict [`Change`]s and a deadline out); [`Table`] is the read handle every
//! plane shares: a lookup holds a shard's read lock only for an `Arc` clone
//! (not lock-free; measured cheap enough, see docs/design.md).

pub mod access;
mod device;
mod engine;
pub mod identity;
mod intern;
pub mod journal;
mod judge;
pub mod outage;
pub mod overrides;
mod record;
pub mod snapshot;
mod table;

pub use access::{Access, Grant, Rules, Stage, Why, grant};
pub use device::{Device, Enforce, Verdict};
pub use engine::{BreakerEvent, Cause, Change, Engine, Held, HeldCause, OutageEvent};
pub use judge::{Restorer, Settled};
pub use table::Table;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests;
