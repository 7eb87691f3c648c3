//! The audit trail's chain: a sans-IO core that turns events into JSON
//! lines, each carrying its sequence number and
//! `hash = SHA-256(previous hash ‖ canonical entry)`, with a checkpoint
//! (sequence, head hash, time) every so many entries, signed with Ed25519;
//! and the verifier that re-checks a trail and names the first entry that
//! was edited, removed, reordered or cut.
//!
//! Drive it: [`Chain::append`] an event (time, kind, device, data) and
//! write the line it gives; every so many entries, and at stop, write
//! [`Chain::checkpoint`]. The shell (`gateway::audit_trail`) owns the files
//! and their syncing; [`verify`] reads a trail back.
//!
//! The canonical entry is the line's JSON without its `hash` field, as
//! serde_json writes it: objects in key order (serde_json's default map is
//! sorted), no whitespace. Verification re-serializes what it parsed, so a
//! line edited into different but equivalent JSON still fails.
//!
//! What a chain cannot show: entries cut off after the last checkpoint of
//! the newest file, if the whole lines are removed. Checkpoints bound that
//! window; shipping them elsewhere (the event stream) closes it.

pub mod config;
pub mod reader;

use crate::telemetry::UnixMillis;
use crate::telemetry::report::format_rfc3339;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The domain of a checkpoint signature: never valid as anything else.
const CHECKPOINT_CONTEXT: &str = "warden-audit-checkpoint-v1";

/// One entry, as hashed (no `hash` field).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Entry {
    seq: u64,
    at: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    device: Option<String>,
    data: Value,
    prev: String,
}

/// A line of the trail: an entry with its hash, or a checkpoint.
enum Line {
    Checkpoint(Checkpoint),
    Entry { entry: Entry, hash: String },
}

impl Line {
    fn parse(text: &str) -> Result<Self, String> {
        let mut v: serde_json::Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.contains_key("checkpoint") {
            return serde_json::from_value(Value::Object(v)).map(Line::Checkpoint).map_err(|e| e.to_string());
        }
        let Some(Value::String(hash)) = v.remove("hash") else { return Err("no hash".into()) };
        let entry = serde_json::from_value(Value::Object(v)).map_err(|e| e.to_string())?;
        Ok(Line::Entry { entry, hash })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    checkpoint: u64,
    head: String,
    at: String,
    /// Base64 Ed25519 signature over the checkpoint's message; absent when
    /// no signing key is configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    sig: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(seq: u64, head: &str, at: &str) -> String {
    format!("{CHECKPOINT_CONTEXT}\n{seq}\n{head}\n{at}")
}

fn hash(prev: &str, canonical: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(canonical);
    hex(ctx.finish().as_ref())
}

/// The hash a new trail starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The writer's side: where the chain is.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The sequence number of the last entry (0: none yet).
    pub seq: u64,
    /// Its hash (hex).
    pub head: String,
}

impl Default for Chain {
    fn default() -> Self {
        Self { seq: 0, head: GENESIS.to_string() }
    }
}

impl Chain {
    /// The line for the next entry, and the chain moved past it.
    pub fn append(&mut self, at: UnixMillis, kind: &str, device: Option<&str>, data: Value) -> String {
        let entry = Entry {
            seq: self.seq + 1,
            at: format_rfc3339(at),
            kind: kind.to_string(),
            device: device.map(str::to_string),
            data,
            prev: self.head.clone(),
        };
        let canonical = serde_json::to_vec(&entry).unwrap_or_default();
        let h = hash(&self.head, &canonical);
        self.seq = entry.seq;
        self.head.clone_from(&h);
        // The entry's fields, then its hash: still one JSON object.
        let mut line = canonical;
        line.pop(); // the closing brace
        line.extend_from_slice(format!(",\"hash\":\"{h}\"}}").as_bytes());
        String::from_utf8(line).unwrap_or_default()
    }

    /// A checkpoint line for where the chain is now, signed if `key`.
    pub fn checkpoint(&self, at: UnixMillis, key: Option<&Ed25519KeyPair>) -> String {
        let at = format_rfc3339(at);
        let sig = key.map(|k| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(k.sign(message(self.seq, &self.head, &at).as_bytes()))
        });
        let c = Checkpoint { checkpoint: self.seq, head: self.head.clone(), at, sig };
        serde_json::to_string(&c).unwrap_or_default()
    }
}

/// Where a trail stops being trustworthy.
#[derive(Debug, PartialEq, Eq)]
pub struct Tampered {
    /// The file and line (as the caller named them).
    pub at: String,
    /// The sequence number expected there.
    pub seq: u64,
    pub what: String,
}

impl std::fmt::Display for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: entry {}: {}", self.at, self.seq, self.what)
    }
}

/// What a clean trail holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub checkpoints: u64,
    pub signed: u64,
}

/// The kind of the entry recording that files older than `audit.retain`
/// were removed; its `data.kept_from` is the first entry kept.
pub const PRUNED: &str = "warden.audit.pruned";

