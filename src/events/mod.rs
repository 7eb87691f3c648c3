//! The event stream's core (sans-IO): audit entries as CloudEvents 1.0
//! (structured JSON), webhook bodies signed per Standard Webhooks, and one
//! sink's delivery state: which events go next, when a failed attempt is
//! tried again, and what is given up.
//!
//! The outbox is the audit trail itself. Entries are written and synced by
//! the commit task before anything reads them here, so an event is never
//! delivered that a crash could take back, and nothing is lost across a
//! restart: a sink's cursor (the last entry it has taken or given up) is
//! kept beside the trail, and delivery resumes after it. That is
//! at-least-once: entries delivered after the cursor was last saved are
//! delivered again, with the same `webhook-id`.
//!
//! A sink gets its events in trail order, one attempt at a time, so every
//! device's events arrive in the order they happened. An attempt that
//! fails is tried again after an exponential backoff (1 s doubling to
//! 1 h, jittered) until its oldest event is older than `retry_for` (a
//! day); then that event is given up and counted, and the next goes. A
//! sink that falls further behind the trail than `max_backlog` entries
//! skips its oldest (counted), so a dead sink costs a bounded read-ahead
//! and never holds up enforcement, which does not wait for it at all.
//!
//! Driven like the other cores: the shell reads entries into [`Delivery`]
//! while [`Delivery::room`] says so, sends what [`Delivery::poll_transmit`]
//! gives, reports the outcome with [`Delivery::on_result`], and wakes at
//! [`Delivery::poll_timeout`].

pub mod config;
#[cfg(test)]
mod tests;

use crate::telemetry::UnixMillis;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;

/// The CloudEvents media type of one event in structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// ... and of a JSON array of them (batched mode).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// One event, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The audit entry's sequence number.
    pub seq: u64,
    /// When it happened.
    pub at: UnixMillis,
    /// Its CloudEvents `id` (the first 32 hex digits of the entry's hash:
    /// unique across trails, stable across retries and restarts).
    pub id: String,
    /// Its CloudEvents `type` (the audit kind).
    pub kind: String,
    /// The CloudEvent, serialized.
    pub body: Arc<[u8]>,
}

/// An audit entry line (as written by [`crate::audit::Chain`]) as a
/// CloudEvent; `None` for a checkpoint or a line that is not an entry.
pub fn from_entry(entry: &Value, source: &str) -> Option<Event> {
    let seq = entry.get("seq")?.as_u64()?;
    let kind = entry.get("kind")?.as_str()?;
    let time = entry.get("at")?.as_str()?;
    let at = crate::telemetry::report::parse_rfc3339(time).ok()?;
    let hash = entry.get("hash")?.as_str()?;
    let id = hash.get(..32)?.to_string();
    let mut event = serde_json::Map::new();
    event.insert("specversion".into(), "1.0".into());
    event.insert("id".into(), id.clone().into());
    event.insert("source".into(), source.into());
    event.insert("type".into(), kind.into());
    event.insert("time".into(), time.into());
    if let Some(device) = entry.get("device").and_then(Value::as_str) {
        event.insert("subject".into(), device.into());
    }
    // The CloudEvents sequence extension: a string that orders
    // lexicographically, hence zero-padded.
    event.insert("sequence".into(), format!("{seq:020}").into());
    event.insert("datacontenttype".into(), "application/json".into());
    event.insert("data".into(), entry.get("data").cloned().unwrap_or(Value::Null));
    let body = serde_json::to_vec(&Value::Object(event)).ok()?;
    Some(Event { seq, at, id, kind: kind.to_string(), body: body.into() })
}

/// A webhook secret: the key bytes of a Standard Webhooks `whsec_<base64>`
/// string (the prefix is optional).
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = text.trim();
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "not a webhook secret: expected whsec_ followed by base64".to_string())?;
    // The spec: at least 24 bytes, at most 64.
    if !(24..=64).contains(&key.len()) {
        return Err(format!("a webhook secret holds 24 to 64 bytes, this one {}", key.len()));
    }
    Ok(key)
}

/// The `webhook-signature` header's value for one attempt: `v1,` and the
/// base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` (Standard Webhooks).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref()))
}

/// How a sink delivers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events per request: 1 sends each as one structured CloudEvent;
    /// more sends JSON arrays (CloudEvents batched mode).
    pub batch: usize,
    /// How long an event is tried before it is given up.
    pub retry_for: UnixMillis,
    /// How far (in trail entries) a sink may fall behind before its oldest
    /// are skipped.
    pub max_backlog: u64,
    /// Events read ahead of delivery.
    pub read_ahead: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { batch: 1, retry_for: 24 * 3600 * 1000, max_backlog: 1_000_000, read_ahead: 1024 }
    }
}

/// The first retry's delay; each failure doubles it, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: UnixMillis = 1000;
pub const BACKOFF_MAX: UnixMillis = 3600 * 1000;

/// One request to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// `webhook-id`: the event's id, or for a batch its first event's id
    /// and its length (the same batch is retried, so the id is stable).
    pub id: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// How many events it carries (the first ones of the queue).
    pub events: usize,
    /// 1 for the first try.
    pub attempt: u32,
}

/// What happened, for the shell to count and log.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Events taken by the sink.
    Delivered { events: usize, last_seq: u64 },
    /// An attempt failed; the next one is due after `retry_in`.
    Failed { attempt: u32, retry_in: UnixMillis },
    /// Events given up: tried for `retry_for` without success.
    Expired { events: usize, first_seq: u64 },
    /// Trail entries skipped because the sink was `max_backlog` behind.
    Skipped { entries: u64 },
}

