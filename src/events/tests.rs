use super::*;
use serde_json::json;

/// The Standard Webhooks reference libraries' signing vector.
#[test]
fn standard_webhooks_vector() {
    let key = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    assert_eq!(
        sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
    // Any other id, time or body signs differently.
    assert_ne!(
        sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpl", 1649367553, body),
        sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body)
    );
    assert_ne!(
        sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367554, body),
        sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body)
    );
}

#[test]
fn secrets() {
    assert!(parse_secret("whsec_short").is_err());
    assert!(parse_secret("whsec_!!!").is_err());
    assert_eq!(parse_secret("C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n").unwrap().len(), 24);
}

fn entry(seq: u64, at: &str, kind: &str, device: Option<&str>) -> Value {
    let mut chain = crate::audit::Chain { seq: seq - 1, head: crate::audit::GENESIS.into() };
    let at = crate::telemetry::report::parse_rfc3339(at).unwrap();
    serde_json::from_str(&chain.append(at, kind, device, json!({"from": "compliant", "to": "noncompliant"}))).unwrap()
}

#[test]
fn cloud_event_from_an_entry() {
    let e = entry(7, "2026-12-04T10:00:00.250Z", "warden.verdict.changed", Some("dev-1"));
    let ev = from_entry(&e, "urn:warden:test").unwrap();
    assert_eq!(ev.seq, 7);
    let v: Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "warden.verdict.changed");
    assert_eq!(v["source"], "urn:warden:test");
    assert_eq!(v["subject"], "dev-1");
    assert_eq!(v["time"], "2026-12-04T10:00:00.25Z");
    assert_eq!(v["sequence"], "00000000000000000007");
    assert_eq!(v["data"]["to"], "noncompliant");
    assert_eq!(v["id"].as_str().unwrap().len(), 32);
    assert_eq!(v["id"].as_str().unwrap(), &e["hash"].as_str().unwrap()[..32]);
    // No device: no subject. A checkpoint is no event.
    let e = entry(8, "2026-12-04T10:00:00Z", "warden.policy.reloaded", None);
    let v: Value = serde_json::from_slice(&from_entry(&e, "warden").unwrap().body).unwrap();
    assert!(v.get("subject").is_none());
    assert!(from_entry(&json!({"checkpoint": 8, "head": "00", "at": "2026-12-04T10:00:00Z"}), "warden").is_none());
}

fn event(seq: u64, at: UnixMillis) -> Event {
    Event {
        seq,
        at,
        id: format!("id{seq}"),
        kind: "warden.verdict.changed".into(),
        body: format!("{{\"n\":{seq}}}").into_bytes().into(),
    }
}

const T0: UnixMillis = 1_800_000_000_000;

#[test]
fn delivers_in_order_one_at_a_time() {
    let mut d = Delivery::new(Settings::default(), 0, 1);
    assert_eq!(d.poll_transmit(T0), None);
    d.push(event(1, T0));
    d.pass(2);
    d.push(event(3, T0));
    let a = d.poll_transmit(T0).unwrap();
    assert_eq!(
        (a.id.as_str(), a.body.as_slice(), a.content_type, a.attempt),
        ("id1", &b"{\"n\":1}"[..], CONTENT_TYPE, 1)
    );
    // One at a time: nothing more while it is in flight.
    assert_eq!(d.poll_transmit(T0), None);
    assert_eq!(d.cursor(), 0);
    d.on_result(T0, true);
    assert_eq!(d.poll_outcome(), Some(Outcome::Delivered { events: 1, last_seq: 1 }));
    // The filtered-out entry 2 is passed with it.
    assert_eq!(d.cursor(), 2);
    assert_eq!(d.poll_transmit(T0).unwrap().id, "id3");
    d.on_result(T0, true);
    assert_eq!(d.cursor(), 3);
    d.pass(9);
    assert_eq!(d.cursor(), 9);
    // A re-read of an entry already taken is ignored.
    d.push(event(3, T0));
    assert_eq!(d.poll_transmit(T0), None);
}

