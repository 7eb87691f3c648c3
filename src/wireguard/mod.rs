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

pub use acl::Access;
