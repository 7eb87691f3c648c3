//! Enforcement on RADIUS sessions, level-triggered: every session keeps the
//! access its NAS applied, and is reconciled against the access its
//! device's verdict implies. A verdict change reconciles that device's
//! sessions at once (the fast path); a sweep reconciles every session, in
//! slices, after a lagged channel, at start, after a policy reload, and
//! slowly in the background; a NAKed or unanswered request stays due and is
//! retried with backoff. A lost event costs latency, never correctness.

use super::admissions::Admissions;
use super::authorize::{AccessPolicy, session_device};
use super::current::Current;
use crate::compliance::{Change, Held, HeldCause, Stage, Table, grant};
use crate::config::CoaMode;
use crate::mac::Mac;
use crate::metrics::{CoaResult, Metrics, RadiusDiscard};
use crate::radius::coa::{self, CoaClient, Kind};
use crate::radius::journal::{Journal, Record};
use crate::radius::server::{AccountingRequest, Secret};
use crate::radius::sessions::{Applied, Key, Outcome, Sessions, Settled};
use crate::users::Users;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to reach one NAS's Dynamic Authorization Server.
pub struct NasConfig {
    pub secret: Secret,
    pub coa_port: u16,
    pub coa_mode: CoaMode,
}

/// Sessions reconciled per slice of an urgent sweep (after lag, start or a
/// reload): slices alternate with the sockets, so requests keep flowing.
pub const URGENT_SLICE: usize = 4096;
/// The background sweep: this many sessions every [`SWEEP_EVERY`]
/// (20,000 a second: a million sessions every 50 s).
pub const BACKGROUND_SLICE: usize = 2000;
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Why a session is being reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A verdict change for its device (the fast path).
    Change,
    /// A sweep, or a retry after a failure: a difference found here is a
    /// correction of something the fast path missed or could not do.
    Sweep,
}

/// Where a sweep is.
#[derive(Default)]
struct Sweep {
    /// The last key reconciled; `None` before the first slice.
    cursor: Option<Key>,
    /// A full pass is wanted as soon as possible.
    urgent: bool,
    /// Corrections in this pass, for the log line at its end.
    corrected: usize,
    /// The circuit breaker's pass at start: restrictions are counted, not
    /// made (restorations are made), and decided on at the end.
    counting: bool,
    /// Sessions the counting pass would restrict.
    narrowing: usize,
}

/// Ids of batches held by this plane's circuit breaker: apart from the
/// compliance engine's, which count from 1.
pub const HELD_IDS: u64 = 1 << 32;

pub struct Enforcer {
    pub sessions: Sessions,
    pub coa: CoaClient,
    pub journal: Journal,
    pub nas: HashMap<Arc<str>, NasConfig>,
    pub policy: Arc<AccessPolicy>,
    table: Table,
    pub users: Current<Users>,
    metrics: Arc<Metrics>,
    admitted: Arc<Admissions>,
    sweep: Sweep,
    /// The circuit breaker: its share, and the batch it holds.
    max_restrict_fraction: f64,
    held: Option<Held>,
    next_held: u64,
    /// Records appended since the journal was last rewritten.
    appended: usize,
    /// [`REWRITE_AFTER`], smaller in tests.
    rewrite_after: usize,
    /// Where CoA outcomes are recorded (none: the audit trail is off).
    pub audit: Option<crate::gateway::audit_trail::AuditSender>,
}

/// The accounting journal is rewritten from the live sessions once it
/// holds this many records more than twice the sessions (interim updates
/// and ended sessions pile up otherwise until the next restart).
const REWRITE_AFTER: usize = 100_000;

impl Enforcer {
    #[allow(clippy::too_many_arguments)] // each is a distinct part, built once by the gateway
    pub fn new(
        sessions: Sessions,
        journal: Journal,
        nas: HashMap<Arc<str>, NasConfig>,
        policy: Arc<AccessPolicy>,
        table: Table,
        users: Current<Users>,
        metrics: Arc<Metrics>,
        max_restrict_fraction: f64,
        admitted: Arc<Admissions>,
    ) -> Self {
        Self {
            sessions,
            coa: CoaClient::default(),
            journal,
            nas,
            policy,
            table,
            users,
            metrics,
            admitted,
            // Sessions from the journal keep the access they had, and are
            // reconciled as soon as the task runs; restrictions are counted
            // first, so a lost or damaged table cannot restrict every
            // session at once without an operator's word.
            sweep: Sweep { urgent: true, counting: true, ..Sweep::default() },
            max_restrict_fraction,
            held: None,
            next_held: HELD_IDS,
            appended: 0,
            rewrite_after: REWRITE_AFTER,
            audit: None,
        }
    }

