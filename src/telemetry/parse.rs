//! Sans-IO telemetry parsing: an MQTT topic and payload in, a device id and a
//! [`Report`] out, or a [`Refusal`] that says which counter to bump.

use super::report::{Report, UnixMillis};

/// Largest payload accepted (PRODUCT.md: 64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest device id accepted.
pub const MAX_DEVICE_ID: usize = 128;

/// Why a telemetry message changed nothing. Each maps to one value of the
/// `result` label of `warden_telemetry_messages_total`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The topic does not match the telemetry pattern or names no valid device id.
    #[error("topic does not name one valid device id")]
    BadTopic,
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload larger than {MAX_PAYLOAD} bytes")]
    Oversize,
    /// The payload is not JSON (or not UTF-8, or truncated).
    #[error("payload is not valid JSON: {0}")]
    Malformed(String),
    /// The JSON is well formed but a field is missing or has the wrong type.
    #[error("payload has an invalid field: {0}")]
    InvalidField(String),
    /// `seq` is not above the last one seen for this device.
    #[error("seq {seq} is not above the last seen {last}")]
    Replay { seq: u64, last: u64 },
    /// `ts` is older than the staleness limit: the report is stale on arrival.
    #[error("ts is older than the staleness limit")]
    TooOld,
    /// `ts` is further in the future than the allowed clock skew.
    #[error("ts is too far in the future")]
    Future,
}

impl Refusal {
    /// The metric label for this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadTopic => "bad_topic",
            Self::Oversize => "oversize",
            Self::Malformed(_) => "malformed",
            Self::InvalidField(_) => "invalid_field",
            Self::Replay { .. } => "replay",
            Self::TooOld => "too_old",
            Self::Future => "future",
        }
    }

    /// Every label, for pre-registering the counters at zero.
    pub const LABELS: [&'static str; 7] =
        ["bad_topic", "oversize", "malformed", "invalid_field", "replay", "too_old", "future"];
}

/// A topic filter with exactly one `+` level standing for the device id,
/// e.g. `devices/+/telemetry`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    prefix: String,
    suffix: String,
}

impl TopicPattern {
    /// Parses a pattern; it must hold exactly one `+` as a whole level and no `#`.
    pub fn new(filter: &str) -> Result<Self, String> {
        let levels: Vec<&str> = filter.split('/').collect();
        let plus: Vec<usize> = (0..levels.len()).filter(|&i| levels[i] == "+").collect();
        if plus.len() != 1 || filter.contains('#') || levels.iter().any(|l| l.len() > 1 && l.contains('+')) {
            return Err(format!("topic filter {filter:?} must have exactly one '+' level (the device id) and no '#'"));
        }
        let at = plus[0];
        let join = |ls: &[&str]| ls.join("/");
        let mut prefix = join(&levels[..at]);
        if at > 0 {
            prefix.push('/');
        }
        let mut suffix = join(&levels[at + 1..]);
        if at + 1 < levels.len() {
            suffix.insert(0, '/');
        }
        Ok(Self { prefix, suffix })
    }

    /// The filter to subscribe to.
    pub fn filter(&self) -> String {
        format!("{}+{}", self.prefix, self.suffix)
    }

    /// Does `topic` have this pattern's shape, one level where the device
    /// id goes, whatever that id is (a bad id is refused later, counted)?
    pub fn matches(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_suffix(self.suffix.as_str()))
            .is_some_and(|id| !id.contains('/'))
    }

    /// The device id named by `topic`, if the topic matches and the id is valid.
    pub fn device_id<'t>(&self, topic: &'t str) -> Result<&'t str, Refusal> {
        let id = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_suffix(self.suffix.as_str()))
            .ok_or(Refusal::BadTopic)?;
        if valid_device_id(id) { Ok(id) } else { Err(Refusal::BadTopic) }
    }
}

/// 1 to 128 bytes of `[A-Za-z0-9._:-]`: no `/`, no wildcards, nothing a log
/// or a topic template could misread.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Limits on `ts` relative to the receiver's wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// A report older than this is refused as [`Refusal::TooOld`].
    pub max_age_ms: i64,
    /// A report further ahead than this is refused as [`Refusal::Future`].
    pub max_skew_ms: i64,
    /// Reports produced at or after this are not too old however late they
    /// arrive: the telemetry source was out from then, and its backlog is
    /// real news (replays are still refused by `seq`).
    pub not_before: Option<UnixMillis>,
}

