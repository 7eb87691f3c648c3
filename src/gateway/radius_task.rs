//! The RADIUS accounting shell: the accounting socket feeding its own
//! sans-IO [`Server`], and [`Enforcer`] for sessions, CoA and the accounting
//! journal (a record is appended before it is acknowledged). Access-Requests
//! are answered by the auth shards (`radius_auth`); this task owns
//! everything a session needs to be enforced, in one place, so CoA keeps
//! one identifier space per NAS.

use super::radius_enforce::{BACKGROUND_SLICE, Enforcer, SWEEP_EVERY, URGENT_SLICE};
use crate::compliance::Change;
use crate::metrics::{Metrics, RadiusDiscard, RadiusKind, RadiusResult};
use crate::radius::server::{Decision, Event, Port, Server};
use crate::radius::sessions::Applied;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, watch};

/// Accounting datagrams taken per wake-up beyond the first: one group commit.
const COMMIT_BATCH: usize = 1024;

pub struct RadiusTask {
    pub server: Server,
    pub acct: UdpSocket,
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
    /// The API asking for a device's sessions.
    pub session_queries: tokio::sync::mpsc::Receiver<SessionQuery>,
    /// Set once the task serves its sockets, for `/readyz`.
    pub ready: Option<Arc<std::sync::atomic::AtomicBool>>,
    pub shutdown: watch::Receiver<bool>,
    /// The journal's file, for the group commit's sync (shared with the
    /// blocking thread that runs it: no `dup` per batch).
    pub journal_sync: Arc<std::fs::File>,
}

pub use crate::http::requests::SessionQuery;

impl RadiusTask {
    pub async fn run(mut self) {
        let mut acct_buf = vec![0u8; super::udp_batch::SLOT];
        let mut acct_batch = super::udp_batch::Batch::new();
        let mut coa_buf = vec![0u8; super::udp_batch::SLOT];
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
                Some(q) = self.session_queries.recv() => {
                    let _ = q.reply.send(self.enforce.session_views(&q.device));
                }
                Some(confirm) = self.confirms.recv() => {
                    let done = self.enforce.confirm(confirm.id);
                    if let Some(h) = &done {
                        tracing::info!(change = h.id, restricting = h.restricting, "held RADIUS restrictions confirmed");
                    }
                    let _ = confirm.reply.send(done);
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
                r = self.acct.recv_from(&mut acct_buf) => match r {
                    // Everything already waiting joins this batch and its one
                    // sync (records that came during the last sync).
                    Ok(first) => super::udp_batch::take_waiting(
                        &self.acct,
                        &acct_buf,
                        first,
                        &mut acct_batch,
                        COMMIT_BATCH,
                        &mut self.server,
                        Port::Acct,
                        Instant::now(),
                    ),
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
        let mut written = Vec::new();
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Discarded { from, reason } => {
                    self.metrics.radius_discard(RadiusDiscard::Server(reason));
                    tracing::debug!(%from, reason = reason.label(), "RADIUS datagram discarded");
                }
                // The server core takes Access-Requests on the auth port only.
                Event::AccessRequest(req) => self.server.handle_decision(req.id, Decision::Drop, Instant::now()),
                Event::Accounting(acct) => {
                    // Written now, acknowledged after the batch's sync below:
                    // a NAS whose record is not durable gets no answer and
                    // retransmits.
                    match self.enforce.accounting(&acct, Instant::now()) {
                        Ok(applied) => {
                            if applied == Applied::Full {
                                tracing::warn!("session table full; this session cannot be reached by CoA");
                            }
                            written.push(acct.id);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "accounting journal write failed; not acknowledging");
                            self.server.handle_decision(acct.id, Decision::Drop, Instant::now());
                        }
                    }
                }
                Event::StatusServer => self.metrics.radius_request(RadiusKind::Status, RadiusResult::Accept),
                Event::Duplicate => self.metrics.radius_discard(RadiusDiscard::DuplicateAnsweredFromCache),
            }
        }
        if !written.is_empty() {
            self.commit(written).await;
        }
        // Everything appended is synced or was refused: the journal can be
        // rewritten from the sessions now (a rare stop of a few ms per
        // 100,000 records; the new file is synced before it replaces the old).
        if self.enforce.rewrite_due() {
            let started = Instant::now();
            match self.enforce.rewrite_journal().and_then(|kept| Ok((kept, self.enforce.journal.syncer()?))) {
                Ok((kept, syncer)) => {
                    self.journal_sync = Arc::new(syncer);
                    tracing::info!(
                        sessions = kept,
                        took_ms = started.elapsed().as_millis() as u64,
                        "accounting journal rewritten from the live sessions"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "accounting journal rewrite failed; appending to the old one"),
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
            if let Err(e) = self.acct.send_to(&t.payload, t.to).await {
                tracing::debug!(error = %e, to = %t.to, "RADIUS send failed");
            }
        }
        if answered {
            self.metrics.radius_duration.observe(received.elapsed().as_secs_f64());
        }
    }

    /// Group commit: one `fdatasync` for every record of the batch, off the
    /// async threads, then every one of them is acknowledged (or none, if
    /// the sync failed: the NASes retransmit). Records that arrive
    /// meanwhile wait in the socket and make the next batch.
    async fn commit(&mut self, written: Vec<crate::radius::server::DecisionId>) {
        let file = Arc::clone(&self.journal_sync);
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let now = Instant::now();
        match synced {
            Ok(()) => {
                for id in written {
                    self.metrics.radius_request(RadiusKind::Accounting, RadiusResult::Stored);
                    self.server.handle_decision(id, Decision::Stored, now);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = written.len(), "accounting journal sync failed; not acknowledging");
                for id in written {
                    self.server.handle_decision(id, Decision::Drop, now);
                }
            }
        }
    }
}
