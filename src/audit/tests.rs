//! The chain against hand-made tampering: each kind is caught, at the right
//! entry.

use super::*;

const T: UnixMillis = 1_764_000_000_000;

/// A trail of 10 entries with a signed checkpoint after every 4, and the key.
fn trail() -> (Vec<String>, Vec<u8>) {
    let (key, public) = load_key(&generate_key().unwrap()).unwrap();
    let mut chain = Chain::default();
    let mut lines = Vec::new();
    for i in 1..=10i64 {
        let data = serde_json::json!({"from": "compliant", "to": "noncompliant", "n": i});
        lines.push(chain.append(T + i, "warden.verdict.changed", Some(&format!("d-{i}")), data));
        if i % 4 == 0 {
            lines.push(chain.checkpoint(T + i, Some(&key)));
        }
    }
    lines.push(chain.checkpoint(T + 11, Some(&key)));
    (lines, public)
}

fn check(lines: &[String], key: Option<&[u8]>) -> Result<Verified, Tampered> {
    verify(lines.iter().enumerate().map(|(i, l)| (format!("audit-0.jsonl:{}", i + 1), l.as_str())), key)
}

#[test]
fn a_clean_trail_verifies() {
    let (lines, public) = trail();
    assert_eq!(check(&lines, Some(&public)), Ok(Verified { entries: 10, checkpoints: 3, signed: 3 }));
    assert_eq!(check(&lines, None).unwrap().entries, 10, "without the key, the chain alone");
    // Every line is one JSON object with its hash.
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["kind"].as_str(), v["device"].as_str()),
        (Some(1), Some("warden.verdict.changed"), Some("d-1"))
    );
    assert_eq!(v["prev"], GENESIS);
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);
}

#[test]
fn an_edited_byte_is_caught_at_its_entry() {
    let (mut lines, public) = trail();
    lines[2] = lines[2].replace("\"n\":3", "\"n\":4");
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!((e.seq, e.at.as_str()), (3, "audit-0.jsonl:3"), "{e}");
    assert!(e.what.contains("edited"), "{e}");
}

#[test]
fn an_edit_with_its_hash_recomputed_is_caught_by_the_next_entry_or_checkpoint() {
    let (mut lines, public) = trail();
    // Rewrite entry 2 and give it a hash that matches its new content.
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(&lines[1]).unwrap();
    v.remove("hash");
    v.insert("device".into(), "someone-else".into());
    let entry: Entry = serde_json::from_value(Value::Object(v)).unwrap();
    let h = hash(&entry.prev, &serde_json::to_vec(&entry).unwrap());
    let mut forged = serde_json::to_value(&entry).unwrap();
    forged["hash"] = h.into();
    lines[1] = forged.to_string();
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!(e.seq, 3, "entry 3's prev no longer matches: {e}");
}

#[test]
fn a_removed_entry_is_caught() {
    let (mut lines, public) = trail();
    lines.remove(5);
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!(e.at, "audit-0.jsonl:6");
    assert!(e.what.contains("removed or reordered"), "{e}");
}

#[test]
fn two_swapped_entries_are_caught() {
    let (mut lines, public) = trail();
    lines.swap(6, 7);
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!(e.at, "audit-0.jsonl:7", "{e}");
}

#[test]
fn a_cut_tail_is_caught() {
    let (mut lines, public) = trail();
    let last = lines.len() - 2;
    let half = lines[last].len() / 2;
    lines[last].truncate(half);
    let e = check(&lines, Some(&public)).unwrap_err();
    assert!(e.what.contains("cut or edited"), "{e}");
    // Whole entries removed before a checkpoint: the checkpoint says so.
    let (mut lines, public) = trail();
    lines.drain(5..7);
    assert!(check(&lines, Some(&public)).is_err());
}

#[test]
fn a_replaced_checkpoint_is_caught() {
    let (mut lines, public) = trail();
    // Another key signs a checkpoint over the same chain.
    let (other, _) = load_key(&generate_key().unwrap()).unwrap();
    let mut chain = Chain::default();
    for l in &lines[..4] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        chain.seq = v["seq"].as_u64().unwrap();
        chain.head = v["hash"].as_str().unwrap().to_string();
    }
    lines[4] = chain.checkpoint(T + 4, Some(&other));
    let e = check(&lines, Some(&public)).unwrap_err();
    assert!(e.what.contains("bad signature"), "{e}");
    // And a checkpoint that claims another head.
    let (mut lines, public) = trail();
    let mut v: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
    v["head"] = GENESIS.into();
    lines[4] = v.to_string();
    let e = check(&lines, Some(&public)).unwrap_err();
    assert!(e.what.contains("does not match the chain"), "{e}");
}

/// `lines` with its start removed up to (not including) entry `from`, and a
/// pruning record appended that names `kept_from`.
fn pruned(from: u64, kept_from: Option<u64>) -> (Vec<String>, Vec<u8>) {
    let (key, public) = load_key(&generate_key().unwrap()).unwrap();
    let mut chain = Chain::default();
    let mut lines = Vec::new();
    for i in 1..=10i64 {
        lines.push(chain.append(T + i, "warden.verdict.changed", Some(&format!("d-{i}")), serde_json::json!({"n": i})));
        if i % 4 == 0 {
            lines.push(chain.checkpoint(T + i, Some(&key)));
        }
    }
    if let Some(k) = kept_from {
        lines.push(chain.append(T + 20, PRUNED, None, serde_json::json!({"files": ["audit-1.jsonl"], "kept_from": k})));
    }
    lines.push(chain.checkpoint(T + 21, Some(&key)));
    let start = lines.iter().position(|l| l.starts_with(&format!("{{\"seq\":{from},"))).unwrap();
    // Keep the checkpoint just before it, if there is one (a file may start with one).
    let start = if start > 0 && lines[start - 1].contains("\"checkpoint\"") { start - 1 } else { start };
    (lines[start..].to_vec(), public)
}

#[test]
fn a_trail_pruned_by_retention_verifies_from_where_it_starts() {
    let (lines, public) = pruned(5, Some(5));
    assert!(lines[0].contains("\"checkpoint\":4"), "starts at a checkpoint: {}", lines[0]);
    assert_eq!(check(&lines, Some(&public)).unwrap().entries, 7);
    let (lines, public) = pruned(7, Some(7));
    assert_eq!(check(&lines, Some(&public)).unwrap().entries, 5);
}

#[test]
fn a_start_removed_without_a_pruning_record_is_caught() {
    let (lines, public) = pruned(7, None);
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!((e.seq, e.at.as_str()), (7, "audit-0.jsonl:1"), "{e}");
    assert!(e.what.contains("no pruning record"), "{e}");
}

#[test]
fn more_removed_than_retention_did_is_caught() {
    // Retention kept entries from 5; someone also removed 5 and 6.
    let (lines, public) = pruned(7, Some(5));
    let e = check(&lines, Some(&public)).unwrap_err();
    assert_eq!(e.seq, 7, "{e}");
    assert!(e.what.contains("kept entries from 5"), "{e}");
}
