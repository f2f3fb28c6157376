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
    if let Err(reason) = shared.interconnect.ready() {
        return crate::RelayError::Fenced(reason).into_response(&tracking);
    }
    match shared.store.reachable() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => crate::RelayError::from(e).into_response(&tracking),
    }
}

async fn metrics(State(shared): State<Arc<Relay>>) -> impl axum::response::IntoResponse {
    let mut body = shared.counters.render(
        &shared.directory.counts(),
        crate::metrics::Gauges {
            pending_rendezvous: shared.rendezvous.len(),
            standby_parked: shared.standby.parked(),
            tasks: shared.tasks.len(),
            cert_sessions: shared.sessions.len(),
            audit_dropped: shared.audit.dropped(),
        },
    );
    // Which node this is, so that a cluster's scrapes can be told apart and joined.
    body.push_str(&format!(
        "# HELP relay_node This broker node.\n# TYPE relay_node gauge\nrelay_node{{node=\"{node}\"}} 1\n\
         # HELP relay_node_channels Listener control channels held by this node (relay_listeners counts the cluster's).\n\
         # TYPE relay_node_channels gauge\nrelay_node_channels{{node=\"{node}\"}} {}\n",
        shared.channels.len(),
        node = shared.node,
    ));
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}
