//! RADIUS (RFC 2865, 2866, 2868, 2869, 3579, 5176, 5997): a sans-IO codec.
//!
//! Written here rather than taken from the `radius` crate, which computes
//! no Message-Authenticator, cannot read vendor attributes and compares in
//! variable time (../shared/DEPENDENCIES.md); that crate is kept as a test
//! oracle for our encoding.

pub mod builder;
pub mod coa;
pub mod config;
pub mod crypto;
pub mod dictionary;
pub mod journal;
pub mod mppe;
pub mod packet;
pub mod server;
pub mod sessions;

pub use builder::{Builder, EncodeError};
pub use dictionary::{AcctStatus, AttrType, Code, ErrorCause};
pub use packet::{Attr, DecodeError, Packet};

#[cfg(test)]
mod tests;
