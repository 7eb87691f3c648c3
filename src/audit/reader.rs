//! Reading the audit trail from a sequence number on: for the webhook
//! sinks, `GET /api/v1/events` and `GET /api/v1/audit`.
//!
//! Finding where entry N is costs a few reads, not a scan: each file's
//! first entry says which file holds N, and inside it a binary search over
//! byte offsets (the next line after any offset says its `seq`) narrows it
//! to 64 KiB, read from there. A line without its newline (being written)
//! ends a read without being taken, so a reader never sees half an entry;
//! the caller also bounds reads by the last *durable* entry.

// A shell: it reads files.
#![allow(clippy::disallowed_methods)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Below this, a binary search reads on linearly.
const LINEAR: u64 = 64 << 10;

/// A position in the trail.
#[derive(Debug, Clone)]
pub struct Reader {
    dir: PathBuf,
    segment: u64,
    offset: u64,
    /// The last entry passed: entries up to it are not returned.
    after: u64,
}

impl Reader {
    /// Positions a reader just after entry `after` (0: from the oldest
    /// entry kept).
    pub fn seek(dir: &Path, after: u64) -> std::io::Result<Self> {
        let files = super::files(dir)?;
        let mut at = Self { dir: dir.to_path_buf(), segment: files.first().map_or(1, |f| f.0), offset: 0, after };
        for (n, path) in files.iter().rev() {
            let mut file = std::fs::File::open(path)?;
            match next_entry(&mut file, 0)? {
                Some((_, first)) if first <= after + 1 => {
                    at.segment = *n;
                    at.offset = search(&mut file, after)?;
                    break;
                }
                _ => {}
            }
        }
        Ok(at)
    }

    /// The last entry passed.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// Reads the entries after the position up to entry `upto`, at most
    /// `limit`, into `out`; moves past them. Lines that are not entries
    /// (checkpoints, damage) are passed over.
    pub fn read(&mut self, upto: u64, limit: usize, out: &mut Vec<Value>) -> std::io::Result<()> {
        let start = out.len();
        loop {
            let path = self.dir.join(format!("audit-{}.jsonl", self.segment));
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Removed by retention while this read it: on to the
                    // oldest file left after it.
                    match super::files(&self.dir)?.into_iter().find(|(n, _)| *n > self.segment) {
                        Some((n, _)) => {
                            (self.segment, self.offset) = (n, 0);
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(self.offset))?;
            let mut lines = BufReader::with_capacity(64 << 10, file);
            let mut line = Vec::new();
            loop {
                if out.len() - start >= limit {
                    return Ok(());
                }
                line.clear();
                let n = lines.read_until(b'\n', &mut line)?;
                if n == 0 || !line.ends_with(b"\n") {
                    break; // the end, or a line still being written
                }
                let entry = serde_json::from_slice::<Value>(&line).ok();
                let seq = entry.as_ref().and_then(|e| e.get("seq")).and_then(Value::as_u64);
                match seq {
                    Some(seq) if seq > upto => return Ok(()),
                    Some(seq) if seq > self.after => {
                        self.after = seq;
                        out.extend(entry);
                    }
                    _ => {}
                }
                self.offset += n as u64;
            }
            // The end of this file: on to the next, if the trail went on.
            let next = self.dir.join(format!("audit-{}.jsonl", self.segment + 1));
            if !next.exists() {
                return Ok(());
            }
            self.segment += 1;
            self.offset = 0;
        }
    }
}

/// The first entry starting at or after `offset` (at a line start if
/// `offset` is 0, else after the next newline): its line's start and seq.
fn next_entry(file: &mut std::fs::File, offset: u64) -> std::io::Result<Option<(u64, u64)>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut lines = BufReader::with_capacity(16 << 10, &*file);
    let mut line = Vec::new();
    let mut at = offset;
    if offset > 0 {
        at += lines.read_until(b'\n', &mut line)? as u64;
    }
    loop {
        line.clear();
        let n = lines.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        if let Some(seq) = serde_json::from_slice::<Value>(&line).ok().and_then(|e| e.get("seq")?.as_u64()) {
            return Ok(Some((at, seq)));
        }
        at += n as u64;
    }
}

