//! The broker's own health and metrics: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;

use crate::relay::Relay;

/// The health routes, with the data plane's state.
pub(crate) fn router(relay: Arc<Relay>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(relay)
}

/// Ready while accepting work and the store answers; once shutdown began, or while a
/// shared store is unreachable, the data plane's own 503 (`ServiceUnavailable` or
/// `StoreUnavailable`, with `Retry-After`), so load balancers send work elsewhere.
async fn readyz(State(shared): State<Arc<Relay>>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let tracking = relay_core::tracking::TrackingId::new();
    if shared.shutdown.is_cancelled() {
        return crate::RelayError::ShuttingDown.into_response(&tracking);
    }
    match shared.store.reachable() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => crate::RelayError::from(e).into_response(&tracking),
    }
}

async fn metrics(State(shared): State<Arc<Relay>>) -> impl axum::response::IntoResponse {
    let body = shared.counters.render(
        &shared.directory.counts(),
        crate::metrics::Gauges {
            pending_rendezvous: shared.rendezvous.len(),
            standby_parked: shared.standby.parked(),
            tasks: shared.tasks.len(),
            cert_sessions: shared.sessions.len(),
            audit_dropped: shared.audit.dropped(),
        },
    );
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}
