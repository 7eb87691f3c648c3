//! The audit trail's shell: the compliance task records events here (the
//! chain core builds each line); the lines ride with the batch's journal
//! records to the commit task's write stage, which writes them before it
//! tells the planes, and its sync stage makes them durable before the
//! batch's acknowledgements. So an action is never reported done before
//! the entry recording it is written.
//!
//! Files are `state_dir/audit/audit-N.jsonl`, one chain across them; a new
//! file starts past 64 MiB. At start the newest file's torn last line (a
//! crash mid-write) is cut off and the chain resumes from its last entry.

// A shell: it owns files.
#![allow(clippy::disallowed_methods)]

use crate::audit::Chain;
use crate::compliance::journal;
use crate::telemetry::UnixMillis;
use ring::signature::Ed25519KeyPair;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file past this size is followed by the next one.
const ROTATE_BYTES: u64 = 64 << 20;
/// A checkpoint after this many entries at the latest.
const CHECKPOINT_ENTRIES: u64 = 1000;

/// An entry from a task that does not own the trail (the enforcement
/// planes): the compliance task records it with its next batch.
#[derive(Debug)]
pub struct Foreign {
    pub at: UnixMillis,
    pub kind: &'static str,
    pub device: Option<String>,
    pub data: Value,
}

/// How many foreign entries may wait for the compliance task.
pub const FOREIGN_QUEUE: usize = 65_536;

/// The enforcement planes' handle on the trail. Never waits: a plane must
/// not slow down because the trail's owner is busy; an entry that finds
/// the queue full is counted (`warden_audit_dropped_total`) and logged.
#[derive(Clone, Debug)]
pub struct AuditSender {
    tx: tokio::sync::mpsc::Sender<Foreign>,
    dropped: prometheus::IntCounter,
}

impl AuditSender {
    pub fn new(tx: tokio::sync::mpsc::Sender<Foreign>, dropped: prometheus::IntCounter) -> Self {
        Self { tx, dropped }
    }

    pub fn record(&self, kind: &'static str, device: &str, data: Value) {
        let entry = Foreign { at: crate::gateway::mqtt::wall_now(), kind, device: Some(device.to_string()), data };
        if self.tx.try_send(entry).is_err() {
            self.dropped.inc();
            tracing::warn!(kind, device, "audit trail queue full: an enforcement entry was not recorded");
        }
    }
}

pub struct AuditTrail {
    dir: PathBuf,
    segment: u64,
    file: Arc<std::fs::File>,
    size: u64,
    chain: Chain,
    key: Option<Ed25519KeyPair>,
    every: UnixMillis,
    since_checkpoint: u64,
    last_checkpoint: UnixMillis,
    buf: Vec<u8>,
    entries: prometheus::IntCounter,
    /// How long whole files are kept.
    retain: UnixMillis,
}

impl AuditTrail {
    /// Opens (or starts) the trail in `dir`, resuming its chain.
    pub fn open(
        dir: &Path,
        key: Option<Ed25519KeyPair>,
        every: std::time::Duration,
        retain: std::time::Duration,
        entries: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = crate::audit::files(dir).with_context(|| format!("listing {}", dir.display()))?;
        let (segment, chain, size) = match files.last() {
            None => (1, Chain::default(), 0),
            Some((n, path)) => {
                let (last, good, damaged) = resume(path).with_context(|| format!("reading {}", path.display()))?;
                let len = std::fs::metadata(path)?.len();
                if good < len {
                    tracing::warn!(file = %path.display(), cut = len - good, "audit trail: a torn last line (a crash mid-write) cut off");
                    std::fs::OpenOptions::new().write(true).open(path)?.set_len(good)?;
                }
                if damaged > 0 {
                    // Not a crash (appends only tear the last line): kept as
                    // found, for `warden audit verify` to name.
                    tracing::error!(file = %path.display(), lines = damaged, "audit trail: damaged lines kept as they are; warden audit verify names them");
                }
                // A file just started (rotation, then a stop) holds nothing
                // yet: the chain goes on from the newest file that does.
                let mut chain = last;
                for (_, older) in files.iter().rev().skip(1) {
                    if chain.is_some() {
                        break;
                    }
                    chain = resume(older).with_context(|| format!("reading {}", older.display()))?.0;
                }
                (*n, chain.unwrap_or_default(), good)
            }
        };
        let file = open_segment(dir, segment)?;
        let mut trail = Self {
            dir: dir.to_path_buf(),
            segment,
            file: Arc::new(file),
            size,
            chain,
            key,
            every: UnixMillis::try_from(every.as_millis()).unwrap_or(UnixMillis::MAX),
            since_checkpoint: 0,
            last_checkpoint: 0,
            buf: Vec::new(),
            entries,
            retain: UnixMillis::try_from(retain.as_millis()).unwrap_or(UnixMillis::MAX),
        };
        trail.prune(crate::gateway::mqtt::wall_now());
        Ok(trail)
    }

