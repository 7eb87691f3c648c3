//! Command acknowledgements from devices, through the parser and the
//! remediation state machine: `cargo +nightly fuzz run ack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warden::fuzzing::ack(data));
