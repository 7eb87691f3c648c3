//! The web console in a real browser (issue 16): Debian's headless Chromium,
//! driven through chromedriver's WebDriver API, logs in with an admin and
//! then a read token, loads the overview and a device page of a running
//! warden with a scripted fleet, takes a screenshot, and the test asserts
//! on the DOM: the counts, the failed rule, the override form only for the
//! admin, a live change arriving on the overview; and, from Chromium's own
//! network log, that the console asked nothing of anyone but warden.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ADMIN: &str = "alice-admin-token-0123456789";
const READER: &str = "grafana-read-token-0123456789";

fn sha256_hex(t: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, t.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A chromedriver and one browser session.
struct Browser {
    driver: Child,
    api: warden::client::Api,
    session: String,
}

impl Browser {
    fn start(profile: &std::path::Path) -> Self {
        require("chromedriver", "chromium-driver");
        require("chromium", "chromium");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let api = warden::client::Api::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        wait_for("chromedriver", Duration::from_secs(10), || api.request("GET", "/status").ok());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"performance": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                         "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let (code, body) = api.request_with("POST", "/session", Some(&caps.to_string())).unwrap();
        assert_eq!(code, 200, "a browser session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Self { driver, api, session }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then(|| body.to_string());
        let (code, text) = self.api.request_with(method, &path, body.as_deref()).unwrap();
        assert_eq!(code, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    fn dom(&self) -> String {
        self.call("GET", "/source", Value::Null).as_str().unwrap().to_string()
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    fn text(&self, css: &str) -> String {
        let script = format!("const e = document.querySelector({}); return e ? e.textContent : null;", json!(css));
        self.script(&script).as_str().unwrap_or_default().to_string()
    }

    fn login(&self, base: &str, token: &str) {
        self.go(&format!("{base}/ui/"));
        let url = self.script("return document.querySelector('#token') ? document.URL : null;");
        assert!(url.as_str().is_some_and(|u| u.ends_with("/ui/login")), "redirected to the login form: {}", self.dom());
        let input = self.call("POST", "/element", json!({"using": "css selector", "value": "#token"}));
        let input = input.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
        self.call("POST", &format!("/element/{input}/value"), json!({"text": token}));
        let button = self.call("POST", "/element", json!({"using": "css selector", "value": "#login"}));
        let button = button.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
        self.call("POST", &format!("/element/{button}/click"), json!({}));
        wait_for("the overview after login", Duration::from_secs(10), || {
            self.script("return document.querySelector('#count-compliant') !== null;")
                .as_bool()
                .unwrap_or(false)
                .then_some(())
        });
    }

    /// Every URL the console's pages requested (requests whose document
    /// came from `base`), from the browser's performance log. The
    /// browser's own start page (chrome://) is not the console's.
    fn requested(&self, base: &str) -> Vec<String> {
        let entries = self.call("POST", "/se/log", json!({"type": "performance"}));
        entries
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter(|m| m["message"]["params"]["documentURL"].as_str().is_some_and(|d| d.starts_with(base)))
            .filter_map(|m| m["message"]["params"]["request"]["url"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.api.request("DELETE", &format!("/session/{}", self.session));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_console_in_a_real_browser() {
    let dir = Warden::workdir();
    std::fs::write(
        dir.join("tokens.toml"),
        format!(
            "[[tokens]]\nname = \"alice\"\nrole = \"admin\"\nsha256 = \"{}\"\n[[tokens]]\nname = \"grafana\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            sha256_hex(ADMIN),
            sha256_hex(READER)
        ),
    )
    .unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n"
    );
    let mut w = Warden::launch(&dir, &config, mqtt, "tokens_file = \"tokens.toml\"\n");
    w.wait_ready();
    // A scripted fleet: two compliant, one rooted.
    for (i, patch) in [(1, json!({})), (2, json!({"rooted": true})), (3, json!({}))] {
        let mut patch = patch;
        patch["mac_addresses"] = json!([format!("aa:bb:cc:00:00:0{i}")]);
        patch["cert_identity"] = json!(format!("pos-000{i}"));
        publish(mqtt, &format!("devices/pos-000{i}/telemetry"), &pos_report(1, patch));
    }
    let auth = format!("Bearer {ADMIN}");
    for (id, verdict) in [("pos-0001", "compliant"), ("pos-0002", "noncompliant"), ("pos-0003", "compliant")] {
        wait_for(&format!("{id} {verdict}"), Duration::from_secs(10), || {
            let (code, body) = http_get_with(w.http, &format!("/api/v1/devices/{id}"), &[("Authorization", &auth)])?;
            (code == 200 && serde_json::from_str::<Value>(&body).ok()?["verdict"] == verdict).then_some(())
        });
    }
    let base = format!("http://127.0.0.1:{}", w.http);
    let profile = dir.join("chromium-profile");
    let b = Browser::start(&profile);

    // The admin: the overview's counts, then the device page with its controls.
    b.login(&base, ADMIN);
    assert_eq!(b.text("#count-compliant"), "2");
    assert_eq!(b.text("#count-noncompliant"), "1");
    assert!(b.text("#failing").contains("pos-0002"));
    let png = b.call("GET", "/screenshot", Value::Null);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "a screenshot of the overview");
    std::fs::write(dir.join("overview.png"), &png).unwrap();

    // A drift while the overview is open arrives in its live list.
    publish(
        mqtt,
        "devices/pos-0003/telemetry",
        &pos_report(
            2,
            json!({"encrypted": false, "mac_addresses": ["aa:bb:cc:00:00:03"], "cert_identity": "pos-0003"}),
        ),
    );
    wait_for("the live change on the overview", Duration::from_secs(15), || {
        b.text("#changes").contains("pos-0003").then_some(())
    });

    // The live list's endpoint: its refusals are problem details too, and a
    // missing cursor starts from the trail's beginning.
    let xhr = |url: &str| {
        b.script(&format!(
            "var x = new XMLHttpRequest(); x.open('GET', '{url}', false); x.send(); \
             return [x.status, x.getResponseHeader('content-type'), x.responseText];"
        ))
    };
    let bad = xhr("/ui/events?after=abc");
    assert_eq!(bad[0], 400, "{bad}");
    assert_eq!(bad[1], "application/problem+json", "{bad}");
    let all = xhr("/ui/events");
    assert_eq!(all[0], 200, "{all}");
    let all: Value = serde_json::from_str(all[2].as_str().unwrap()).unwrap();
    assert!(all["events"].as_array().is_some_and(|e| e.iter().any(|e| e["device"] == "pos-0002")), "{all}");
    let (code, body) = http_get_with(w.http, "/ui/events?after=0", &[]).unwrap();
    assert_eq!(code, 401, "no session: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 401, "{body}");

    b.go(&format!("{base}/ui/devices/pos-0002"));
    assert_eq!(b.text("#verdict"), "noncompliant");
    assert!(b.text("#failed-rules").contains("not-rooted"), "{}", b.text("#failed-rules"));
    assert_eq!(
        b.script("return document.querySelector('#override-form') !== null;"),
        json!(true),
        "an admin may override"
    );
    let shot = b.call("GET", "/screenshot", Value::Null);
    std::fs::write(
        dir.join("device.png"),
        base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap(),
    )
    .unwrap();

    // The admin exempts it through the form.
    let script = "document.querySelector('#override-form select').value = 'exempt';\
                  document.querySelector('#override-form input[name=reason]').value = 'repair 12';\
                  document.querySelector('#override-form').submit(); return true;";
    b.script(script);
    wait_for("the override on the page", Duration::from_secs(10), || {
        b.text("#override").contains("repair 12").then_some(())
    });
    assert!(b.text("#override").contains("alice"));

    // A read token sees the same page without the controls.
    b.go(&format!("{base}/ui/"));
    let logout = "document.querySelector('nav form').submit(); return true;";
    b.script(logout);
    wait_for("the login form after logging out", Duration::from_secs(10), || {
        b.script("return document.querySelector('#token') !== null;").as_bool().unwrap_or(false).then_some(())
    });
    b.login(&base, READER);
    b.go(&format!("{base}/ui/devices/pos-0002"));
    assert!(b.text("#failed-rules").contains("not-rooted"));
    assert_eq!(
        b.script("return document.querySelector('#override-form') !== null;"),
        json!(false),
        "a read token gets no override control"
    );

    // Everything the browser asked for, it asked of warden.
    let requested = b.requested(&base);
    assert!(requested.iter().any(|u| u.ends_with("/ui/console.js")), "{requested:?}");
    for url in &requested {
        assert!(url.starts_with(&base) || url.starts_with("data:"), "a request outside warden: {url}");
    }
    w.stop();
}
