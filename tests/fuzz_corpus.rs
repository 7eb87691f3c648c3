//! Replays the committed fuzz corpora (fuzz/corpus/*) in the normal test run,
//! so every input that once found a bug keeps being checked without cargo-fuzz.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}

#[test]
fn telemetry_corpus() {
    replay("telemetry", warden::fuzzing::telemetry);
}

#[test]
fn radius_corpus() {
    replay("radius", warden::fuzzing::radius);
}

#[test]
fn wireguard_corpus() {
    replay("wireguard", warden::fuzzing::wireguard);
}

#[test]
fn eap_corpus() {
    replay("eap", warden::fuzzing::eap);
}

#[test]
fn ack_corpus() {
    replay("ack", warden::fuzzing::ack);
}
