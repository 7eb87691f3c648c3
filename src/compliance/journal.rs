//! The compliance journal: every accepted report appended to
//! `state_dir/journal-N.jsonl` before the broker is told it arrived, so a
//! crash loses nothing that was acknowledged (issue 12).
//!
//! State on disk is the last [`snapshot`](super::snapshot) plus the journal
//! segments written since it began. Compaction is level-triggered and safe
//! at any crash point:
//! 1. the writer moves to segment N+1 ([`Writer::rotate`]);
//! 2. the snapshot is written (to a temporary file, synced, renamed): it
//!    holds at least everything in segments ≤ N;
//! 3. segments ≤ N are removed.
//!
//! A crash between 2 and 3 replays old segments over a newer snapshot; the
//! segments after them (N+1…) replay last and hold every change made after
//! step 1, so the result is the same. Each start writes to a new segment,
//! so nothing is ever appended onto a torn line.
//!
//! A record is the device as a snapshot record holds it; replay keeps the last
//! record per device, which is why a report's record carries its failure
//! start times and not only the report.

use super::device::Device;
use super::snapshot::Entry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PREFIX: &str = "journal-";
const SUFFIX: &str = ".jsonl";

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A device after an accepted report.
    Report(Box<Entry>),
    /// A device removed after `forget_after` of silence.
    Forgotten { id: String },
}

/// Collects records for the current segment. Serializing happens here, on
/// the compliance task; writing and syncing happen on the commit task's
/// blocking thread ([`Writer::take`] hands the bytes over), so a disk busy
/// with writeback stalls the task that applies telemetry only once 256
/// batches wait for it (`gateway::commit::QUEUE`): backpressure, not loss.
pub struct Writer {
    dir: PathBuf,
    segment: u64,
    file: Arc<std::fs::File>,
    buf: Vec<u8>,
    /// Bytes handed over for the current segment.
    written: u64,
}

/// Records for one segment, to be written in order.
#[derive(Debug)]
pub struct Batch {
    pub file: Arc<std::fs::File>,
    pub bytes: Vec<u8>,
}

impl Batch {
    /// Appends the bytes to the segment (one `write` unless the kernel
    /// takes less).
    pub fn write(&self) -> std::io::Result<()> {
        (&*self.file).write_all(&self.bytes)
    }
}

impl Writer {
    /// Starts segment `segment` in `dir` (a new, empty file).
    pub fn create(dir: &Path, segment: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).create_new(true).open(segment_path(dir, segment))?;
        // The new name must survive a crash too, or its records vanish with it.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Self { dir: dir.to_path_buf(), segment, file: Arc::new(file), buf: Vec::new(), written: 0 })
    }

    /// Adds the device's current state.
    pub fn report(&mut self, device: &Device) {
        self.push(&Record::Report(Box::new(Entry::of(device))));
    }

    /// Adds the device's current state, whose report was parsed from
    /// `payload` as it is: the payload goes in as the record's `report`
    /// instead of serializing the parsed report again (a third of the
    /// journal's cost per report). It parsed as a [`crate::telemetry::Report`],
    /// so it is one JSON object; a line break in JSON can only be whitespace
    /// between tokens (inside strings control characters are escaped), so
    /// turning each into a space keeps its meaning and the one-line framing.
    pub fn report_as_received(&mut self, device: &Device, payload: &[u8]) {
        #[derive(Serialize)]
        struct Head<'a> {
            record: &'static str,
            id: &'a str,
            last_seen: crate::telemetry::UnixMillis,
            failing_since: Vec<(String, crate::telemetry::UnixMillis)>,
            #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
            admin_override: Option<&'a super::overrides::Override>,
        }
        let head = Head {
            record: "report",
            id: &device.id,
            last_seen: device.last_seen,
            failing_since: device.failures.iter().map(|f| (f.key(), f.since)).collect(),
            admin_override: device.admin_override.as_deref(),
        };
        let start = self.buf.len();
        if serde_json::to_writer(&mut self.buf, &head).is_err() {
            self.buf.truncate(start);
            return;
        }
        self.buf.pop(); // the head's closing brace
        self.buf.extend_from_slice(b",\"report\":");
        self.buf.extend(payload.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        self.buf.extend_from_slice(b"}\n");
    }

    /// Adds the removal of a forgotten device.
    pub fn forgotten(&mut self, id: &str) {
        self.push(&Record::Forgotten { id: id.to_string() });
    }

    fn push(&mut self, record: &Record) {
        // Serializing plain data into a Vec cannot fail.
        if serde_json::to_writer(&mut self.buf, record).is_ok() {
            self.buf.push(b'\n');
        }
    }

    /// The records collected since the last call, for the current segment.
    pub fn take(&mut self) -> Batch {
        self.written += self.buf.len() as u64;
        Batch { file: Arc::clone(&self.file), bytes: std::mem::take(&mut self.buf) }
    }

    /// Bytes handed over for the current segment.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The current segment's number.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Moves to the next segment; returns what was still collected for the
    /// previous one, and its number (removable once a snapshot begun after
    /// this call is written).
    pub fn rotate(&mut self) -> std::io::Result<(Batch, u64)> {
        let next = Self::create(&self.dir, self.segment + 1)?;
        let mut previous = std::mem::replace(self, next);
        Ok((previous.take(), previous.segment))
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{segment:020}{SUFFIX}"))
}

