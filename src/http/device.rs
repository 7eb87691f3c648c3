//! One device's answers: its view (verdict, failed rules, override,
//! remediation, live sessions and peers) and its override, set and cleared
//! through the compliance task that owns it.

// Handlers are a shell: they read the clock for the cores they ask.
#![allow(clippy::disallowed_methods)]

use super::views::{DeviceView, Problem};
use super::{ApiState, Caller, problem, problem_with};
use crate::compliance::Device;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// One device.
///
/// Its verdict and failed rules, override, remediation, and
/// its live RADIUS sessions and WireGuard peers. A device never heard of
/// answers 404 with `"verdict": "unknown"`.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The answer", body = DeviceView), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn get_device(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.table.get(&id) {
        Some(d) => {
            let mut view = DeviceView::of(&d, &s);
            view.sessions = sessions(&s, &id).await;
            view.sessions.extend(peers(&s, &d));
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

/// An override to set.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OverrideBody {
    /// `exempt` (treated as compliant) or `quarantine` (treated as noncompliant).
    #[schema(value_type = String, example = "exempt")]
    mode: crate::compliance::overrides::Mode,
    /// How long, e.g. `2h` (at most 90 days).
    #[serde(rename = "for")]
    #[schema(example = "2h")]
    duration: String,
    /// Why (kept, at most 500 bytes).
    reason: String,
}

/// Set a device's override (admin token).
///
/// Exempts or quarantines the device for a while; the token's name and
/// the client's address are recorded. Answered once the override is on disk.
#[utoipa::path(put, path = "/api/v1/devices/{id}/override", tag = "devices",
    params(("id" = String, Path, description = "The device id")), request_body = OverrideBody,
    responses((status = 200, description = "The answer", body = DeviceView), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"), (status = 403, description = "A read token where an admin token is needed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 413, description = "A body over 64 KiB", body = Problem, content_type = "application/problem+json"), (status = 503, description = "Stopping, or not stored: try again", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn put_override(
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
    let o =
        match crate::compliance::overrides::Override::new(body.mode, crate::clock::wall_now(), ms, &body.reason, &by) {
            Ok(o) => o,
            Err(e) => return bad_request(&e.to_string()),
        };
    apply_override(&s, id, Some(o), &by, caller.from()).await
}

/// End a device's override (admin token).
///
/// Back to what its reports say.
#[utoipa::path(delete, path = "/api/v1/devices/{id}/override", tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The answer", body = DeviceView), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"), (status = 403, description = "A read token where an admin token is needed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 503, description = "Stopping, or not stored: try again", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn delete_override(
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

pub(crate) async fn apply_override(
    s: &ApiState,
    id: String,
    o: Option<crate::compliance::overrides::Override>,
    by: &str,
    from: Option<String>,
) -> Response {
    let what = o.as_ref().map_or("cleared", |o| o.mode.label());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = super::requests::OverrideRequest { device: id.clone(), set: o, by: by.to_string(), from, reply };
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
                Some(d) => Json(DeviceView::of(&d, s)).into_response(),
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
pub(crate) async fn sessions(s: &ApiState, id: &str) -> Vec<Value> {
    let Some(queries) = &s.sessions else { return Vec::new() };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let query = super::requests::SessionQuery { device: id.to_string(), reply };
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
pub(crate) fn peers(s: &ApiState, d: &Device) -> Vec<Value> {
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
                (session.tunnel.since_handshake(std::time::Instant::now()), session.endpoint)
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
