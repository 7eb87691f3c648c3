//! The audit trail over HTTP: `GET /api/v1/audit` pages through its
//! entries (admin token); `GET /api/v1/events` is the event stream for
//! consumers that pull, a long poll over the same entries as CloudEvents.

use super::views::{AuditPage, EventsPage, Problem};
use super::{ApiState, Caller, bad_request, problem};
use crate::audit::reader::Reader;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

/// Entries read per step while filtering.
const CHUNK: usize = 1024;
/// The most entries one page scans (a filter matching nothing must not
/// read the whole trail in one request): the page ends there with a
/// `next` to go on from.
const SCAN: usize = 100_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only this device's entries.
    device: Option<String>,
    /// Only entries of this kind, e.g. `warden.override.set`.
    kind: Option<String>,
    /// RFC 3339: entries at or after this time.
    since: Option<String>,
    /// RFC 3339: entries at or before this time.
    until: Option<String>,
    /// Entries after this sequence number (the previous page's `next`).
    after: Option<u64>,
    /// Page size, default 100, at most 1000.
    limit: Option<usize>,
}

/// A page of the audit trail (admin token).
///
/// Entries filtered by device, kind and time, in sequence order. Checkpoints are not listed (`warden
/// audit verify` checks them). `next` is where the next page starts
/// (`after=next`), absent at the end.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "The answer", body = AuditPage), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A read token where an admin token is needed", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list_audit(
    State(s): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(refused) = caller.admin() {
        return *refused;
    }
    let Ok(Query(q)) = query else {
        return bad_request("unknown or malformed query parameter (device, kind, since, until, after, limit)");
    };
    let Some(dir) = s.audit_dir.clone() else {
        return problem(StatusCode::NOT_FOUND, "the audit trail is off (audit.enabled = false)");
    };
    let bound = |t: &Option<String>| t.as_deref().map(crate::telemetry::report::parse_rfc3339).transpose();
    let (Ok(since), Ok(until)) = (bound(&q.since), bound(&q.until)) else {
        return bad_request("since and until are RFC 3339 times");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let head = *s.audit_durable.borrow();
    let keep = move |e: &Value| {
        let at = e["at"].as_str().and_then(|t| crate::telemetry::report::parse_rfc3339(t).ok());
        q.device.as_deref().is_none_or(|d| e["device"] == d)
            && q.kind.as_deref().is_none_or(|k| e["kind"] == k)
            && since.is_none_or(|s| at.is_some_and(|t| t >= s))
            && until.is_none_or(|u| at.is_some_and(|t| t <= u))
    };
    let after = q.after.unwrap_or(0);
    match tokio::task::spawn_blocking(move || page(&dir, after, head, limit, keep)).await {
        Ok(Ok((entries, scanned))) => {
            // More may follow when the page is full or the scan stopped
            // short of the trail's end.
            let next = (scanned < head).then_some(scanned);
            Json(AuditPage { entries, next }).into_response()
        }
        _ => problem(StatusCode::INTERNAL_SERVER_ERROR, "the audit trail could not be read"),
    }
}

/// Up to `limit` entries after `after` (up to `head`) that `keep` takes,
/// and the last entry scanned.
pub(super) fn page(
    dir: &std::path::Path,
    after: u64,
    head: u64,
    limit: usize,
    keep: impl Fn(&Value) -> bool,
) -> std::io::Result<(Vec<Value>, u64)> {
    let mut reader = Reader::seek(dir, after)?;
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut scanned = 0;
    'scan: while scanned < SCAN {
        chunk.clear();
        let before = reader.after();
        reader.read(head, CHUNK.min(SCAN - scanned), &mut chunk)?;
        if reader.after() == before {
            break;
        }
        scanned += chunk.len();
        for e in chunk.drain(..) {
            if keep(&e) {
                out.push(e);
                if out.len() == limit {
                    // The page ends at this entry: the next starts after it.
                    let last = out.last().and_then(|e| e["seq"].as_u64()).unwrap_or(before);
                    return Ok((out, last));
                }
            }
        }
        if reader.after() >= head {
            break 'scan;
        }
    }
    Ok((out, reader.after()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Events after this cursor (the previous answer's `next`); absent:
    /// from now on.
    after: Option<u64>,
    /// Event types, comma-separated (absent: all).
    types: Option<String>,
    /// Page size, default 100, at most 1000.
    limit: Option<usize>,
    /// How long to wait for an event when there is none (e.g. `10s`; at
    /// most the server's long-poll bound, 25 s by default).
    wait: Option<String>,
}

/// The event stream, as a long poll (read token).
///
/// CloudEvents after the cursor, at once when some are durable, else as soon as one is, up to
/// `wait`. `next` goes in the next request's `after` (it moves past
/// filtered-out entries too).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "The answer", body = EventsPage), (status = 400, description = "A malformed request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No bearer token, or a wrong one", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list_events(
    State(s): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("unknown or malformed query parameter (after, types, limit, wait)");
    };
    let Some(dir) = s.audit_dir.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "the event stream is the audit trail, which is off (audit.enabled = false)",
        );
    };
    let types: Option<Vec<String>> = q.types.as_deref().map(|t| t.split(',').map(str::to_string).collect());
    if let Some(unknown) = types.iter().flatten().find(|t| !crate::events::config::KINDS.contains(&t.as_str())) {
        return bad_request(&format!("unknown event type {unknown:?}"));
    }
    let wait = match q.wait.as_deref().map(crate::diag::parse_duration).transpose() {
        Ok(w) => w.unwrap_or(s.long_poll).min(s.long_poll),
        Err(e) => return bad_request(&e),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after.unwrap_or_else(|| *s.audit_durable.borrow());
    let keep =
        move |e: &Value| types.as_ref().is_none_or(|t| e["kind"].as_str().is_some_and(|k| t.iter().any(|x| x == k)));
    match poll_entries(&s, &dir, after, limit, wait, keep).await {
        Ok((entries, next)) => {
            let events = entries
                .iter()
                .filter_map(|e| crate::events::from_entry(e, &s.events_source))
                .filter_map(|ev| serde_json::from_slice(&ev.body).ok())
                .collect();
            Json(EventsPage { events, next }).into_response()
        }
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the audit trail could not be read"),
    }
}

/// Durable entries after `after` that `keep` takes: at once when there are
/// some, else as soon as some are written, up to `wait` (then none). With
/// the cursor to go on from (past what was scanned and not taken).
pub(super) async fn poll_entries<F>(
    s: &ApiState,
    dir: &std::path::Path,
    mut after: u64,
    limit: usize,
    wait: std::time::Duration,
    keep: F,
) -> std::io::Result<(Vec<Value>, u64)>
where
    F: Fn(&Value) -> bool + Clone + Send + 'static,
{
    let mut durable = s.audit_durable.clone();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let head = *durable.borrow_and_update();
        if head > after {
            let (dir, keep) = (dir.to_path_buf(), keep.clone());
            let (entries, scanned) = tokio::task::spawn_blocking(move || page(&dir, after, head, limit, keep))
                .await
                .map_err(std::io::Error::other)??;
            after = after.max(scanned);
            if !entries.is_empty() {
                return Ok((entries, after));
            }
        }
        // The time is up (or warden is stopping): nothing yet.
        if !matches!(tokio::time::timeout_at(deadline, durable.changed()).await, Ok(Ok(()))) {
            return Ok((Vec::new(), after));
        }
    }
}
