//! The WireGuard plane: remote devices terminate their tunnels on warden,
//! and every inner packet, both ways, passes the device's compliance ACL.
//!
//! - [`tunnel`]: the one file that names boringtun (Noise sessions, the
//!   handshake gate with its rate limiter and cookies);
//! - [`peers`]: peers by static key, by receiver index and by allowed IPs;
//! - [`pool`]: tunnel addresses for peers that come from telemetry;
//! - [`packet`] and [`acl`]: the inner packet's headers and the pure ACL;
//! - [`router`]: the sans-IO core that ties them together;
//! - [`config`]: the `[wireguard]` section.
//!
//! The shell is `gateway::wireguard_task`: one UDP socket, one TUN.

pub mod acl;
pub mod config;
pub mod packet;
pub mod peers;
pub mod pool;
pub mod router;
pub mod tunnel;

#[cfg(test)]
mod tests;

use crate::compliance::{Device, Verdict};
use crate::config::UnknownDevice;
pub use acl::Access;

/// The access a running tunnel gets from its device's verdict. Like a
/// RADIUS session, only an enforced `always` failure restricts it; an
/// unknown device (never reported, stale, or no device at all) gets what
/// `unknown_device` says.
pub fn access_for(device: Option<&Device>, unknown: UnknownDevice) -> Access {
    match device {
        Some(d) if d.verdict == Verdict::Compliant => Access::Full,
        Some(d) if d.verdict == Verdict::Noncompliant => {
            if d.enforce.quarantine {
                Access::Quarantine
            } else {
                Access::Full
            }
        }
        _ => match unknown {
            UnknownDevice::Allow => Access::Full,
            UnknownDevice::Quarantine => Access::Quarantine,
            UnknownDevice::Reject => Access::Deny,
        },
    }
}
