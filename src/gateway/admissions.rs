//! What each Access-Accept (or Reject) gave, remembered for a while so that
//! the Accounting-Start that follows records the access the NAS applied.
//!
//! Every auth shard writes its own memory (a lock nobody else takes on the
//! request path); the accounting task reads them all when a session starts,
//! and the newest admission wins.

use crate::compliance::Access;
use crate::mac::Mac;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admissions remembered per shard, and for how long.
const ADMITTED_CAP: usize = 262_144;
pub const ADMITTED_TTL: Duration = Duration::from_secs(600);

/// An access, and when it was given.
type Given = (Access, Instant);

/// One memory per auth shard.
pub struct Admissions {
    shards: Vec<Mutex<Admitted>>,
}

impl Admissions {
    pub fn new(shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| Mutex::default()).collect() }
    }

    /// Shard `shard` answered a device the NAS names by `mac` and `user`.
    pub fn remember(&self, shard: usize, mac: Option<&str>, user: Option<&str>, access: Access, now: Instant) {
        let Some(memory) = self.shards.get(shard) else { return };
        let mac = mac.and_then(Mac::parse);
        // MAB names the device by its MAC twice (User-Name and
        // Calling-Station-Id): one entry, by MAC, is enough (see `recall`).
        let user = user.filter(|u| mac.is_none() || Mac::parse(u) != mac);
        // A poisoned lock only means a panic elsewhere mid-insert: the maps
        // are still whole, so go on with them.
        memory.lock().unwrap_or_else(|e| e.into_inner()).remember(mac, user, access, now);
    }

    /// The access the newest admission of this device gave, if recent: a
    /// MAC match before a user match (a user may sit on several devices).
    pub fn recall(&self, mac: Option<Mac>, user: Option<&str>, now: Instant) -> Option<Access> {
        // A User-Name that is a MAC was remembered by MAC.
        let mac = mac.or_else(|| user.and_then(Mac::parse));
        let (mut by_mac, mut by_user): (Option<Given>, Option<Given>) = (None, None);
        for memory in &self.shards {
            let (m, u) = memory.lock().unwrap_or_else(|e| e.into_inner()).recall_at(mac, user, now);
            by_mac = newest(by_mac, m);
            by_user = newest(by_user, u);
        }
        by_mac.or(by_user).map(|(a, _)| a)
    }
}

fn newest(a: Option<Given>, b: Option<Given>) -> Option<Given> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.1 > x.1 { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// Access given at admission, by the identities the NAS names the device
/// by, for a bounded time and count (oldest forgotten first).
#[derive(Default)]
pub struct Admitted {
    by_mac: HashMap<Mac, (Access, Instant), foldhash::fast::RandomState>,
    by_user: HashMap<Box<str>, (Access, Instant), foldhash::fast::RandomState>,
    order: VecDeque<(Option<Mac>, Option<Box<str>>, Instant)>,
}

impl Admitted {
    pub fn remember(&mut self, mac: Option<Mac>, user: Option<&str>, access: Access, now: Instant) {
        if mac.is_none() && user.is_none() {
            return;
        }
        while self.order.len() >= ADMITTED_CAP
            || self.order.front().is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > ADMITTED_TTL)
        {
            let Some((m, u, at)) = self.order.pop_front() else { break };
            // Only if not refreshed since.
            if let Some(m) = m
                && self.by_mac.get(&m).is_some_and(|(_, t)| *t == at)
            {
                self.by_mac.remove(&m);
            }
            if let Some(u) = u
                && self.by_user.get(&u).is_some_and(|(_, t)| *t == at)
            {
                self.by_user.remove(&u);
            }
        }
        if let Some(m) = mac {
            self.by_mac.insert(m, (access, now));
        }
        let user: Option<Box<str>> = user.map(Into::into);
        if let Some(u) = &user {
            self.by_user.insert(u.clone(), (access, now));
        }
        self.order.push_back((mac, user, now));
    }

    #[cfg(test)]
    pub fn recall(&self, mac: Option<Mac>, user: Option<&str>, now: Instant) -> Option<Access> {
        let (by_mac, by_user) = self.recall_at(mac, user, now);
        by_mac.or(by_user).map(|(a, _)| a)
    }

    /// The access remembered for a MAC or a user, with when it was given: by MAC
    /// first, then by user.
    fn recall_at(&self, mac: Option<Mac>, user: Option<&str>, now: Instant) -> (Option<Given>, Option<Given>) {
        let fresh = |e: &Given| (now.saturating_duration_since(e.1) <= ADMITTED_TTL).then_some(*e);
        (mac.and_then(|m| self.by_mac.get(&m).and_then(fresh)), user.and_then(|u| self.by_user.get(u).and_then(fresh)))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests seed simulated time from the real clock
mod tests {
    use super::*;

    #[test]
    fn admissions_are_recalled_by_mac_then_user_and_forgotten() {
        let mut a = Admitted::default();
        let t0 = Instant::now();
        let mac = Mac::parse("aa:bb:cc:00:00:01");
        a.remember(mac, Some("alice"), Access::Quarantine, t0);
        assert_eq!(a.recall(mac, None, t0), Some(Access::Quarantine));
        assert_eq!(a.recall(None, Some("alice"), t0), Some(Access::Quarantine));
        assert_eq!(a.recall(Mac::parse("aa:bb:cc:00:00:02"), Some("bob"), t0), None);
        assert_eq!(a.recall(mac, None, t0 + ADMITTED_TTL + Duration::from_secs(1)), None, "too old");
        // Refreshed: the newer admission wins, and eviction of the older
        // entry does not take the newer one with it.
        let t1 = t0 + Duration::from_secs(1);
        a.remember(mac, None, Access::Full, t1);
        assert_eq!(a.recall(mac, None, t1), Some(Access::Full));
        a.remember(None, Some("carol"), Access::Full, t0 + ADMITTED_TTL + Duration::from_millis(500));
        assert_eq!(a.recall(mac, None, t1), Some(Access::Full));
        assert_eq!(a.recall(None, Some("alice"), t1), None, "evicted once past its time");
    }

    #[test]
    fn the_newest_admission_on_any_shard_wins() {
        let a = Admissions::new(3);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let mac = "aa:bb:cc:00:00:01";
        a.remember(2, Some(mac), None, Access::Full, t0);
        a.remember(0, Some(mac), None, Access::Quarantine, t1);
        assert_eq!(a.recall(Mac::parse(mac), None, t1), Some(Access::Quarantine));
        // A MAC match on one shard comes before a user match on another.
        a.remember(1, None, Some("alice"), Access::Deny, t1 + Duration::from_millis(1));
        assert_eq!(a.recall(Mac::parse(mac), Some("alice"), t1), Some(Access::Quarantine));
        assert_eq!(a.recall(None, Some("alice"), t1), Some(Access::Deny));
        a.remember(7, Some(mac), None, Access::Full, t1); // no such shard: ignored
        // MAB: the MAC as User-Name too is remembered once, by MAC, and
        // found by either name.
        let other = "aa:bb:cc:00:00:07";
        a.remember(0, Some(other), Some("AABBCC000007"), Access::Quarantine, t1);
        assert_eq!(a.recall(Mac::parse(other), None, t1), Some(Access::Quarantine));
        assert_eq!(a.recall(None, Some("aabbcc000007"), t1), Some(Access::Quarantine));
        let memory = a.shards[0].lock().unwrap();
        assert!(memory.by_user.is_empty(), "no second entry for the same MAC");
    }
}