    /// Whether the journal has grown enough to be rewritten.
    pub fn rewrite_due(&self) -> bool {
        self.appended > self.rewrite_after + 2 * self.sessions.len()
    }

    /// Rewrites the accounting journal from the live sessions and reopens
    /// it. Call only when every record appended so far is synced or not
    /// yet acknowledged: the new file is synced before it replaces the old.
    /// Returns the lines kept; on failure the old journal stays in use.
    pub fn rewrite_journal(&mut self) -> std::io::Result<usize> {
        let dir = self.journal.path().parent().map(Path::to_path_buf).unwrap_or_default();
        let kept = crate::radius::journal::rewrite(&dir, &self.sessions)?;
        self.journal = Journal::open(&dir)?;
        self.appended = 0;
        Ok(kept)
    }

    /// The batch the circuit breaker holds, if any.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Applies the held batch `id`, as an operator confirmed it.
    pub fn confirm(&mut self, id: u64) -> Option<Held> {
        if self.held.as_ref().is_none_or(|h| h.id != id) {
            return None;
        }
        let held = self.held.take();
        self.sweep = Sweep { urgent: true, ..Sweep::default() };
        held
    }

    /// Journals an accounting request, then applies it. Err: not stored,
    /// so not to be acknowledged.
    pub fn accounting(&mut self, acct: &AccountingRequest, now: Instant) -> std::io::Result<Applied> {
        self.users.refresh();
        let mac = acct.calling_station_id.as_deref().and_then(Mac::parse);
        // A new session has what its Accept gave; failing that (an Accept
        // from before a restart), what an Accept would give now.
        let access = self.admitted.recall(mac, acct.user_name.as_deref(), now).unwrap_or_else(|| {
            let device = session_device(mac, acct.user_name.as_deref(), &self.table, self.users.get());
            grant(device.as_deref(), Stage::Admission, &self.policy.rules).access
        });
        let record = Record::accounting(acct, access, now_rfc3339());
        self.journal.append(&record)?;
        self.appended += 1;
        let applied = self.sessions.apply(acct, access);
        self.metrics.set_sessions(self.sessions.len(), self.sessions.counts());
        if applied == Applied::Started {
            // It may have changed between the Accept and now.
            if let Some(key) = acct.session_id.clone().map(|sid| (acct.nas, sid)) {
                // The group placement its Accept gave, as of now.
                let device = session_device(mac, acct.user_name.as_deref(), &self.table, self.users.get());
                self.sessions.place(&key, self.policy.profile(device.as_deref(), access));
                self.reconcile(&key, Cause::Change, now, now, unix_now());
            }
        }
        Ok(applied)
    }

    /// A device's verdict changed: its sessions, found by its MACs, its
    /// users and its certificate identity, are reconciled at once.
    pub fn handle_change(&mut self, change: &Change, now: Instant) {
        let unix_time = u32::try_from(change.wall / 1000).unwrap_or(0);
        for key in self.sessions_of(&change.device) {
            self.reconcile(&key, Cause::Change, now, change.at, unix_time);
        }
    }

    /// A device's sessions: by its MACs, its users and its certificate
    /// identity.
    fn sessions_of(&mut self, device_id: &str) -> Vec<Key> {
        self.users.refresh();
        let device = self.table.get(device_id);
        let macs: Vec<Mac> = device
            .iter()
            .flat_map(|d| d.report.mac_addresses.iter().flat_map(|v| v.iter()))
            .filter_map(|m| Mac::parse(m))
            .collect();
        let all = Arc::clone(self.users.get());
        let mut users = all.names_for_device(device_id);
        users.extend(device.as_ref().and_then(|d| d.report.cert_identity.as_deref()));
        users.push(device_id);
        self.sessions.find(&macs, &users)
    }

    /// A device's sessions as the API shows them.
    pub fn session_views(&mut self, device_id: &str) -> Vec<serde_json::Value> {
        let keys = self.sessions_of(device_id);
        keys.iter()
            .filter_map(|k| self.sessions.get(k))
            .map(|s| {
                serde_json::json!({
                    "plane": "radius",
                    "client": &*s.client,
                    "nas": s.nas.to_string(),
                    "acct_session_id": s.id.acct_session_id,
                    "calling_station_id": s.id.calling_station_id,
                    "user_name": s.id.user_name,
                    "nas_port": s.id.nas_port,
                    "access": s.applied.label(),
                    "changing_to": s.target.map(|(a, _)| a.label()),
                })
            })
            .collect()
    }

    /// Starts a full pass as soon as possible (after lag, a reload, a restore).
    pub fn sweep_soon(&mut self) {
        if !self.sweep.urgent {
            self.sweep = Sweep { urgent: true, ..Sweep::default() };
        }
    }