/// Parses a payload and checks its `ts` against `wall_now`. The `seq` check
/// needs the device's history and is done by the compliance engine.
pub fn parse_payload(payload: &[u8], wall_now: UnixMillis, fresh: Freshness) -> Result<Report, Refusal> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Refusal::Oversize);
    }
    let report: Report = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refusal::InvalidField(e.to_string()),
        _ => Refusal::Malformed(e.to_string()),
    })?;
    if report.ts < wall_now.saturating_sub(fresh.max_age_ms) && fresh.not_before.is_none_or(|t| report.ts < t) {
        return Err(Refusal::TooOld);
    }
    if report.ts > wall_now.saturating_add(fresh.max_skew_ms) {
        return Err(Refusal::Future);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = 1_795_000_000_000; // 2026-11-18
    const FRESH: Freshness = Freshness { max_age_ms: 15 * 60_000, max_skew_ms: 5 * 60_000, not_before: None };

    fn ts(ms: UnixMillis) -> String {
        crate::telemetry::report::format_rfc3339(ms)
    }

    #[test]
    fn topic_pattern_extracts_the_device_id() {
        let p = TopicPattern::new("devices/+/telemetry").unwrap();
        assert_eq!(p.filter(), "devices/+/telemetry");
        assert_eq!(p.device_id("devices/pos-0001/telemetry"), Ok("pos-0001"));
        for bad in [
            "devices/a/b/telemetry",
            "devices//telemetry",
            "devices/+/telemetry",
            "devices/#/telemetry",
            "devices/pos 1/telemetry",
            "devices/pos-0001/telemetry/x",
            "other/pos-0001/telemetry",
            "devices/pos-0001",
        ] {
            assert_eq!(p.device_id(bad), Err(Refusal::BadTopic), "{bad}");
        }
        // The shape is the embedded broker's test for "a report": a bad
        // id still reaches warden, to be refused and counted.
        assert!(p.matches("devices/pos 1/telemetry") && p.matches("devices//telemetry"));
        assert!(!p.matches("devices/a/b/telemetry") && !p.matches("devices/pos-0001/telemetry/x"));
        assert!(!p.matches("other/pos-0001/telemetry") && !p.matches("devices/pos-0001"));
        let long = format!("devices/{}/telemetry", "a".repeat(129));
        assert_eq!(p.device_id(&long), Err(Refusal::BadTopic));
        let max = format!("devices/{}/telemetry", "a".repeat(128));
        assert!(p.device_id(&max).is_ok());
    }

    #[test]
    fn topic_pattern_at_either_end() {
        let p = TopicPattern::new("+/telemetry").unwrap();
        assert_eq!(p.device_id("d1/telemetry"), Ok("d1"));
        let p = TopicPattern::new("t/+").unwrap();
        assert_eq!(p.device_id("t/d1"), Ok("d1"));
        assert_eq!(p.device_id("t/d1/x"), Err(Refusal::BadTopic));
        for bad in ["devices/#", "a/b", "a/+/+", "a/x+/b"] {
            assert!(TopicPattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_product_example() {
        let json = format!(
            r#"{{"seq":1042,"ts":"{}","os":"android","os_version":"14.0.1","encrypted":true,
            "apps_running":["com.acme.pos"],"open_ports":[443],"groups":["pos"],
            "attributes":{{"battery":80}},"unknown_field":{{"x":1}}}}"#,
            ts(NOW)
        );
        let r = parse_payload(json.as_bytes(), NOW, FRESH).unwrap();
        assert_eq!(r.seq, 1042);
        assert_eq!(r.ts, NOW);
        assert_eq!(r.os_version.as_deref(), Some("14.0.1"));
        assert_eq!(r.open_ports.as_deref(), Some(&[443u16][..]));
        assert!(r.attributes.unwrap().contains_key("battery"));
    }

    #[test]
    fn refuses_each_bad_shape_with_its_reason() {
        let ok_ts = ts(NOW);
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "malformed"),
            ("\u{ff}".into(), "malformed"),
            ("[]".into(), "invalid_field"),
            (format!(r#"{{"ts":"{ok_ts}"}}"#), "invalid_field"),
            (r#"{"seq":1}"#.into(), "invalid_field"),
            (format!(r#"{{"seq":-1,"ts":"{ok_ts}"}}"#), "invalid_field"),
            (format!(r#"{{"seq":1,"ts":"{ok_ts}","encrypted":"yes"}}"#), "invalid_field"),
            (format!(r#"{{"seq":1,"ts":"{ok_ts}","open_ports":[70000]}}"#), "invalid_field"),
            (r#"{"seq":1,"ts":"yesterday"}"#.into(), "invalid_field"),
            (format!(r#"{{"seq":1,"ts":"{}"}}"#, ts(NOW - 16 * 60_000)), "too_old"),
            (format!(r#"{{"seq":1,"ts":"{}"}}"#, ts(NOW + 6 * 60_000)), "future"),
        ];
        for (payload, want) in cases {
            let got = parse_payload(payload.as_bytes(), NOW, FRESH).unwrap_err();
            assert_eq!(got.label(), want, "{payload}: {got}");
        }
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(parse_payload(&big, NOW, FRESH), Err(Refusal::Oversize));
    }

    #[test]
    fn a_backlog_from_an_outage_is_not_too_old() {
        let late = format!(r#"{{"seq":1,"ts":"{}"}}"#, ts(NOW - 16 * 60_000));
        let outage = Freshness { not_before: Some(NOW - 20 * 60_000), ..FRESH };
        assert!(parse_payload(late.as_bytes(), NOW, outage).is_ok(), "produced after the outage began");
        let older = Freshness { not_before: Some(NOW - 10 * 60_000), ..FRESH };
        assert_eq!(parse_payload(late.as_bytes(), NOW, older).err(), Some(Refusal::TooOld), "before it: too old");
    }
}
