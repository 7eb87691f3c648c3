//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, and the `/api/v1`
//! device API. Handlers read through handles; writes (confirming a held
//! change, setting an override) are requests to the task that owns the
//! state, answered once the change is durable.

use crate::compliance::{Device, Table, Verdict};
use crate::metrics::Metrics;
use crate::telemetry::report::format_rfc3339;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod trail;

/// What `/readyz` checks: every configured plane is up. (The compliance
/// state is restored before the HTTP listener is bound, so it is never
/// asked about before then.)
#[derive(Default)]
pub struct Readiness {
    /// The telemetry subscription is acknowledged by the broker.
    pub telemetry: Arc<AtomicBool>,
    /// The RADIUS accounting task serves its sockets (the auth shards start with it; `None`: not configured).
    pub radius: Option<Arc<AtomicBool>>,
    /// The WireGuard packet tasks run (`None`: not configured).
    pub wireguard: Option<Arc<AtomicBool>>,
}

#[derive(Clone)]
pub struct ApiState {
    pub table: Table,
    /// The dynamic groups in force (replaced on a policy reload).
    pub groups: tokio::sync::watch::Receiver<Arc<crate::policy::Groups>>,
    /// Asks the RADIUS plane for a device's sessions (none without RADIUS).
    pub sessions: Option<tokio::sync::mpsc::Sender<crate::gateway::SessionQuery>>,
    /// The audit trail's directory (none: the trail is off).
    pub audit_dir: Option<std::path::PathBuf>,
    /// The trail's last durable entry (what `/api/v1/events` may give).
    pub audit_durable: tokio::sync::watch::Receiver<u64>,
    /// The CloudEvents `source` of the events.
    pub events_source: String,
    /// How long `/api/v1/events` waits for an event (below the server's
    /// request timeout).
    pub long_poll: std::time::Duration,
    /// The WireGuard router, for a device's peers (none without WireGuard).
    pub wireguard: Option<Arc<crate::wireguard::router::Router>>,
    /// Each device's running remediation plans, kept by the compliance task.
    pub remediation: Arc<crate::gateway::RemediationViews>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub tokens: Arc<crate::tokens::Tokens>,
    pub stale_after: std::time::Duration,
    pub changes: Changes,
    /// Override requests, to the compliance task.
    pub overrides: tokio::sync::mpsc::Sender<crate::gateway::OverrideRequest>,
}

/// Who is calling, from the bearer token (none when no tokens are set).
#[derive(Clone, Debug)]
pub(crate) struct Caller(Option<crate::tokens::Token>, Option<std::net::SocketAddr>);

/// The address a request came from (set by the server for each connection).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

impl Caller {
    /// A write needs an admin token: `Err` is the answer to give.
    /// The client's IP address, as text (for the audit trail).
    pub(crate) fn from(&self) -> Option<String> {
        self.1.map(|a| a.ip().to_string())
    }

    pub(crate) fn admin(&self) -> Result<&str, Box<Response>> {
        match &self.0 {
            Some(t) if t.role == crate::tokens::Role::Admin => Ok(&t.name),
            Some(t) => Err(Box::new(problem(
                StatusCode::FORBIDDEN,
                &format!("token {:?} has the read role; this needs an admin token", t.name),
            ))),
            None => Err(Box::new(problem(
                StatusCode::FORBIDDEN,
                "writes need an API token: set http.tokens_file (or token_file)",
            ))),
        }
    }
}

/// An error answer as RFC 9457 problem details (`application/problem+json`):
/// the status, its standard title, and what went wrong.
pub(crate) fn problem(code: StatusCode, detail: &str) -> Response {
    problem_with(code, detail, serde_json::Map::new())
}

/// [`problem`] with extension members (RFC 9457 §3.2).
pub(crate) fn problem_with(code: StatusCode, detail: &str, extensions: serde_json::Map<String, Value>) -> Response {
    let mut body = serde_json::Map::from_iter([
        ("type".to_string(), json!("about:blank")),
        ("title".to_string(), json!(code.canonical_reason().unwrap_or("Error"))),
        ("status".to_string(), json!(code.as_u16())),
        ("detail".to_string(), json!(detail)),
    ]);
    body.extend(extensions);
    (code, [(header::CONTENT_TYPE, "application/problem+json")], Value::Object(body).to_string()).into_response()
}

/// The circuit breaker's held batches, and the way to confirm one: one
/// source per place that holds (the compliance engine, the RADIUS plane).
#[derive(Clone, Default)]
pub struct Changes {
    pub sources: Vec<ChangeSource>,
}

