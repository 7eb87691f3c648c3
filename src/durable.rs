//! Replacing a small file whole: the new content goes to a temporary file
//! beside it, is synced, renamed over the old one, and the directory is
//! synced, so a crash leaves the old file or the new one, never a mix or
//! nothing (report files, their index, webhook cursors, the WireGuard
//! address pool).

use std::io::Write as _;
use std::path::Path;

pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
