//! The layers, checked on the source: the cores (protocols, policy, the
//! compliance table) never reach up into the shells or the config
//! assembly, and no two top-level modules import each other, directly or
//! round a longer loop. clippy.toml keeps the clock and randomness out of
//! the cores; this keeps their imports out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The sans-IO cores and the small leaf modules they share.
const CORES: &[&str] = &[
    "audit",
    "compliance",
    "diag",
    "durable",
    "eap",
    "events",
    "mac",
    "policy",
    "radius",
    "remediation",
    "report",
    "telemetry",
    "tokens",
    "users",
    "wireguard",
];

/// What drives the cores: tasks, handlers, the clock, the config assembly,
/// the commands.
const ABOVE: &[&str] = &["cli", "client", "clock", "commands", "config", "gateway", "http", "metrics"];

/// Top-level module → the top-level modules its non-test code names.
fn imports() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // Tests and the fuzz entry points may reach anywhere.
            if !name.ends_with(".rs") || name.contains("tests") || name == "fuzzing.rs" {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for used in named_modules(code) {
                if used != top {
                    graph.entry(top.clone()).or_default().entry(used).or_default().insert(rel.display().to_string());
                }
            }
        }
    }
    graph
}

/// Every `crate::NAME` and every `NAME` in `use crate::{NAME, ...}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for part in group.split('}').next().unwrap_or("").split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn cores_import_no_shell() {
    let graph = imports();
    let mut wrong = Vec::new();
    for core in CORES {
        for (used, files) in graph.get(*core).into_iter().flatten() {
            if ABOVE.contains(&used.as_str()) {
                wrong.push(format!("{core} imports {used} (in {files:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "a core reaches up into a shell:\n{}", wrong.join("\n"));
    // The check sees what it should: the shells do import the cores.
    assert!(graph["gateway"].contains_key("compliance") && graph["http"].contains_key("compliance"));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = imports();
    // Depth-first search; a back edge closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|n| *n == node) {
            cycles.push(format!("{} -> {node}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            visit(next, graph, path, done, cycles);
        }
        path.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles between top-level modules:\n{}", cycles.join("\n"));
    assert!(graph.len() > 10, "the scan found the modules ({})", graph.len());
}

#[test]
fn the_scan_sees_grouped_and_plain_imports() {
    let got = named_modules("use crate::{diag::Located, telemetry};\nlet x = crate::policy::eval(y);");
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["diag", "policy", "telemetry"]);
}