/// An offset in `file` at or before the line of the first entry after
/// `after`, within [`LINEAR`] bytes of it.
fn search(file: &mut std::fs::File, after: u64) -> std::io::Result<u64> {
    let (mut lo, mut hi) = (0, file.metadata()?.len());
    while hi - lo > LINEAR {
        let mid = lo + (hi - lo) / 2;
        match next_entry(file, mid)? {
            Some((start, seq)) if seq <= after => lo = start,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Chain;

    /// A trail of `n` entries over files of `per_file` entries, with a
    /// checkpoint every 10.
    fn trail(dir: &Path, n: u64, per_file: u64) {
        let mut chain = Chain::default();
        let mut text = String::new();
        let mut segment = 1;
        for i in 1..=n {
            text.push_str(&chain.append(
                1_800_000_000_000 + i as i64,
                "warden.verdict.changed",
                Some(&format!("d{i}")),
                serde_json::json!({"pad": "x".repeat(200)}),
            ));
            text.push('\n');
            if i % 10 == 0 {
                text.push_str(&chain.checkpoint(1_800_000_000_000, None));
                text.push('\n');
            }
            if i % per_file == 0 || i == n {
                std::fs::write(dir.join(format!("audit-{segment}.jsonl")), &text).unwrap();
                text.clear();
                segment += 1;
            }
        }
    }

    fn seqs(out: &[Value]) -> Vec<u64> {
        out.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    }

    #[test]
    fn seeks_and_reads_across_files() {
        let dir = tempdir("seek");
        trail(&dir, 2000, 700);
        for after in [0, 1, 9, 10, 699, 700, 701, 1399, 1999, 2000, 5000] {
            let mut r = Reader::seek(&dir, after).unwrap();
            let mut out = Vec::new();
            r.read(u64::MAX, 3, &mut out).unwrap();
            let want: Vec<u64> = (after + 1..=2000).take(3).collect();
            assert_eq!(seqs(&out), want, "after {after}");
        }
        // Everything, in order, in pages; bounded by `upto`.
        let mut r = Reader::seek(&dir, 0).unwrap();
        let mut out = Vec::new();
        while out.len() < 2000 {
            let before = out.len();
            r.read(1500, 64, &mut out).unwrap();
            if out.len() == before {
                break;
            }
        }
        assert_eq!(seqs(&out), (1..=1500).collect::<Vec<_>>());
        assert_eq!(r.after(), 1500);
        r.read(u64::MAX, usize::MAX, &mut out).unwrap();
        assert_eq!(out.len(), 2000);
    }

    #[test]
    fn a_line_being_written_is_not_read() {
        let dir = tempdir("torn");
        trail(&dir, 5, 100);
        let path = dir.join("audit-1.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":6,\"kind\":");
        std::fs::write(&path, &text).unwrap();
        let mut r = Reader::seek(&dir, 3).unwrap();
        let mut out = Vec::new();
        r.read(u64::MAX, 100, &mut out).unwrap();
        assert_eq!(seqs(&out), vec![4, 5]);
        // Once whole, it is.
        let mut chain = Chain::default();
        let mut full = String::new();
        for i in 1..=6 {
            full.push_str(&chain.append(
                1_800_000_000_000 + i,
                "warden.verdict.changed",
                Some(&format!("d{i}")),
                serde_json::json!({"pad": "x".repeat(200)}),
            ));
            full.push('\n');
        }
        std::fs::write(&path, &full).unwrap();
        r.read(u64::MAX, 100, &mut out).unwrap();
        assert_eq!(seqs(&out), vec![4, 5, 6]);
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warden-audit-reader-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
