//! The RADIUS shell: two UDP sockets (auth, acct) feeding the sans-IO
//! [`Server`], decisions from [`authorize`], accounting appended to a
//! journal in `state_dir` before it is acknowledged.

use super::authorize::{AccessPolicy, authorize, session_access, session_device, slow_check};
use crate::compliance::{Change, Table};
use crate::config::CoaMode;
use crate::mac::Mac;
use crate::metrics::Metrics;
use crate::radius::coa::{self, CoaClient, Kind};
use crate::radius::server::{AccountingRequest, Decision, Event, Port, Secret, Server};
use crate::radius::sessions::{Access, Applied, Sessions};
use crate::users::Users;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, watch};

/// How to reach one NAS's Dynamic Authorization Server.
pub struct NasConfig {
    pub secret: Secret,
    pub coa_port: u16,
    pub coa_mode: CoaMode,
}

pub struct RadiusTask {
    pub server: Server,
    pub auth: UdpSocket,
    pub acct: UdpSocket,
    pub table: Table,
    pub users: Arc<Users>,
    pub policy: AccessPolicy,
    pub metrics: Arc<Metrics>,
    pub journal: std::fs::File,
    pub sessions: Sessions,
    pub coa: CoaClient,
    pub coa_socket: UdpSocket,
    pub changes: broadcast::Receiver<Arc<Change>>,
    pub nas: HashMap<Arc<str>, NasConfig>,
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
            eap: Some(EapReply { message: success, msk: Some(Box::new(keys.msk)), user_name: Some(user.to_string()) }),
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

/// Rebuilds the session table from the accounting journal, so a restart
/// still knows whom to send a CoA to. Unreadable lines are skipped.
pub fn replay_journal(state_dir: &Path, sessions: &mut Sessions) -> usize {
    use crate::radius::dictionary::AcctStatus;
    let Ok(text) = std::fs::read_to_string(state_dir.join("accounting.jsonl")) else { return 0 };
    let mut applied = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let s = |k: &str| v[k].as_str().map(str::to_string);
        let status = match v["status"].as_str() {
            Some("Start") => AcctStatus::Start,
            Some("InterimUpdate") => AcctStatus::InterimUpdate,
            Some("Stop") => AcctStatus::Stop,
            Some("AccountingOn") => AcctStatus::AccountingOn,
            Some("AccountingOff") => AcctStatus::AccountingOff,
            _ => continue,
        };
        let Some(nas) = v["nas"].as_str().and_then(|n| n.parse().ok()) else { continue };
        let record = AccountingRequest {
            id: crate::radius::server::DecisionId::none(),
            client: s("client").unwrap_or_default().into(),
            nas,
            status,
            session_id: s("session_id"),
            user_name: s("user_name"),
            calling_station_id: s("calling_station_id"),
            nas_ip: v["nas_ip"].as_str().and_then(|i| i.parse().ok()),
            nas_port: v["nas_port"].as_u64().and_then(|p| u32::try_from(p).ok()),
            nas_port_id: s("nas_port_id"),
            framed_ip: v["framed_ip"].as_str().and_then(|i| i.parse().ok()),
        };
        // Replayed sessions get their access from the current verdicts when
        // the first change arrives; until then they count as normal.
        if sessions.apply(&record, Access::Normal) != Applied::Ignored {
            applied += 1;
        }
    }
    applied
}

/// Opens (appending) the accounting journal in `state_dir`.
pub fn open_journal(state_dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(state_dir.join("accounting.jsonl"))
}

