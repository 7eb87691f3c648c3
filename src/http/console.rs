//! The web console under `/ui/`: server-rendered pages over the same state
//! the API reads, a stylesheet and one small script, all embedded; the
//! pages load nothing from anywhere else (a Content-Security-Policy of
//! `'self'` says so to the browser).
//!
//! Login takes an API token once and gives a session cookie (random,
//! HttpOnly, SameSite=Strict, 8 hours); the token itself is never stored
//! in the browser. Read tokens see; admin tokens also get the override and
//! confirmation forms, which carry the session's CSRF token. Without any
//! token configured the console is open and read-only, like the API.

// A shell: sessions expire by the clock.
#![allow(clippy::disallowed_methods)]

use super::views::DeviceView;
use super::{ApiState, member_of};
use crate::compliance::Verdict;
use crate::report::render::esc;
use crate::tokens::Role;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::fmt::Write as _;
use std::time::Duration;

const CSS: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

mod session;
pub use session::Sessions;
use session::{COOKIE, SESSION_FOR, Viewer, admin_form, cookie, viewer};

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/devices/{id}", get(device))
        .route("/ui/devices/{id}/override", post(set_override))
        .route("/ui/changes", get(changes))
        .route("/ui/changes/{id}/confirm", post(confirm))
        .route("/ui/reports", get(reports))
        .route("/ui/reports/{name}/{file}", get(report_file))
        .route("/ui/events", get(events))
        .route("/ui/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }))
        .route("/ui/console.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT) }))
}

/// A whole page, with the headers that keep it to itself.
fn page(title: &str, viewer: &Viewer, body: &str) -> Response {
    let who = match viewer {
        Viewer::Open => String::new(),
        Viewer::Signed(s) => format!(
            "<form method=\"post\" action=\"/ui/logout\" class=\"who\"><span>{} ({})</span><button>Log out</button></form>",
            esc(&s.name),
            if s.role == Role::Admin { "admin" } else { "read" }
        ),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · warden</title>\
         <link rel=\"stylesheet\" href=\"/ui/console.css\"><script src=\"/ui/console.js\" defer></script></head>\
         <body><nav><a href=\"/ui/\">Overview</a><a href=\"/ui/changes\">Held changes</a><a href=\"/ui/reports\">Reports</a>{who}</nav>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    );
    secured(axum::response::Html(html).into_response())
}

fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    }
    r
}

async fn login_form() -> Response {
    login_page("")
}

fn login_page(error: &str) -> Response {
    let error = if error.is_empty() { String::new() } else { format!("<p class=\"error\">{}</p>", esc(error)) };
    page(
        "Log in",
        &Viewer::Open,
        &format!(
            "{error}<form method=\"post\" action=\"/ui/login\" class=\"login\"><label>API token \
             <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required></label>\
             <button id=\"login\">Log in</button></form>"
        ),
    )
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(s): State<ApiState>, Form(f): Form<Login>) -> Response {
    let Some(t) = s.tokens.check(&f.token) else {
        tracing::info!("console login refused: unknown token");
        let mut r = login_page("That token is not known.");
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    };
    let id = s.console.open(&t.name, t.role);
    if id.is_empty() {
        return login_page("No session could be made (no randomness).");
    }
    tracing::info!(token = %t.name, "console login");
    let mut r = redirect("/ui/");
    let cookie = format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_FOR.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        s.console.close(id);
    }
    let mut r = redirect("/ui/login");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("warden_session=; Path=/ui; Max-Age=0"));
    r
}

