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
}

impl AuditTrail {
    /// Opens (or starts) the trail in `dir`, resuming its chain.
    pub fn open(
        dir: &Path,
        key: Option<Ed25519KeyPair>,
        every: std::time::Duration,
        entries: prometheus::IntCounter,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = crate::audit::files(dir).with_context(|| format!("listing {}", dir.display()))?;
        let (segment, chain, size) = match files.last() {
            None => (1, Chain::default(), 0),
            Some((n, path)) => {
                let (chain, good) = resume(path).with_context(|| format!("reading {}", path.display()))?;
                let len = std::fs::metadata(path)?.len();
                if good < len {
                    tracing::warn!(file = %path.display(), cut = len - good, "audit trail: a torn last line (a crash mid-write) cut off");
                    std::fs::OpenOptions::new().write(true).open(path)?.set_len(good)?;
                }
                (*n, chain, good)
            }
        };
        let file = open_segment(dir, segment)?;
        Ok(Self {
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
        })
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

fn open_segment(dir: &Path, n: u64) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().append(true).create(true).open(dir.join(format!("audit-{n}.jsonl")))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(f)
}

/// The chain at the end of `path`'s last complete line, and that line's end.
fn resume(path: &Path) -> std::io::Result<(Chain, u64)> {
    let text = std::fs::read(path)?;
    let mut chain = Chain::default();
    let mut good = 0u64;
    let mut at = 0usize;
    for line in text.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        if !line.ends_with(b"\n") {
            break; // torn
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Map<String, Value>>(line) else { break };
        let (seq, head) = if let Some(seq) = v.get("checkpoint").and_then(Value::as_u64) {
            (seq, v.get("head"))
        } else {
            (v.get("seq").and_then(Value::as_u64).unwrap_or(0), v.get("hash"))
        };
        if let Some(Value::String(h)) = head {
            chain = Chain { seq, head: h.clone() };
        }
        good = at as u64;
    }
    Ok((chain, good))
}
