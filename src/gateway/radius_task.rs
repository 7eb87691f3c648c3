//! The RADIUS shell: two UDP sockets (auth, acct) feeding the sans-IO
//! [`Server`], decisions from [`authorize`], and [`Enforcer`] for sessions,
//! CoA and the accounting journal (a record is appended before it is
//! acknowledged).

use super::authorize::{authorize, by_verdict, slow_check};
use super::radius_enforce::{BACKGROUND_SLICE, Enforcer, SWEEP_EVERY, URGENT_SLICE};
use crate::compliance::{Access, Change, Table};
use crate::metrics::Metrics;
use crate::radius::server::{Decision, Event, Port, Server};
use crate::radius::sessions::Applied;
use crate::users::Users;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, watch};

pub struct RadiusTask {
    pub server: Server,
    pub auth: UdpSocket,
    pub acct: UdpSocket,
    pub table: Table,
    pub users: Arc<Users>,
    pub metrics: Arc<Metrics>,
    /// Sessions, the CoA client and the journal: enforcement, reconciled.
    pub enforce: Enforcer,
    pub coa_socket: UdpSocket,
    pub changes: broadcast::Receiver<Arc<Change>>,
    /// Bumped when every session should be reconciled (a policy reload).
    pub reconcile: watch::Receiver<u64>,
    /// The circuit breaker's held batch, for the API, and its confirmations.
    pub held: watch::Sender<Vec<crate::compliance::Held>>,
    pub confirms: tokio::sync::mpsc::Receiver<super::Confirm>,
    /// Set once the task serves its sockets, for `/readyz`.
    pub ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Argon2 checks running on blocking threads, and their results.
    pub slow: SlowChecks,
    /// 802.1X, when `[eap]` is configured.
    pub eap: Option<EapPlane>,
    pub shutdown: watch::Receiver<bool>,
}

/// The EAP server core and what the shell needs around it.
pub struct EapPlane {
    pub server: crate::eap::server::EapServer,
    pub identity_from: crate::eap::tls::IdentityFrom,
    /// The last sweep of idle conversations.
    pub swept: Instant,
    /// Evictions already counted.
    pub evicted: u64,
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
        Decision::Accept { vlan, reply_message, .. } => Decision::Accept {
            vlan,
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

/// Argon2 verifications off the task: at most `MAX_SLOW` at once (each
/// takes tens of ms and ~19 MiB); the request waits in `waiting`.
pub struct SlowChecks {
    pub tx: tokio::sync::mpsc::Sender<(crate::radius::server::DecisionId, bool)>,
    pub rx: tokio::sync::mpsc::Receiver<(crate::radius::server::DecisionId, bool)>,
    pub waiting: HashMap<crate::radius::server::DecisionId, crate::radius::server::AccessRequest>,
}

const MAX_SLOW: usize = 4;

impl SlowChecks {
    pub fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_SLOW * 2);
        Self { tx, rx, waiting: HashMap::new() }
    }
}

impl Default for SlowChecks {
    fn default() -> Self {
        Self::new()
    }
}

