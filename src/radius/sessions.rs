//! Active sessions, from accounting: what a CoA or Disconnect must name.
//! Found by MAC (Calling-Station-Id) and by user name, so a verdict change
//! reaches every session of a device whatever identity the NAS reported.

use super::coa::SessionId;
use super::dictionary::AcctStatus;
use super::server::AccountingRequest;
use crate::mac::Mac;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Sessions kept at most; past it new ones are not tracked (counted by the caller).
pub const MAX_SESSIONS: usize = 2_000_000;

/// The access a session was last given, to tell when a change needs a CoA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Normal,
    Quarantine,
    Reject,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub client: Arc<str>,
    pub nas: IpAddr,
    pub id: SessionId,
    pub mac: Option<Mac>,
    pub access: Access,
}

type Key = (IpAddr, String);

#[derive(Default)]
pub struct Sessions {
    sessions: HashMap<Key, Session>,
    by_mac: HashMap<Mac, BTreeSet<Key>>,
    by_user: HashMap<String, BTreeSet<Key>>,
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

impl Sessions {
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Applies one accounting record; `access` is what a new session gets.
    pub fn apply(&mut self, a: &AccountingRequest, access: Access) -> Applied {
        match a.status {
            AcctStatus::AccountingOn | AcctStatus::AccountingOff => {
                let keys: Vec<Key> = self.sessions.keys().filter(|k| k.0 == a.nas).cloned().collect();
                for k in &keys {
                    self.remove(k);
                }
                return Applied::NasReset(keys.len());
            }
            AcctStatus::Start | AcctStatus::InterimUpdate | AcctStatus::Stop => {}
            AcctStatus::Unknown(_) => return Applied::Ignored,
        }
        let Some(sid) = a.session_id.clone() else { return Applied::Ignored };
        let key = (a.nas, sid.clone());
        if a.status == AcctStatus::Stop {
            return if self.remove(&key).is_some() { Applied::Stopped } else { Applied::Ignored };
        }
        let existed = self.sessions.contains_key(&key);
        if !existed && self.sessions.len() >= MAX_SESSIONS {
            return Applied::Full;
        }
        let access = self.sessions.get(&key).map_or(access, |s| s.access);
        self.remove(&key);
        let mac = a.calling_station_id.as_deref().and_then(Mac::parse);
        let session = Session {
            client: Arc::clone(&a.client),
            nas: a.nas,
            id: SessionId {
                acct_session_id: Some(sid),
                user_name: a.user_name.clone(),
                calling_station_id: a.calling_station_id.clone(),
                nas_ip: a.nas_ip,
                nas_port: a.nas_port,
                nas_port_id: a.nas_port_id.clone(),
            },
            mac,
            access,
        };
        if let Some(m) = mac {
            self.by_mac.entry(m).or_default().insert(key.clone());
        }
        if let Some(u) = &a.user_name {
            self.by_user.entry(u.clone()).or_default().insert(key.clone());
        }
        self.sessions.insert(key, session);
        if existed { Applied::Updated } else { Applied::Started }
    }

    /// The sessions of a device known by these MACs and user names, in a
    /// stable order.
    pub fn find(&self, macs: &[Mac], users: &[&str]) -> Vec<(IpAddr, String)> {
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        for m in macs {
            keys.extend(self.by_mac.get(m).into_iter().flatten().cloned());
        }
        for u in users {
            keys.extend(self.by_user.get(*u).into_iter().flatten().cloned());
        }
        keys.into_iter().collect()
    }

    pub fn get_mut(&mut self, key: &(IpAddr, String)) -> Option<&mut Session> {
        self.sessions.get_mut(key)
    }

    fn remove(&mut self, key: &Key) -> Option<Session> {
        let s = self.sessions.remove(key)?;
        if let Some(m) = s.mac
            && let Some(set) = self.by_mac.get_mut(&m)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_mac.remove(&m);
            }
        }
        if let Some(u) = &s.id.user_name
            && let Some(set) = self.by_user.get_mut(u)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_user.remove(u);
            }
        }
        Some(s)
    }
}

#[cfg(test)]
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
            s.apply(&acct(AcctStatus::Start, "s1", "127.0.0.2", "AA-BB-CC-00-00-01"), Access::Normal),
            Applied::Started
        );
        assert_eq!(
            s.apply(&acct(AcctStatus::Start, "s2", "127.0.0.3", "aabb.cc00.0001"), Access::Normal),
            Applied::Started
        );
        assert_eq!(
            s.apply(&acct(AcctStatus::InterimUpdate, "s1", "127.0.0.2", "AA-BB-CC-00-00-01"), Access::Quarantine),
            Applied::Updated
        );
        assert_eq!(s.find(&[mac], &[]).len(), 2);
        assert_eq!(s.find(&[], &["alice"]).len(), 2);
        let k = s.find(&[mac], &[])[0].clone();
        assert_eq!(s.get_mut(&k).unwrap().access, Access::Normal, "an update keeps the session's access");
        assert_eq!(s.apply(&acct(AcctStatus::Stop, "s1", "127.0.0.2", "x"), Access::Normal), Applied::Stopped);
        assert_eq!(
            s.apply(&acct(AcctStatus::AccountingOn, "-", "127.0.0.3", "x"), Access::Normal),
            Applied::NasReset(1)
        );
        assert!(s.is_empty());
        assert!(s.find(&[mac], &["alice"]).is_empty(), "indexes emptied too");
    }
}
