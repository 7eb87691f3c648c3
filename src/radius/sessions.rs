//! Active sessions, from accounting: what a CoA or Disconnect must name, and
//! the access each was last given.
//!
//! Found by MAC (Calling-Station-Id) and by user name, so a verdict change
//! reaches every session of a device whatever identity the NAS reported.
//! Each session keeps the access its NAS *applied* (the Access-Accept, or
//! the last acknowledged CoA); the caller reconciles it against the access
//! the verdict implies, and this table keeps what is in flight and what is
//! due again after a NAK or a timeout. Sans-IO: `now` comes in; ordered maps
//! keep every walk deterministic.
//!
//! Drive it: [`Sessions::apply`] every accounting record, then for a
//! session whose verdict may have changed [`Sessions::reconcile`] it
//! against the access its verdict implies (a serial back means: send a
//! request for it now), [`Sessions::settle`] the request's outcome, and at
//! [`Sessions::poll_timeout`] reconcile again what [`Sessions::due`] names.

use super::coa::SessionId;
use super::dictionary::AcctStatus;
use super::server::AccountingRequest;
use crate::compliance::Access;
use crate::mac::Mac;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sessions kept at most; past it new ones are not tracked (counted by the caller).
pub const MAX_SESSIONS: usize = 2_000_000;
/// The first retry of a NAKed or unanswered request; doubled each time.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Retries never wait longer than this.
const MAX_RETRY: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Session {
    pub client: Arc<str>,
    pub nas: IpAddr,
    pub id: SessionId,
    pub mac: Option<Mac>,
    /// What the NAS was last told: the Access-Accept's access, then each
    /// acknowledged CoA's.
    pub applied: Access,
    /// Names this session record in CoA outcomes: a record that ended and
    /// came back under the same key is another serial.
    pub serial: u64,
    /// Its group placement as last told to the NAS (a VLAN or Filter-Id of
    /// a dynamic group; 0: none), by the gateway's numbering.
    pub profile: u64,
    /// The access and placement a request in flight asks for.
    pub target: Option<(Access, u64)>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// After a failure: when to try again, and for which access and placement.
    pub retry: Option<(Instant, Access, u64)>,
}

/// A session: its NAS and its Acct-Session-Id.
pub type Key = (IpAddr, String);

#[derive(Default)]
pub struct Sessions {
    sessions: BTreeMap<Key, Session>,
    by_serial: HashMap<u64, Key>,
    by_mac: HashMap<Mac, BTreeSet<Key>>,
    by_user: HashMap<String, BTreeSet<Key>>,
    retries: BTreeSet<(Instant, u64)>,
    next_serial: u64,
    /// Sessions by applied access, indexed by `Access as usize`.
    counts: [usize; 3],
}

/// What an accounting record did to the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Started,
    Updated,
    Stopped,
    /// Accounting-On/Off: every session of that NAS is gone.
    NasReset(usize),
    /// No Acct-Session-Id, or an unknown status: nothing to track.
    Ignored,
    Full,
}

/// How a request for a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// CoA-ACK: the session now has the access asked for.
    Applied,
    /// Disconnect-ACK: the session is gone; the device re-authenticates.
    Ended,
    /// NAK, timeout, or no room in the queue: try again later.
    Failed,
}