    /// Removes the oldest files while their newest line is older than
    /// `audit.retain` (never the file being written), and records the
    /// removal with the first entry kept, which `warden audit verify`
    /// holds the trail's start to.
    fn prune(&mut self, now: UnixMillis) {
        let Ok(files) = crate::audit::files(&self.dir) else { return };
        let cutoff = now.saturating_sub(self.retain);
        let mut removed = Vec::new();
        for (n, path) in files.iter().filter(|(n, _)| *n < self.segment) {
            match newest_at(path) {
                Some(at) if at < cutoff => {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::error!(file = %path.display(), error = %e, "audit trail: an expired file could not be removed");
                        break;
                    }
                    removed.push(format!("audit-{n}.jsonl"));
                }
                _ => break,
            }
        }
        if removed.is_empty() {
            return;
        }
        let _ = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
        // The first entry left; none left: the pruning record is the first.
        let kept_from = crate::audit::files(&self.dir)
            .ok()
            .into_iter()
            .flatten()
            .find_map(|(_, p)| first_seq(&p))
            .unwrap_or(self.chain.seq + 1);
        tracing::info!(files = removed.len(), kept_from, "audit trail: files older than audit.retain removed");
        self.record(now, crate::audit::PRUNED, None, serde_json::json!({"files": removed, "kept_from": kept_from}));
    }

    /// Adds an entry (and a checkpoint when one is due).
    pub fn record(&mut self, at: UnixMillis, kind: &str, device: Option<&str>, data: Value) {
        let line = self.chain.append(at, kind, device, data);
        self.entries.inc();
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.since_checkpoint += 1;
        if self.since_checkpoint >= CHECKPOINT_ENTRIES || at.saturating_sub(self.last_checkpoint) >= self.every {
            self.checkpoint(at);
        }
    }

    fn checkpoint(&mut self, at: UnixMillis) {
        let line = self.chain.checkpoint(at, self.key.as_ref());
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.since_checkpoint = 0;
        self.last_checkpoint = at;
    }

    /// The last entry's sequence number.
    pub fn seq(&self) -> u64 {
        self.chain.seq
    }

    /// The lines recorded since the last call, for the commit task to
    /// write, and the sequence number of the last.
    pub fn take(&mut self) -> Option<(journal::Batch, u64)> {
        if self.buf.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.buf);
        self.size += bytes.len() as u64;
        let batch = journal::Batch { file: Arc::clone(&self.file), bytes };
        if self.size >= ROTATE_BYTES {
            match open_segment(&self.dir, self.segment + 1) {
                Ok(f) => {
                    self.segment += 1;
                    self.file = Arc::new(f);
                    self.size = 0;
                    // Its record goes with the next batch.
                    self.prune(crate::gateway::mqtt::wall_now());
                }
                Err(e) => tracing::error!(error = %e, "audit trail: could not start a new file; the current one grows"),
            }
        }
        Some((batch, self.chain.seq))
    }

    /// At a stop: a last checkpoint, handed over with the last batch (so it
    /// is written after every entry before it).
    pub fn stopping(&mut self, at: UnixMillis) {
        if self.chain.seq > 0 {
            self.checkpoint(at);
        }
    }
}

/// The time of a file's newest line (read from its last 64 KiB).
fn newest_at(path: &Path) -> Option<UnixMillis> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n').rev().find_map(|line| {
        let v: Value = serde_json::from_slice(line).ok()?;
        crate::telemetry::report::parse_rfc3339(v.get("at")?.as_str()?).ok()
    })
}

/// The sequence number of a file's first entry.
fn first_seq(path: &Path) -> Option<u64> {
    use std::io::BufRead as _;
    let f = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    f.split(b'\n')
        .map_while(Result::ok)
        .find_map(|line| serde_json::from_slice::<Value>(&line).ok()?.get("seq")?.as_u64())
}

