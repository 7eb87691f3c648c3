//! 802.1X authentication over RADIUS (RFC 3579): the EAP packets, the
//! fragmentation of TLS-based methods, and (to come) the EAP-TLS and PEAP
//! sessions that run on in-memory rustls connections. Sans-IO: bytes in,
//! bytes out.

pub mod config;
pub mod fragment;
pub mod mschapv2;
pub mod packet;
pub mod peap;
pub mod server;
pub mod tls;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests;