async fn overview(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let v = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut counts = [0usize; 3];
    let mut by_policy: std::collections::BTreeMap<String, usize> = Default::default();
    let mut by_group: std::collections::BTreeMap<String, usize> = Default::default();
    let mut failing: Vec<(String, String)> = Vec::new();
    s.table.for_each(|d| {
        counts[d.verdict.index()] += 1;
        let mut policies: Vec<&str> = d.failures.iter().map(|f| &*f.policy.name).collect();
        policies.dedup();
        for p in policies {
            *by_policy.entry(p.to_string()).or_default() += 1;
        }
        for g in member_of(d) {
            *by_group.entry(g.to_string()).or_default() += 1;
        }
        if d.verdict == Verdict::Noncompliant && failing.len() < 50 {
            failing.push((d.id.to_string(), d.failures.iter().map(|f| f.key()).collect::<Vec<_>>().join(", ")));
        }
    });
    failing.sort();
    let mut b = String::new();
    let _ = write!(
        b,
        "<section class=\"counts\"><div class=\"count compliant\"><b id=\"count-compliant\">{}</b> compliant</div>\
         <div class=\"count noncompliant\"><b id=\"count-noncompliant\">{}</b> noncompliant</div>\
         <div class=\"count unknown\"><b id=\"count-unknown\">{}</b> unknown</div></section>",
        counts[Verdict::Compliant.index()],
        counts[Verdict::Noncompliant.index()],
        counts[Verdict::Unknown.index()]
    );
    b.push_str("<div class=\"cols\"><section><h2>Failing, by policy</h2><table id=\"by-policy\"><tbody>");
    for (p, n) in &by_policy {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(p));
    }
    b.push_str("</tbody></table></section><section><h2>Dynamic groups</h2><table id=\"by-group\"><tbody>");
    for (g, n) in &by_group {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(g));
    }
    b.push_str("</tbody></table></section></div><section><h2>Noncompliant devices</h2><table id=\"failing\"><thead><tr><th>Device</th><th>Failed rules</th></tr></thead><tbody>");
    for (id, rules) in &failing {
        let _ = write!(
            b,
            "<tr><td><a href=\"/ui/devices/{0}\">{1}</a></td><td>{2}</td></tr>",
            url(id),
            esc(id),
            esc(rules)
        );
    }
    let head = *s.audit_durable.borrow();
    let _ = write!(
        b,
        "</tbody></table></section><section><h2>Recent changes</h2>\
         <table id=\"changes\" data-after=\"{}\"><thead><tr><th>Time</th><th>Device</th><th>Event</th></tr></thead><tbody></tbody></table></section>",
        head.saturating_sub(20)
    );
    let _ = v.name();
    page("Overview", &v, &b)
}

/// Percent-encodes a path segment.
fn url(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn device(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let v = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(d) = s.table.get(&id) else {
        let mut r = page("Unknown device", &v, &format!("<p>{} never reported.</p>", esc(&id)));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let mut view = DeviceView::of(&d, &s);
    view.sessions = super::sessions(&s, &id).await;
    view.sessions.extend(super::peers(&s, &d));
    let verdict =
        serde_json::to_value(view.verdict).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let mut b = format!(
        "<p class=\"verdict {verdict}\" id=\"verdict\">{verdict}</p><p>since {} &middot; last report {} (seq {})</p>",
        esc(&view.since),
        esc(&view.last_seen),
        view.seq
    );
    b.push_str("<h2>Failed rules</h2><table id=\"failed-rules\"><thead><tr><th>Policy</th><th>Rule</th><th>Observed</th><th>Expected</th><th>Since</th></tr></thead><tbody>");
    for f in &view.failed_rules {
        let _ = write!(
            b,
            "<tr><td>{}</td><td class=\"rule\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.policy),
            esc(&f.rule),
            esc(&f.observed),
            esc(&f.expected),
            esc(f.failing_since.as_deref().unwrap_or(""))
        );
    }
    if view.failed_rules.is_empty() {
        b.push_str("<tr><td colspan=\"5\">None.</td></tr>");
    }
    b.push_str("</tbody></table><h2>Identities</h2><ul>");
    let ids = &view.identities;
    for m in ids.mac_addresses.iter().flatten() {
        let _ = write!(b, "<li>MAC {}</li>", esc(m));
    }
    if let Some(k) = &ids.wg_public_key {
        let _ = write!(b, "<li>WireGuard key {}</li>", esc(k));
    }
    if let Some(c) = &ids.cert_identity {
        let _ = write!(b, "<li>certificate {}</li>", esc(c));
    }
    let _ = write!(b, "</ul><p>groups: {}</p>", esc(&view.member_of.join(", ")));
    b.push_str("<h2>Sessions</h2><ul id=\"sessions\">");
    for sess in &view.sessions {
        let _ = write!(b, "<li><code>{}</code></li>", esc(&sess.to_string()));
    }
    b.push_str("</ul><h2>Remediation</h2>");
    match &view.remediation {
        Some(r) => {
            let _ = write!(
                b,
                "<pre id=\"remediation\">{}</pre>",
                esc(&serde_json::to_string_pretty(r).unwrap_or_default())
            );
        }
        None => b.push_str("<p>No plan running.</p>"),
    }
    b.push_str("<h2>Override</h2>");
    match &view.r#override {
        Some(o) => {
            let _ = write!(
                b,
                "<p id=\"override\">{} until {}, set by {}: {}</p>",
                esc(&o.mode),
                esc(&o.until),
                esc(&o.by),
                esc(&o.reason)
            );
        }
        None => b.push_str("<p id=\"override\">None.</p>"),
    }
    if let Some(session) = v.admin() {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/ui/devices/{0}/override\" id=\"override-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{1}\">\
             <select name=\"mode\"><option value=\"exempt\">exempt</option><option value=\"quarantine\">quarantine</option><option value=\"clear\">clear</option></select>\
             <label>for <input name=\"for\" value=\"2h\" size=\"5\"></label>\
             <label>reason <input name=\"reason\" required></label><button>Apply</button></form>",
            url(&id),
            esc(&session.csrf)
        );
    }
    b.push_str("<h2>History</h2><table id=\"history\"><thead><tr><th>Time</th><th>Event</th><th>Details</th></tr></thead><tbody>");
    for e in history(&s, &id).await {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(e["at"].as_str().unwrap_or("")),
            esc(e["kind"].as_str().unwrap_or("")),
            esc(&e["data"].to_string())
        );
    }
    b.push_str("</tbody></table>");
    page(&format!("Device {id}"), &v, &b)
}

