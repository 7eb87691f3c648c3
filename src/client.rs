//! A small HTTP/1.1 client for the commands that act on a running warden
//! (`warden changes ...`): plain `http://` to its API, one request per
//! connection, bounded in time and size. Written here because the API is
//! local and this is all the CLI needs; a general client would bring a
//! second TLS stack and an async runtime into one-shot commands.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Responses larger than this are refused.
const MAX_RESPONSE: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the API is and the token to show it.
pub struct Api {
    /// `host:port`.
    pub authority: String,
    pub token: Option<String>,
}

impl Api {
    /// From `http://host:port` (a trailing `/` allowed).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url}: give the API as http://host:port"));
        }
        Ok(Self { authority: authority.to_string(), token })
    }

    /// `method path` with an empty body: (status, body).
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        self.request_with(method, path, None)
    }

    /// `method path` with a JSON `body`, if any: (status, body).
    pub fn request_with(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.authority))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.authority))?;
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{}: {e}", self.authority))?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let auth = self.token.as_deref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let (kind, content) = match body {
            Some(b) => ("Content-Type: application/json\r\n", b),
            None => ("", ""),
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{content}",
            self.authority,
            content.len()
        )
        .map_err(|e| e.to_string())?;
        let raw = read_response(&mut s.take(MAX_RESPONSE)).map_err(|e| e.to_string())?;
        parse(&raw)
    }
}

/// Reads one response: the head, then `Content-Length` bytes, or the
/// chunks up to the last, or (neither given) until the server closes. Not
/// waiting for the close when the length is known: some servers (e.g.
/// chromedriver) answer `Connection: close` and keep the socket open.
fn read_response(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
            let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let done = match length {
                Some(n) => raw.len() >= end + 4 + n,
                None if chunked => raw.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                return Ok(raw);
            }
        }
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("an incomplete HTTP response")?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("an HTTP response without a status")?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// The body of a chunked transfer encoding, decoded.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_responses() {
        assert_eq!(Api::new("http://127.0.0.1:9090/", None).unwrap().authority, "127.0.0.1:9090");
        assert!(Api::new("https://x:1", None).is_err());
        assert!(Api::new("http://x:1/api", None).is_err());
        let (code, body) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((code, body.as_str()), (200, "{}"));
        let (_, body) = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, "{}");
        assert!(parse(b"garbage").is_err());
    }
}
