//! The shells' clocks. A core never reads a clock: it takes `now`
//! (monotonic) and `wall` (Unix milliseconds) as inputs, and clippy.toml
//! denies it these functions as it denies `Instant::now`. Shells (the
//! gateway's tasks, the HTTP handlers) read the time here and hand it in.

#![allow(clippy::disallowed_methods)]

use crate::telemetry::UnixMillis;

/// The wall clock, as Unix milliseconds.
pub fn wall_now() -> UnixMillis {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