    /// An urgent pass is under way.
    pub fn sweep_urgent(&self) -> bool {
        self.sweep.urgent
    }

    /// Reconciles the next `n` sessions of the pass under way.
    pub fn sweep_slice(&mut self, n: usize, now: Instant) {
        self.users.refresh();
        // One ordered walk reads the slice in place; only the sessions with
        // something to do (not in step, or a retry pending) are taken out.
        let mut last = None;
        let mut seen = 0;
        let mut todo: Vec<(Key, bool)> = Vec::new();
        for (key, s) in self.sessions.after(self.sweep.cursor.as_ref()).take(n) {
            seen += 1;
            last = Some(key);
            let device = session_device(s.mac, s.id.user_name.as_deref(), &self.table, self.users.get());
            let desired = self.policy.running(device.as_deref(), s.applied);
            let profile = self.policy.profile(device.as_deref(), desired);
            if desired != s.applied || profile != s.profile || s.retry.is_some() {
                todo.push((key.clone(), desired.narrower_than(s.applied)));
            }
        }
        let last = last.cloned();
        let unix_time = unix_now();
        for (key, narrowing) in &todo {
            if self.sweep.counting && *narrowing {
                self.sweep.narrowing += 1;
            } else if self.reconcile(key, Cause::Sweep, now, now, unix_time) {
                self.sweep.corrected += 1;
            }
        }
        if seen == n {
            self.sweep.cursor = last;
            return;
        }
        if self.sweep.counting {
            return self.decide_counted();
        }
        if self.sweep.urgent || self.sweep.corrected > 0 {
            tracing::info!(
                sessions = self.sessions.len(),
                corrected = self.sweep.corrected,
                "RADIUS sessions reconciled"
            );
        }
        self.sweep = Sweep::default();
    }

    /// The counting pass is over: the restrictions it found are made now,
    /// or held for confirmation when they are more than the breaker allows.
    fn decide_counted(&mut self) {
        let (narrowing, total) = (self.sweep.narrowing, self.sessions.len());
        if narrowing >= 2 && narrowing as f64 > self.max_restrict_fraction * total as f64 {
            self.next_held += 1;
            let held = Held {
                id: self.next_held,
                cause: HeldCause::Reconciliation,
                restricting: narrowing,
                live: total,
                since: crate::gateway::mqtt::wall_now(),
            };
            tracing::warn!(
                change = held.id,
                restricting = narrowing,
                sessions = total,
                "circuit breaker: reconciling would restrict too many RADIUS sessions at once; held until confirmed (warden changes confirm {})",
                held.id
            );
            self.held = Some(held);
            self.sweep = Sweep::default();
        } else {
            self.sweep = Sweep { urgent: true, ..Sweep::default() };
        }
    }

