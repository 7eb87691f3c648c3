//! The API's HTTP server against clients that hold connections (issue 15,
//! part 4), with the real binary: half a header, nothing at all, an idle
//! kept-alive connection, too many connections, a body too large, a body
//! that never finishes. Each is closed or refused within its limit and
//! counted, and the API keeps answering meanwhile.

// A test or bench harness: real time is its input.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const ADMIN: &str = "an-admin-token-0123456789";

fn launch(extra: &str) -> Warden {
    let dir = Warden::workdir();
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    let mqtt = free_port();
    let config = format!(
        "[node]\nstate_dir = \"state\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\nallow_anonymous = true\n[policy]\ndir = \"policies\"\n"
    );
    let mut w = Warden::launch(
        &dir,
        &config,
        mqtt,
        &format!("header_timeout = \"1s\"\nrequest_timeout = \"1s\"\ntoken_file = \"admin.token\"\n{extra}"),
    );
    w.wait_ready();
    w
}

fn connect(w: &Warden) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", w.http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection; what it sent.
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    }
}

fn responsive(w: &Warden) {
    let asked = Instant::now();
    let (code, _) = http_get(w.http, "/healthz").expect("an answer");
    assert_eq!(code, 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "took {:?}", asked.elapsed());
}

#[test]
fn half_headers_and_silent_clients_are_closed_at_the_header_timeout_while_the_api_answers() {
    let w = launch("");
    let mut half: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&w);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: warden\r\n").unwrap();
            s
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..1000).map(|_| connect(&w)).collect();
    let started = Instant::now();
    // 1,200 connections held: the API still answers, at once.
    responsive(&w);
    for s in half.iter_mut().chain(silent.iter_mut()) {
        until_closed(s);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "1,200 connections closed after {took:?}");
    w.wait_metric("warden_http_refusals_total{reason=\"header_timeout\"}", 1200.0);
    responsive(&w);
}

#[test]
fn an_idle_kept_alive_connection_is_closed_and_a_full_server_refuses_at_once() {
    let w = launch("max_connections = 20\n");
    // One request on a kept-alive connection, then silence.
    let mut s = connect(&w);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: warden\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let idle = Instant::now();
    until_closed(&mut s);
    assert!(idle.elapsed() < Duration::from_secs(4), "idle for {:?}", idle.elapsed());

    // 20 connections fill it; the 21st is closed before anything is read.
    let _held: Vec<TcpStream> = (0..20).map(|_| connect(&w)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect(&w);
    let refused = Instant::now();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: warden\r\n\r\n");
    assert!(until_closed(&mut extra).is_empty(), "nothing is served past the cap");
    assert!(refused.elapsed() < Duration::from_millis(500));
    // Once the held ones time out there is room again.
    wait_for("room again", Duration::from_secs(5), || http_get(w.http, "/healthz").filter(|(c, _)| *c == 200));
    w.wait_metric("warden_http_refusals_total{reason=\"too_many_connections\"}", 1.0);
}

#[test]
fn a_body_too_large_is_refused_and_a_body_that_never_ends_times_out() {
    let w = launch("");
    let mut s = connect(&w);
    let body = vec![b'x'; 100 * 1024];
    let head = format!(
        "PUT /api/v1/devices/pos-1/override HTTP/1.1\r\nHost: warden\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(&body);
    let answer = String::from_utf8_lossy(&until_closed(&mut s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    w.wait_metric("warden_http_refusals_total{reason=\"body_too_large\"}", 1.0);

    let mut s = connect(&w);
    s.write_all(
        format!("PUT /api/v1/devices/pos-1/override HTTP/1.1\r\nHost: warden\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mode\":")
            .as_bytes(),
    )
    .unwrap();
    let asked = Instant::now();
    let answer = String::from_utf8_lossy(&until_closed(&mut s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(asked.elapsed() >= Duration::from_millis(900) && asked.elapsed() < Duration::from_secs(4));
    w.wait_metric("warden_http_refusals_total{reason=\"request_timeout\"}", 1.0);
    responsive(&w);
}

/// Every error is RFC 9457 problem details: `application/problem+json`
/// with `type`, `title`, `status` and `detail`.
#[test]
fn errors_are_problem_details() {
    let w = launch("");
    let auth = format!("Bearer {ADMIN}");
    for (path, headers, status) in [
        ("/api/v1/devices", vec![], 401),
        ("/api/v1/devices/nobody", vec![("Authorization", auth.as_str())], 404),
        ("/api/v1/groups/nope", vec![("Authorization", auth.as_str())], 404),
        ("/api/v1/devices?bogus=1", vec![("Authorization", auth.as_str())], 400),
        ("/api/v1/events?types=warden.nope", vec![("Authorization", auth.as_str())], 400),
        ("/no/such/route", vec![], 404),
    ] {
        let mut s = connect(&w);
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        write!(s, "GET {path} HTTP/1.1\r\nHost: warden\r\n{extra}Connection: close\r\n\r\n").unwrap();
        let answer = String::from_utf8_lossy(&until_closed(&mut s)).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{path}: {head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], status, "{path}: {v}");
        assert_eq!(v["type"], "about:blank");
        assert!(v["title"].is_string() && v["detail"].is_string(), "{path}: {v}");
    }
    // A device never heard of is still `unknown`, as an extension member.
    let (_, body) = http_get_with(w.http, "/api/v1/devices/nobody", &[("Authorization", &auth)]).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["verdict"], "unknown");
}
