//! Who is using the console: sessions opened by a token login (a random
//! cookie id, 8 hours, at most 10,000 at once), the viewer of a page, and
//! the admin check with its CSRF token for every form.

// A shell: sessions expire by the clock.
#![allow(clippy::disallowed_methods)]

use super::super::ApiState;
use super::{redirect, secured};
use crate::tokens::Role;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) const SESSION_FOR: Duration = Duration::from_secs(8 * 3600);
const MAX_SESSIONS: usize = 10_000;
pub(super) const COOKIE: &str = "warden_session";

/// Console sessions: the cookie's random id → who logged in.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
pub(super) struct Session {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) csrf: String,
    pub(super) expires: Instant,
}

impl Sessions {
    pub(super) fn open(&self, name: &str, role: Role) -> String {
        let id = random_hex();
        let session =
            Session { name: name.to_string(), role, csrf: random_hex(), expires: Instant::now() + SESSION_FOR };
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            // The oldest goes: a flood of logins cannot grow this.
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session);
        id
    }

    pub(super) fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub(super) fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // getrandom failing leaves zeros only if the OS has no randomness at
    // all; then no session can be trusted, so none is handed out.
    if getrandom::getrandom(&mut b).is_err() {
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Who is looking: a session, or nobody when no token is configured.
pub(super) enum Viewer {
    Open,
    Signed(Session),
}

impl Viewer {
    pub(super) fn admin(&self) -> Option<&Session> {
        match self {
            Viewer::Signed(s) if s.role == Role::Admin => Some(s),
            _ => None,
        }
    }

    pub(super) fn name(&self) -> &str {
        match self {
            Viewer::Open => "",
            Viewer::Signed(s) => &s.name,
        }
    }
}

pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then_some(v)
    })
}

/// The viewer, or the login page's redirect.
pub(super) fn viewer(s: &ApiState, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    if s.tokens.is_empty() {
        return Ok(Viewer::Open);
    }
    match cookie(headers).and_then(|id| s.console.get(id)) {
        Some(session) => Ok(Viewer::Signed(session)),
        None => Err(Box::new(redirect("/ui/login"))),
    }
}

/// The admin session a form was posted from, its CSRF token checked.
pub(super) fn admin_form(s: &ApiState, headers: &HeaderMap, csrf: &str) -> Result<Session, Box<Response>> {
    let v = viewer(s, headers)?;
    let Some(session) = v.admin() else {
        return Err(Box::new(secured((StatusCode::FORBIDDEN, "an admin token is needed").into_response())));
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), session.csrf.as_bytes())) {
        return Err(Box::new(secured((StatusCode::FORBIDDEN, "stale form: load the page again").into_response())));
    }
    Ok(session.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let id = s.open("alice", Role::Read);
        assert_eq!(s.get(&id).map(|x| x.name), Some("alice".into()));
        assert!(s.get("forged").is_none());
        s.close(&id);
        assert!(s.get(&id).is_none());
        for _ in 0..MAX_SESSIONS + 5 {
            s.open("bob", Role::Admin);
        }
        assert!(s.map.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
