//! An auth shard: one of `radius.workers` tasks, each with its own socket on
//! the auth port (SO_REUSEPORT) and its own sans-IO [`Server`]. The kernel
//! hands every datagram from one NAS source address and port to the same
//! socket, so a retransmission meets the duplicate cache that saw the
//! original; EAP rounds go to the [`EapPool`] worker that holds their
//! conversation, whichever shard received them.
//!
//! Decisions come from [`authorize`]; each admission is remembered in the
//! shard's own [`Admissions`] memory for the Accounting-Start that follows.

use super::admissions::Admissions;
use super::authorize::{AccessPolicy, authorize, by_verdict, slow_check};
use super::current::Current;
use super::eap_pool::{Done, EapPool, Job};
use super::udp_batch::take_waiting;
use crate::compliance::{Access, Table};
use crate::metrics::{Metrics, RadiusDiscard, RadiusKind, RadiusResult};
use crate::radius::server::{AccessRequest, Decision, DecisionId, Event, Port, Server};
use crate::users::Users;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub struct AuthShard {
    pub index: usize,
    pub server: Server,
    pub socket: UdpSocket,
    pub table: Table,
    pub users: Current<Users>,
    pub policy: Arc<AccessPolicy>,
    pub metrics: Arc<Metrics>,
    pub admissions: Arc<Admissions>,
    /// Argon2 checks running on blocking threads, and their results.
    pub slow: SlowChecks,
    /// 802.1X, when `[eap]` is configured.
    pub eap: Option<EapLink>,
    pub shutdown: watch::Receiver<bool>,
    /// The answers of one wake-up, sent together (kept for its capacity).
    pub outbox: Vec<(std::net::SocketAddr, bytes::Bytes)>,
}

/// A shard's way to the EAP pool, and back.
pub struct EapLink {
    pub pool: Arc<EapPool>,
    pub identity_from: crate::eap::tls::IdentityFrom,
    pub tx: mpsc::UnboundedSender<Done>,
    pub rx: mpsc::UnboundedReceiver<Done>,
}

impl EapLink {
    pub fn new(pool: Arc<EapPool>, identity_from: crate::eap::tls::IdentityFrom) -> Self {
        // Unbounded in type only: what is in flight is bounded by the
        // pool's queues.
        let (tx, rx) = mpsc::unbounded_channel();
        Self { pool, identity_from, tx, rx }
    }
}

/// Argon2 verifications off the task: at most `MAX_SLOW` at once per shard
/// (each takes tens of ms and ~19 MiB); the request waits in `waiting`.
pub struct SlowChecks {
    pub tx: mpsc::Sender<(DecisionId, bool)>,
    pub rx: mpsc::Receiver<(DecisionId, bool)>,
    pub waiting: HashMap<DecisionId, AccessRequest>,
}

const MAX_SLOW: usize = 4;

impl SlowChecks {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(MAX_SLOW * 2);
        Self { tx, rx, waiting: HashMap::new() }
    }
}

impl Default for SlowChecks {
    fn default() -> Self {
        Self::new()
    }
}

/// Datagrams taken per wake-up beyond the first.
const BATCH: usize = 64;

impl AuthShard {
    pub async fn run(mut self) {
        let mut buf = vec![0u8; super::udp_batch::SLOT];
        let mut batch = super::udp_batch::Batch::new();
        let mut timer = super::timer::Timer::new();
        loop {
            timer.arm(self.server.poll_timeout());
            let eap_done = async {
                match self.eap.as_mut() {
                    Some(link) => link.rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.changed() => return,
                Some((id, ok)) = self.slow.rx.recv() => {
                    if let Some(req) = self.slow.waiting.remove(&id) {
                        self.decide(&req, Some(ok));
                    }
                }
                Some(done) = eap_done => self.finish_eap(done),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(first) => {
                        let now = Instant::now();
                        take_waiting(&self.socket, &buf, first, &mut batch, BATCH, &mut self.server, Port::Auth, now);
                    }
                    Err(e) => tracing::debug!(error = %e, "RADIUS auth socket receive error"),
                },
                _ = timer.fired() => self.server.handle_timeout(Instant::now()),
            }
            self.drain(Instant::now()).await;
        }
    }