/// The journal segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if let Ok(n) = n.parse::<u64>() {
            out.push((n, e.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Removes every segment numbered `last` or below.
pub fn remove_through(dir: &Path, last: u64) -> std::io::Result<()> {
    for (n, path) in segments(dir)? {
        if n <= last {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// What the journal holds.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: Vec<Record>,
    /// Lines that did not parse (torn, damaged): skipped, never fatal.
    pub bad: usize,
    /// The segment to write next.
    pub next_segment: u64,
    /// When the newest segment was last written to (Unix ms): the last
    /// moment warden is known to have been listening.
    pub written_at: Option<crate::telemetry::UnixMillis>,
}

/// Reads every segment in order. A damaged line is skipped and counted,
/// whatever the damage (torn, a flipped byte, invalid UTF-8). Each block
/// of a segment is parsed by as many threads as there are cores, each
/// taking a run of whole lines: at 400,000 records (170 MiB) parsing on one
/// thread was most of a restart's time after a `kill -9` at full ingest.
pub fn read(dir: &Path) -> std::io::Result<Replayed> {
    // A block at a time (its whole lines parsed, the torn end carried into
    // the next), not a segment (up to 256 MiB) at once.
    read_blocks(dir, 16 << 20)
}

fn read_blocks(dir: &Path, block: usize) -> std::io::Result<Replayed> {
    use std::io::Read;
    let mut out = Replayed::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let mut buf: Vec<u8> = Vec::with_capacity(block);
    for (n, path) in segments(dir)? {
        out.next_segment = n + 1;
        let mut file = std::fs::File::open(&path)?;
        out.written_at = super::snapshot::modified(&file.metadata()?).max(out.written_at);
        buf.clear();
        loop {
            let have = buf.len();
            buf.resize(have + block, 0);
            let got = file.read(&mut buf[have..])?;
            buf.truncate(have + got);
            let end = got == 0;
            // Whole lines only, unless the segment ends (a torn last line is parsed, and counted).
            let cut = if end { buf.len() } else { buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) };
            if cut > 0 {
                let (records, bad) = parse_parallel(&buf[..cut], threads);
                out.records.extend(records);
                out.bad += bad;
                buf.drain(..cut);
            }
            if end {
                break;
            }
        }
    }
    Ok(out)
}

/// The records of `bytes` (whole lines), parsed by up to `threads` threads
/// over runs of lines, in order, and how many lines were damaged.
fn parse_parallel(bytes: &[u8], threads: usize) -> (Vec<Record>, usize) {
    let parts = split_at_lines(bytes, threads);
    let parsed: Vec<(Vec<Record>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts.iter().skip(1).map(|part| scope.spawn(move || parse_lines(part))).collect();
        let mut parsed = vec![parse_lines(parts.first().copied().unwrap_or_default())];
        // A parser thread cannot panic on any input (serde_json returns
        // errors); if one did, its lines count as damaged, not lost silently.
        parsed.extend(handles.into_iter().zip(parts.iter().skip(1)).map(|(h, part)| {
            h.join().unwrap_or_else(|_| (Vec::new(), part.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()))
        }));
        parsed
    });
    let mut out = (Vec::new(), 0);
    for (records, bad) in parsed {
        out.0.extend(records);
        out.1 += bad;
    }
    out
}

/// `bytes` in at most `n` runs of whole lines, in order.
fn split_at_lines(bytes: &[u8], n: usize) -> Vec<&[u8]> {
    // Small segments are not worth a thread.
    let n = if bytes.len() < 1 << 20 { 1 } else { n.max(1) };
    let mut parts = Vec::with_capacity(n);
    let mut rest = bytes;
    for i in (1..=n).rev() {
        if i == 1 || rest.is_empty() {
            parts.push(rest);
            break;
        }
        let mid = rest.len() / i;
        let cut = rest[mid..].iter().position(|b| *b == b'\n').map_or(rest.len(), |p| mid + p + 1);
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts
}

/// The records of a run of lines, and how many lines were damaged.
fn parse_lines(bytes: &[u8]) -> (Vec<Record>, usize) {
    let (mut records, mut bad) = (Vec::new(), 0);
    for text in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Record>(text) {
            Ok(Record::Report(e)) if !crate::telemetry::parse::valid_device_id(&e.id) => bad += 1,
            Ok(r) => records.push(r),
            Err(_) => bad += 1,
        }
    }
    (records, bad)
}

/// About how many records the journal in `dir` holds (each may be a device
/// the snapshot does not have): with the snapshot's estimate, the size to
/// give the table before a restore.
pub fn estimate(dir: &Path) -> usize {
    segments(dir).map_or(0, |s| s.iter().map(|(_, path)| super::snapshot::estimate_file(path, false)).sum())
}

/// What the journal says last about each device it mentions: its entry,
/// or `None` when it was forgotten. Such a device's snapshot record is stale.
pub fn latest(records: Vec<Record>) -> HashMap<String, Option<Entry>, foldhash::fast::RandomState> {
    let mut out: HashMap<String, Option<Entry>, foldhash::fast::RandomState> = HashMap::default();
    for record in records {
        match record {
            Record::Report(e) => {
                out.insert(e.id.clone(), Some(*e));
            }
            Record::Forgotten { id } => {
                out.insert(id, None);
            }
        }
    }
    out
}

/// The snapshot's entries with the journal's records applied in order: the
/// last record of a device wins, a forgotten device is gone.
#[allow(clippy::disallowed_methods)] // the entries are keyed by id: their order means nothing
pub fn merge(mut entries: Vec<Entry>, records: Vec<Record>) -> Vec<Entry> {
    let mut latest = latest(records);
    entries.retain(|e| !latest.contains_key(&e.id));
    entries.extend(latest.drain().filter_map(|(_, e)| e));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Report;

    fn entry(id: &str, seq: u64) -> Entry {
        Entry {
            id: id.into(),
            last_seen: 1,
            failing_since: Vec::new(),
            report: Report { seq, ..Report::default() },
            admin_override: None,
        }
    }

    fn seqs(entries: &[Entry]) -> Vec<(String, u64)> {
        let mut v: Vec<_> = entries.iter().map(|e| (e.id.clone(), e.report.seq)).collect();
        v.sort();
        v
    }

    /// A segment large enough to be parsed by several threads gives the
    /// records in file order, damaged lines counted wherever the runs split.
    #[test]
    fn a_large_segment_is_read_in_order_by_several_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut damaged = 0;
        for i in 0..20_000u64 {
            let mut line = serde_json::to_vec(&Record::Report(Box::new(entry(&format!("d{i}"), i)))).unwrap();
            if i % 997 == 0 {
                line[5] = 0xff;
                damaged += 1;
            }
            bytes.extend(line);
            bytes.push(b'\n');
        }
        assert!(bytes.len() > 1 << 20, "past the one-thread size");
        std::fs::write(dir.path().join("journal-1.jsonl"), &bytes).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!(r.bad, damaged);
        let got: Vec<u64> = r
            .records
            .iter()
            .map(|rec| match rec {
                Record::Report(e) => e.report.seq,
                Record::Forgotten { .. } => u64::MAX,
            })
            .collect();
        let want: Vec<u64> = (0..20_000).filter(|i| i % 997 != 0).collect();
        assert_eq!(got, want);
        for n in 1..6 {
            let parts = split_at_lines(&bytes, n);
            assert_eq!(parts.concat(), bytes, "{n} runs");
            assert!(parts.iter().all(|p| p.is_empty() || p.ends_with(b"\n")), "{n} runs end at a line");
        }
    }

    #[test]
    fn the_last_record_wins_and_forgotten_devices_are_gone() {
        let snapshot = vec![entry("a", 1), entry("b", 1), entry("c", 1)];
        let records = vec![
            Record::Report(Box::new(entry("a", 2))),
            Record::Forgotten { id: "b".into() },
            Record::Report(Box::new(entry("d", 5))),
            Record::Report(Box::new(entry("a", 3))),
            Record::Forgotten { id: "d".into() },
            Record::Report(Box::new(entry("d", 6))),
        ];
        let merged = merge(snapshot, records);
        assert_eq!(seqs(&merged), vec![("a".into(), 3), ("c".into(), 1), ("d".into(), 6)]);
    }

    #[test]
    fn segments_replay_in_order_and_a_restart_never_appends_to_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 0).unwrap();
        w.push(&Record::Report(Box::new(entry("a", 1))));
        w.take().write().unwrap();
        let (rest, old) = w.rotate().unwrap();
        rest.write().unwrap();
        assert_eq!(old, 0);
        w.push(&Record::Report(Box::new(entry("a", 2))));
        w.push(&Record::Report(Box::new(entry("b", 1))));
        w.take().write().unwrap();
        // A crash mid-write: half a record at the end of segment 1.
        let mut torn = serde_json::to_vec(&Record::Report(Box::new(entry("c", 9)))).unwrap();
        torn.truncate(torn.len() / 2);
        (&*w.file).write_all(&torn).unwrap();
        drop(w);

        let replayed = read(dir.path()).unwrap();
        assert_eq!((replayed.bad, replayed.next_segment), (1, 2));
        // The next start writes to a fresh segment: the torn line stays alone.
        let mut w = Writer::create(dir.path(), replayed.next_segment).unwrap();
        w.push(&Record::Report(Box::new(entry("c", 10))));
        w.take().write().unwrap();
        let replayed = read(dir.path()).unwrap();
        assert_eq!(replayed.bad, 1);
        let merged = merge(Vec::new(), replayed.records);
        assert_eq!(seqs(&merged), vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 10)]);

        remove_through(dir.path(), 1).unwrap();
        let left: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![2]);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a test: any instant will do
    fn a_report_journaled_as_received_replays_as_parsed() {
        let payload = b"{\n  \"seq\": 7,\r\n  \"ts\": \"2026-12-03T10:00:00Z\",\n  \"os\": \"android\",\n  \"attributes\": {\"note\": \"a\\nb\"}\n}";
        let report: crate::telemetry::Report = serde_json::from_slice(payload).unwrap();
        let device = Device::reported("pos-1".into(), report.clone(), std::time::Instant::now(), 42);
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 0).unwrap();
        w.report_as_received(&device, payload);
        w.report(&device);
        w.take().write().unwrap();
        let replayed = read(dir.path()).unwrap();
        assert_eq!(replayed.bad, 0);
        let [Record::Report(a), Record::Report(b)] = &replayed.records[..] else { panic!("two reports") };
        assert_eq!((a.id.as_str(), a.last_seen, &a.report), ("pos-1", 42, &report));
        assert_eq!((&b.id, b.last_seen, &b.report), (&a.id, a.last_seen, &a.report), "the same as serialized");
    }

    #[test]
    fn damage_of_any_kind_is_one_skipped_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = |id: &str| {
            let mut v = serde_json::to_vec(&Record::Report(Box::new(entry(id, 1)))).unwrap();
            v.push(b'\n');
            v
        };
        let mut bytes = line("a");
        let mut flipped = line("b");
        flipped[5] ^= 0x20;
        bytes.extend(flipped);
        let mut utf8 = line("c");
        utf8[12] = 0xff;
        bytes.extend(utf8);
        bytes.extend(line("d"));
        std::fs::write(segment_path(dir.path(), 7), bytes).unwrap();
        let replayed = read(dir.path()).unwrap();
        assert_eq!(replayed.bad, 2);
        assert_eq!(seqs(&merge(Vec::new(), replayed.records)), vec![("a".into(), 1), ("d".into(), 1)]);
        assert_eq!(replayed.next_segment, 8);
    }
}
