//! Test harness: the real `warden` binary, real MQTT clients and brokers
//! (mosquitto from Debian), and a plain HTTP/1.1 client. Every wait is
//! bounded; every child process is stopped when its handle drops.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

pub mod nas;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Fails with a clear message when a Debian tool the suite needs is missing.
pub fn require(tool: &str, package: &str) {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} not found: install the Debian package {package} (bash .ci/run does)");
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` on 127.0.0.1:port: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[])
}

pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        warden::client::dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// A running `warden run`.
pub struct Warden {
    child: Option<Child>,
    pub dir: PathBuf,
    pub http: u16,
    pub mqtt: u16,
    pub log: PathBuf,
    /// The network namespace it runs in (`None`: the test's own).
    pub netns: Option<String>,
}

/// What a test may vary in the configuration.
pub struct Setup {
    pub broker: String,
    pub mqtt: u16,
    pub stale_after: &'static str,
    pub extra: String,
}

impl Setup {
    pub fn embedded() -> Self {
        Self { broker: "embedded".into(), mqtt: free_port(), stale_after: "15m", extra: String::new() }
    }

    pub fn external(port: u16) -> Self {
        Self { broker: format!("mqtt://127.0.0.1:{port}"), mqtt: port, stale_after: "15m", extra: String::new() }
    }
}

impl Warden {
    /// A fresh working directory with the shipped policies copied in.
    pub fn workdir() -> PathBuf {
        let dir = tempfile::Builder::new().prefix("warden-test-").tempdir().unwrap().keep();
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for e in std::fs::read_dir(shipped).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, policies.join(p.file_name().unwrap())).unwrap();
            }
        }
        dir
    }

    /// Starts warden in `dir` and waits until `/readyz` says ready.
    pub fn start(dir: &Path, setup: &Setup) -> Self {
        let config = format!(
            "[node]\nname = \"test\"\nstate_dir = \"state\"\nsnapshot_every = \"1s\"\n\
             [mqtt]\nbroker = \"{}\"\nlisten = \"127.0.0.1:{}\"\nclient_id = \"warden-test-{}\"\n{}\
             [policy]\ndir = \"policies\"\nstale_after = \"{}\"\n",
            setup.broker,
            setup.mqtt,
            free_port(),
            if setup.broker == "embedded" { "allow_anonymous = true\n" } else { "" },
            setup.stale_after
        );
        let mut w = Self::launch(dir, &config, setup.mqtt, &setup.extra);
        w.wait_ready();
        w
    }

    /// Starts warden with `config` (every table but `[http]`, which is added
    /// with a free port and `http_extra`), without waiting for readiness.
    pub fn launch(dir: &Path, config: &str, mqtt: u16, http_extra: &str) -> Self {
        Self::launch_in(None, dir, config, mqtt, http_extra)
    }

    /// [`Warden::launch`] inside network namespace `netns`, if given: its
    /// loopback ports are then reached through `ip netns exec`.
    pub fn launch_in(netns: Option<&str>, dir: &Path, config: &str, mqtt: u16, http_extra: &str) -> Self {
        // Not the MQTT port: on a restart that port is free (nothing listens
        // on it while warden is down) and could be handed out again.
        let http = std::iter::repeat_with(free_port).find(|p| *p != mqtt).unwrap_or_default();
        let file = dir.join(format!("warden-{http}.toml"));
        std::fs::write(&file, format!("{config}\n[http]\nlisten = \"127.0.0.1:{http}\"\n{http_extra}")).unwrap();
        let log = dir.join(format!("warden-{http}.log"));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_warden")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_warden")),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info,warden=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start warden");
        Self { child: Some(child), dir: dir.to_path_buf(), http, mqtt, log, netns: netns.map(String::from) }
    }

    /// GET `path` from its HTTP API (inside its namespace if it has one).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let Some(ns) = &self.netns else { return http_get(self.http, path) };
        let script = "import sys, urllib.request, urllib.error\n\
                      try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n\
                      except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", script, &url]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, body) = text.split_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self) {
        let ready = wait_for_or_log(self, "warden /readyz", Duration::from_secs(20), |w| {
            w.get("/readyz").filter(|(code, _)| *code == 200).map(|_| ())
        });
        ready.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops it with SIGTERM (a graceful stop: the final snapshot is written).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "warden exited with {status}; log:\n{}", self.log_text());
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            panic!("warden did not stop within 20 s of SIGTERM");
        }
    }

    /// Kills it with SIGKILL, as a crash would: nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGHUP (policy reload).
    pub fn hup(&self) {
        let pid = self.child.as_ref().unwrap().id();
        assert!(Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap().success());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The device JSON from the API, or `None` on 404.
    pub fn device(&self, id: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get(&format!("/api/v1/devices/{id}"))?;
        (code == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// The device JSON, with request headers (a token); panics on anything but 200.
    pub fn device_with(&self, id: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let (code, body) = http_get_with(self.http, &format!("/api/v1/devices/{id}"), headers).expect("device");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the device's verdict is `verdict`; returns the device JSON.
    pub fn wait_verdict(&self, id: &str, verdict: &str) -> serde_json::Value {
        wait_for(&format!("{id} to be {verdict}"), Duration::from_secs(10), || {
            self.device(id).filter(|d| d["verdict"] == verdict)
        })
    }

    /// One sample of a metric (full name with labels, as exposed).
    pub fn metric(&self, series: &str) -> f64 {
        self.sample(series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// One sample of a metric, if it is exposed yet (a series with a label
    /// from the config appears with its first count).
    fn sample(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
    }

    /// Waits until a metric reaches at least `want`.
    pub fn wait_metric(&self, series: &str, want: f64) {
        self.wait_metric_for(series, want, Duration::from_secs(10));
    }

    /// [`Warden::wait_metric`] with its own bound (fleet-sized work on a
    /// shared CI machine).
    pub fn wait_metric_for(&self, series: &str, want: f64, limit: Duration) {
        wait_for(&format!("{series} >= {want}"), limit, || (self.sample(series)? >= want).then_some(()));
    }
}

fn wait_for_or_log(
    w: &mut Warden,
    what: &str,
    limit: Duration,
    mut f: impl FnMut(&Warden) -> Option<()>,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if f(w).is_some() {
            return Ok(());
        }
        if let Some(child) = w.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!("warden exited early ({status}); log:\n{}", w.log_text()));
        }
        if start.elapsed() > limit {
            return Err(format!("timed out waiting for {what}; log:\n{}", w.log_text()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A mosquitto broker from Debian, on its own loopback port.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, free_port(), "", "allow_anonymous true\n")
    }

    /// Starts mosquitto on `port`, with `global` lines before the listener
    /// and `extra` lines after it.
    pub fn start_with(dir: &Path, port: u16, global: &str, extra: &str) -> Self {
        require("mosquitto", "mosquitto");
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let text = format!("{global}persistence false\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\n{extra}");
        std::fs::write(&conf, text).unwrap();
        let mut m = Self { child: Self::spawn(&conf), port, conf };
        m.wait_listening();
        m
    }

    fn spawn(conf: &Path) -> Child {
        Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto")
    }

    fn wait_listening(&mut self) {
        let port = self.port;
        wait_for("mosquitto to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).ok());
    }

    /// Kills the broker (sessions and subscriptions are lost: no persistence).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and configuration.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.conf);
        self.wait_listening();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one message with the real `mosquitto_pub` (QoS 1).
pub fn publish(port: u16, topic: &str, payload: &str) {
    publish_in(None, port, topic, payload)
}

/// [`publish`] from inside network namespace `netns`, if given.
pub fn publish_in(netns: Option<&str>, port: u16, topic: &str, payload: &str) {
    require("mosquitto_pub", "mosquitto-clients");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "mosquitto_pub"]);
            c
        }
        None => Command::new("mosquitto_pub"),
    };
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(payload.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Now as RFC 3339, offset by `secs` (negative: in the past).
pub fn ts(secs: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + secs;
    let t = time::OffsetDateTime::from_unix_timestamp(now).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A POS tablet report that passes every shipped POS rule; `patch` edits it.
pub fn pos_report(seq: u64, patch: serde_json::Value) -> String {
    let mut r = serde_json::json!({
        "seq": seq, "ts": ts(0),
        "os": "android", "os_version": "14.0.1", "security_patch": recent_patch(),
        "encrypted": true, "passcode": true, "rooted": false, "kiosk_mode": true,
        "apps_installed": ["com.acme.pos"], "apps_running": ["com.acme.pos"],
        "wifi_ssid": "ACME-STORE", "open_ports": [443],
        "mac_addresses": ["aa:bb:cc:00:00:01"], "cert_identity": "pos-0001",
        "groups": ["pos", "store-17"], "agent_version": "3.2.0"
    });
    if let serde_json::Value::Object(p) = patch {
        for (k, v) in p {
            r[k] = v;
        }
    }
    r.to_string()
}

/// A security patch date ten days ago (within the shipped 90-day rule).
fn recent_patch() -> String {
    let ten_days = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    format!("{:04}-{:02}-{:02}", ten_days.year(), u8::from(ten_days.month()), ten_days.day())
}
