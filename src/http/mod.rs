//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, and the `/api/v1`
//! device API. Handlers read through handles; writes (confirming a held
//! change, setting an override) are requests to the task that owns the
//! state, answered once the change is durable.

use crate::compliance::{Device, Table, Verdict};
use crate::metrics::Metrics;
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

pub mod console;
mod device;
pub mod requests;
mod trail;
pub mod views;

pub(crate) use device::{apply_override, bad_request, peers, sessions};

use views::{ChangeList, Confirmed, DevicePage, DeviceView, GroupList, GroupPage, GroupView, HeldView, Problem};

/// The OpenAPI document's frame; the paths come from the handlers as the
/// router registers them.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "warden API", description = "Device compliance, overrides, groups, the audit trail and its events. Read tokens may GET; writes need an admin token."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Every `/api/v1` route takes a bearer token (when tokens are configured).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

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
    pub sessions: Option<tokio::sync::mpsc::Sender<requests::SessionQuery>>,
    /// The audit trail's directory (none: the trail is off).
    pub audit_dir: Option<std::path::PathBuf>,
    /// The trail's last durable entry (what `/api/v1/events` may give).
    pub audit_durable: tokio::sync::watch::Receiver<u64>,
    /// The CloudEvents `source` of the events.
    pub events_source: String,
    /// How long `/api/v1/events` waits for an event (below the server's
    /// request timeout).
    pub long_poll: std::time::Duration,
    /// The web console's sessions.
    pub console: Arc<console::Sessions>,
    /// Each scheduled report's name and directory (the console lists them).
    pub report_dirs: Arc<Vec<(String, std::path::PathBuf)>>,
    /// The WireGuard router, for a device's peers (none without WireGuard).
    pub wireguard: Option<Arc<crate::wireguard::router::Router>>,
    /// Each device's running remediation plans, kept by the compliance task.
    pub remediation: Arc<requests::RemediationViews>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub tokens: Arc<crate::tokens::Tokens>,
    pub stale_after: std::time::Duration,
    pub changes: Changes,
    /// Override requests, to the compliance task.
    pub overrides: tokio::sync::mpsc::Sender<requests::OverrideRequest>,
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

impl Changes {
    /// The source holding batch `id`, if one does.
    pub(crate) fn holding(&self, id: u64) -> Option<&ChangeSource> {
        self.sources.iter().find(|src| src.held.borrow().iter().any(|h| h.id == id))
    }
}

#[derive(Clone)]
pub struct ChangeSource {
    pub held: tokio::sync::watch::Receiver<Vec<crate::compliance::Held>>,
    pub confirm: tokio::sync::mpsc::Sender<requests::Confirm>,
}

/// The `/api/v1` routes, and the OpenAPI document describing exactly them.
fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_devices))
        .routes(routes!(device::get_device))
        .routes(routes!(device::put_override, device::delete_override))
        .routes(routes!(list_groups))
        .routes(routes!(get_group))
        .routes(routes!(trail::list_audit))
        .routes(routes!(trail::list_events))
        .routes(routes!(list_changes))
        .routes(routes!(confirm_change))
        .split_for_parts()
}

/// The OpenAPI 3.1 document of `/api/v1` (as served at
/// `/api/v1/openapi.json` and checked in as docs/openapi.json).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().1;
    // The document itself is a route too.
    let op = utoipa::openapi::path::OperationBuilder::new()
        .summary(Some("This document (OpenAPI 3.1)"))
        .operation_id(Some("openapi"))
        .response("200", utoipa::openapi::Response::new("The OpenAPI document"))
        .build();
    doc.paths.add_path_operation("/api/v1/openapi.json", vec![utoipa::openapi::HttpMethod::Get], op);
    doc
}

