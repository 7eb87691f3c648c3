//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the test that
//! replays their committed corpus in every CI run.

use crate::compliance::{Engine, Table};
use crate::policy::PolicySet;
use crate::telemetry::parse::{Freshness, parse_payload};
use crate::telemetry::{Report, TopicPattern};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// 2026-11-22T10:15:00Z: a fixed "now" so a crash replays exactly.
const NOW: i64 = 1_795_342_500_000;

fn shipped_policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        PolicySet::load_dir(&dir).unwrap_or_default()
    })
}

/// Telemetry as it arrives: the first byte is the topic's length, then the
/// topic, then the payload. Must never panic; an accepted report must
/// survive a round trip through its own JSON and go through the engine.
pub fn telemetry(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    let Ok(topic) = std::str::from_utf8(topic) else { return };
    let pattern = TopicPattern::new("devices/+/telemetry").unwrap_or_else(|_| unreachable!("valid pattern"));
    let fresh = Freshness { max_age_ms: 900_000, max_skew_ms: 300_000 };
    let parsed = pattern.device_id(topic).and_then(|id| Ok((id, parse_payload(payload, NOW, fresh)?)));
    let Ok((id, report)) = parsed else { return };
    let json = serde_json::to_vec(&report).unwrap_or_else(|e| panic!("an accepted report must serialize: {e}"));
    let again: Report = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("round trip failed: {e}"));
    assert_eq!(again, report, "round trip changed the report");
    let mut engine = Engine::new(Table::default(), shipped_policies().clone(), Duration::from_secs(900));
    let now = Instant::now();
    assert!(engine.handle_telemetry(id, report, now, NOW).is_ok());
    assert!(engine.poll_event().is_some(), "a first report is always a change");
}

/// A datagram from a NAS: decode → encode → decode must give the same
/// packet, and every check on it must run without panicking.
pub fn radius(data: &[u8]) {
    use crate::radius::{AttrType, Builder, Packet, crypto, packet::vendor_attrs};
    let Ok(p) = Packet::decode(data) else { return };
    let mut b = Builder::new(p.code(), p.identifier(), false);
    for a in p.attrs() {
        assert!(b.attr(a.typ, a.value).is_ok(), "a decoded attribute must re-encode");
        if a.typ == AttrType::VendorSpecific {
            let _ = vendor_attrs(a.value);
        }
        if a.typ == AttrType::UserPassword {
            let _ = crypto::unhide_password(a.value, b"secret", &p.authenticator());
        }
    }
    let again = b.finish_access_request(b"secret", &p.authenticator());
    let q = Packet::decode(&again).unwrap_or_else(|e| panic!("re-encoded packet must decode: {e}"));
    assert_eq!(q.as_bytes(), p.as_bytes());
    let _ = p.message_authenticator_valid(b"secret", None);
    let _ = p.message_authenticator_valid(b"secret", Some(&[0; 16]));
    let _ = p.request_authenticator_valid(b"secret");
    let _ = p.eap_message();
}