#[derive(Clone)]
pub struct ChangeSource {
    pub held: tokio::sync::watch::Receiver<Vec<crate::compliance::Held>>,
    pub confirm: tokio::sync::mpsc::Sender<crate::gateway::Confirm>,
}

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/devices/{id}/override", axum::routing::put(put_override).delete(delete_override))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{name}", get(get_group))
        .route("/api/v1/audit", get(trail::list_audit))
        .route("/api/v1/events", get(trail::list_events))
        .route("/api/v1/changes", get(list_changes))
        .route("/api/v1/changes/{id}/confirm", axum::routing::post(confirm_change))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let mut planes = serde_json::Map::new();
    planes.insert("telemetry".into(), s.ready.telemetry.load(Ordering::Acquire).into());
    for (name, flag) in [("radius", &s.ready.radius), ("wireguard", &s.ready.wireguard)] {
        if let Some(f) = flag {
            planes.insert(name.into(), f.load(Ordering::Acquire).into());
        }
    }
    let ready = planes.values().all(|v| v.as_bool() == Some(true));
    let body = Json(json!({ "ready": ready, "planes": planes }));
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// A bearer token on `/api/v1` when any is configured (`http.tokens_file`,
/// `token_file`), checked against their hashes in constant time; the
/// caller's name and role go with the request.
async fn require_token(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let caller = if s.tokens.is_empty() {
        Caller(None, peer)
    } else {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match s.tokens.check(given) {
            Some(t) => Caller(Some(t.clone()), peer),
            None => {
                let mut r = problem(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn held_json(h: &crate::compliance::Held) -> Value {
    json!({
        "id": h.id,
        "cause": h.cause.label(),
        "restricting": h.restricting,
        "devices": h.live,
        "held_since": format_rfc3339(h.since),
    })
}

/// `GET /api/v1/changes`: the batches the circuit breaker holds.
async fn list_changes(State(s): State<ApiState>) -> Response {
    let held: Vec<Value> =
        s.changes.sources.iter().flat_map(|src| src.held.borrow().iter().map(held_json).collect::<Vec<_>>()).collect();
    Json(json!({ "changes": held })).into_response()
}

/// `POST /api/v1/changes/{id}/confirm`: applies a held batch. A write: it
/// needs an admin token (checked by the layer in front).
async fn confirm_change(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let by = match caller.admin() {
        Ok(name) => name.to_string(),
        Err(refused) => return *refused,
    };
    let Ok(id) = id.parse::<u64>() else { return bad_request("a change id is a number") };
    let Some(source) = s.changes.sources.iter().find(|src| src.held.borrow().iter().any(|h| h.id == id)) else {
        return problem(StatusCode::NOT_FOUND, "no held change with that id");
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if source.confirm.send(crate::gateway::Confirm { id, by, from: caller.from(), reply }).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match answer.await {
        Ok(Some(h)) => {
            tracing::info!(change = h.id, "held change confirmed through the API");
            Json(json!({ "confirmed": held_json(&h) })).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "no held change with that id"),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    verdict: Option<String>,
    group: Option<String>,
    /// Page size, default 100, at most 1000.
    limit: Option<usize>,
    /// Return devices whose id sorts after this one (the previous page's `next`).
    after: Option<String>,
}

async fn list_devices(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("unknown or malformed query parameter (verdict, group, limit, after)");
    };
    let verdict = match q.verdict.as_deref().map(Verdict::parse) {
        Some(None) => return bad_request("verdict must be compliant, noncompliant or unknown"),
        Some(v) => v,
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (page, matched) = page_of(&s.table, limit, q.after.as_deref(), |d| {
        verdict.is_none_or(|v| d.verdict == v)
            && q.group.as_deref().is_none_or(|g| {
                d.report.groups.as_deref().is_some_and(|gs| gs.iter().any(|x| **x == *g))
                    || member_of(d).any(|m| m == g)
            })
    });
    let devices: Vec<Value> = page.iter().map(|d| device_json(d, &s)).collect();
    let next =
        (devices.len() == limit).then(|| devices.last().and_then(|d| d["id"].as_str().map(str::to_string))).flatten();
    Json(json!({ "devices": devices, "matched": matched, "next": next })).into_response()
}

/// The dynamic groups a device is in.
fn member_of(d: &Device) -> impl Iterator<Item = &str> {
    d.group_set.names(d.groups)
}

/// A page of the devices `keep` accepts: the `limit` smallest ids after
/// `after`, with how many matched in all. A bounded heap in one pass:
/// memory bounded by the page, whatever the fleet size.
fn page_of(
    table: &crate::compliance::Table,
    limit: usize,
    after: Option<&str>,
    keep: impl Fn(&Device) -> bool,
) -> (Vec<Arc<Device>>, usize) {
    let mut page: std::collections::BinaryHeap<ById> = std::collections::BinaryHeap::new();
    let mut matched = 0usize;
    table.for_each(|d| {
        if !keep(d) {
            return;
        }
        matched += 1;
        if after.is_some_and(|a| *d.id <= *a) {
            return;
        }
        page.push(ById(Arc::clone(d)));
        if page.len() > limit {
            page.pop();
        }
    });
    (page.into_sorted_vec().into_iter().map(|ById(d)| d).collect(), matched)
}

/// A group as the API shows it.
fn group_json(g: &crate::policy::Group, members: usize) -> Value {
    json!({
        "name": g.name,
        "description": g.description,
        "members": members,
        "vlan": g.vlan,
        "filter_id": g.filter_id,
    })
}

/// `GET /api/v1/groups`: every dynamic group and how many devices are in it.
async fn list_groups(State(s): State<ApiState>) -> Response {
    let groups = Arc::clone(&s.groups.borrow());
    let mut counts = vec![0usize; groups.groups.len()];
    s.table.for_each(|d| {
        if d.groups != 0 && Arc::ptr_eq(&d.group_set, &groups) {
            for (i, c) in counts.iter_mut().enumerate() {
                *c += usize::from(d.groups & (1 << i) != 0);
            }
        }
    });
    let list: Vec<Value> = groups.groups.iter().zip(counts).map(|(g, n)| group_json(g, n)).collect();
    Json(json!({ "groups": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /api/v1/groups/{name}`: the group and a page of its members' ids.
async fn get_group(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("unknown or malformed query parameter (limit, after)");
    };
    let groups = Arc::clone(&s.groups.borrow());
    let Some((bit, g)) = groups.get(&name) else {
        return problem(StatusCode::NOT_FOUND, "no such group");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (page, matched) = page_of(&s.table, limit, q.after.as_deref(), |d| {
        d.groups & (1 << bit) != 0 && Arc::ptr_eq(&d.group_set, &groups)
    });
    let members: Vec<&str> = page.iter().map(|d| &*d.id).collect();
    let next = (members.len() == limit).then(|| members.last().map(|m| m.to_string())).flatten();
    let mut body = group_json(g, matched);
    body["devices"] = json!(members);
    body["next"] = json!(next);
    Json(body).into_response()
}

/// A device ordered by its id, for the page heap.
struct ById(Arc<Device>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ById {}
impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

async fn get_device(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.table.get(&id) {
        Some(d) => {
            let mut view = device_json(&d, &s);
            let mut all = sessions(&s, &id).await;
            all.extend(peers(&s, &d));
            view["sessions"] = json!(all);
            Json(view).into_response()
        }
        // Still a verdict: a device never heard of is `unknown`.
        None => problem_with(
            StatusCode::NOT_FOUND,
            "never reported",
            serde_json::Map::from_iter([("id".to_string(), json!(id)), ("verdict".to_string(), json!("unknown"))]),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    mode: crate::compliance::overrides::Mode,
    /// How long, e.g. "2h".
    #[serde(rename = "for")]
    duration: String,
    reason: String,
}

/// `PUT /api/v1/devices/{id}/override`: exempt or quarantine a device for
/// a while (admin token; its name is recorded). Answered once durable.
async fn put_override(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<OverrideBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match caller.admin() {
        Ok(name) => name.to_string(),
        Err(refused) => return *refused,
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 64 KiB");
        }
        Err(_) => {
            return bad_request(
                "the body is {\"mode\": \"exempt\"|\"quarantine\", \"for\": \"2h\", \"reason\": \"...\"}",
            );
        }
    };
    let Ok(duration) = humantime::parse_duration(&body.duration) else {
        return bad_request("\"for\" is a duration such as \"30m\" or \"2h\"");
    };
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    let o = match crate::compliance::overrides::Override::new(
        body.mode,
        crate::gateway::mqtt::wall_now(),
        ms,
        &body.reason,
        &by,
    ) {
        Ok(o) => o,
        Err(e) => return bad_request(&e.to_string()),
    };
    apply_override(&s, id, Some(o), &by, caller.from()).await
}

/// `DELETE /api/v1/devices/{id}/override`: back to what reports say.
async fn delete_override(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let by = match caller.admin() {
        Ok(name) => name.to_string(),
        Err(refused) => return *refused,
    };
    apply_override(&s, id, None, &by, caller.from()).await
}

async fn apply_override(
    s: &ApiState,
    id: String,
    o: Option<crate::compliance::overrides::Override>,
    by: &str,
    from: Option<String>,
) -> Response {
    let what = o.as_ref().map_or("cleared", |o| o.mode.label());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = crate::gateway::OverrideRequest { device: id.clone(), set: o, by: by.to_string(), from, reply };
    if s.overrides.send(request).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match answer.await {
        Ok(Some(durable)) => {
            if durable.await.is_err() {
                return problem(StatusCode::SERVICE_UNAVAILABLE, "the override could not be stored; try again");
            }
            tracing::info!(device = %id, override = what, by, "override set through the API");
            match s.table.get(&id) {
                Some(d) => Json(device_json(&d, s)).into_response(),
                None => problem(StatusCode::NOT_FOUND, "the device was forgotten meanwhile"),
            }
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "unknown device: an override needs a device that has reported"),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

pub(crate) fn bad_request(msg: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, msg)
}

/// A device's RADIUS sessions, from the task that holds them; empty if it
/// does not answer within 200 ms (it is busy enforcing: the view waits
/// less than enforcement would).
async fn sessions(s: &ApiState, id: &str) -> Vec<Value> {
    let Some(queries) = &s.sessions else { return Vec::new() };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let query = crate::gateway::SessionQuery { device: id.to_string(), reply };
    if queries.try_send(query).is_err() {
        return Vec::new();
    }
    tokio::time::timeout(std::time::Duration::from_millis(200), answer)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// A device's WireGuard peers: configured for it, or holding the key it
/// reported.
fn peers(s: &ApiState, d: &Device) -> Vec<Value> {
    use base64::Engine as _;
    let Some(router) = &s.wireguard else { return Vec::new() };
    let mut peers = router.peers_of_device(&d.id);
    if let Some(key) = d.report.wg_public_key.as_deref()
        && let Ok(key) = crate::wireguard::config::parse_key(key)
        && let Some(p) = router.peer_by_key(&key)
        && !peers.iter().any(|q| Arc::ptr_eq(q, &p))
    {
        peers.push(p);
    }
    peers
        .iter()
        .map(|p| {
            let (since, endpoint) = {
                let session = p.session();
                (session.tunnel.since_handshake(), session.endpoint)
            };
            json!({
                "plane": "wireguard",
                "public_key": base64::engine::general_purpose::STANDARD.encode(p.spec.public_key),
                "allowed_ips": p.spec.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "access": p.access().label(),
                "endpoint": endpoint.map(|e| e.to_string()),
                "seconds_since_handshake": since.map(|t| t.as_secs()),
            })
        })
        .collect()
}

/// A device as the API shows it: verdict, why, since when, and who it is.
fn device_json(d: &Device, s: &ApiState) -> Value {
    let stale_after = s.stale_after;
    let mut failed: Vec<Value> = d
        .failures
        .iter()
        .map(|f| {
            let rule = f.rule();
            json!({
                "policy": f.policy.name,
                "rule": rule.id,
                "observed": &*f.observed,
                "expected": if f.policy.source.as_os_str() == crate::compliance::identity::BUILT_IN {
                    json!("no identity bound to another live device")
                } else {
                    json!(rule.check.expected())
                },
                "severity": f.policy.severity,
                "enforcement": f.policy.enforcement,
                "remediation": rule.remediation,
                "failing_since": format_rfc3339(f.since),
            })
        })
        .collect();
    if d.verdict == Verdict::Unknown {
        failed.push(json!({
            "policy": "warden",
            "rule": "inactive",
            "observed": format!("last seen {}", format_rfc3339(d.last_seen)),
            "expected": format!("a report within {}", humantime::format_duration(stale_after)),
        }));
    }
    let r = &d.report;
    json!({
        "id": &*d.id,
        "verdict": d.verdict,
        "held": d.held,
        "failed_rules": failed,
        "enforce": d.enforce,
        "override": d.admin_override.as_deref().map(|o| json!({
            "mode": o.mode,
            "reason": o.reason,
            "by": o.by,
            "set": format_rfc3339(o.set),
            "until": format_rfc3339(o.until),
        })),
        "since": format_rfc3339(d.since),
        "last_seen": format_rfc3339(d.last_seen),
        "seq": r.seq,
        "groups": r.groups,
        "member_of": member_of(d).collect::<Vec<_>>(),
        "os": r.os,
        "os_version": r.os_version,
        "identities": {
            "mac_addresses": r.mac_addresses,
            "wg_public_key": r.wg_public_key,
            "cert_identity": r.cert_identity,
        },
        "remediation": s.remediation.get(&d.id).and_then(|v| serde_json::from_str::<Value>(v.value()).ok()),
        "sessions": [],
    })
}