/// What settling an outcome changed, for the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Applied(Key, Access),
    Ended(Key),
    /// Retried at this time.
    Retry(Key, Instant),
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Sessions by the access their NAS applied (`Access as usize`).
    pub fn counts(&self) -> [usize; 3] {
        self.counts
    }

    /// Applies one accounting record; `access` is what a new session was
    /// given by its Access-Accept. An update keeps what the session has.
    pub fn apply(&mut self, a: &AccountingRequest, access: Access) -> Applied {
        match a.status {
            AcctStatus::AccountingOn | AcctStatus::AccountingOff => {
                let keys: Vec<Key> = self.nas_keys(a.nas);
                for k in &keys {
                    self.end(k);
                }
                return Applied::NasReset(keys.len());
            }
            AcctStatus::Start | AcctStatus::InterimUpdate | AcctStatus::Stop => {}
            AcctStatus::Unknown(_) => return Applied::Ignored,
        }
        let Some(sid) = a.session_id.clone() else { return Applied::Ignored };
        let key = (a.nas, sid.clone());
        if a.status == AcctStatus::Stop {
            return if self.end(&key).is_some() { Applied::Stopped } else { Applied::Ignored };
        }
        let id = SessionId {
            acct_session_id: Some(sid),
            user_name: a.user_name.clone(),
            calling_station_id: a.calling_station_id.clone(),
            nas_ip: a.nas_ip,
            nas_port: a.nas_port,
            nas_port_id: a.nas_port_id.clone(),
        };
        let mac = a.calling_station_id.as_deref().and_then(Mac::parse);
        if let Some(s) = self.sessions.get(&key) {
            // The NAS may name the session differently in an update: reindex.
            let (old_mac, old_user) = (s.mac, s.id.user_name.clone());
            self.unindex(&key, old_mac, old_user.as_deref());
            if let Some(s) = self.sessions.get_mut(&key) {
                s.client = Arc::clone(&a.client);
                s.id = id;
                s.mac = mac;
            }
            self.index(&key, mac, a.user_name.as_deref());
            return Applied::Updated;
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return Applied::Full;
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let session = Session {
            client: Arc::clone(&a.client),
            nas: a.nas,
            id,
            mac,
            applied: access,
            profile: 0,
            serial,
            target: None,
            failures: 0,
            retry: None,
        };
        self.index(&key, mac, a.user_name.as_deref());
        self.by_serial.insert(serial, key.clone());
        self.sessions.insert(key, session);
        self.counts[access as usize] += 1;
        Applied::Started
    }

    /// The sessions of a device known by these MACs and user names, in a
    /// stable order.
    pub fn find(&self, macs: &[Mac], users: &[&str]) -> Vec<Key> {
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        for m in macs {
            keys.extend(self.by_mac.get(m).into_iter().flatten().cloned());
        }
        for u in users {
            keys.extend(self.by_user.get(*u).into_iter().flatten().cloned());
        }
        keys.into_iter().collect()
    }

    pub fn get(&self, key: &Key) -> Option<&Session> {
        self.sessions.get(key)
    }

    /// Up to `n` keys after `cursor` (from the start when `None`), in key
    /// order: a sweep walks the table in slices this way.
    pub fn keys_after(&self, cursor: Option<&Key>, n: usize) -> Vec<Key> {
        self.after(cursor).take(n).map(|(k, _)| k.clone()).collect()
    }

    /// The sessions after `cursor`, in key order, to be read in place (a
    /// sweep reads a slice in one ordered walk, and looks a session up
    /// again only where something is to be done).
    pub fn after(&self, cursor: Option<&Key>) -> impl Iterator<Item = (&Key, &Session)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = cursor.map_or(Unbounded, Excluded);
        self.sessions.range((from, Unbounded))
    }

    /// Records the access the NAS applied (a journal replay).
    pub fn set_applied(&mut self, key: &Key, access: Access) {
        if let Some(s) = self.sessions.get_mut(key) {
            self.counts[s.applied as usize] -= 1;
            self.counts[access as usize] += 1;
            s.applied = access;
        }
    }

    /// Forgets a session (Stop, Disconnect-ACK, NAS reset).
    pub fn end(&mut self, key: &Key) -> Option<Session> {
        let s = self.sessions.remove(key)?;
        self.counts[s.applied as usize] -= 1;
        self.unindex(key, s.mac, s.id.user_name.as_deref());
        self.by_serial.remove(&s.serial);
        if let Some((at, _, _)) = s.retry {
            self.retries.remove(&(at, s.serial));
        }
        Some(s)
    }

    /// Reconciles one session against `desired`: returns its serial when a
    /// request for `desired` must go out now (and marks it in flight), or
    /// `None` when the session already has it, a request is in flight (its
    /// outcome reconciles again), or a retry for the same access is not due.
    pub fn reconcile(&mut self, key: &Key, desired: Access, profile: u64, now: Instant) -> Option<u64> {
        let s = self.sessions.get_mut(key)?;
        if s.target.is_some() {
            return None;
        }
        if let Some((at, wanted, placed)) = s.retry {
            if (wanted, placed) == (desired, profile) && at > now {
                return None;
            }
            self.retries.remove(&(at, s.serial));
            s.retry = None;
        }
        if (desired, profile) == (s.applied, s.profile) {
            s.failures = 0;
            return None;
        }
        s.target = Some((desired, profile));
        Some(s.serial)
    }

    /// The group placement a new session's Access-Accept gave it.
    pub fn place(&mut self, key: &Key, profile: u64) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.profile = profile;
        }
    }

    /// The outcome of the request tagged `serial`. A session that ended
    /// meanwhile is not found, and nothing changes.
    pub fn settle(&mut self, serial: u64, outcome: Outcome, now: Instant) -> Option<Settled> {
        let key = self.by_serial.get(&serial)?.clone();
        let s = self.sessions.get_mut(&key)?;
        let (target, profile) = s.target.take()?;
        match outcome {
            Outcome::Applied => {
                self.counts[s.applied as usize] -= 1;
                self.counts[target as usize] += 1;
                s.applied = target;
                s.profile = profile;
                s.failures = 0;
                Some(Settled::Applied(key, target))
            }
            Outcome::Ended => {
                self.end(&key);
                Some(Settled::Ended(key))
            }
            Outcome::Failed => {
                s.failures = s.failures.saturating_add(1);
                let wait = FIRST_RETRY.saturating_mul(1 << (s.failures - 1).min(16)).min(MAX_RETRY);
                let at = now + wait;
                s.retry = Some((at, target, profile));
                self.retries.insert((at, serial));
                Some(Settled::Retry(key, at))
            }
        }
    }

    /// When the next retry is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Sessions whose retry is due by `now`, to be reconciled again.
    pub fn due(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        while let Some(&(at, serial)) = self.retries.first()
            && at <= now
        {
            self.retries.pop_first();
            if let Some(key) = self.by_serial.get(&serial) {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.retry = None;
                }
                keys.push(key.clone());
            }
        }
        keys
    }

    fn nas_keys(&self, nas: IpAddr) -> Vec<Key> {
        self.sessions.range((nas, String::new())..).take_while(|(k, _)| k.0 == nas).map(|(k, _)| k.clone()).collect()
    }

    fn index(&mut self, key: &Key, mac: Option<Mac>, user: Option<&str>) {
        if let Some(m) = mac {
            self.by_mac.entry(m).or_default().insert(key.clone());
        }
        if let Some(u) = user {
            self.by_user.entry(u.to_string()).or_default().insert(key.clone());
        }
    }

    fn unindex(&mut self, key: &Key, mac: Option<Mac>, user: Option<&str>) {
        if let Some(m) = mac
            && let Some(set) = self.by_mac.get_mut(&m)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_mac.remove(&m);
            }
        }
        if let Some(u) = user
            && let Some(set) = self.by_user.get_mut(u)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_user.remove(u);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;

    fn acct(status: AcctStatus, sid: &str, nas: &str, mac: &str) -> AccountingRequest {
        AccountingRequest {
            id: crate::radius::server::DecisionId::none(),
            client: "lab".into(),
            nas: nas.parse().unwrap(),
            status,
            session_id: Some(sid.into()),
            user_name: Some("alice".into()),
            calling_station_id: Some(mac.into()),
            nas_ip: None,
            nas_port: Some(7),
            nas_port_id: None,
            framed_ip: None,
        }
    }

    #[test]
    fn start_interim_stop_and_nas_reset() {
        let mut s = Sessions::default();
        let mac = Mac::parse("aa:bb:cc:00:00:01").unwrap();
        assert_eq!(
            s.apply(&acct(AcctStatus::Start, "s1", "127.0.0.2", "AA-BB-CC-00-00-01"), Access::Full),
            Applied::Started
        );
        assert_eq!(
            s.apply(&acct(AcctStatus::Start, "s2", "127.0.0.3", "aabb.cc00.0001"), Access::Full),
            Applied::Started
        );
        assert_eq!(
            s.apply(&acct(AcctStatus::InterimUpdate, "s1", "127.0.0.2", "AA-BB-CC-00-00-01"), Access::Quarantine),
            Applied::Updated
        );
        assert_eq!(s.find(&[mac], &[]).len(), 2);
        assert_eq!(s.find(&[], &["alice"]).len(), 2);
        let k = s.find(&[mac], &[])[0].clone();
        assert_eq!(s.get(&k).unwrap().applied, Access::Full, "an update keeps the session's access");
        assert_eq!(s.apply(&acct(AcctStatus::Stop, "s1", "127.0.0.2", "x"), Access::Full), Applied::Stopped);
        assert_eq!(s.apply(&acct(AcctStatus::AccountingOn, "-", "127.0.0.3", "x"), Access::Full), Applied::NasReset(1));
        assert!(s.is_empty());
        assert_eq!(s.counts(), [0, 0, 0]);
        assert!(s.find(&[mac], &["alice"]).is_empty(), "indexes emptied too");
    }

    #[test]
    fn an_update_that_renames_the_session_moves_its_indexes() {
        let mut s = Sessions::default();
        s.apply(&acct(AcctStatus::Start, "s1", "127.0.0.2", "aa:bb:cc:00:00:01"), Access::Full);
        let mut update = acct(AcctStatus::InterimUpdate, "s1", "127.0.0.2", "aa:bb:cc:00:00:02");
        update.user_name = Some("bob".into());
        assert_eq!(s.apply(&update, Access::Full), Applied::Updated);
        let old = Mac::parse("aa:bb:cc:00:00:01").unwrap();
        let new = Mac::parse("aa:bb:cc:00:00:02").unwrap();
        assert!(s.find(&[old], &["alice"]).is_empty());
        assert_eq!(s.find(&[new], &["bob"]).len(), 1);
    }

    /// Reconciliation: one request in flight at a time, applied only on
    /// ACK, retried with doubling backoff on failure, a retry for another
    /// access not held back, a Disconnect-ACK ending the record.
    #[test]
    fn reconcile_settle_and_retry() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        s.apply(&acct(AcctStatus::Start, "s1", "127.0.0.2", "aa:bb:cc:00:00:01"), Access::Quarantine);
        let key: Key = ("127.0.0.2".parse().unwrap(), "s1".into());
        assert_eq!(s.reconcile(&key, Access::Quarantine, 0, t0), None, "already applied");
        let serial = s.reconcile(&key, Access::Full, 0, t0).expect("a request");
        assert_eq!(s.reconcile(&key, Access::Full, 0, t0), None, "one in flight at a time");
        assert_eq!(s.reconcile(&key, Access::Deny, 0, t0), None, "even for another access");

        // NAKed: due again after 1 s, then 2 s, for the same access.
        assert!(matches!(s.settle(serial, Outcome::Failed, t0), Some(Settled::Retry(_, _))));
        assert_eq!(s.get(&key).unwrap().applied, Access::Quarantine, "a failure applies nothing");
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(s.reconcile(&key, Access::Full, 0, t0), None, "not due yet");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.due(t1), vec![key.clone()]);
        let serial = s.reconcile(&key, Access::Full, 0, t1).unwrap();
        s.settle(serial, Outcome::Failed, t1);
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(2)), "backoff doubles");

        // The verdict moved meanwhile: the new access goes at once.
        let serial = s.reconcile(&key, Access::Deny, 0, t1).expect("a different access is not held back");
        assert_eq!(s.poll_timeout(), None, "the old retry is gone");
        assert_eq!(s.settle(serial, Outcome::Applied, t1), Some(Settled::Applied(key.clone(), Access::Deny)));
        assert_eq!(s.get(&key).unwrap().applied, Access::Deny);
        assert_eq!(s.counts(), [0, 0, 1]);

        // A Disconnect-ACK ends the record; a late outcome finds nothing.
        let serial = s.reconcile(&key, Access::Full, 0, t1).unwrap();
        assert_eq!(s.settle(serial, Outcome::Ended, t1), Some(Settled::Ended(key.clone())));
        assert!(s.is_empty());
        assert_eq!(s.settle(serial, Outcome::Applied, t1), None);
    }

    #[test]
    fn backoff_is_capped() {
        let mut s = Sessions::default();
        let mut t = Instant::now();
        s.apply(&acct(AcctStatus::Start, "s1", "127.0.0.2", "x"), Access::Full);
        let key: Key = ("127.0.0.2".parse().unwrap(), "s1".into());
        for _ in 0..40 {
            let serial = s.reconcile(&key, Access::Quarantine, 0, t).unwrap();
            s.settle(serial, Outcome::Failed, t);
            let next = s.poll_timeout().unwrap();
            assert!(next - t <= MAX_RETRY);
            t = next;
            assert_eq!(s.due(t).len(), 1);
        }
    }

    #[test]
    fn keys_after_walks_in_slices() {
        let mut s = Sessions::default();
        for i in 0..10 {
            s.apply(&acct(AcctStatus::Start, &format!("s{i}"), "127.0.0.2", "x"), Access::Full);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<Key> = None;
        loop {
            let slice = s.keys_after(cursor.as_ref(), 3);
            let Some(last) = slice.last().cloned() else { break };
            seen.extend(slice);
            cursor = Some(last);
        }
        assert_eq!(seen.len(), 10);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }
}
