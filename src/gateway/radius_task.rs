//! The RADIUS shell: two UDP sockets (auth, acct) feeding the sans-IO
//! [`Server`], decisions from [`authorize`], accounting appended to a
//! journal in `state_dir` before it is acknowledged.

use super::authorize::{AccessPolicy, authorize};
use crate::compliance::Table;
use crate::metrics::Metrics;
use crate::radius::server::{Decision, Event, Port, Server};
use crate::users::Users;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub struct RadiusTask {
    pub server: Server,
    pub auth: UdpSocket,
    pub acct: UdpSocket,
    pub table: Table,
    pub users: Users,
    pub policy: AccessPolicy,
    pub metrics: Arc<Metrics>,
    pub journal: std::fs::File,
    pub shutdown: watch::Receiver<bool>,
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
        loop {
            let deadline = self.server.poll_timeout();
            tokio::select! {
                _ = self.shutdown.changed() => return,
                r = self.auth.recv_from(&mut auth_buf) => match r {
                    Ok((n, from)) => self.server.handle_datagram(Port::Auth, from, &auth_buf[..n], Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "RADIUS auth socket receive error"),
                },
                r = self.acct.recv_from(&mut acct_buf) => match r {
                    Ok((n, from)) => self.server.handle_datagram(Port::Acct, from, &acct_buf[..n], Instant::now()),
                    Err(e) => tracing::debug!(error = %e, "RADIUS acct socket receive error"),
                },
                _ = sleep_until(deadline) => self.server.handle_timeout(Instant::now()),
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
                Event::AccessRequest(req) => {
                    let (decision, outcome) = authorize(&req, &self.table, &self.users, &self.policy);
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
                Event::Accounting(acct) => {
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
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