fn open_segment(dir: &Path, n: u64) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().append(true).create(true).open(dir.join(format!("audit-{n}.jsonl")))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The chain at `path`'s last readable line (none: no readable line), the
/// end of its last complete line (what follows is a torn write), and how
/// many complete lines could not be read (damage, not a crash).
fn resume(path: &Path) -> std::io::Result<(Option<Chain>, u64, usize)> {
    let text = std::fs::read(path)?;
    let mut chain = None;
    let (mut good, mut at, mut damaged) = (0u64, 0usize, 0usize);
    for line in text.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        if !line.ends_with(b"\n") {
            break; // torn: the last line, cut by the caller
        }
        good = at as u64;
        let Ok(v) = serde_json::from_slice::<serde_json::Map<String, Value>>(line) else {
            damaged += 1;
            continue;
        };
        let (seq, head) = if let Some(seq) = v.get("checkpoint").and_then(Value::as_u64) {
            (seq, v.get("head"))
        } else {
            (v.get("seq").and_then(Value::as_u64).unwrap_or(0), v.get("hash"))
        };
        match head {
            Some(Value::String(h)) => chain = Some(Chain { seq, head: h.clone() }),
            _ => damaged += 1,
        }
    }
    Ok((chain, good, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: UnixMillis = 24 * 3600 * 1000;

    /// Files 1 and 2 hold entries from 30 days ago, file 3 recent ones.
    fn aged_trail(dir: &Path) {
        let now = crate::gateway::mqtt::wall_now();
        let mut chain = Chain::default();
        for (n, seqs, at) in [(1, 1..=3, now - 30 * DAY), (2, 4..=6, now - 29 * DAY), (3, 7..=8, now - DAY / 2)] {
            let mut text = String::new();
            for i in seqs {
                text += &chain.append(at + i, "warden.verdict.changed", Some("d"), serde_json::json!({"n": i}));
                text.push('\n');
            }
            text += &chain.checkpoint(at + 10, None);
            text.push('\n');
            std::fs::write(dir.join(format!("audit-{n}.jsonl")), text).unwrap();
        }
    }

    fn verify_dir(dir: &Path) -> Result<crate::audit::Verified, crate::audit::Tampered> {
        let texts: Vec<(u64, String)> = crate::audit::files(dir)
            .unwrap()
            .into_iter()
            .map(|(n, p)| (n, std::fs::read_to_string(p).unwrap()))
            .collect();
        let lines = texts
            .iter()
            .flat_map(|(n, t)| t.lines().enumerate().map(move |(i, l)| (format!("audit-{n}.jsonl:{}", i + 1), l)));
        crate::audit::verify(lines, None)
    }

    #[test]
    fn files_past_retain_are_removed_recorded_and_the_rest_verifies() {
        let dir = tempfile::tempdir().unwrap();
        aged_trail(dir.path());
        let entries = prometheus::IntCounter::new("t", "t").unwrap();
        let retain = std::time::Duration::from_secs(7 * 24 * 3600);
        let mut trail =
            AuditTrail::open(dir.path(), None, std::time::Duration::from_secs(60), retain, entries).unwrap();
        let left: Vec<u64> = crate::audit::files(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![3], "the month-old files went, the current one stays");
        let (batch, seq) = trail.take().unwrap();
        assert_eq!(seq, 9);
        batch.write().unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit-3.jsonl")).unwrap();
        let record: serde_json::Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["seq"] == 9)
            .unwrap();
        assert_eq!(record["kind"], crate::audit::PRUNED);
        assert_eq!(record["data"]["kept_from"], 7);
        assert_eq!(record["data"]["files"], serde_json::json!(["audit-1.jsonl", "audit-2.jsonl"]));
        assert_eq!(verify_dir(dir.path()).unwrap().entries, 3);

        // Removing more by hand (the first entry kept) is caught there.
        let cut: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.path().join("audit-3.jsonl"), cut).unwrap();
        let e = verify_dir(dir.path()).unwrap_err();
        assert_eq!((e.seq, e.at.as_str()), (8, "audit-3.jsonl:1"), "{e}");
    }

    fn open(dir: &Path) -> AuditTrail {
        let entries = prometheus::IntCounter::new("t", "t").unwrap();
        let year = std::time::Duration::from_secs(365 * 24 * 3600);
        AuditTrail::open(dir, None, std::time::Duration::from_secs(3600), year, entries).unwrap()
    }

    #[test]
    fn a_torn_tail_is_cut_a_damaged_middle_is_kept_and_an_empty_new_file_resumes_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        aged_trail(dir.path());
        let third = dir.path().join("audit-3.jsonl");
        let text = std::fs::read_to_string(&third).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A byte flipped in the first entry of the newest file, and a torn
        // write after its last line.
        let damaged = format!("{}X\n{}\n{{\"seq\":9,\"at", lines[0], lines[1..].join("\n"));
        std::fs::write(&third, &damaged).unwrap();
        let trail = open(dir.path());
        assert_eq!(trail.seq(), 8, "the chain goes on from the last readable entry");
        let kept = std::fs::read_to_string(&third).unwrap();
        assert!(kept.starts_with(&format!("{}X\n", lines[0])), "the damaged line is kept for verify to name");
        assert!(kept.ends_with("\n") && !kept.contains("\"seq\":9"), "the torn tail is cut");
        drop(trail);

        // Rotation started audit-4, then warden stopped: it is empty.
        std::fs::write(&third, &text).unwrap();
        std::fs::write(dir.path().join("audit-4.jsonl"), "").unwrap();
        let mut trail = open(dir.path());
        assert_eq!(trail.seq(), 8, "not a new chain");
        trail.record(crate::gateway::mqtt::wall_now(), "warden.verdict.changed", Some("d"), serde_json::json!({}));
        let (batch, seq) = trail.take().unwrap();
        assert_eq!(seq, 9);
        batch.write().unwrap();
        verify_dir(dir.path()).unwrap();
    }

    #[test]
    fn a_short_retain_keeps_the_file_being_written() {
        let dir = tempfile::tempdir().unwrap();
        aged_trail(dir.path());
        let entries = prometheus::IntCounter::new("t", "t").unwrap();
        let trail = AuditTrail::open(
            dir.path(),
            None,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(1),
            entries,
        )
        .unwrap();
        assert_eq!(trail.seq(), 9, "the pruning record");
        assert_eq!(crate::audit::files(dir.path()).unwrap().len(), 1);
    }
}