/// The device's latest audit entries (from the trail's last 100,000), newest first.
async fn history(s: &ApiState, id: &str) -> Vec<serde_json::Value> {
    let Some(dir) = s.audit_dir.clone() else { return Vec::new() };
    let head = *s.audit_durable.borrow();
    let id = id.to_string();
    let read = tokio::task::spawn_blocking(move || {
        super::trail::page(&dir, head.saturating_sub(100_000), head, usize::MAX, |e| e["device"] == id.as_str())
    })
    .await;
    let mut entries = match read {
        Ok(Ok((entries, _))) => entries,
        _ => Vec::new(),
    };
    entries.reverse();
    entries.truncate(50);
    entries
}

#[derive(Deserialize)]
struct OverrideForm {
    csrf: String,
    mode: String,
    #[serde(rename = "for", default)]
    duration: String,
    #[serde(default)]
    reason: String,
}

async fn set_override(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    peer: Option<axum::Extension<super::Peer>>,
    Form(f): Form<OverrideForm>,
) -> Response {
    let session = match admin_form(&s, &headers, &f.csrf) {
        Ok(session) => session,
        Err(r) => return *r,
    };
    let from = peer.map(|p| p.0.0.ip().to_string());
    let o = if f.mode == "clear" {
        None
    } else {
        let mode = match f.mode.as_str() {
            "exempt" => crate::compliance::overrides::Mode::Exempt,
            "quarantine" => crate::compliance::overrides::Mode::Quarantine,
            _ => return secured((StatusCode::BAD_REQUEST, "mode: exempt, quarantine or clear").into_response()),
        };
        let Ok(d) = crate::diag::parse_duration(&f.duration) else {
            return secured((StatusCode::BAD_REQUEST, "for: a duration such as 2h").into_response());
        };
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match crate::compliance::overrides::Override::new(mode, crate::clock::wall_now(), ms, &f.reason, &session.name)
        {
            Ok(o) => Some(o),
            Err(e) => return secured((StatusCode::BAD_REQUEST, e.to_string()).into_response()),
        }
    };
    let answer = super::apply_override(&s, id.clone(), o, &session.name, from).await;
    if answer.status() != StatusCode::OK {
        return secured(answer);
    }
    redirect(&format!("/ui/devices/{}", url(&id)))
}