    async fn drain(&mut self, received: Instant) {
        // A reload published while this task slept applies to what woke it.
        self.users.refresh();
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Discarded { from, reason } => {
                    self.metrics.radius_discard(RadiusDiscard::Server(reason));
                    tracing::debug!(%from, reason = reason.label(), "RADIUS datagram discarded");
                }
                Event::AccessRequest(req) if req.eap_message.is_some() && self.eap.is_some() => self.submit_eap(req),
                Event::AccessRequest(req) => match slow_check(&req, self.users.get()) {
                    None => self.decide(&req, None),
                    Some(_) if self.slow.waiting.len() >= MAX_SLOW => {
                        // No answer: the NAS retransmits when a check is free.
                        self.metrics.radius_discard(RadiusDiscard::SlowCheckBusy);
                        self.server.handle_decision(req.id, Decision::Drop, Instant::now());
                    }
                    Some(phc) => {
                        let (id, tx) = (req.id, self.slow.tx.clone());
                        let password = req.password.clone().unwrap_or_default();
                        tokio::task::spawn_blocking(move || {
                            let ok = crate::users::verify_argon2(&phc, &password);
                            let _ = tx.blocking_send((id, ok));
                        });
                        self.slow.waiting.insert(id, req);
                    }
                },
                // The server core takes accounting on the accounting port only.
                Event::Accounting(acct) => self.server.handle_decision(acct.id, Decision::Drop, Instant::now()),
                Event::StatusServer => self.metrics.radius_request(RadiusKind::Status, RadiusResult::Accept),
                Event::Duplicate => self.metrics.radius_discard(RadiusDiscard::DuplicateAnsweredFromCache),
            }
        }
        let mut out = std::mem::take(&mut self.outbox);
        out.extend(std::iter::from_fn(|| self.server.poll_transmit()).map(|t| (t.to, t.payload)));
        if !out.is_empty() {
            if let Err(e) = super::udp_batch::send_all(&self.socket, &out).await {
                tracing::debug!(error = %e, "RADIUS send failed");
            }
            self.metrics.radius_duration.observe(received.elapsed().as_secs_f64());
        }
        out.clear();
        self.outbox = out;
    }

    /// Authorizes one Access-Request and hands the decision to the server.
    fn decide(&mut self, req: &AccessRequest, verified: Option<bool>) {
        self.users.refresh();
        let (decision, outcome) = authorize(req, &self.table, self.users.get(), &self.policy, verified);
        self.metrics.radius_request(outcome.kind, outcome.result);
        let now = Instant::now();
        let (mac, user) = (req.calling_station_id.as_deref(), req.user_name.as_deref());
        self.admissions.remember(self.index, mac, user, outcome.access, now);
        tracing::info!(
            client = %req.client,
            kind = outcome.kind.label(),
            result = outcome.result.label(),
            reason = %outcome.reason,
            device = outcome.device.as_deref().unwrap_or("-"),
            "access decision"
        );
        tracing::debug!(user = ?req.user_name, calling_station = ?req.calling_station_id, "access request identities");
        self.server.handle_decision(req.id, decision, now);
    }

    /// Hands one round of an EAP conversation to the pool.
    fn submit_eap(&mut self, req: AccessRequest) {
        let Some(link) = self.eap.as_ref() else { return };
        let id = req.id;
        if link.pool.submit(Job { req, reply: link.tx.clone() }).is_err() {
            // No answer: the NAS retransmits, by then the worker may have room.
            self.metrics.radius_discard(RadiusDiscard::EapPoolBusy);
            self.server.handle_decision(id, Decision::Drop, Instant::now());
        }
    }

    /// A round answered by the pool; the last one authorizes the
    /// certificate's (or the user's) device by its verdict, as MAB does.
    fn finish_eap(&mut self, done: Done) {
        self.users.refresh();
        use crate::eap::server::{Authenticated, Outcome};
        use crate::radius::server::EapReply;
        let Some(link) = self.eap.as_ref() else { return };
        let Done { req, outcome, method } = done;
        let now = Instant::now();
        let identity_from = link.identity_from;
        // (decision, kind, result, reason, device, access, the name the Accept gives)
        let (decision, kind, result, reason, device, access, named) = match outcome {
            Outcome::Challenge { eap, state } => {
                self.metrics.radius_request(method, RadiusResult::Challenge);
                self.server.handle_decision(req.id, Decision::Challenge { eap, state }, now);
                return;
            }
            Outcome::Reject { eap, refusal, reason } => {
                self.metrics.eap_refusal(refusal);
                let eap = Some(EapReply { message: eap, msk: None, user_name: None });
                let decision = Decision::Reject { reply_message: reason.clone(), eap };
                (decision, method, RadiusResult::Reject, reason, None, Access::Deny, None)
            }
            Outcome::Authenticated { who: Authenticated::Password { user }, keys, success, failure } => {
                // PEAP-MSCHAPv2: the user's device_id, else the Calling-Station-Id MAC.
                let device = super::authorize::user_device(
                    &user,
                    req.calling_station_id.as_deref(),
                    &self.table,
                    self.users.get(),
                );
                let (decision, outcome) = by_verdict(RadiusKind::Peap, device.as_deref(), &self.policy);
                let decision = with_eap(decision, success, failure, keys, &user);
                // User and certificate names are PII: DEBUG only (below).
                let reason = outcome.reason;
                (decision, RadiusKind::Peap, outcome.result, reason, outcome.device, outcome.access, Some(user))
            }
            Outcome::Authenticated {
                who: Authenticated::Certificate { certificate, tls13, .. },
                keys,
                success,
                failure,
            } => match crate::eap::tls::identity(&certificate, identity_from) {
                None => {
                    let reason = format!("the certificate has no {identity_from:?} to name the device");
                    let eap = Some(EapReply { message: failure, msk: None, user_name: None });
                    let decision = Decision::Reject { reply_message: reason.clone(), eap };
                    (decision, RadiusKind::EapTls, RadiusResult::Reject, reason, None, Access::Deny, None)
                }
                Some(name) => {
                    // The certificate first: the device whose id it names wins
                    // over any device that merely claims it in telemetry.
                    let device = self.table.get(&name).or_else(|| self.table.by_cert_identity(&name));
                    let (decision, outcome) = by_verdict(RadiusKind::EapTls, device.as_deref(), &self.policy);
                    let decision = with_eap(decision, success, failure, keys, &name);
                    let reason = format!("{} (TLS 1.{})", outcome.reason, if tls13 { 3 } else { 2 });
                    (decision, RadiusKind::EapTls, outcome.result, reason, outcome.device, outcome.access, Some(name))
                }
            },
        };
        self.metrics.radius_request(kind, result);
        tracing::info!(
            client = %req.client,
            kind = kind.label(),
            result = result.label(),
            %reason,
            device = device.as_deref().unwrap_or("-"),
            "access decision"
        );
        tracing::debug!(name = ?named, user = ?req.user_name, calling_station = ?req.calling_station_id, "EAP identities");
        let mac = req.calling_station_id.as_deref();
        self.admissions.remember(self.index, mac, req.user_name.as_deref(), access, now);
        if named.is_some() && named != req.user_name {
            self.admissions.remember(self.index, None, named.as_deref(), access, now);
        }
        self.server.handle_decision(req.id, decision, now);
    }
}

/// The verdict's decision with the EAP ending: EAP-Success, the MPPE keys
/// and User-Name on an Accept; EAP-Failure on a Reject.
fn with_eap(
    decision: Decision,
    success: Vec<u8>,
    failure: Vec<u8>,
    keys: crate::eap::tls::Keys,
    user: &str,
) -> Decision {
    use crate::radius::server::EapReply;
    match decision {
        Decision::Accept { vlan, filter_id, reply_message, .. } => Decision::Accept {
            vlan,
            filter_id,
            reply_message,
            eap: Some(EapReply {
                message: success,
                msk: Some(Box::new(zeroize::Zeroizing::new(keys.msk))),
                user_name: Some(user.to_string()),
            }),
        },
        Decision::Reject { reply_message, .. } => {
            Decision::Reject { reply_message, eap: Some(EapReply { message: failure, msk: None, user_name: None }) }
        }
        other => other,
    }
}
