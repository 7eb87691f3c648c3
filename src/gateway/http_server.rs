//! The API's HTTP/1.1 server, built to hold up against clients that hold
//! connections open: `axum::serve` sets no header timeout, so a client that
//! sent half a header, or nothing, kept its connection (and a task) for as
//! long as it liked. Here:
//!
//! - **Header read timeout** (`http.header_timeout`): the request head must
//!   arrive within it; hyper also starts it while a kept-alive connection
//!   waits for its next request, so it is the idle timeout too.
//! - **Request timeout** (`http.request_timeout`): a request whose body
//!   dribbles in, or whose answer takes too long, gets 408 and the
//!   connection closes.
//! - **Connection cap** (`http.max_connections`): past it a new connection
//!   is closed at once, before any byte is read.
//! - **Body cap**: 64 KiB (every API body is a small JSON object); larger
//!   gets 413.
//!
//! Every refusal is counted in `warden_http_refusals_total{reason}`.

// A shell: it owns the listening socket and reads the clock for timeouts.
#![allow(clippy::disallowed_methods)]

use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The server's limits, from `[http]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = app.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY)).layer(axum::middleware::map_response({
        let metrics = Arc::clone(&metrics);
        move |r: Response<Body>| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                metrics.http_refusal(crate::metrics::HttpRefusal::BodyTooLarge);
            }
            std::future::ready(r)
        }
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: wait a moment rather
                // than spin on the error.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.http_refusal(crate::metrics::HttpRefusal::TooManyConnections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, metrics) = (app.clone(), Arc::clone(&metrics));
        connections.spawn(async move {
            let _slot = slot;
            let for_requests = Arc::clone(&metrics);
            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let (app, metrics) = (app.clone(), Arc::clone(&for_requests));
                // Who is asking, for the audit trail's record of writes.
                req.extensions_mut().insert(crate::http::Peer(peer));
                async move {
                    let answer = tokio::time::timeout(limits.request_timeout, app.oneshot(req.map(Body::new))).await;
                    Ok::<_, std::convert::Infallible>(match answer {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            metrics.http_refusal(crate::metrics::HttpRefusal::RequestTimeout);
                            let mut r = crate::http::problem(
                                StatusCode::REQUEST_TIMEOUT,
                                "the request was not answered within http.request_timeout",
                            );
                            let close = axum::http::HeaderValue::from_static("close");
                            r.headers_mut().insert(axum::http::header::CONNECTION, close);
                            r
                        }
                    })
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served
                && e.is_timeout()
            {
                metrics.http_refusal(crate::metrics::HttpRefusal::HeaderTimeout);
            }
        });
    }
    // Stop accepting; give requests in flight a moment, then drop the rest.
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
}