/// Re-checks a whole trail, line by line (`(location, text)` in order),
/// against the checkpoint key's public half if given (then every
/// checkpoint must carry a valid signature).
///
/// A trail whose oldest files were removed by retention starts mid-chain:
/// its first line anchors the chain, and the newest [`PRUNED`] entry must
/// name exactly that first entry as the first kept. So removing more than
/// retention did, or starting a trail over, is still caught.
pub fn verify<'a>(
    lines: impl IntoIterator<Item = (String, &'a str)>,
    public_key: Option<&[u8]>,
) -> Result<Verified, Tampered> {
    let mut chain = Chain::default();
    let mut out = Verified::default();
    // Where the trail starts (its first entry's seq), and what the newest
    // pruning record says it should.
    let mut first: Option<(String, u64)> = None;
    let mut kept_from: Option<u64> = None;
    for (at, text) in lines {
        let line = Line::parse(text).map_err(|e| Tampered {
            at: at.clone(),
            seq: chain.seq + 1,
            what: format!("not an audit line ({e}): cut or edited"),
        })?;
        if out.entries == 0 && out.checkpoints == 0 {
            // The first line anchors a trail that starts mid-chain.
            match &line {
                Line::Entry { entry, .. } if entry.seq > 1 => {
                    chain = Chain { seq: entry.seq - 1, head: entry.prev.clone() };
                }
                Line::Checkpoint(c) => chain = Chain { seq: c.checkpoint, head: c.head.clone() },
                Line::Entry { .. } => {}
            }
        }
        if first.is_none()
            && let Line::Entry { entry, .. } = &line
        {
            first = Some((at.clone(), entry.seq));
        }
        let fail = |what: String| Tampered { at: at.clone(), seq: chain.seq + 1, what };
        match line {
            Line::Entry { entry, hash: claimed } => {
                if entry.kind == PRUNED {
                    kept_from = entry.data.get("kept_from").and_then(Value::as_u64);
                }
                if entry.seq != chain.seq + 1 {
                    return Err(fail(format!("found entry {} here: entries removed or reordered", entry.seq)));
                }
                if entry.prev != chain.head {
                    return Err(fail("its prev is not the previous entry's hash: an entry before it changed".into()));
                }
                let canonical = serde_json::to_vec(&entry).unwrap_or_default();
                let h = hash(&chain.head, &canonical);
                if h != claimed {
                    return Err(fail("its hash does not match its content: edited".into()));
                }
                chain.seq = entry.seq;
                chain.head = h;
                out.entries += 1;
            }
            Line::Checkpoint(c) => {
                if c.checkpoint != chain.seq || c.head != chain.head {
                    return Err(fail(format!(
                        "checkpoint {} does not match the chain here (entries removed, added or edited before it)",
                        c.checkpoint
                    )));
                }
                match (public_key, &c.sig) {
                    (Some(key), Some(sig)) => {
                        use base64::Engine as _;
                        let sig = base64::engine::general_purpose::STANDARD
                            .decode(sig)
                            .map_err(|_| fail("checkpoint signature is not base64".into()))?;
                        UnparsedPublicKey::new(&ED25519, key)
                            .verify(message(c.checkpoint, &c.head, &c.at).as_bytes(), &sig)
                            .map_err(|_| fail(format!("checkpoint {} has a bad signature: replaced", c.checkpoint)))?;
                        out.signed += 1;
                    }
                    (Some(_), None) => return Err(fail(format!("checkpoint {} is not signed", c.checkpoint))),
                    (None, _) => {}
                }
                out.checkpoints += 1;
            }
        }
    }
    if let Some((at, seq)) = first
        && seq > 1
        && kept_from != Some(seq)
    {
        let what = match kept_from {
            None => "the trail starts here, after entries no pruning record accounts for: its start was removed".into(),
            Some(k) => {
                format!("the trail starts here, but the last pruning record kept entries from {k}: entries removed")
            }
        };
        return Err(Tampered { at, seq, what });
    }
    Ok(out)
}

/// A new Ed25519 key (PKCS#8), for `warden certs init`.
pub fn generate_key() -> Result<Vec<u8>, String> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()).map_err(|_| "could not generate a key".into())
}

/// The key pair in a PKCS#8 document, and its public half.
pub fn load_key(pkcs8: &[u8]) -> Result<(Ed25519KeyPair, Vec<u8>), String> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
    let public = pair.public_key().as_ref().to_vec();
    Ok((pair, public))
}

/// The trail's files in `dir`, `audit-N.jsonl`, by N.
pub fn files(dir: &std::path::Path) -> std::io::Result<Vec<(u64, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("audit-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// A PKCS#8 key as PEM (`PRIVATE KEY`).
pub fn key_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", body.join("\n"))
}

/// The key pair in a PEM file written by [`key_pem`], and its public half.
pub fn read_key(text: &str) -> Result<(Ed25519KeyPair, Vec<u8>), String> {
    use base64::Engine as _;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|_| "not a PEM key".to_string())?;
    load_key(&der)
}

#[cfg(test)]
mod tests;
