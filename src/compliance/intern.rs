//! Interning of report values that repeat across a fleet (OS names and
//! versions, patch levels, SSIDs, app lists, groups, port lists), so a
//! million reports hold one copy of each distinct value.
//!
//! Owned by the engine, the single writer: plain hash sets, no lock. The
//! pool is bounded: when full it drops values no report uses any more, and
//! past its cap new values are simply not interned (still correct, only
//! less compact), so odd values from devices cannot grow it without bound.

use crate::telemetry::Report;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

type Set<T> = HashSet<T, foldhash::fast::RandomState>;

/// Distinct values kept per kind before a sweep.
const CAP: usize = 100_000;

#[derive(Default)]
pub struct Interner {
    strs: Set<Arc<str>>,
    lists: Set<Arc<[Arc<str>]>>,
    ports: Set<Arc<[u16]>>,
}

impl Interner {
    /// Replaces the fleet-wide values of `r` with shared copies.
    pub fn report(&mut self, r: &mut Report) {
        for s in [&mut r.os, &mut r.os_version, &mut r.security_patch, &mut r.wifi_ssid, &mut r.agent_version]
            .into_iter()
            .flatten()
        {
            one(&mut self.strs, s);
        }
        for l in [&mut r.apps_installed, &mut r.apps_running, &mut r.groups].into_iter().flatten() {
            if let Some(shared) = self.lists.get(&**l) {
                *l = Arc::clone(shared);
            } else {
                // A new list: share its elements, then the list itself.
                let mut items: Vec<Arc<str>> = l.to_vec();
                for item in &mut items {
                    one(&mut self.strs, item);
                }
                *l = items.into();
                one(&mut self.lists, l);
            }
        }
        if let Some(p) = &mut r.open_ports {
            one(&mut self.ports, p);
        }
    }
}

impl Interner {
    /// Takes in the values `other` interned (a restore's reader thread).
    pub fn absorb(&mut self, other: Interner) {
        if self.strs.is_empty() && self.lists.is_empty() && self.ports.is_empty() {
            *self = other;
            return;
        }
        // A union: the order values are taken in does not matter.
        #[allow(clippy::disallowed_methods)]
        {
            for v in other.strs {
                self.strs.insert(v);
            }
            for v in other.lists {
                self.lists.insert(v);
            }
            for v in other.ports {
                self.ports.insert(v);
            }
        }
    }
}

fn one<T: ?Sized + Hash + Eq>(set: &mut Set<Arc<T>>, value: &mut Arc<T>) {
    if let Some(shared) = set.get(value) {
        *value = Arc::clone(shared);
        return;
    }
    if set.len() >= CAP {
        // Only values some report still holds are worth keeping.
        set.retain(|v| Arc::strong_count(v) > 1);
        if set.len() >= CAP / 2 {
            return;
        }
    }
    set.insert(Arc::clone(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(os: &str, apps: &[&str]) -> Report {
        Report {
            os: Some(os.into()),
            apps_running: Some(apps.iter().map(|a| Arc::<str>::from(*a)).collect()),
            open_ports: Some(Arc::from(&[443u16][..])),
            ..Report::default()
        }
    }

    #[test]
    fn equal_values_share_one_allocation() {
        let mut i = Interner::default();
        let (mut a, mut b) = (report("android", &["pos"]), report("android", &["pos"]));
        i.report(&mut a);
        i.report(&mut b);
        assert!(Arc::ptr_eq(a.os.as_ref().unwrap(), b.os.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.apps_running.as_ref().unwrap(), b.apps_running.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.open_ports.as_ref().unwrap(), b.open_ports.as_ref().unwrap()));
        assert_eq!(a, b);
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut i = Interner::default();
        let mut kept = Vec::new();
        for n in 0..(CAP + 10) {
            let mut r = report(&format!("os-{n}"), &[]);
            i.report(&mut r);
            kept.push(r); // every value still in use: the sweep frees nothing
        }
        assert!(i.strs.len() <= CAP);
        drop(kept);
        let mut r = report("fresh", &[]);
        i.report(&mut r);
        assert!(i.strs.len() < CAP / 2, "unused values are swept when the pool is full");
    }
}
