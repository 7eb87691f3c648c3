//! A snapshot of the table in `state_dir`, so a restart resumes with the last
//! known reports: JSON lines, written to a temporary file, synced and renamed
//! over the previous one, so a crash mid-write leaves the old snapshot whole.

use super::device::Device;
use super::table::Table;
use crate::telemetry::{Report, UnixMillis};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file name inside `state_dir`.
pub const FILE: &str = "compliance.jsonl";

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
    modified(&std::fs::metadata(dir.join(FILE)).ok()?)
}

/// Writes every device of `table` to `dir/FILE`. Returns the device count.
pub fn write(table: &Table, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let file = std::fs::File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut count = 0;
    let mut result = Ok(());
    table.for_each(|d| {
        if result.is_err() {
            return;
        }
        result = serde_json::to_writer(&mut out, &Entry::of(d))
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n"));
        count += 1;
    });
    result?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(dir))?;
    Ok(count)
}

/// The snapshot's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the snapshot; a missing file is an empty fleet. Lines that do not
/// parse are skipped and counted (second value), never fatal.
pub fn read(dir: &Path) -> std::io::Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let bad = stream(dir, Some, |chunk| entries.extend(chunk))?;
    Ok((entries, bad))
}

/// Entries handed over per chunk by [`stream`].
const CHUNK: usize = 4096;

/// Reads the snapshot on a second thread, which also runs `map` on each
/// entry (`None`: leave it out), and hands `f` the results in chunks as
/// they come, so a restart restores while it reads and never holds the
/// whole fleet twice. A restart settles each device in `map` (parsing and
/// policy evaluation on the reader's core) and only stores it in `f`.
/// Returns the lines skipped.
pub fn stream<T: Send>(
    dir: &Path,
    map: impl FnMut(Entry) -> Option<T> + Send,
    mut f: impl FnMut(Vec<T>),
) -> std::io::Result<usize> {
    let file = match std::fs::File::open(path(dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn_scoped(scope, move || parse(file, map, |chunk| tx.send(chunk).is_ok()))?;
        for chunk in rx {
            f(chunk);
        }
        reader.join().unwrap_or_else(|_| Err(std::io::Error::other("snapshot reader panicked")))
    })
}

/// Parses lines, maps them, and hands chunks to `send` (false: stop).
/// Returns the lines skipped.
fn parse<T>(
    file: std::fs::File,
    mut map: impl FnMut(Entry) -> Option<T>,
    mut send: impl FnMut(Vec<T>) -> bool,
) -> std::io::Result<usize> {
    let mut entries = Vec::with_capacity(CHUNK);
    let mut bad = 0;
    let mut open = true;
    lines(file, |text| {
        match serde_json::from_slice::<Entry>(text) {
            Ok(e) if crate::telemetry::parse::valid_device_id(&e.id) => entries.extend(map(e)),
            _ => bad += 1,
        }
        if entries.len() == CHUNK {
            open = send(std::mem::replace(&mut entries, Vec::with_capacity(CHUNK)));
        }
        open
    })?;
    if open && !entries.is_empty() {
        send(entries);
    }
    Ok(bad)
}

/// Calls `f` on each non-empty line of `file` (without its newline) until
/// it returns false. Lines as bytes: a damaged line (a flipped byte,
/// invalid UTF-8, a torn end) reaches `f` like any other, for it to skip
/// and count; damage is never fatal.
pub(crate) fn lines(file: std::fs::File, mut f: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
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

/// A file's modification time (Unix ms).
pub(crate) fn modified(meta: &std::fs::Metadata) -> Option<UnixMillis> {
    let since = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> Vec<u8> {
        let e = Entry {
            id: id.into(),
            last_seen: 1,
            failing_since: Vec::new(),
            report: Report::default(),
            admin_override: None,
        };
        let mut v = serde_json::to_vec(&e).unwrap();
        v.push(b'\n');
        v
    }

    /// Recovery does not depend on how the file was damaged: a flipped
    /// byte, invalid UTF-8 and a torn last line are each one skipped line.
    #[test]
    fn damaged_lines_are_skipped_whatever_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        bytes.extend(line("a"));
        let mut flipped = line("b");
        flipped[3] ^= 0x20;
        bytes.extend(flipped);
        let mut utf8 = line("c");
        utf8[8] = 0xff;
        bytes.extend(utf8);
        bytes.extend(line("d"));
        let torn = line("e");
        bytes.extend(&torn[..torn.len() / 2]);
        std::fs::write(path(dir.path()), bytes).unwrap();
        let (entries, bad) = read(dir.path()).unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!((ids, bad), (vec!["a", "d"], 3));
    }
}