#[test]
fn retries_back_off_and_keep_the_order() {
    let mut d = Delivery::new(Settings::default(), 0, 1);
    d.push(event(1, T0));
    d.push(event(2, T0));
    let mut now = T0;
    let mut delays = Vec::new();
    for attempt in 1..=14u32 {
        let a = d.poll_transmit(now).unwrap();
        assert_eq!((a.id.as_str(), a.attempt), ("id1", attempt), "the failed event is retried, not skipped");
        d.on_result(now, false);
        let Some(Outcome::Failed { retry_in, .. }) = d.poll_outcome() else { panic!() };
        delays.push(retry_in);
        // Not before its time.
        assert_eq!(d.poll_transmit(now + retry_in - 1), None);
        assert_eq!(d.poll_timeout(), Some(now + retry_in));
        now += retry_in;
    }
    // 1 s doubling (±20 %), capped at an hour.
    for (i, ms) in delays.iter().enumerate() {
        let base = (1000i64 << i).min(3_600_000);
        assert!((base * 4 / 5..=base * 6 / 5).contains(ms), "delay {i}: {ms} ms, base {base}");
    }
    d.poll_transmit(now).unwrap();
    d.on_result(now, true);
    assert_eq!(d.poll_outcome(), Some(Outcome::Delivered { events: 1, last_seq: 1 }));
    let a = d.poll_transmit(now).unwrap();
    assert_eq!((a.id.as_str(), a.attempt), ("id2", 1), "the next event starts afresh");
}

#[test]
fn gives_up_after_retry_for() {
    let settings = Settings { retry_for: 3_600_000, ..Settings::default() };
    let mut d = Delivery::new(settings, 0, 7);
    d.push(event(1, T0));
    d.push(event(2, T0 + 1_800_000));
    let mut now = T0;
    loop {
        let Some(a) = d.poll_transmit(now) else {
            now = d.poll_timeout().unwrap();
            continue;
        };
        if a.id != "id1" {
            break;
        }
        d.on_result(now, false);
        while let Some(o) = d.poll_outcome() {
            if let Outcome::Expired { events, first_seq } = o {
                assert_eq!((events, first_seq), (1, 1));
            }
        }
    }
    // Event 1 was given up once an hour old, not before.
    assert!((T0 + 3_600_000..T0 + 3_600_000 + 1_000).contains(&now), "{}", now - T0);
    assert_eq!(d.cursor(), 1);
}

#[test]
fn batches_are_arrays_retried_whole() {
    let mut d = Delivery::new(Settings { batch: 3, ..Settings::default() }, 0, 1);
    for seq in 1..=5 {
        d.push(event(seq, T0));
    }
    let a = d.poll_transmit(T0).unwrap();
    assert_eq!((a.id.as_str(), a.events, a.content_type), ("id1_3", 3, BATCH_CONTENT_TYPE));
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v, json!([{"n": 1}, {"n": 2}, {"n": 3}]));
    d.on_result(T0, false);
    // More arrived meanwhile; the retry is the same batch, with the same id.
    d.push(event(6, T0));
    let b = d.poll_transmit(T0 + 5_000).unwrap();
    assert_eq!((b.id, b.body), (a.id, a.body));
    d.on_result(T0 + 5_000, true);
    let c = d.poll_transmit(T0 + 5_000).unwrap();
    assert_eq!((c.id.as_str(), c.events), ("id4_3", 3));
}

#[test]
fn a_sink_far_behind_skips_its_oldest() {
    let mut d = Delivery::new(Settings { max_backlog: 100, ..Settings::default() }, 0, 1);
    d.push(event(1, T0));
    assert_eq!(d.behind(50), None);
    let a = d.poll_transmit(T0).unwrap();
    // 150 entries in the trail: the sink may keep the newest 100.
    assert_eq!(d.behind(150), Some(50));
    assert_eq!(d.poll_outcome(), Some(Outcome::Skipped { entries: 49 }));
    assert_eq!(d.behind(150), None, "skipped once");
    // The attempt in flight completes as usual.
    d.on_result(T0, true);
    assert_eq!(d.poll_outcome(), Some(Outcome::Delivered { events: 1, last_seq: a.events as u64 }));
    assert_eq!(d.cursor(), 50);
    d.push(event(40, T0)); // read before the skip: ignored
    d.push(event(51, T0));
    assert_eq!(d.poll_transmit(T0).unwrap().id, "id51");
}

#[test]
fn read_ahead_is_bounded() {
    let mut d = Delivery::new(Settings { read_ahead: 4, ..Settings::default() }, 0, 1);
    for seq in 1..=4 {
        assert!(d.room() > 0);
        d.push(event(seq, T0));
    }
    assert_eq!(d.room(), 0);
}