impl RadiusTask {
    pub async fn run(mut self) {
        // The largest RADIUS packet is 4096 bytes; one more byte tells a
        // longer datagram apart (it is refused by the decoder as too long).
        let mut auth_buf = vec![0u8; 4097];
        let mut acct_buf = vec![0u8; 4097];
        let mut coa_buf = vec![0u8; 4097];
        let mut timer = super::timer::Timer::new();
        loop {
            timer.arm(self.server.poll_timeout().into_iter().chain(self.coa.poll_timeout()).min());
            tokio::select! {
                _ = self.shutdown.changed() => return,
                Some((id, ok)) = self.slow.rx.recv() => {
                    if let Some(req) = self.slow.waiting.remove(&id) {
                        self.decide(&req, Some(ok));
                    }
                }
                change = self.changes.recv() => match change {
                    Ok(change) => self.handle_change(&change, Instant::now()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.metrics.events_lagged.inc_by(n);
                        tracing::warn!(missed = n, "RADIUS plane fell behind on verdict changes");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = self.coa_socket.recv_from(&mut coa_buf) => match r {
                    Ok((n, from)) => self.coa.handle_datagram(from, &coa_buf[..n], Instant::now()),
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
                    self.coa.handle_timeout(now);
                }
            }
            self.drain(Instant::now()).await;
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
                    let device = session_device(
                        acct.calling_station_id.as_deref(),
                        acct.user_name.as_deref(),
                        &self.table,
                        &self.users,
                    );
                    let access = session_access(device.as_deref(), &self.policy);
                    let record = serde_json::json!({
                        "at": crate::telemetry::report::format_rfc3339(crate::telemetry::ingest::wall_now()),
                        "client": &*acct.client,
                        "nas": acct.nas.to_string(),
                        "status": format!("{:?}", acct.status),
                        "session_id": acct.session_id,
                        "user_name": acct.user_name,
                        "calling_station_id": acct.calling_station_id,
                        "nas_ip": acct.nas_ip.map(|i| i.to_string()),
                        "nas_port": acct.nas_port,
                        "nas_port_id": acct.nas_port_id,
                        "framed_ip": acct.framed_ip.map(|i| i.to_string()),
                    });
                    // Acknowledged only once written: a NAS whose record was
                    // not stored gets no answer and retransmits.
                    let stored = writeln!(self.journal, "{record}").and_then(|()| self.journal.flush());
                    match stored {
                        Ok(()) => {
                            if self.sessions.apply(&acct, access) == Applied::Full {
                                tracing::warn!("session table full; this session cannot be reached by CoA");
                            }
                            self.metrics.radius_sessions.set(self.sessions.len() as i64);
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
        while let Some(event) = self.coa.poll_event() {
            match event {
                coa::Event::Sent { origin, .. } => {
                    self.metrics.enforcement_radius.observe(origin.elapsed().as_secs_f64())
                }
                coa::Event::Ack { kind, device } => {
                    self.metrics.coa_request(kind.label(), "ack");
                    tracing::info!(%device, kind = kind.label(), "NAS acknowledged");
                }
                coa::Event::Nak { kind, device, cause } => {
                    self.metrics.coa_request(kind.label(), "nak");
                    tracing::warn!(%device, kind = kind.label(), ?cause, "NAS refused");
                }
                coa::Event::Timeout { kind, device } => {
                    self.metrics.coa_request(kind.label(), "timeout");
                    tracing::warn!(%device, kind = kind.label(), "NAS did not answer");
                }
                coa::Event::Dropped { kind, device } => {
                    self.metrics.coa_request(kind.label(), "dropped");
                    tracing::warn!(%device, kind = kind.label(), "CoA queue full; request dropped");
                }
                coa::Event::Ignored { from } => {
                    self.metrics.radius_discard("coa_answer_ignored");
                    tracing::debug!(%from, "CoA answer matched nothing or failed its authenticators");
                }
            }
        }
        while let Some((to, payload)) = self.coa.poll_transmit() {
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
        let (decision, outcome) = authorize(req, &self.table, &self.users, &self.policy, verified);
        self.metrics.radius_request(outcome.kind, outcome.result);
        tracing::info!(
            client = %req.client,
            kind = outcome.kind,
            result = outcome.result,
            reason = %outcome.reason,
            device = outcome.device.as_deref().unwrap_or("-"),
            "access decision"
        );
        tracing::debug!(user = ?req.user_name, calling_station = ?req.calling_station_id, "access request identities");
        self.server.handle_decision(req.id, decision, Instant::now());
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
        let (decision, kind, result, reason, device) = match outcome {
            Outcome::Challenge { eap, state } => {
                self.metrics.radius_request(method, "challenge");
                self.server.handle_decision(req.id, Decision::Challenge { eap, state }, now);
                return;
            }
            Outcome::Reject { eap, refusal, reason } => {
                self.metrics.eap_refusal(refusal);
                let eap = Some(EapReply { message: eap, msk: None, user_name: None });
                (Decision::Reject { reply_message: reason.clone(), eap }, method, "reject", reason, None)
            }
            Outcome::Authenticated { who: Authenticated::Password { user }, keys, success, failure } => {
                // PEAP-MSCHAPv2: the user's device_id, else the Calling-Station-Id MAC.
                let device =
                    super::authorize::user_device(&user, req.calling_station_id.as_deref(), &self.table, &self.users);
                let (decision, outcome) = super::authorize::by_verdict("peap", device.as_deref(), &self.policy);
                let decision = with_eap(decision, success, failure, keys, &user);
                let reason = format!("{} (user {user})", outcome.reason);
                (decision, "peap", outcome.result, reason, outcome.device)
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
                    (Decision::Reject { reply_message: reason.clone(), eap }, "eap-tls", "reject", reason, None)
                }
                Some(name) => {
                    let device = self.table.by_cert_identity(&name).or_else(|| self.table.get(&name));
                    let (decision, outcome) = super::authorize::by_verdict("eap-tls", device.as_deref(), &self.policy);
                    let decision = match decision {
                        Decision::Accept { vlan, reply_message, .. } => Decision::Accept {
                            vlan,
                            reply_message,
                            eap: Some(EapReply {
                                message: success,
                                msk: Some(Box::new(keys.msk)),
                                user_name: Some(name.clone()),
                            }),
                        },
                        Decision::Reject { reply_message, .. } => Decision::Reject {
                            reply_message,
                            eap: Some(EapReply { message: failure, msk: None, user_name: None }),
                        },
                        other => other,
                    };
                    let reason =
                        format!("{} (certificate {name}, TLS 1.{})", outcome.reason, if tls13 { 3 } else { 2 });
                    (decision, "eap-tls", outcome.result, reason, outcome.device)
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
        self.server.handle_decision(req.id, decision, now);
    }

    /// A device's verdict changed: every session of it whose access no
    /// longer matches gets a CoA or Disconnect, per its NAS's `coa_mode`.
    fn handle_change(&mut self, change: &Change, now: Instant) {
        let Some(device) = self.table.get(&change.device) else { return };
        let access = session_access(Some(&device), &self.policy);
        let macs: Vec<Mac> =
            device.report.mac_addresses.iter().flat_map(|v| v.iter()).filter_map(|m| Mac::parse(m)).collect();
        // Sessions are found by MAC, by the users file's users of the device,
        // and (EAP-TLS) by the certificate identity or device id as User-Name.
        let mut users = self.users.names_for_device(&change.device);
        users.extend(device.report.cert_identity.as_deref());
        users.push(&change.device);
        let unix_time = u32::try_from(change.wall / 1000).unwrap_or(0);
        for key in self.sessions.find(&macs, &users) {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            if session.access == access {
                continue;
            }
            session.access = access;
            let Some(nas) = self.nas.get(&session.client) else { continue };
            let vlan = match access {
                Access::Normal => Some(self.policy.compliant_vlan.clone()),
                Access::Quarantine => Some(self.policy.quarantine_vlan.clone()),
                Access::Reject => None,
            };
            // Reject has no VLAN to move to: only a Disconnect does it.
            let (kind, fallback) = match (nas.coa_mode, &vlan) {
                (_, None) | (CoaMode::Disconnect, _) => (Kind::Disconnect, false),
                (CoaMode::Coa, Some(_)) => (Kind::Coa, false),
                (CoaMode::CoaThenDisconnect, Some(_)) => (Kind::Coa, true),
            };
            tracing::info!(device = %change.device, kind = kind.label(), access = ?access, "changing an active session");
            self.coa.request(
                coa::Request {
                    nas: SocketAddr::new(session.nas, nas.coa_port),
                    secret: nas.secret.clone(),
                    kind,
                    vlan,
                    fallback_to_disconnect: fallback,
                    session: session.id.clone(),
                    device: Arc::clone(&change.device),
                    origin: change.at,
                    unix_time,
                },
                now,
            );
        }
    }
}

/// Datagrams taken per wake-up beyond the first.
const BATCH: usize = 64;