async fn changes(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let v = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut b = String::from(
        "<table id=\"held\"><thead><tr><th>Id</th><th>Cause</th><th>Would restrict</th><th>Of</th><th>Held since</th><th></th></tr></thead><tbody>",
    );
    let mut any = false;
    for src in &s.changes.sources {
        for h in src.held.borrow().iter() {
            any = true;
            let confirm = match v.admin() {
                Some(session) => format!(
                    "<form method=\"post\" action=\"/ui/changes/{}/confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Confirm</button></form>",
                    h.id,
                    esc(&session.csrf)
                ),
                None => String::new(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{confirm}</td></tr>",
                h.id,
                esc(h.cause.label()),
                h.restricting,
                h.live,
                esc(&crate::telemetry::report::format_rfc3339(h.since))
            );
        }
    }
    if !any {
        b.push_str("<tr><td colspan=\"6\">Nothing held.</td></tr>");
    }
    b.push_str("</tbody></table>");
    page("Held changes", &v, &b)
}

#[derive(Deserialize)]
struct Csrf {
    csrf: String,
}

async fn confirm(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    peer: Option<axum::Extension<super::Peer>>,
    Form(f): Form<Csrf>,
) -> Response {
    let session = match admin_form(&s, &headers, &f.csrf) {
        Ok(session) => session,
        Err(r) => return *r,
    };
    let Some(source) = s.changes.holding(id) else {
        return redirect("/ui/changes");
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let from = peer.map(|p| p.0.0.ip().to_string());
    let request = super::requests::Confirm { id, by: session.name.clone(), from, reply };
    if source.confirm.send(request).await.is_ok() {
        let _ = answer.await;
    }
    redirect("/ui/changes")
}

async fn reports(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let v = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut b = String::from(
        "<table id=\"reports\"><thead><tr><th>Report</th><th>Window</th><th>Files</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (name, dir) in s.report_dirs.iter() {
        for r in crate::report::read_index(dir).iter().filter(|r| r["name"] == name.as_str()) {
            any = true;
            let files: Vec<String> = r["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .map(|f| format!("<a href=\"/ui/reports/{}/{}\">{}</a>", url(name), url(f), esc(f)))
                .collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} to {}</td><td>{}</td></tr>",
                esc(name),
                esc(r["since"].as_str().unwrap_or("")),
                esc(r["until"].as_str().unwrap_or("")),
                files.join(" ")
            );
        }
    }
    if !any {
        b.push_str("<tr><td colspan=\"3\">No report written yet (see [[reports]]).</td></tr>");
    }
    b.push_str("</tbody></table>");
    page("Reports", &v, &b)
}

/// A report file, only if its report's index lists it (no path from the
/// request reaches the file system otherwise).
async fn report_file(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    if let Err(r) = viewer(&s, &headers) {
        return *r;
    }
    let Some((_, dir)) = s.report_dirs.iter().find(|(n, _)| *n == name) else {
        return secured((StatusCode::NOT_FOUND, "no such report").into_response());
    };
    let listed = crate::report::read_index(dir).iter().any(|r| {
        r["name"] == name.as_str() && r["files"].as_array().is_some_and(|f| f.iter().any(|x| x == file.as_str()))
    });
    if !listed {
        return secured((StatusCode::NOT_FOUND, "no such report file").into_response());
    }
    let kind = match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/json",
    };
    match tokio::fs::read(dir.join(&file)).await {
        Ok(bytes) => secured(([(header::CONTENT_TYPE, kind)], bytes).into_response()),
        Err(_) => secured((StatusCode::NOT_FOUND, "report file gone").into_response()),
    }
}

#[derive(Deserialize)]
struct After {
    /// The last entry already shown (absent: from the trail's start).
    #[serde(default)]
    after: u64,
}

/// Recent verdict changes after a cursor, for the overview's live list
/// (the session cookie authorizes it; the page's script polls it).
async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<axum::extract::Query<After>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if viewer(&s, &headers).is_err() {
        return super::problem(StatusCode::UNAUTHORIZED, "log in to the console first");
    }
    let Ok(axum::extract::Query(q)) = q else {
        return super::problem(StatusCode::BAD_REQUEST, "`after` is an audit sequence number");
    };
    let Some(dir) = s.audit_dir.clone() else {
        return axum::Json(serde_json::json!({"events": [], "next": q.after})).into_response();
    };
    let wait = Duration::from_secs(20).min(s.long_poll);
    match super::trail::poll_entries(&s, &dir, q.after, 50, wait, |e| e["kind"] == "warden.verdict.changed").await {
        Ok((entries, next)) => {
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| serde_json::json!({"at": e["at"], "device": e["device"], "from": e["data"]["from"], "to": e["data"]["to"]}))
                .collect();
            axum::Json(serde_json::json!({"events": rows, "next": next})).into_response()
        }
        Err(_) => super::problem(StatusCode::INTERNAL_SERVER_ERROR, "the audit trail could not be read"),
    }
}

/// Names of the sessions' roles, for tests.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        assert_eq!(url("a b/c"), "a%20b%2Fc");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; warden_session=abc"));
        assert_eq!(cookie(&h), Some("abc"));
    }
}