/// One sink's delivery state.
#[derive(Debug)]
pub struct Delivery {
    settings: Settings,
    queue: VecDeque<Event>,
    /// The last trail entry read (delivered, queued or filtered out).
    read_to: u64,
    /// Events of the attempt in flight, if one is.
    in_flight: Option<usize>,
    /// Failed tries of the queue's front batch.
    failures: u32,
    /// No attempt before this.
    not_before: UnixMillis,
    outcomes: VecDeque<Outcome>,
    rng: fastrand::Rng,
}

impl Delivery {
    /// Starts after trail entry `cursor` (0: from the beginning).
    pub fn new(settings: Settings, cursor: u64, seed: u64) -> Self {
        Self {
            settings,
            queue: VecDeque::new(),
            read_to: cursor,
            in_flight: None,
            failures: 0,
            not_before: 0,
            outcomes: VecDeque::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Everything up to here is delivered or given up: the cursor to keep.
    pub fn cursor(&self) -> u64 {
        self.queue.front().map_or(self.read_to, |e| e.seq - 1)
    }

    /// The last trail entry read: the shell reads on after it.
    pub fn read_to(&self) -> u64 {
        self.read_to
    }

    /// How many more events may be read ahead.
    pub fn room(&self) -> usize {
        self.settings.read_ahead.saturating_sub(self.queue.len())
    }

    /// Entry `seq` was read and is not for this sink (its type is filtered
    /// out): the cursor may pass it.
    pub fn pass(&mut self, seq: u64) {
        self.read_to = self.read_to.max(seq);
    }

    /// An event for this sink, in trail order.
    pub fn push(&mut self, event: Event) {
        if event.seq <= self.read_to {
            return; // read twice (a re-seek): already queued or delivered
        }
        self.read_to = event.seq;
        self.queue.push_back(event);
    }

    /// The trail's newest durable entry is `head`. When this sink is more
    /// than `max_backlog` entries behind it, the oldest are skipped: the
    /// returned entry is where the shell reads on from (after it).
    pub fn behind(&mut self, head: u64) -> Option<u64> {
        let from = head.saturating_sub(self.settings.max_backlog);
        // An attempt in flight completes (or fails) as usual; only what
        // waits behind it goes.
        let keep = self.in_flight.unwrap_or(0);
        let waiting_from = self.queue.get(keep).map_or(self.read_to, |e| e.seq - 1);
        if waiting_from >= from {
            return None;
        }
        let skipped = from - waiting_from;
        self.queue.truncate(keep);
        if keep == 0 {
            self.failures = 0;
            self.not_before = 0;
        }
        self.read_to = self.read_to.max(from);
        self.outcomes.push_back(Outcome::Skipped { entries: skipped });
        Some(self.read_to)
    }

    /// The next request, when one is due and none is in flight.
    pub fn poll_transmit(&mut self, now: UnixMillis) -> Option<Attempt> {
        if self.in_flight.is_some() {
            return None;
        }
        self.expire(now);
        if self.queue.is_empty() || now < self.not_before {
            return None;
        }
        let n = self.queue.len().min(self.settings.batch.max(1));
        self.in_flight = Some(n);
        let first = &self.queue[0];
        let (id, content_type, body) = if self.settings.batch <= 1 {
            (first.id.clone(), CONTENT_TYPE, first.body.to_vec())
        } else {
            let mut body = Vec::with_capacity(self.queue.iter().take(n).map(|e| e.body.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, e) in self.queue.iter().take(n).enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&e.body);
            }
            body.push(b']');
            (format!("{}_{n}", first.id), BATCH_CONTENT_TYPE, body)
        };
        Some(Attempt { id, content_type, body, events: n, attempt: self.failures + 1 })
    }

    /// The attempt in flight was taken (`ok`: a 2xx answer) or not.
    pub fn on_result(&mut self, now: UnixMillis, ok: bool) {
        let Some(n) = self.in_flight.take() else { return };
        if ok {
            let n = n.min(self.queue.len());
            let last_seq = self.queue.drain(..n).next_back().map_or(0, |e| e.seq);
            self.failures = 0;
            self.not_before = 0;
            if n > 0 {
                self.outcomes.push_back(Outcome::Delivered { events: n, last_seq });
            }
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let base = BACKOFF_MIN.saturating_mul(1 << (self.failures - 1).min(20)).min(BACKOFF_MAX);
        // ±20 %, so sinks that failed together do not retry together.
        let jitter = base / 5;
        let retry_in = base - jitter + self.rng.i64(0..=2 * jitter);
        self.not_before = now + retry_in;
        self.outcomes.push_back(Outcome::Failed { attempt: self.failures, retry_in });
        self.expire(now);
    }

    /// Gives up the front events older than `retry_for`.
    fn expire(&mut self, now: UnixMillis) {
        if self.in_flight.is_some() {
            return;
        }
        let cutoff = now - self.settings.retry_for;
        // At `at + retry_for` exactly (the deadline poll_timeout gives).
        let old = self.queue.iter().take_while(|e| e.at <= cutoff).count();
        if old == 0 {
            return;
        }
        let first_seq = self.queue[0].seq;
        self.queue.drain(..old);
        if self.failures > 0 {
            // The next event gets its own first try now.
            self.failures = 0;
            self.not_before = 0;
        }
        self.outcomes.push_back(Outcome::Expired { events: old, first_seq });
    }

    /// When to call [`Delivery::poll_transmit`] again (none: when more is
    /// read or an attempt completes).
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let expires = self.queue.front().map_or(UnixMillis::MAX, |e| e.at.saturating_add(self.settings.retry_for));
        Some(self.not_before.min(expires))
    }

    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.pop_front()
    }
}
