//! EAP conversations (and the EAP-TLS fragment reassembler) from arbitrary
//! bytes: `cargo +nightly fuzz run eap`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warden::fuzzing::eap(data));
