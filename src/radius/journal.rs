//! The accounting journal: `state_dir/accounting.jsonl`, one JSON record a
//! line, replayed at start to rebuild the session table.
//!
//! Three kinds of record: an accounting request as the NAS sent it (with
//! the access its session was admitted with), the access a NAS applied
//! after an acknowledged CoA, and the end of a session after an
//! acknowledged Disconnect. Replay is level-triggered: what the journal
//! says each session has is reconciled against the verdicts afterwards.

use super::dictionary::AcctStatus;
use super::server::{AccountingRequest, DecisionId};
use super::sessions::{Applied, Key, Sessions};
use crate::compliance::Access;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

const FILE: &str = "accounting.jsonl";

/// What a line records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An Accounting-Request (lines written before kinds existed are these).
    #[default]
    Accounting,
    /// A NAS acknowledged a CoA: the session has `access` now.
    Applied,
    /// A NAS acknowledged a Disconnect: the session is gone.
    Ended,
}

/// Acct-Status-Type as journalled (the names match what earlier versions
/// wrote, so their journals still replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Start,
    Stop,
    InterimUpdate,
    AccountingOn,
    AccountingOff,
}

impl Status {
    fn of(s: AcctStatus) -> Option<Self> {
        Some(match s {
            AcctStatus::Start => Status::Start,
            AcctStatus::Stop => Status::Stop,
            AcctStatus::InterimUpdate => Status::InterimUpdate,
            AcctStatus::AccountingOn => Status::AccountingOn,
            AcctStatus::AccountingOff => Status::AccountingOff,
            AcctStatus::Unknown(_) => return None,
        })
    }

    fn wire(self) -> AcctStatus {
        match self {
            Status::Start => AcctStatus::Start,
            Status::Stop => AcctStatus::Stop,
            Status::InterimUpdate => AcctStatus::InterimUpdate,
            Status::AccountingOn => AcctStatus::AccountingOn,
            Status::AccountingOff => AcctStatus::AccountingOff,
        }
    }
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub record: Kind,
    /// When it was written (RFC 3339), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    pub nas: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calling_station_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nas_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nas_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nas_port_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framed_ip: Option<Ipv4Addr>,
    /// The access the session has: at admission (accounting) or after a
    /// CoA (applied). Absent in journals from before it was recorded,
    /// which replay as `full`, as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

impl Record {
    /// An accounting request, its session admitted with `access`.
    pub fn accounting(a: &AccountingRequest, access: Access, at: String) -> Self {
        Self {
            record: Kind::Accounting,
            at: Some(at),
            client: a.client.to_string(),
            nas: a.nas,
            status: Status::of(a.status),
            session_id: a.session_id.clone(),
            user_name: a.user_name.clone(),
            calling_station_id: a.calling_station_id.clone(),
            nas_ip: a.nas_ip,
            nas_port: a.nas_port,
            nas_port_id: a.nas_port_id.clone(),
            framed_ip: a.framed_ip,
            access: Some(access),
        }
    }

    fn about(kind: Kind, key: &Key, access: Option<Access>, at: String) -> Self {
        Self {
            record: kind,
            at: Some(at),
            client: String::new(),
            nas: key.0,
            status: None,
            session_id: Some(key.1.clone()),
            user_name: None,
            calling_station_id: None,
            nas_ip: None,
            nas_port: None,
            nas_port_id: None,
            framed_ip: None,
            access,
        }
    }

    /// A NAS acknowledged that session `key` has `access`.
    pub fn applied(key: &Key, access: Access, at: String) -> Self {
        Self::about(Kind::Applied, key, Some(access), at)
    }

    /// A NAS acknowledged that session `key` was disconnected.
    pub fn ended(key: &Key, at: String) -> Self {
        Self::about(Kind::Ended, key, None, at)
    }

