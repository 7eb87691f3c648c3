//! The Dynamic Authorization client (RFC 5176) as a sans-IO state machine:
//! warden sends CoA-Request / Disconnect-Request to a NAS, retransmits with
//! backoff (RFC 5080 §2.2.1 style), checks the answer's authenticators, and
//! reports ACK, NAK (with Error-Cause) or timeout. A token bucket per NAS
//! keeps a mass verdict flip from flooding the network; what waits is queued
//! (bounded) in order.
//!
//! Drive it: [`CoaClient::request`] for every CoA or Disconnect to send,
//! [`CoaClient::handle_datagram`] for every answer from a NAS and
//! [`CoaClient::handle_timeout`] when [`CoaClient::poll_timeout`] is due,
//! each with `now`; then send every [`CoaClient::poll_transmit`] and act on
//! every [`CoaClient::poll_event`] (ACK, NAK, timeout, dropped).

use super::builder::Builder;
use super::dictionary::{AttrType, Code, ErrorCause, TUNNEL_MEDIUM_IEEE_802, TUNNEL_TYPE_VLAN};
use super::packet::Packet;
use super::server::Secret;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First retransmission after this; doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Tries in all (the first send and the retransmissions).
const ATTEMPTS: u32 = 4;
/// Requests per second to one NAS, and the burst allowed.
const RATE: f64 = 500.0;
const BURST: f64 = 1000.0;
/// Requests waiting for the rate cap, per NAS; past it they are dropped.
const MAX_QUEUED: usize = 100_000;

/// How a NAS is asked to give a session `access` under its `coa_mode`:
/// the kind of request, the VLAN a CoA moves it to, and whether a NAKed CoA
/// falls back to a Disconnect. `Deny` has no VLAN: only a Disconnect does it.
pub fn plan(mode: super::config::CoaMode, vlan: Option<&str>) -> (Kind, Option<String>, bool) {
    use super::config::CoaMode;
    match (mode, vlan) {
        (_, None) | (CoaMode::Disconnect, _) => (Kind::Disconnect, None, false),
        (CoaMode::Coa, Some(v)) => (Kind::Coa, Some(v.to_string()), false),
        (CoaMode::CoaThenDisconnect, Some(v)) => (Kind::Coa, Some(v.to_string()), true),
    }
}

/// What to ask of the NAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// CoA-Request moving the session to a VLAN.
    Coa,
    /// Disconnect-Request: the device reconnects and is authorized anew.
    Disconnect,
}

impl Kind {
    pub const ALL: [Self; 2] = [Self::Coa, Self::Disconnect];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Coa => "coa",
            Kind::Disconnect => "disconnect",
        }
    }
}

/// The attributes that identify a session to its NAS (RFC 5176 §3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionId {
    pub acct_session_id: Option<String>,
    pub user_name: Option<String>,
    pub calling_station_id: Option<String>,
    pub nas_ip: Option<Ipv4Addr>,
    pub nas_port: Option<u32>,
    pub nas_port_id: Option<String>,
}

/// One request to make.
#[derive(Clone, Debug)]
pub struct Request {
    pub nas: SocketAddr,
    pub secret: Secret,
    pub kind: Kind,
    /// For a CoA: the VLAN to move the session to.
    pub vlan: Option<String>,
    /// For a CoA: the Filter-Id to give the session.
    pub filter_id: Option<String>,
    /// On a CoA NAK, send a Disconnect-Request instead.
    pub fallback_to_disconnect: bool,
    pub session: SessionId,
    /// The device, for logs.
    pub device: Arc<str>,
    /// When the cause (a telemetry message) arrived, for the latency metric.
    pub origin: Instant,
    /// Seconds since the Unix epoch, for Event-Timestamp.
    pub unix_time: u32,
    /// The caller's name for what this request enforces (a session's
    /// serial): handed back in every outcome event.
    pub tag: u64,
}

/// What happened to a request.
#[derive(Debug)]
pub enum Event {
    /// The request left (first transmission): `origin` → now is the enforcement latency.
    Sent {
        kind: Kind,
        device: Arc<str>,
        origin: Instant,
    },
    Ack {
        kind: Kind,
        device: Arc<str>,
        tag: u64,
    },
    Nak {
        kind: Kind,
        device: Arc<str>,
        cause: Option<ErrorCause>,
        tag: u64,
        /// A Disconnect-Request was queued in its place (`coa_then_disconnect`):
        /// its own outcome follows.
        fell_back: bool,
    },
    Timeout {
        kind: Kind,
        device: Arc<str>,
        tag: u64,
    },
    /// The per-NAS queue was full.
    Dropped {
        kind: Kind,
        device: Arc<str>,
        tag: u64,
    },
    /// An answer that matches nothing, or fails its authenticators.
    Ignored {
        from: SocketAddr,
    },
}