    /// When retries or the CoA client next need [`Enforcer::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.coa.poll_timeout().into_iter().chain(self.sessions.poll_timeout()).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.users.refresh();
        self.coa.handle_timeout(now);
        let unix_time = unix_now();
        for key in self.sessions.due(now) {
            self.reconcile(&key, Cause::Sweep, now, now, unix_time);
        }
    }

    /// Reconciles one session: if its applied access is not what its
    /// device's verdict implies and nothing is in flight for it, asks its
    /// NAS. True when a request was made.
    fn reconcile(&mut self, key: &Key, cause: Cause, now: Instant, origin: Instant, unix_time: u32) -> bool {
        let Some(s) = self.sessions.get(key) else { return false };
        let device = session_device(s.mac, s.id.user_name.as_deref(), &self.table, self.users.get());
        let desired = self.policy.running(device.as_deref(), s.applied);
        if cause == Cause::Sweep && self.held.is_some() && desired.narrower_than(s.applied) {
            // Held by the circuit breaker: passes restrict nothing until confirmed.
            return false;
        }
        let profile = self.policy.profile(device.as_deref(), desired);
        let Some(serial) = self.sessions.reconcile(key, desired, profile, now) else { return false };
        let Some(s) = self.sessions.get(key) else { return false };
        let device_id: Arc<str> = device.as_ref().map_or_else(|| Arc::from("-"), |d| Arc::clone(&d.id));
        let Some(nas) = self.nas.get(&s.client) else {
            // Its NAS left the config: nothing can reach it; tried again later.
            tracing::debug!(client = %s.client, "no NAS config for a session; cannot change it");
            self.sessions.settle(serial, Outcome::Failed, now);
            return false;
        };
        if cause == Cause::Sweep {
            self.metrics.reconcile_corrections[0].inc();
        }
        let (vlan, filter_id) = self.policy.placement(device.as_deref(), desired);
        let (kind, vlan, fallback) = coa::plan(nas.coa_mode, vlan);
        let filter_id = filter_id.filter(|_| kind == Kind::Coa).map(str::to_string);
        tracing::info!(device = %device_id, kind = kind.label(), from = s.applied.label(), to = desired.label(), correction = cause == Cause::Sweep, "changing an active session");
        self.coa.request(
            coa::Request {
                nas: SocketAddr::new(s.nas, nas.coa_port),
                secret: nas.secret.clone(),
                kind,
                vlan,
                filter_id,
                fallback_to_disconnect: fallback,
                session: s.id.clone(),
                device: device_id,
                origin,
                unix_time,
                tag: serial,
            },
            now,
        );
        true
    }

    /// Records a CoA or Disconnect's outcome in the audit trail.
    fn audit_outcome(&self, kind: Kind, device: &str, result: CoaResult, cause: Option<String>) {
        if let Some(a) = &self.audit {
            let mut data = serde_json::json!({"plane": "radius", "action": kind.label(), "result": result.label()});
            if let Some(c) = cause {
                data["cause"] = c.into();
            }
            a.record("warden.enforcement.applied", device, data);
        }
    }

    /// Takes the CoA client's outcomes: counts and logs them, records what
    /// NASes acknowledged, and reconciles again where that is due.
    pub fn drain_coa_events(&mut self, now: Instant) {
        while let Some(event) = self.coa.poll_event() {
            let (tag, outcome) = match event {
                coa::Event::Sent { origin, .. } => {
                    self.metrics.enforcement_radius.observe(origin.elapsed().as_secs_f64());
                    continue;
                }
                coa::Event::Ack { kind, device, tag } => {
                    self.metrics.coa_request(kind, CoaResult::Ack);
                    self.audit_outcome(kind, &device, CoaResult::Ack, None);
                    tracing::info!(%device, kind = kind.label(), "NAS acknowledged");
                    (tag, if kind == Kind::Disconnect { Outcome::Ended } else { Outcome::Applied })
                }
                coa::Event::Nak { kind, device, cause, tag, fell_back } => {
                    self.metrics.coa_request(kind, CoaResult::Nak);
                    self.audit_outcome(kind, &device, CoaResult::Nak, Some(format!("{cause:?}")));
                    tracing::warn!(%device, kind = kind.label(), ?cause, fell_back, "NAS refused");
                    if fell_back {
                        continue; // the Disconnect's outcome settles it
                    }
                    (tag, Outcome::Failed)
                }
                coa::Event::Timeout { kind, device, tag } => {
                    self.metrics.coa_request(kind, CoaResult::Timeout);
                    self.audit_outcome(kind, &device, CoaResult::Timeout, None);
                    tracing::warn!(%device, kind = kind.label(), "NAS did not answer; retried later");
                    (tag, Outcome::Failed)
                }
                coa::Event::Dropped { kind, device, tag } => {
                    self.metrics.coa_request(kind, CoaResult::Dropped);
                    self.audit_outcome(kind, &device, CoaResult::Dropped, None);
                    tracing::warn!(%device, kind = kind.label(), "CoA queue full; retried later");
                    (tag, Outcome::Failed)
                }
                coa::Event::Ignored { from } => {
                    self.metrics.radius_discard(RadiusDiscard::CoaAnswerIgnored);
                    tracing::debug!(%from, "CoA answer matched nothing or failed its authenticators");
                    continue;
                }
            };
            let record = match self.sessions.settle(tag, outcome, now) {
                Some(Settled::Applied(key, access)) => {
                    self.metrics.set_sessions(self.sessions.len(), self.sessions.counts());
                    // The verdict may have moved while the request was out.
                    self.reconcile(&key, Cause::Change, now, now, unix_now());
                    Record::applied(&key, access, now_rfc3339())
                }
                Some(Settled::Ended(key)) => {
                    self.metrics.set_sessions(self.sessions.len(), self.sessions.counts());
                    Record::ended(&key, now_rfc3339())
                }
                Some(Settled::Retry(..)) | None => continue,
            };
            match self.journal.append(&record) {
                Ok(()) => self.appended += 1,
                Err(e) => {
                    tracing::error!(error = %e, "accounting journal write failed; a restart may repeat this change")
                }
            }
        }
    }
}

fn now_rfc3339() -> String {
    crate::telemetry::report::format_rfc3339(crate::gateway::mqtt::wall_now())
}

fn unix_now() -> u32 {
    u32::try_from(crate::gateway::mqtt::wall_now() / 1000).unwrap_or(0)
}

#[cfg(test)]
#[path = "radius_enforce_tests.rs"]
mod tests;
