//! The `[audit]` section.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// Keep the trail (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Ed25519 key (PEM, PKCS#8) signing the checkpoints; `warden certs
    /// init` writes one. Without it the checkpoints are unsigned.
    pub signing_key_file: Option<PathBuf>,
    /// A checkpoint once this long has passed since the last one, at the
    /// next entry (and after every 1,000 entries, and at every stop).
    #[serde(default = "default_checkpoint_every", with = "crate::diag::duration")]
    pub checkpoint_every: Duration,
    /// Whole files whose newest entry is older than this are removed (at
    /// start and whenever a new file begins), and the removal recorded.
    #[serde(default = "default_retain", with = "crate::diag::duration")]
    pub retain: Duration,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_key_file: None,
            checkpoint_every: default_checkpoint_every(),
            retain: default_retain(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_retain() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(60)
}
