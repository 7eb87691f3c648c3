//! RADIUS datagrams: decode → encode → decode, and every verifier: `cargo +nightly fuzz run radius`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warden::fuzzing::radius(data));
