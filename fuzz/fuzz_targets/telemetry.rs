//! Telemetry topic + payload parser, round trip and engine: `cargo +nightly fuzz run telemetry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warden::fuzzing::telemetry(data));
