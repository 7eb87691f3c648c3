//! WireGuard datagrams from the network, and decrypted inner packets through
//! the parser and the ACL: `cargo +nightly fuzz run wireguard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warden::fuzzing::wireguard(data));
