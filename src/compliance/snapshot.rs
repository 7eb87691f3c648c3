//! A snapshot of the table in `state_dir`, so a restart resumes with the last
//! known reports: one checked binary record per device (`record`), written
//! to a temporary file, synced and renamed over the previous one, so a crash
//! mid-write leaves the old snapshot whole. A snapshot in JSON lines (an
//! older warden's, or a fleet seeded by hand) is read when there is no
//! binary one, and replaced by the next write.

use super::device::Device;
use super::table::Table;
use crate::telemetry::{Report, UnixMillis};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file name inside `state_dir`.
pub const FILE: &str = "compliance.snap";
/// The JSON-lines snapshot, one [`Entry`] per line, read when there is no [`FILE`].
pub const JSON_FILE: &str = "compliance.jsonl";

/// One device in the snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// When its last report arrived (Unix ms).
    pub last_seen: UnixMillis,
    /// Each failing rule (`policy/rule`) and when it started failing, so a
    /// grace period does not restart with the process.
    #[serde(default)]
    pub failing_since: Vec<(String, UnixMillis)>,
    pub report: Report,
    /// An administrator's override in force.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub admin_override: Option<super::overrides::Override>,
}

impl Entry {
    /// The line for `device` as it is now.
    pub fn of(device: &Device) -> Self {
        Self {
            id: device.id.to_string(),
            last_seen: device.last_seen,
            failing_since: device.failures.iter().map(|f| (f.key(), f.since)).collect(),
            report: device.report.clone(),
            admin_override: device.admin_override.as_deref().cloned(),
        }
    }
}

/// When the snapshot in `dir` was last written (Unix ms), if there is one.
pub fn written_at(dir: &Path) -> Option<UnixMillis> {
    let meta = std::fs::metadata(dir.join(FILE)).or_else(|_| std::fs::metadata(dir.join(JSON_FILE))).ok()?;
    modified(&meta)
}

/// Writes every device of `table` to `dir/FILE`. Returns the device count.
pub fn write(table: &Table, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let file = std::fs::File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut count = 0;
    let mut result = Ok(());
    let mut record = Vec::with_capacity(1024);
    table.for_each(|d| {
        if result.is_err() {
            return;
        }
        record.clear();
        super::record::encode(&Entry::of(d), &mut record);
        result = out.write_all(&record);
        count += 1;
    });
    result?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(dir))?;
    // The binary snapshot now says everything the JSON one did, and more.
    match std::fs::remove_file(dir.join(JSON_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(count)
}

/// About how many devices the snapshot in `dir` holds, to size the table
/// before a restore: the file's size over the mean record size of its
/// first MiB. Zero without a snapshot. (An estimate far above the truth
/// would double the maps' memory; one below only lets them grow.)
pub fn estimate(dir: &Path) -> usize {
    match dir.join(FILE) {
        p if p.is_file() => estimate_file(&p, true),
        _ => estimate_file(&dir.join(JSON_FILE), false),
    }
}

/// How many records (binary) or lines (JSON) `path` holds, about: its size
/// over the mean size of those in its first MiB.
pub(crate) fn estimate_file(path: &Path, binary: bool) -> usize {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else { return 0 };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut head = Vec::with_capacity(1 << 20);
    if file.take(1 << 20).read_to_end(&mut head).is_err() {
        return 0;
    }
    let (mut records, mut bytes) = (0u64, 0u64);
    if binary {
        let mut at = 0;
        while let Some((len, _)) = head.get(at..at + super::record::FRAME).and_then(super::record::frame) {
            at += super::record::FRAME + len;
            if at > head.len() {
                break;
            }
            records += 1;
            bytes = at as u64;
        }
    } else {
        for (i, b) in head.iter().enumerate() {
            if *b == b'\n' {
                records += 1;
                bytes = i as u64 + 1;
            }
        }
    }
    let n = match (records, bytes) {
        (0, _) | (_, 0) => 0,
        (r, b) => size.saturating_mul(r) / b,
    };
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The snapshot's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the snapshot; a missing file is an empty fleet. Lines that do not
/// parse are skipped and counted (second value), never fatal.
pub fn read(dir: &Path) -> std::io::Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let bad = stream(dir, Vec::new(), |e, _| Some(e), |chunk| entries.extend(chunk))?;
    Ok((entries, bad))
}

/// Entries handed over per chunk by [`stream`].
const CHUNK: usize = 4096;

/// Where an entry handed to [`stream`]'s `map` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The snapshot file.
    Snapshot,
    /// The entries given to follow it (the journal's last word on devices).
    After,
}

