//! Every request that is not the broker's own: size checks, WebSocket or HTTP, and the
//! action's handler.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use http::{Method, Response};
use relay_core::address::{Action, HcPath, RelayQuery};
use relay_core::limits::MAX_HEADER_BYTES;
use relay_core::tracking::TrackingId;
use relay_io::server as handshake;
use tracing::Instrument as _;

use super::resolve::{Resolved, resolve, resolve_host};
use super::{Relay, answer, connect, http_relay, listen};
use crate::RelayError;
use crate::seams::Transport;

/// The data plane's router: everything falls through to [`dispatch`].
pub(super) fn router(shared: Arc<Relay>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(shared)
}

/// Host mode: every path of a host named after a hybrid connection belongs to its web UI,
/// the broker's own (`/healthz`, `/$admin`) included.
pub(super) async fn host_mode(
    State(shared): State<Arc<Relay>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response<Body> {
    match crate::relay::web::host_target(&shared, req.headers()) {
        Some(hc) => serve(shared, req, Some(hc)).await,
        None => next.run(req).await,
    }
}

async fn dispatch(State(shared): State<Arc<Relay>>, req: Request) -> Response<Body> {
    serve(shared, req, None).await
}

/// Serves one request, for the hybrid connection named by its host in host mode.
async fn serve(shared: Arc<Relay>, req: Request, host_hc: Option<String>) -> Response<Body> {
    let query = RelayQuery::parse(req.uri().query().unwrap_or_default());
    let tracking = TrackingId::from_client_on(query.id.as_deref(), Some(shared.node.as_str()));
    let span = tracing::info_span!("request", tracking = %tracking, method = %req.method(), action = tracing::field::Empty);
    let relayed_http =
        host_hc.is_some() || !req.uri().path().starts_with(relay_core::address::WS_PREFIX);
    let started = std::time::Instant::now();
    async move {
        let resp = match route(&shared, req, query, tracking.clone(), host_hc).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::info!(status = err.status().as_u16(), error = %err, "refused");
                err.into_response(&tracking)
            }
        };
        if relayed_http {
            shared
                .counters
                .observe_http(resp.status().as_u16(), started.elapsed());
        }
        resp
    }
    .instrument(span)
    .await
}

/// The request line and headers within [`MAX_HEADER_BYTES`], as hyper does not bound them
/// for a router served by a host application.
fn check_head_size(req: &Request) -> Result<(), RelayError> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > MAX_HEADER_BYTES {
        return Err(RelayError::HeadersTooLarge(MAX_HEADER_BYTES));
    }
    Ok(())
}

/// The connection a request came on. Our own serve loop inserts `Transport`; a host app
/// serving the router with `into_make_service_with_connect_info` still gives the peer.
fn transport(req: &Request) -> Option<Transport> {
    req.extensions().get::<Transport>().copied().or_else(|| {
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| Transport {
                peer: info.0,
                tls: false,
            })
    })
}

/// Size checks, then a browser path (host mode or `/{hc}/…`) or a WebSocket action under
/// `/$hc/`, each to its handler.
async fn route(
    shared: &Arc<Relay>,
    req: Request,
    query: RelayQuery,
    tracking: TrackingId,
    host_hc: Option<String>,
) -> Result<Response<Body>, RelayError> {
    if shared.shutdown.is_cancelled() {
        return Err(RelayError::ShuttingDown);
    }
    check_head_size(&req)?;
    let path = req.uri().path().to_owned();
    let transport = transport(&req);
    let browser = host_hc.is_some() || HcPath::strip_ws_prefix(&path).is_none();
    if browser && !relayable(req.method()) {
        return Err(RelayError::MethodNotAllowed);
    }
    if let Some(hc) = host_hc {
        let resolved = resolve_host(shared, &hc, &path, query, tracking, transport)?;
        return browser_path(shared, req, resolved).await;
    }
    let Some(rest) = HcPath::strip_ws_prefix(&path) else {
        let mut resolved = resolve(
            shared,
            path.trim_start_matches('/'),
            query,
            tracking,
            transport,
        )?;
        let prefix = &resolved.raw_path[..resolved.raw_path.len() - resolved.suffix.len()];
        resolved.prefix = Some(prefix.to_owned());
        return browser_path(shared, req, resolved).await;
    };
    if !handshake::is_upgrade(req.headers()) {
        return Err(RelayError::BadRequest(
            "WebSocket actions under /$hc/ need a WebSocket upgrade".into(),
        ));
    }
    let action = match query.action {
        Some(action) => action,
        None if query.unknown_action => {
            return Err(RelayError::BadRequest("unknown sb-hc-action".into()));
        }
        None => return Err(RelayError::BadRequest("sb-hc-action is required".into())),
    };
    tracing::Span::current().record("action", action.as_str());
    if let Some(node) = answer::owner(action, &req)
        && node != shared.node
    {
        return answer::forward(shared, &node, req).await;
    }
    if action == Action::Listen && shared.fenced.load(std::sync::atomic::Ordering::Acquire) {
        return Err(RelayError::Fenced("it takes no listeners now".into()));
    }
    let resolved = resolve(shared, rest, query, tracking, transport)?;
    match action {
        Action::Listen => listen::listen(shared, req, resolved).await,
        Action::Connect => connect::connect(shared, req, resolved).await,
        Action::Accept => answer::accept(shared, req, &resolved.query),
        Action::Request => answer::request_rendezvous(shared, req, &resolved.query),
        Action::Standby => answer::standby(shared, req, &resolved).await,
    }
}

/// A request on a hybrid connection's own path (`/{hc}/…`, or any path in host mode): a
/// WebSocket upgrade is relayed like a `connect` to that path, anything else as HTTP.
async fn browser_path(
    shared: &Arc<Relay>,
    req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    if handshake::is_upgrade(req.headers()) {
        tracing::Span::current().record("action", "connect");
        return connect::connect(shared, req, r).await;
    }
    http_relay::handle(shared, req, r).await
}

/// Whether the method may be relayed over HTTP.
pub(crate) fn relayable(method: &Method) -> bool {
    method != Method::CONNECT
}