    /// Applies this record to `sessions`; false when it did nothing.
    pub fn replay(&self, sessions: &mut Sessions) -> bool {
        let key = || self.session_id.clone().map(|sid| (self.nas, sid));
        match self.record {
            Kind::Accounting => {
                let Some(status) = self.status else { return false };
                let request = AccountingRequest {
                    id: DecisionId::none(),
                    client: self.client.as_str().into(),
                    nas: self.nas,
                    status: status.wire(),
                    session_id: self.session_id.clone(),
                    user_name: self.user_name.clone(),
                    calling_station_id: self.calling_station_id.clone(),
                    nas_ip: self.nas_ip,
                    nas_port: self.nas_port,
                    nas_port_id: self.nas_port_id.clone(),
                    framed_ip: self.framed_ip,
                };
                sessions.apply(&request, self.access.unwrap_or(Access::Full)) != Applied::Ignored
            }
            Kind::Applied => match (key(), self.access) {
                (Some(k), Some(access)) if sessions.get(&k).is_some() => {
                    sessions.set_applied(&k, access);
                    true
                }
                _ => false,
            },
            Kind::Ended => key().and_then(|k| sessions.end(&k)).is_some(),
        }
    }
}

/// The journal file, appended to.
pub struct Journal {
    file: std::fs::File,
    path: PathBuf,
}

/// What a replay found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records that changed the session table.
    pub applied: usize,
    /// Lines that could not be read (torn, damaged): skipped.
    pub skipped: usize,
}

impl Journal {
    /// Opens (appending) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join(FILE);
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        // A crash mid-write leaves a torn last line. End it, so the next
        // record starts a line of its own: only the torn one is skipped at
        // replay, not the next acknowledged record with it.
        if ends_torn(&mut file)? {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line, in one write: a crash leaves at most
    /// that line torn, never two records run together. Not yet durable:
    /// see [`Journal::syncer`].
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// A handle that makes every record appended so far durable
    /// (`fdatasync`), for the shell's group commit: it acknowledges a batch
    /// of records once, after one sync, and the sync runs off the task.
    pub fn syncer(&self) -> std::io::Result<std::fs::File> {
        self.file.try_clone()
    }
}

/// Whether the file's last byte is not a newline (a torn last record).
fn ends_torn(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Rebuilds `sessions` from the journal in `state_dir`. Unreadable lines
/// (bad UTF-8 included) are skipped and counted, never fatal.
pub fn replay(state_dir: &Path, sessions: &mut Sessions) -> Replayed {
    replay_collecting(state_dir, sessions).0
}

/// [`replay`], also keeping each session's last accounting record.
fn replay_collecting(state_dir: &Path, sessions: &mut Sessions) -> (Replayed, HashMap<Key, Record>, usize) {
    let mut out = Replayed::default();
    let mut last: HashMap<Key, Record> = HashMap::new();
    let Ok(bytes) = std::fs::read(state_dir.join(FILE)) else { return (out, last, 0) };
    let mut lines = 0;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => {
                out.applied += usize::from(r.replay(sessions));
                if r.record == Kind::Accounting
                    && let Some(sid) = &r.session_id
                {
                    last.insert((r.nas, sid.clone()), r);
                }
            }
            Err(_) => out.skipped += 1,
        }
    }
    (out, last, lines)
}

/// [`replay`], then rewrites the journal with one line per live session
/// (its last accounting record, with the access it has now): sessions that
/// ended, and every superseded record, are dropped. Written to a temporary
/// file, synced and renamed over the journal, so a crash at any point
/// leaves either journal whole. Returns the replay and the lines kept; a
/// compaction that fails (a full disk) leaves the journal as it was and
/// the sessions replayed all the same: it must not keep RADIUS down.
pub fn replay_and_compact(state_dir: &Path, sessions: &mut Sessions) -> (Replayed, std::io::Result<usize>) {
    let (replayed, last, lines) = replay_collecting(state_dir, sessions);
    let compacted = compact(state_dir, sessions, last, lines);
    (replayed, compacted)
}