struct Outstanding {
    request: Request,
    payload: Vec<u8>,
    authenticator: [u8; 16],
    attempts: u32,
    next_retry: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct CoaClient {
    outstanding: HashMap<(SocketAddr, u8), Outstanding>,
    next_id: HashMap<SocketAddr, u8>,
    buckets: HashMap<IpAddr, Bucket>,
    queued: HashMap<IpAddr, VecDeque<Request>>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
}

impl CoaClient {
    pub fn request(&mut self, request: Request, now: Instant) {
        let ip = request.nas.ip();
        let queue = self.queued.entry(ip).or_default();
        if queue.len() >= MAX_QUEUED {
            self.events.push_back(Event::Dropped { kind: request.kind, device: request.device, tag: request.tag });
            return;
        }
        queue.push_back(request);
        self.pump(ip, now);
    }

    /// An answer from a NAS.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Ok(p) = Packet::decode(datagram) else {
            return self.events.push_back(Event::Ignored { from });
        };
        let key = (from, p.identifier());
        let Some(o) = self.outstanding.get(&key) else {
            return self.events.push_back(Event::Ignored { from });
        };
        let secret = o.request.secret.expose();
        let expected = match o.request.kind {
            Kind::Coa => [Code::CoaAck, Code::CoaNak],
            Kind::Disconnect => [Code::DisconnectAck, Code::DisconnectNak],
        };
        let authentic = p.response_authenticator_valid(secret, &o.authenticator)
            && p.message_authenticator_valid_with(o.request.secret.key(), Some(&o.authenticator)) != Some(false);
        if !expected.contains(&p.code()) || !authentic {
            return self.events.push_back(Event::Ignored { from });
        }
        let Some(o) = self.outstanding.remove(&key) else { return };
        let r = o.request;
        if p.code() == expected[0] {
            self.events.push_back(Event::Ack { kind: r.kind, device: r.device, tag: r.tag });
        } else {
            let cause = p.attr_u32(AttrType::ErrorCause).map(ErrorCause::from);
            let fell_back = r.kind == Kind::Coa && r.fallback_to_disconnect;
            self.events.push_back(Event::Nak {
                kind: r.kind,
                device: Arc::clone(&r.device),
                cause,
                tag: r.tag,
                fell_back,
            });
            if fell_back {
                let ip = r.nas.ip();
                let retry =
                    Request { kind: Kind::Disconnect, vlan: None, filter_id: None, fallback_to_disconnect: false, ..r };
                self.queued.entry(ip).or_default().push_front(retry);
                self.pump(ip, now);
            }
        }
        self.pump(from.ip(), now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        #[allow(clippy::disallowed_methods)] // sorted: retries go out in one order whatever the hash
        let mut due: Vec<(SocketAddr, u8)> =
            self.outstanding.iter().filter(|(_, o)| o.next_retry <= now).map(|(k, _)| *k).collect();
        due.sort_unstable();
        for key in due {
            let Some(o) = self.outstanding.get_mut(&key) else { continue };
            if o.attempts >= ATTEMPTS {
                if let Some(o) = self.outstanding.remove(&key) {
                    let r = o.request;
                    self.events.push_back(Event::Timeout { kind: r.kind, device: r.device, tag: r.tag });
                }
                continue;
            }
            o.attempts += 1;
            o.next_retry = now + FIRST_RETRY * 2u32.pow(o.attempts - 1);
            self.transmits.push_back((key.0, o.payload.clone()));
        }
        #[allow(clippy::disallowed_methods)] // sorted, as above
        let mut ips: Vec<IpAddr> = self.queued.iter().filter(|(_, q)| !q.is_empty()).map(|(ip, _)| *ip).collect();
        ips.sort_unstable();
        for ip in ips {
            self.pump(ip, now);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next retransmission, or when the rate cap lets queued requests go.
    #[allow(clippy::disallowed_methods)] // a minimum: the same in any order
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.outstanding.values().map(|o| o.next_retry).min();
        let refill = self
            .queued
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .filter_map(|(ip, _)| self.buckets.get(ip))
            .map(|b| b.at + Duration::from_secs_f64(((1.0 - b.tokens) / RATE).max(0.0)))
            .min();
        retry.into_iter().chain(refill).min()
    }

    /// Sends what the rate cap allows from `ip`'s queue.
    fn pump(&mut self, ip: IpAddr, now: Instant) {
        loop {
            let bucket = self.buckets.entry(ip).or_insert(Bucket { tokens: BURST, at: now });
            bucket.tokens = (bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * RATE).min(BURST);
            bucket.at = now;
            if bucket.tokens < 1.0 {
                return;
            }
            let Some(queue) = self.queued.get_mut(&ip) else { return };
            let Some(request) = queue.pop_front() else { return };
            // 256 identifiers per NAS port: skip those still outstanding.
            let counter = self.next_id.entry(request.nas).or_insert(0);
            let Some(id) = (0..=255u16)
                .map(|i| counter.wrapping_add(i as u8))
                .find(|id| !self.outstanding.contains_key(&(request.nas, *id)))
            else {
                // All 256 in flight: wait for answers.
                self.queued.entry(ip).or_default().push_front(request);
                return;
            };
            *counter = id.wrapping_add(1);
            bucket_take(&mut self.buckets, ip);
            let payload = build(&request, id);
            let authenticator: [u8; 16] = payload[4..20].try_into().unwrap_or([0; 16]);
            self.transmits.push_back((request.nas, payload.clone()));
            self.events.push_back(Event::Sent {
                kind: request.kind,
                device: Arc::clone(&request.device),
                origin: request.origin,
            });
            self.outstanding.insert(
                (request.nas, id),
                Outstanding { request, payload, authenticator, attempts: 1, next_retry: now + FIRST_RETRY },
            );
        }
    }
}

fn bucket_take(buckets: &mut HashMap<IpAddr, Bucket>, ip: IpAddr) {
    if let Some(b) = buckets.get_mut(&ip) {
        b.tokens -= 1.0;
    }
}

/// The request packet: session identification, Event-Timestamp, and for a
/// CoA the VLAN; Message-Authenticator first, then the Request Authenticator.
fn build(r: &Request, id: u8) -> Vec<u8> {
    let code = match r.kind {
        Kind::Coa => Code::CoaRequest,
        Kind::Disconnect => Code::DisconnectRequest,
    };
    let mut b = Builder::new(code, id, true);
    let s = &r.session;
    // Every value is bounded (ids from accounting are at most 253 bytes);
    // the total stays far below 4096, so these appends cannot fail.
    if let Some(ip) = s.nas_ip {
        let _ = b.attr(AttrType::NasIpAddress, &ip.octets());
    }
    if let Some(v) = &s.acct_session_id {
        let _ = b.attr(AttrType::AcctSessionId, v.as_bytes());
    }
    if let Some(v) = &s.user_name {
        let _ = b.attr(AttrType::UserName, v.as_bytes());
    }
    if let Some(v) = &s.calling_station_id {
        let _ = b.attr(AttrType::CallingStationId, v.as_bytes());
    }
    if let Some(v) = s.nas_port {
        let _ = b.attr_u32(AttrType::NasPort, v);
    }
    if let Some(v) = &s.nas_port_id {
        let _ = b.attr(AttrType::NasPortId, v.as_bytes());
    }
    let _ = b.attr_u32(AttrType::EventTimestamp, r.unix_time);
    if let (Kind::Coa, Some(vlan)) = (r.kind, &r.vlan) {
        let _ = b.attr_tagged_u32(AttrType::TunnelType, 0, TUNNEL_TYPE_VLAN);
        let _ = b.attr_tagged_u32(AttrType::TunnelMediumType, 0, TUNNEL_MEDIUM_IEEE_802);
        let _ = b.attr_tagged_str(AttrType::TunnelPrivateGroupId, 0, vlan.as_bytes());
    }
    if let (Kind::Coa, Some(f)) = (r.kind, &r.filter_id) {
        let _ = b.attr(AttrType::FilterId, f.as_bytes());
    }
    b.finish_request_with(r.secret.key())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-long-shared-secret";

    fn req(kind: Kind, fallback: bool, now: Instant) -> Request {
        Request {
            nas: "127.0.0.9:3799".parse().unwrap(),
            secret: Secret::new(SECRET.to_vec()),
            kind,
            vlan: Some("999".into()),
            filter_id: None,
            fallback_to_disconnect: fallback,
            session: SessionId {
                acct_session_id: Some("s-1".into()),
                calling_station_id: Some("aa:bb:cc:00:00:01".into()),
                ..SessionId::default()
            },
            device: "pos-0001".into(),
            origin: now,
            unix_time: 1_795_342_500,
            tag: 7,
        }
    }

    /// The NAS's answer to `sent`.
    fn answer(sent: &[u8], code: Code, cause: Option<u32>) -> Vec<u8> {
        let p = Packet::decode(sent).unwrap();
        let mut b = Builder::new(code, p.identifier(), true);
        if let Some(c) = cause {
            b.attr_u32(AttrType::ErrorCause, c).unwrap();
        }
        b.finish_response(SECRET, &p.authenticator())
    }

    #[test]
    fn a_disconnect_is_sent_signed_and_acked() {
        let mut c = CoaClient::default();
        let now = Instant::now();
        c.request(req(Kind::Disconnect, false, now), now);
        let (to, sent) = c.poll_transmit().unwrap();
        let p = Packet::decode(&sent).unwrap();
        assert_eq!((to.port(), p.code()), (3799, Code::DisconnectRequest));
        assert!(p.request_authenticator_valid(SECRET));
        assert_eq!(p.message_authenticator_valid(SECRET, None), Some(true));
        assert_eq!(p.attr_str(AttrType::AcctSessionId), Some("s-1"));
        assert_eq!(p.attr_u32(AttrType::EventTimestamp), Some(1_795_342_500));
        assert!(matches!(c.poll_event(), Some(Event::Sent { kind: Kind::Disconnect, .. })));
        c.handle_datagram(to, &answer(&sent, Code::DisconnectAck, None), now);
        assert!(matches!(c.poll_event(), Some(Event::Ack { kind: Kind::Disconnect, .. })));
        assert_eq!(c.poll_timeout(), None, "nothing outstanding");
    }

    #[test]
    fn forged_or_unexpected_answers_are_ignored() {
        let mut c = CoaClient::default();
        let now = Instant::now();
        c.request(req(Kind::Disconnect, false, now), now);
        let (to, sent) = c.poll_transmit().unwrap();
        let _ = c.poll_event();
        let mut forged = answer(&sent, Code::DisconnectAck, None);
        forged[25] ^= 1;
        c.handle_datagram(to, &forged, now);
        c.handle_datagram(to, &answer(&sent, Code::CoaAck, None), now);
        c.handle_datagram("127.0.0.8:3799".parse().unwrap(), &answer(&sent, Code::DisconnectAck, None), now);
        for _ in 0..3 {
            assert!(matches!(c.poll_event(), Some(Event::Ignored { .. })));
        }
        assert!(c.poll_timeout().is_some(), "still waiting for a real answer");
    }

    #[test]
    fn retransmits_with_backoff_then_times_out() {
        let mut c = CoaClient::default();
        let t0 = Instant::now();
        c.request(req(Kind::Disconnect, false, t0), t0);
        let (_, first) = c.poll_transmit().unwrap();
        let mut t = t0;
        for wait in [500, 1000, 2000] {
            t += Duration::from_millis(wait);
            assert_eq!(c.poll_timeout(), Some(t));
            c.handle_timeout(t);
            assert_eq!(c.poll_transmit().unwrap().1, first, "the same packet, same id");
        }
        t += Duration::from_millis(4000);
        c.handle_timeout(t);
        assert!(c.poll_transmit().is_none());
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(matches!(events.last(), Some(Event::Timeout { .. })), "{events:?}");
    }

    #[test]
    fn coa_then_disconnect_falls_back_on_nak() {
        let mut c = CoaClient::default();
        let now = Instant::now();
        c.request(req(Kind::Coa, true, now), now);
        let (to, sent) = c.poll_transmit().unwrap();
        let p = Packet::decode(&sent).unwrap();
        assert_eq!(p.code(), Code::CoaRequest);
        assert_eq!(p.attr(AttrType::TunnelPrivateGroupId), Some(&b"\x00999"[..]));
        c.handle_datagram(to, &answer(&sent, Code::CoaNak, Some(405)), now);
        let (_, second) = c.poll_transmit().unwrap();
        assert_eq!(Packet::decode(&second).unwrap().code(), Code::DisconnectRequest);
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(events.iter().any(|e| matches!(e, Event::Nak { cause: Some(ErrorCause::UnsupportedService), .. })));
    }

    #[test]
    fn identifiers_limit_what_is_in_flight_per_nas_port() {
        let mut c = CoaClient::default();
        let now = Instant::now();
        for _ in 0..300 {
            c.request(req(Kind::Disconnect, false, now), now);
        }
        assert_eq!(std::iter::from_fn(|| c.poll_transmit()).count(), 256, "one identifier byte: 256 in flight");
    }

    #[test]
    fn a_mass_flip_is_rate_capped_per_nas() {
        let mut c = CoaClient::default();
        let now = Instant::now();
        // 8 ports of one NAS (so identifiers do not run out): 2048 requests.
        for i in 0..2048u16 {
            let mut r = req(Kind::Disconnect, false, now);
            r.nas.set_port(3799 + i % 8);
            c.request(r, now);
        }
        assert_eq!(std::iter::from_fn(|| c.poll_transmit()).count(), 1000, "the burst");
        let later = now + Duration::from_millis(200);
        assert!(c.poll_timeout().is_some_and(|t| t <= later));
        c.handle_timeout(later);
        assert_eq!(std::iter::from_fn(|| c.poll_transmit()).count(), 100, "then 500/s");
        // Another NAS is not held up by the first one's queue.
        let mut other = req(Kind::Disconnect, false, later);
        other.nas = "127.0.0.10:3799".parse().unwrap();
        c.request(other, later);
        assert_eq!(c.poll_transmit().map(|(to, _)| to.ip().to_string()).as_deref(), Some("127.0.0.10"));
    }
}