/// Reads the snapshot on a second thread, which also runs `map` on each
/// entry (`None`: leave it out), then on each of `after`, and hands `f` the
/// results in chunks as they come, so a restart restores while it reads
/// and never holds the whole fleet twice. A restart settles each device in
/// `map` (policy evaluation on the reader's core) and only stores it in
/// `f`. Returns the snapshot's damaged records or lines, skipped.
pub fn stream<T: Send>(
    dir: &Path,
    after: Vec<Entry>,
    map: impl FnMut(Entry, Source) -> Option<T> + Send,
    mut f: impl FnMut(Vec<T>),
) -> std::io::Result<usize> {
    let file = match std::fs::File::open(path(dir)) {
        Ok(f) => Some((f, true)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::File::open(dir.join(JSON_FILE)) {
            Ok(f) => Some((f, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    if file.is_none() && after.is_empty() {
        return Ok(0);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn_scoped(scope, move || parse(file, after, map, |chunk| tx.send(chunk).is_ok()))?;
        for chunk in rx {
            f(chunk);
        }
        reader.join().unwrap_or_else(|_| Err(std::io::Error::other("snapshot reader panicked")))
    })
}

/// Parses the file's records or lines, then takes `after`, maps them, and
/// hands chunks to `send` (false: stop). Returns the file's damaged ones.
fn parse<T>(
    file: Option<(std::fs::File, bool)>,
    after: Vec<Entry>,
    mut map: impl FnMut(Entry, Source) -> Option<T>,
    mut send: impl FnMut(Vec<T>) -> bool,
) -> std::io::Result<usize> {
    let mut entries = Vec::with_capacity(CHUNK);
    let mut bad = 0;
    let mut open = true;
    let mut take = |entry: Option<Entry>, source: Source| {
        match entry {
            Some(e) if crate::telemetry::parse::valid_device_id(&e.id) => entries.extend(map(e, source)),
            _ => bad += 1,
        }
        if entries.len() == CHUNK {
            open = send(std::mem::replace(&mut entries, Vec::with_capacity(CHUNK)));
        }
        open
    };
    match file {
        Some((file, true)) => records(file, |e| take(e, Source::Snapshot))?,
        Some((file, false)) => lines(file, |text| take(serde_json::from_slice::<Entry>(text).ok(), Source::Snapshot))?,
        None => {}
    }
    for e in after {
        if !take(Some(e), Source::After) {
            break;
        }
    }
    if open && !entries.is_empty() {
        send(entries);
    }
    Ok(bad)
}

/// Calls `f` on each non-empty line of `file` (without its newline) until
/// it returns false. Lines as bytes: a damaged line (a flipped byte,
/// invalid UTF-8, a torn end) reaches `f` like any other, for it to skip
/// and count; damage is never fatal.
fn lines(file: std::fs::File, mut f: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if !text.is_empty() && !f(text) {
            return Ok(());
        }
    }
}

/// Calls `f` on each record of a binary snapshot until it returns false:
/// `Some` for a record that checks out, `None` for each that does not (a
/// flipped byte, a torn end, garbage where a record should start), after
/// which the next record is found by its magic. Damage is never fatal.
fn records(file: std::fs::File, mut f: impl FnMut(Option<Entry>) -> bool) -> std::io::Result<()> {
    use super::record::{FRAME, MAGIC, decode, frame};
    let mut s = Scan { file, buf: Vec::with_capacity(2 * Scan::READ), pos: 0, eof: false };
    loop {
        s.fill(FRAME)?;
        if s.buf.len() == s.pos {
            return Ok(());
        }
        let mut entry = None;
        if let Some((len, crc)) = s.buf.get(s.pos..s.pos + FRAME).and_then(frame) {
            s.fill(FRAME + len)?;
            entry = s
                .buf
                .get(s.pos + FRAME..s.pos + FRAME + len)
                .filter(|payload| crc32fast::hash(payload) == crc)
                .and_then(decode)
                .map(|e| (e, FRAME + len));
        }
        match entry {
            Some((e, size)) => {
                s.pos += size;
                if !f(Some(e)) {
                    return Ok(());
                }
            }
            None => {
                if !f(None) {
                    return Ok(());
                }
                // On to the next magic: where the next record may start.
                s.pos += 1;
                loop {
                    if let Some(i) = s.buf[s.pos..].windows(MAGIC.len()).position(|w| w == MAGIC) {
                        s.pos += i;
                        break;
                    }
                    // Keep the tail: a magic may straddle two reads.
                    s.pos = s.buf.len().saturating_sub(MAGIC.len() - 1).max(s.pos);
                    let had = s.buf.len() - s.pos;
                    s.fill(had + 1)?;
                    if s.buf.len() - s.pos == had {
                        return Ok(()); // the end: the damage ran to it
                    }
                }
            }
        }
    }
}

/// A file read forward through a buffer, for [`records`].
struct Scan {
    file: std::fs::File,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Scan {
    const READ: usize = 1 << 20;

    /// At least `n` bytes from `pos` in `buf`, unless the file ends first.
    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        use std::io::Read;
        while self.buf.len() - self.pos < n && !self.eof {
            self.buf.drain(..self.pos);
            self.pos = 0;
            let have = self.buf.len();
            self.buf.resize(have + Self::READ.max(n - have), 0);
            let got = self.file.read(&mut self.buf[have..])?;
            self.buf.truncate(have + got);
            self.eof = got == 0;
        }
        Ok(())
    }
}

/// A file's modification time (Unix ms).
pub(crate) fn modified(meta: &std::fs::Metadata) -> Option<UnixMillis> {
    let since = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            last_seen: 1,
            failing_since: Vec::new(),
            report: Report::default(),
            admin_override: None,
        }
    }

    fn record(id: &str) -> Vec<u8> {
        let mut v = Vec::new();
        super::super::record::encode(&entry(id), &mut v);
        v
    }

    fn ids(dir: &Path) -> (Vec<String>, usize) {
        let (entries, bad) = read(dir).unwrap();
        (entries.into_iter().map(|e| e.id).collect(), bad)
    }

    /// Recovery does not depend on how the file was damaged: a flipped
    /// byte, invalid UTF-8, garbage between records and a torn last record
    /// each cost the records they touch, and the rest is read.
    #[test]
    fn damaged_records_are_skipped_whatever_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        bytes.extend(record("a"));
        bytes.extend(b"garbage, where a record should start");
        let mut flipped = record("b");
        flipped[20] ^= 0x20;
        bytes.extend(flipped);
        let mut utf8 = record("c");
        utf8[16] = 0xff; // the id's one byte
        bytes.extend(utf8);
        bytes.extend(record("d"));
        let mut length = record("e");
        length[4] = 0xff; // a length past the end of the file
        bytes.extend(length);
        bytes.extend(record("f"));
        let torn = record("g");
        bytes.extend(&torn[..torn.len() / 2]);
        std::fs::write(path(dir.path()), bytes).unwrap();
        assert_eq!(ids(dir.path()), (vec!["a".into(), "d".into(), "f".into()], 5));
    }

    /// A file cut anywhere yields the records before the cut, and never
    /// more than one damaged record.
    #[test]
    fn a_file_cut_anywhere_keeps_every_record_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for i in 0..20 {
            bytes.extend(record(&format!("d{i}")));
            ends.push(bytes.len());
        }
        for cut in 0..=bytes.len() {
            std::fs::write(path(dir.path()), &bytes[..cut]).unwrap();
            let (got, bad) = ids(dir.path());
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(got.len(), whole, "cut at {cut}");
            assert_eq!(bad, usize::from(!ends.contains(&cut) && cut != 0), "cut at {cut}");
        }
    }

    /// The estimate that sizes the table is close to the truth, for both formats.
    #[test]
    fn the_size_estimate_is_close() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(estimate(dir.path()), 0);
        let mut bytes = Vec::new();
        for i in 0..20_000 {
            bytes.extend(record(&format!("device-{i:05}")));
        }
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let n = estimate(dir.path());
        assert!((19_000..=21_000).contains(&n), "{n}");
        std::fs::remove_file(path(dir.path())).unwrap();
        let lines: String =
            (0..20_000).map(|i| serde_json::to_string(&entry(&format!("d-{i:05}"))).unwrap() + "\n").collect();
        std::fs::write(dir.path().join(JSON_FILE), lines).unwrap();
        let n = estimate(dir.path());
        assert!((19_000..=21_000).contains(&n), "{n}");
    }

    /// A snapshot written by a warden before the binary format (JSON
    /// lines) is read when there is no binary one, damage skipped as ever;
    /// the next write replaces it.
    #[test]
    fn a_json_lines_snapshot_is_read_and_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let line = |id: &str| {
            let mut v = serde_json::to_vec(&entry(id)).unwrap();
            v.push(b'\n');
            v
        };
        let mut bytes = line("a");
        let mut flipped = line("b");
        flipped[3] ^= 0x20;
        bytes.extend(flipped);
        bytes.extend(line("c"));
        std::fs::write(dir.path().join(JSON_FILE), bytes).unwrap();
        assert_eq!(ids(dir.path()), (vec!["a".into(), "c".into()], 1));
        assert!(written_at(dir.path()).is_some());
        write(&Table::default(), dir.path()).unwrap();
        assert!(!dir.path().join(JSON_FILE).exists(), "replaced by the binary snapshot");
        assert_eq!(ids(dir.path()), (vec![], 0));
    }
}