/// While running: rewrites the journal from the live sessions alone (one
/// Accounting-Start per session, with the access it has now), which replay
/// to the same sessions: a session keeps its client, NAS, id, MAC and
/// access, nothing else. Temporary file, sync, rename, directory sync: a
/// crash at any point leaves either journal whole. The caller reopens the
/// journal afterwards. Returns the lines written.
pub fn rewrite(state_dir: &Path, sessions: &Sessions) -> std::io::Result<usize> {
    let mut out = Vec::new();
    let mut kept = 0;
    for ((nas, sid), s) in sessions.after(None) {
        let record = Record {
            record: Kind::Accounting,
            at: None,
            client: s.client.to_string(),
            nas: *nas,
            status: Some(Status::Start),
            session_id: Some(sid.clone()),
            user_name: None,
            calling_station_id: s.mac.map(|m| m.to_string()),
            nas_ip: None,
            nas_port: None,
            nas_port_id: None,
            framed_ip: None,
            access: Some(s.applied),
        };
        serde_json::to_writer(&mut out, &record).map_err(std::io::Error::other)?;
        out.push(b'\n');
        kept += 1;
    }
    replace(state_dir, &out)?;
    Ok(kept)
}

/// Makes `lines` the journal: a temporary file, synced, renamed over it,
/// and the directory synced. A crash at any point leaves either one whole.
fn replace(state_dir: &Path, lines: &[u8]) -> std::io::Result<()> {
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(lines)?;
    file.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(FILE))?;
    std::fs::File::open(state_dir)?.sync_all()
}