impl RadiusTask {
    pub async fn run(mut self) {
        // The largest RADIUS packet is 4096 bytes; one more byte tells a
        // longer datagram apart (it is refused by the decoder as too long).
        let mut auth_buf = vec![0u8; 4097];
        let mut acct_buf = vec![0u8; 4097];
        let mut coa_buf = vec![0u8; 4097];
        let mut timer = super::timer::Timer::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published: Option<u64> = None;
        if let Some(ready) = &self.ready {
            ready.store(true, std::sync::atomic::Ordering::Release);
        }
        loop {
            timer.arm(self.server.poll_timeout().into_iter().chain(self.enforce.poll_timeout()).min());
            let urgent = self.enforce.sweep_urgent();
            tokio::select! {
                _ = self.shutdown.changed() => return,
                // An urgent pass goes slice by slice, sharing the loop with the sockets.
                () = std::future::ready(()), if urgent => self.enforce.sweep_slice(URGENT_SLICE, Instant::now()),
                _ = sweep.tick(), if !urgent => self.enforce.sweep_slice(BACKGROUND_SLICE, Instant::now()),
                r = self.reconcile.changed() => match r {
                    Ok(()) => self.enforce.sweep_soon(),
                    Err(_) => return,
                },
                Some(confirm) = self.confirms.recv() => {
                    let done = self.enforce.confirm(confirm.id);
                    if let Some(h) = &done {
                        tracing::info!(change = h.id, restricting = h.restricting, "held RADIUS restrictions confirmed");
                    }
                    let _ = confirm.reply.send(done);
                }
                Some((id, ok)) = self.slow.rx.recv() => {
                    if let Some(req) = self.slow.waiting.remove(&id) {
                        self.decide(&req, Some(ok));
                    }
                }
                change = self.changes.recv() => match change {
                    Ok(change) => self.enforce.handle_change(&change, Instant::now()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Missed changes: every session is reconciled instead.
                        self.metrics.events_lagged.inc_by(n);
                        tracing::warn!(missed = n, "RADIUS plane fell behind on verdict changes; reconciling every session");
                        self.enforce.sweep_soon();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = self.coa_socket.recv_from(&mut coa_buf) => match r {
                    Ok((n, from)) => self.enforce.coa.handle_datagram(from, &coa_buf[..n], Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "CoA socket receive error"),
                },
                r = self.auth.recv_from(&mut auth_buf) => match r {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        self.server.handle_datagram(Port::Auth, from, &auth_buf[..n], now);
                        // Whatever else has already arrived is taken in the same
                        // wake-up (bounded), and answered in one drain.
                        for _ in 0..BATCH {
                            match self.auth.try_recv_from(&mut auth_buf) {
                                Ok((n, from)) => self.server.handle_datagram(Port::Auth, from, &auth_buf[..n], now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "RADIUS auth socket receive error"),
                },
                r = self.acct.recv_from(&mut acct_buf) => match r {
                    Ok((n, from)) => self.server.handle_datagram(Port::Acct, from, &acct_buf[..n], Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "RADIUS acct socket receive error"),
                },
                _ = timer.fired() => {
                    let now = Instant::now();
                    self.server.handle_timeout(now);
                    self.enforce.handle_timeout(now);
                }
            }
            self.drain(Instant::now()).await;
            self.publish_held(&mut published);
        }
    }

    /// Tells the API (and the gauge) when the held batch changed. Compared
    /// with what was `published` last, so the loop takes no lock for it.
    fn publish_held(&mut self, published: &mut Option<u64>) {
        let now = self.enforce.held().map(|h| h.id);
        if *published != now {
            let held: Vec<_> = self.enforce.held().cloned().into_iter().collect();
            self.metrics.changes_pending.add(held.len() as i64 - i64::from(published.is_some()));
            self.held.send_replace(held);
            *published = now;
        }
    }

    async fn drain(&mut self, received: Instant) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Discarded { from, reason } => {
                    self.metrics.radius_discard(reason.label());
                    tracing::debug!(%from, reason = reason.label(), "RADIUS datagram discarded");
                }
                Event::AccessRequest(req) if req.eap_message.is_some() && self.eap.is_some() => self.decide_eap(&req),
                Event::AccessRequest(req) => match slow_check(&req, &self.users) {
                    None => self.decide(&req, None),
                    Some(_) if self.slow.waiting.len() >= MAX_SLOW => {
                        // No answer: the NAS retransmits when a check is free.
                        self.metrics.radius_discard("slow_check_busy");
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
                Event::Accounting(acct) => {
                    // Acknowledged only once written: a NAS whose record was
                    // not stored gets no answer and retransmits.
                    match self.enforce.accounting(&acct, Instant::now()) {
                        Ok(applied) => {
                            if applied == Applied::Full {
                                tracing::warn!("session table full; this session cannot be reached by CoA");
                            }
                            self.metrics.radius_request("accounting", "stored");
                            self.server.handle_decision(acct.id, Decision::Stored, Instant::now());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "accounting journal write failed; not acknowledging");
                            self.server.handle_decision(acct.id, Decision::Drop, Instant::now());
                        }
                    }
                }
                Event::StatusServer => self.metrics.radius_request("status", "accept"),
                Event::Duplicate => self.metrics.radius_discard("duplicate_answered_from_cache"),
            }
        }
        self.enforce.drain_coa_events(Instant::now());
        while let Some((to, payload)) = self.enforce.coa.poll_transmit() {
            if let Err(e) = self.coa_socket.send_to(&payload, to).await {
                tracing::debug!(error = %e, %to, "CoA send failed");
            }
        }
        let mut answered = false;
        while let Some(t) = self.server.poll_transmit() {
            answered = true;
            let socket = match t.port {
                Port::Auth => &self.auth,
                Port::Acct => &self.acct,
            };
            if let Err(e) = socket.send_to(&t.payload, t.to).await {
                tracing::debug!(error = %e, to = %t.to, "RADIUS send failed");
            }
        }
        if answered {
            self.metrics.radius_duration.observe(received.elapsed().as_secs_f64());
        }
    }

    /// Authorizes one Access-Request and hands the decision to the server.
    fn decide(&mut self, req: &crate::radius::server::AccessRequest, verified: Option<bool>) {
        let (decision, outcome) = authorize(req, &self.table, &self.users, &self.enforce.policy, verified);
        self.metrics.radius_request(outcome.kind, outcome.result);
        let now = Instant::now();
        self.enforce.admitted(req.calling_station_id.as_deref(), req.user_name.as_deref(), outcome.access, now);
        tracing::info!(
            client = %req.client,
            kind = outcome.kind,
            result = outcome.result,
            reason = %outcome.reason,
            device = outcome.device.as_deref().unwrap_or("-"),
            "access decision"
        );
        tracing::debug!(user = ?req.user_name, calling_station = ?req.calling_station_id, "access request identities");
        self.server.handle_decision(req.id, decision, now);
    }

    /// One round of an EAP conversation; the last one authorizes the
    /// certificate's device by its verdict, exactly as MAB does.
    fn decide_eap(&mut self, req: &crate::radius::server::AccessRequest) {
        use crate::eap::server::{Authenticated, Outcome};
        use crate::radius::server::EapReply;
        let Some(plane) = self.eap.as_mut() else { return };
        let now = Instant::now();
        if now.duration_since(plane.swept) >= std::time::Duration::from_secs(1) {
            let expired = plane.server.handle_timeout(now);
            for _ in 0..expired {
                self.metrics.eap_refusal(crate::eap::server::Refusal::TimedOut);
            }
            plane.swept = now;
        }
        let outcome = plane.server.handle(
            req.eap_message.as_deref().unwrap_or_default(),
            req.state.as_deref(),
            req.framed_mtu,
            now,
        );
        for _ in plane.evicted..plane.server.evicted {
            self.metrics.eap_refusal(crate::eap::server::Refusal::Evicted);
        }
        plane.evicted = plane.server.evicted;
        self.metrics.eap_sessions.set(plane.server.len() as i64);
        let identity_from = plane.identity_from;
        let method = plane.server.last_method;
        // (decision, kind, result, reason, device, access, the name the Accept gives)
        let (decision, kind, result, reason, device, access, named) = match outcome {
            Outcome::Challenge { eap, state } => {
                self.metrics.radius_request(method, "challenge");
                self.server.handle_decision(req.id, Decision::Challenge { eap, state }, now);
                return;
            }
            Outcome::Reject { eap, refusal, reason } => {
                self.metrics.eap_refusal(refusal);
                let eap = Some(EapReply { message: eap, msk: None, user_name: None });
                let decision = Decision::Reject { reply_message: reason.clone(), eap };
                (decision, method, "reject", reason, None, Access::Deny, None)
            }
            Outcome::Authenticated { who: Authenticated::Password { user }, keys, success, failure } => {
                // PEAP-MSCHAPv2: the user's device_id, else the Calling-Station-Id MAC.
                let device =
                    super::authorize::user_device(&user, req.calling_station_id.as_deref(), &self.table, &self.users);
                let (decision, outcome) = by_verdict("peap", device.as_deref(), &self.enforce.policy);
                let decision = with_eap(decision, success, failure, keys, &user);
                // User and certificate names are PII: DEBUG only (below).
                let reason = outcome.reason;
                (decision, "peap", outcome.result, reason, outcome.device, outcome.access, Some(user))
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
                    (decision, "eap-tls", "reject", reason, None, Access::Deny, None)
                }
                Some(name) => {
                    // The certificate first: the device whose id it names wins
                    // over any device that merely claims it in telemetry.
                    let device = self.table.get(&name).or_else(|| self.table.by_cert_identity(&name));
                    let (decision, outcome) = by_verdict("eap-tls", device.as_deref(), &self.enforce.policy);
                    let decision = with_eap(decision, success, failure, keys, &name);
                    let reason = format!("{} (TLS 1.{})", outcome.reason, if tls13 { 3 } else { 2 });
                    (decision, "eap-tls", outcome.result, reason, outcome.device, outcome.access, Some(name))
                }
            },
        };
        self.metrics.radius_request(kind, result);
        tracing::info!(
            client = %req.client,
            kind,
            result,
            %reason,
            device = device.as_deref().unwrap_or("-"),
            "access decision"
        );
        tracing::debug!(name = ?named, user = ?req.user_name, calling_station = ?req.calling_station_id, "EAP identities");
        let mac = req.calling_station_id.as_deref();
        self.enforce.admitted(mac, req.user_name.as_deref(), access, now);
        if named.is_some() && named != req.user_name {
            self.enforce.admitted(None, named.as_deref(), access, now);
        }
        self.server.handle_decision(req.id, decision, now);
    }
}

/// Datagrams taken per wake-up beyond the first.
const BATCH: usize = 64;
