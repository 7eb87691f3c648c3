//! The API as its OpenAPI document describes it (issue 15), with the real
//! binary: the served document is the checked-in one, an independent
//! validator (openapi-spec-validator, from PyPI) accepts it as OpenAPI 3.1,
//! every documented route answers (no "no such route", no 405), and the
//! answers validate against the document's schemas (jsonschema).

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;

const ADMIN: &str = "an-admin-token-0123456789";

/// Checks a document, then each `[path, method, status, body]` against the
/// schema the document gives that answer.
const VALIDATE: &str = r#"
import json, sys
from openapi_spec_validator import validate
from jsonschema import Draft202012Validator
doc = json.load(open(sys.argv[1]))
validate(doc)
for path, method, status, body in json.load(open(sys.argv[2])):
    answer = doc["paths"][path][method]["responses"][str(status)]
    schema = next(iter(answer["content"].values()))["schema"]
    root = dict(schema, components=doc["components"])
    errors = sorted(Draft202012Validator(root).iter_errors(body), key=str)
    if errors:
        sys.exit(f"{method.upper()} {path} {status}: {errors[0].message} at {list(errors[0].absolute_path)}")
print("ok")
"#;

fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success())
}

/// One request with the admin token: (status, body).
fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let client = warden::client::Api::new(&format!("http://127.0.0.1:{port}"), Some(ADMIN.to_string())).unwrap();
    client.request_with(method, path, body).unwrap()
}

#[test]
fn the_served_document_is_valid_openapi_and_every_route_answers_as_it_says() {
    assert!(
        python_has("openapi_spec_validator") && python_has("jsonschema"),
        "python3 -m pip install openapi-spec-validator (bash .ci/run does)"
    );
    let dir = Warden::workdir();
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "token_file = \"admin.token\"\n");
    w.wait_ready();
    publish(mqtt, "devices/pos-0001/telemetry", &pos_report(1, json!({"rooted": true})));
    wait_for("pos-0001 noncompliant", std::time::Duration::from_secs(10), || {
        let (code, body) = request(w.http, "GET", "/api/v1/devices/pos-0001", None);
        (code == 200 && serde_json::from_str::<Value>(&body).ok()?["verdict"] == "noncompliant").then_some(())
    });

    let (code, served) = request(w.http, "GET", "/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&served).unwrap();
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc, checked_in, "docs/openapi.json is what the server serves");

    // Every documented operation, with its path parameters filled in.
    let mut checks = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            operations += 1;
            let concrete = path
                .replace("{id}", if path.contains("changes") { "999" } else { "pos-0001" })
                .replace("{name}", "quarantined");
            // The long poll answers at once with a short wait.
            let concrete = if path.ends_with("/events") { format!("{concrete}?after=0&wait=1s") } else { concrete };
            let body = (method == "put").then_some(r#"{"mode":"exempt","for":"1h","reason":"openapi test"}"#);
            let (code, text) = request(w.http, &method.to_uppercase(), &concrete, body);
            assert_ne!(code, 405, "{method} {path}: {text}");
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            assert_ne!(answer["detail"], "no such route", "{method} {path} is documented but not served");
            assert!(
                doc["paths"][path][method]["responses"].get(code.to_string()).is_some(),
                "{method} {path} answered {code}, which its document does not list: {text}"
            );
            if path != "/api/v1/openapi.json" {
                checks.push(json!([path, method, code, answer]));
            }
        }
    }
    assert!(operations >= 11, "{operations} operations documented");
    // An undocumented route is not served either.
    let (code, text) = request(w.http, "GET", "/api/v1/nothing", None);
    assert_eq!(code, 404, "{text}");

    let doc_file = dir.join("openapi.json");
    std::fs::write(&doc_file, &served).unwrap();
    let checks_file = dir.join("answers.json");
    std::fs::write(&checks_file, serde_json::to_string(&checks).unwrap()).unwrap();
    let out = Command::new("python3").args(["-c", VALIDATE]).arg(&doc_file).arg(&checks_file).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    w.stop();
}