fn compact(
    state_dir: &Path,
    sessions: &Sessions,
    mut last: HashMap<Key, Record>,
    lines: usize,
) -> std::io::Result<usize> {
    let mut out = Vec::new();
    let mut kept = 0;
    for (key, session) in sessions.after(None) {
        let Some(mut record) = last.remove(key) else { continue };
        record.access = Some(session.applied);
        serde_json::to_writer(&mut out, &record).map_err(std::io::Error::other)?;
        out.push(b'\n');
        kept += 1;
    }
    if kept == lines {
        return Ok(kept); // nothing to drop
    }
    replace(state_dir, &out)?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(sid: &str, access: Access) -> Record {
        let a = AccountingRequest {
            id: DecisionId::none(),
            client: "lab".into(),
            nas: "127.0.0.2".parse().unwrap(),
            status: AcctStatus::Start,
            session_id: Some(sid.into()),
            user_name: Some("alice".into()),
            calling_station_id: Some("aa:bb:cc:00:00:01".into()),
            nas_ip: Some("127.0.0.2".parse().unwrap()),
            nas_port: Some(7),
            nas_port_id: None,
            framed_ip: None,
        };
        Record::accounting(&a, access, "2026-12-03T10:00:00Z".into())
    }

    #[test]
    fn records_round_trip_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let k1: Key = ("127.0.0.2".parse().unwrap(), "s1".into());
        let k2: Key = ("127.0.0.2".parse().unwrap(), "s2".into());
        j.append(&start("s1", Access::Quarantine)).unwrap();
        j.append(&start("s2", Access::Full)).unwrap();
        j.append(&Record::applied(&k1, Access::Full, "t".into())).unwrap();
        j.append(&Record::ended(&k2, "t".into())).unwrap();
        let mut s = Sessions::default();
        assert_eq!(replay(dir.path(), &mut s), Replayed { applied: 4, skipped: 0 });
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(&k1).unwrap().applied, Access::Full, "the CoA's access, not the admission's");
    }

    #[test]
    fn compaction_keeps_one_line_per_live_session_with_its_access_now() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let k1: Key = ("127.0.0.2".parse().unwrap(), "s1".into());
        let k2: Key = ("127.0.0.2".parse().unwrap(), "s2".into());
        j.append(&start("s1", Access::Full)).unwrap();
        j.append(&start("s2", Access::Full)).unwrap();
        j.append(&start("s1", Access::Full)).unwrap();
        j.append(&Record::applied(&k1, Access::Quarantine, "t".into())).unwrap();
        j.append(&Record::ended(&k2, "t".into())).unwrap();
        drop(j);
        let mut before = Sessions::default();
        let kept = replay_and_compact(dir.path(), &mut before).1.unwrap();
        assert_eq!(kept, 1);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let mut after = Sessions::default();
        assert_eq!(replay(dir.path(), &mut after), Replayed { applied: 1, skipped: 0 });
        assert_eq!(after.len(), 1);
        assert_eq!(after.get(&k1).unwrap().applied, Access::Quarantine, "the access it has now");
        assert!(after.get(&k2).is_none(), "an ended session is dropped");
        // Appending after compaction goes on as before.
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&start("s3", Access::Full)).unwrap();
        let mut again = Sessions::default();
        replay(dir.path(), &mut again);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn a_rewrite_replays_to_the_same_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let mut live = Sessions::default();
        for (sid, access) in [("s1", Access::Full), ("s2", Access::Full), ("s3", Access::Quarantine)] {
            let mut r = start(sid, access);
            r.calling_station_id = Some("aa-bb-cc-00-00-01".into());
            j.append(&r).unwrap();
            r.replay(&mut live);
        }
        let k2: Key = ("127.0.0.2".parse().unwrap(), "s2".into());
        let k3: Key = ("127.0.0.2".parse().unwrap(), "s3".into());
        for r in [Record::ended(&k2, "t".into()), Record::applied(&k3, Access::Full, "t".into())] {
            j.append(&r).unwrap();
            r.replay(&mut live);
        }
        assert_eq!(rewrite(dir.path(), &live).unwrap(), 2);
        let mut after = Sessions::default();
        assert_eq!(replay(dir.path(), &mut after), Replayed { applied: 2, skipped: 0 });
        let view = |s: &Sessions| {
            s.after(None).map(|(k, s)| (k.clone(), s.client.clone(), s.mac, s.applied)).collect::<Vec<_>>()
        };
        assert_eq!(view(&after), view(&live));
    }

    #[test]
    fn earlier_journals_still_replay() {
        // A line as written before records had kinds and access.
        let old = r#"{"at":"2026-11-30T10:00:00Z","calling_station_id":"AA-BB-CC-00-00-01","client":"lab-switch","framed_ip":null,"nas":"127.0.0.1","nas_ip":"127.0.0.1","nas_port":7,"nas_port_id":null,"session_id":"sess-7","status":"Start","user_name":null}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), format!("{old}\n")).unwrap();
        let mut s = Sessions::default();
        assert_eq!(replay(dir.path(), &mut s).applied, 1);
        let k: Key = ("127.0.0.1".parse().unwrap(), "sess-7".into());
        assert_eq!(s.get(&k).unwrap().applied, Access::Full);
    }

    #[test]
    fn damage_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&start("s1", Access::Full)).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(good.as_bytes());
        bytes.extend_from_slice(b"\n{\"record\":\"accounting\",\"na\xff\xfe\n");
        bytes.extend_from_slice(&good.as_bytes()[..good.len() / 2]);
        std::fs::write(dir.path().join(FILE), bytes).unwrap();
        let mut s = Sessions::default();
        assert_eq!(replay(dir.path(), &mut s), Replayed { applied: 1, skipped: 2 });
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&start("s1", Access::Full)).unwrap();
        // A crash mid-write: the record was never acknowledged.
        std::fs::write(dir.path().join(FILE), &good.as_bytes()[..good.len() / 2]).unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&start("s2", Access::Quarantine)).unwrap();
        j.syncer().unwrap().sync_data().unwrap();
        drop(j);
        let mut s = Sessions::default();
        assert_eq!(replay(dir.path(), &mut s), Replayed { applied: 1, skipped: 1 });
        let k2: Key = ("127.0.0.2".parse().unwrap(), "s2".into());
        assert_eq!(s.get(&k2).unwrap().applied, Access::Quarantine, "the record after the torn one is whole");
        // Opening a whole journal adds nothing.
        let before = std::fs::read(dir.path().join(FILE)).unwrap();
        drop(Journal::open(dir.path()).unwrap());
        assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), before);
    }
}