pub fn router(state: ApiState) -> Router {
    let document = Arc::new(openapi().to_json().unwrap_or_default());
    let api = api()
        .0
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move { ([(header::CONTENT_TYPE, "application/json")], (*document).clone()).into_response() }
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(console::router())
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

/// The batches the circuit breaker holds.
#[utoipa::path(get, path = "/api/v1/changes", tag = "changes",
    responses((status = 200, description = "The answer", body = ChangeList), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json")))]
async fn list_changes(State(s): State<ApiState>) -> Response {
    let changes: Vec<HeldView> = s
        .changes
        .sources
        .iter()
        .flat_map(|src| src.held.borrow().iter().map(HeldView::of).collect::<Vec<_>>())
        .collect();
    Json(ChangeList { changes }).into_response()
}

/// Confirm a held batch (admin token).
///
/// The batch is applied (admin token; who and from where
/// are recorded in the audit trail).
#[utoipa::path(post, path = "/api/v1/changes/{id}/confirm", tag = "changes",
    params(("id" = u64, Path, description = "The held batch's id")),
    responses((status = 200, description = "The answer", body = Confirmed), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"), (status = 403, description = "A read token where an admin token is needed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 503, description = "Stopping, or not stored: try again", body = Problem, content_type = "application/problem+json")))]
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
    let Some(source) = s.changes.holding(id) else {
        return problem(StatusCode::NOT_FOUND, "no held change with that id");
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if source.confirm.send(requests::Confirm { id, by, from: caller.from(), reply }).await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match answer.await {
        Ok(Some(h)) => {
            tracing::info!(change = h.id, "held change confirmed through the API");
            Json(Confirmed { confirmed: HeldView::of(&h) }).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "no held change with that id"),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `compliant`, `noncompliant` or `unknown`.
    verdict: Option<String>,
    /// A reported group or a dynamic group.
    group: Option<String>,
    /// Page size, default 100, at most 1000.
    limit: Option<usize>,
    /// Return devices whose id sorts after this one (the previous page's `next`).
    after: Option<String>,
}

/// A page of devices.
///
/// Sorted by id, filtered by verdict and group.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(ListQuery),
    responses((status = 200, description = "The answer", body = DevicePage), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json")))]
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
    let devices: Vec<DeviceView> = page.iter().map(|d| DeviceView::of(d, &s)).collect();
    let next = (devices.len() == limit).then(|| devices.last().map(|d| d.id.clone())).flatten();
    Json(DevicePage { devices, matched, next }).into_response()
}

/// The dynamic groups a device is in.
pub(crate) fn member_of(d: &Device) -> impl Iterator<Item = &str> {
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

/// Every dynamic group.
///
/// With how many devices are in each now.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, description = "The answer", body = GroupList), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json")))]
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
    let groups = groups.groups.iter().zip(counts).map(|(g, n)| GroupView::of(g, n)).collect();
    Json(GroupList { groups }).into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Page size, default 100, at most 1000.
    limit: Option<usize>,
    /// Members whose id sorts after this one (the previous page's `next`).
    after: Option<String>,
}

/// A dynamic group and a page of its members.
///
/// Member ids sorted.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The group's name"), PageQuery),
    responses((status = 200, description = "The answer", body = GroupPage), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")))]
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
    let devices: Vec<String> = page.iter().map(|d| d.id.to_string()).collect();
    let next = (devices.len() == limit).then(|| devices.last().cloned()).flatten();
    Json(GroupPage { group: GroupView::of(g, matched), devices, next }).into_response()
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

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the document the server serves. After a change
    /// to the API, `WARDEN_BLESS=1 cargo test --lib openapi` writes it anew.
    #[test]
    fn the_checked_in_openapi_document_is_the_served_one() {
        let served = super::openapi().to_pretty_json().unwrap() + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        if std::env::var_os("WARDEN_BLESS").is_some() {
            std::fs::write(&path, &served).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == served,
            "docs/openapi.json differs from the API's document: run WARDEN_BLESS=1 cargo test --lib openapi"
        );
        let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
    }
}
