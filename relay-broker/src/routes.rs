//! Request dispatch and the WebSocket actions: `listen`, `connect`, and the listener's use of
//! a rendezvous address (`accept`, reject, `request`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use relay_core::address::{self, Action, HcPath, RelayQuery};
use relay_core::control::{Accept, Headers, ListenerCommand, RemoteEndpoint};
use relay_core::limits::MAX_HEADER_BYTES;
use relay_core::sas::Rights;
use relay_core::standby::{EARLY_HEADER, STANDBY_HEADER, STANDBY_KEY_HEADER};
use relay_core::tracking::TrackingId;
use relay_io::server as handshake;
use tracing::Instrument as _;

use crate::auth::{Authorized, Claim, authorize};
use crate::ca::PeerCertificate;
use crate::config::HybridConnection;
use crate::identity::{self, CertSession};
use crate::presence::{ListenerHandle, Outbound};
use crate::rendezvous::{Arrival, ListenerSocket, Pending};
use crate::{RelayError, Shared, Transport, control, http_relay, pump};

/// The query parameter carrying a rendezvous capability.
pub(crate) const RENDEZVOUS_PARAM: &str = "sb-hc-rendezvous";

/// Largest body of a registration, renewal or login call (a CSR is at most 8 KiB).
const MAX_REGISTER_BODY: usize = 64 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> axum::Router {
    let register = axum::Router::new()
        .route(
            crate::registration::PATH,
            axum::routing::post(crate::registration::register),
        )
        .route(
            crate::pop::CHALLENGE_PATH,
            axum::routing::post(crate::pop::challenge),
        )
        .route(
            crate::pop::SESSION_PATH,
            axum::routing::post(crate::pop::session),
        )
        .route(
            crate::registration::RENEW_PATH,
            axum::routing::post(crate::registration::renew),
        )
        .route(
            crate::registration::HC_PATH,
            axum::routing::put(crate::registration::create_hybrid_connection)
                .delete(crate::registration::remove_hybrid_connection),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REGISTER_BODY));
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .nest(crate::admin::PREFIX, crate::admin::router())
        .merge(register)
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::pop::attach_session,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            host_mode,
        ))
        .with_state(shared)
}

/// Ready while accepting work; 503 once shutdown began, so load balancers drain first.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl axum::response::IntoResponse {
    let body = shared.counters.render(
        &shared.presence.counts(),
        crate::metrics::Gauges {
            pending_rendezvous: shared.rendezvous.len(),
            standby_parked: shared.standby.parked(),
            tasks: shared.tasks.len(),
        },
    );
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// A request resolved against the namespace.
pub(crate) struct Resolved {
    pub(crate) hc: HybridConnection,
    /// Raw path after the name: empty or starting with `/`.
    pub(crate) suffix: String,
    /// The raw path as the client sent it, without `/$hc`.
    pub(crate) raw_path: String,
    pub(crate) query: RelayQuery,
    pub(crate) tracking: TrackingId,
    pub(crate) transport: Option<Transport>,
    /// The path under which a browser sees the hybrid connection (`/site/ui`, empty in host
    /// mode); `None` for the protocol's `/$hc/` addresses.
    pub(crate) prefix: Option<String>,
    /// Whether it was reached by its own host name.
    pub(crate) host_mode: bool,
}

impl Resolved {
    /// What this request must prove: `needs` on `path`, unless not `required`.
    pub(crate) fn claim<'a>(
        &'a self,
        headers: &'a HeaderMap,
        path: &'a str,
        needs: Rights,
        required: bool,
    ) -> Claim<'a> {
        Claim {
            headers,
            query: &self.query,
            transport: self.transport,
            hc: &self.hc.name,
            path,
            needs,
            required,
        }
    }

    /// `hc` or `hc/suffix`, decoded, for the token audience check.
    pub(crate) fn audience_path(&self) -> String {
        let suffix = percent_encoding::percent_decode_str(&self.suffix).decode_utf8_lossy();
        format!("{}{}", self.hc.name, suffix.trim_end_matches('/'))
    }
}

/// Host mode: every path of a host named after a hybrid connection belongs to its web UI,
/// the broker's own (`/healthz`, `/$admin`) included.
async fn host_mode(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response<Body> {
    match crate::web::host_target(&shared, req.headers()) {
        Some(hc) => serve(shared, req, Some(hc)).await,
        None => next.run(req).await,
    }
}

async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response<Body> {
    serve(shared, req, None).await
}

/// Serves one request, for the hybrid connection named by its host in host mode.
async fn serve(shared: Arc<Shared>, req: Request, host_hc: Option<String>) -> Response<Body> {
    let query = RelayQuery::parse(req.uri().query().unwrap_or_default());
    let tracking = TrackingId::from_client(query.id.as_deref());
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

async fn route(
    shared: &Arc<Shared>,
    req: Request,
    query: RelayQuery,
    tracking: TrackingId,
    host_hc: Option<String>,
) -> Result<Response<Body>, RelayError> {
    if shared.shutdown.is_cancelled() {
        return Err(RelayError::ShuttingDown);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > MAX_HEADER_BYTES {
        return Err(RelayError::HeadersTooLarge(MAX_HEADER_BYTES));
    }
    let path = req.uri().path().to_owned();
    // Our own serve loop inserts `Transport`; a host app serving the router with
    // `into_make_service_with_connect_info` still gives us the peer address.
    let transport = req.extensions().get::<Transport>().copied().or_else(|| {
        req.extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| Transport {
                peer: info.0,
                tls: false,
            })
    });
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
    let resolved = resolve(shared, rest, query, tracking, transport)?;
    match action {
        Action::Listen => listen(shared, req, resolved).await,
        Action::Connect => connect(shared, req, resolved).await,
        Action::Accept => accept(shared, req, &resolved.query),
        Action::Request => request_rendezvous(shared, req, &resolved.query),
        Action::Standby => standby(shared, req, &resolved),
    }
}

/// A request on a hybrid connection's own path (`/{hc}/…`, or any path in host mode): a
/// WebSocket upgrade is relayed like a `connect` to that path, anything else as HTTP.
async fn browser_path(
    shared: &Arc<Shared>,
    req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    if handshake::is_upgrade(req.headers()) {
        tracing::Span::current().record("action", "connect");
        return connect(shared, req, r).await;
    }
    http_relay::handle(shared, req, r).await
}

/// Host mode: the whole path is the hybrid connection's.
fn resolve_host(
    shared: &Shared,
    hc: &str,
    path: &str,
    query: RelayQuery,
    tracking: TrackingId,
    transport: Option<Transport>,
) -> Result<Resolved, RelayError> {
    let hc = shared
        .store
        .hybrid_connection(hc)
        .ok_or(RelayError::EndpointNotFound)?;
    Ok(Resolved {
        raw_path: format!("/{}{path}", address::encode_name(&hc.name)),
        hc,
        suffix: path.to_owned(),
        query,
        tracking,
        transport,
        prefix: Some(String::new()),
        host_mode: true,
    })
}

fn resolve(
    shared: &Shared,
    rest: &str,
    query: RelayQuery,
    tracking: TrackingId,
    transport: Option<Transport>,
) -> Result<Resolved, RelayError> {
    let hit = HcPath::resolve(rest, |name| {
        shared.store.hybrid_connection(name).map(|h| h.name)
    })
    .ok_or(RelayError::EndpointNotFound)?;
    let hc = shared
        .store
        .hybrid_connection(&hit.name)
        .ok_or(RelayError::EndpointNotFound)?;
    Ok(Resolved {
        hc,
        suffix: hit.suffix.to_owned(),
        raw_path: format!("/{rest}"),
        query,
        tracking,
        transport,
        prefix: None,
        host_mode: false,
    })
}

/// `sb-hc-action=listen`: a listener opens its control channel.
async fn listen(
    shared: &Arc<Shared>,
    mut req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    if !r.suffix.trim_matches('/').is_empty() {
        return Err(RelayError::EndpointNotFound);
    }
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    // A verified client certificate is the listener's credential; SAS otherwise.
    let cert = req.extensions().get::<Arc<PeerCertificate>>().cloned();
    let (expires_at, session, principal) = match cert {
        Some(cert) => {
            let session = authorize_certificate(shared, &cert, &r).await?;
            let principal = format!("cert:{}", cert.listener_id);
            (cert.not_after, Some(session), principal)
        }
        None => {
            let claim = r.claim(req.headers(), &r.hc.name, Rights::LISTEN, true);
            let Authorized {
                expires_at, rule, ..
            } = authorize(shared, claim).await?;
            let principal = format!("sas:{}", rule.unwrap_or_default());
            (expires_at.unwrap_or(0), None, principal)
        }
    };
    let instance = listener_instance(req.headers())?.map(|i| format!("{principal}|{i}"));
    let base_url = base_url(shared, req.headers(), r.transport);
    let standby = req
        .headers()
        .get(STANDBY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| relay_core::standby::requested(v, shared.limits.standby_per_listener));
    let header_arrays = req
        .headers()
        .contains_key(relay_core::control::HEADER_ARRAYS_HEADER);
    let upgrade = hyper::upgrade::on(&mut req);
    let opening = control::Opening {
        base_url,
        expires_at,
        cert: session,
        instance,
        standby,
        header_arrays,
    };
    let pool = control::start(shared, upgrade, &r, opening)?;
    let mut resp = switching(&accept_key, None);
    if let Some(pool) = pool {
        let h = resp.headers_mut();
        h.insert(STANDBY_HEADER, HeaderValue::from(pool.max()));
        if let Ok(key) = HeaderValue::from_str(pool.key()) {
            h.insert(STANDBY_KEY_HEADER, key);
        }
    }
    Ok(resp)
}

/// The agent's `relay-listener-instance` name, bounded.
fn listener_instance(headers: &HeaderMap) -> Result<Option<&str>, RelayError> {
    use relay_core::control::{INSTANCE_HEADER, MAX_INSTANCE_LEN};
    let Some(value) = headers.get(INSTANCE_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= MAX_INSTANCE_LEN => Ok(Some(v)),
        _ => Err(RelayError::BadRequest(format!(
            "{INSTANCE_HEADER}: 1 to {MAX_INSTANCE_LEN} visible ASCII characters"
        ))),
    }
}

/// Checks a certificate listener against the store (off the runtime threads), auditing
/// refusals, and hands back what closes its session.
async fn authorize_certificate(
    shared: &Arc<Shared>,
    cert: &Arc<PeerCertificate>,
    r: &Resolved,
) -> Result<CertSession, RelayError> {
    // Taken before the check: a revocation landing after it still cancels this token.
    let revoked = shared.sessions.token(&cert.listener_id);
    let store = Arc::clone(&shared.store);
    let (c, hc) = (Arc::clone(cert), r.hc.name.clone());
    let checked = tokio::task::spawn_blocking(move || {
        identity::authorize_listen(&*store, &c, &hc, crate::store::now_ms())
    })
    .await
    .map_err(|e| RelayError::Internal(e.to_string()))?;
    match checked {
        Ok(record) => Ok(CertSession {
            revoked,
            listener_id: record.id.into(),
        }),
        Err(e) => {
            Shared::count(&shared.counters.auth_failures);
            let detail = format!("{}: {e} TrackingId:{}", r.hc.name, r.tracking);
            control::audit_event(shared, "listener.rejected", &cert.listener_id, &detail);
            Err(e)
        }
    }
}

/// `sb-hc-action=connect`: a sender wants a WebSocket to a listener.
async fn connect(
    shared: &Arc<Shared>,
    mut req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    let view = crate::web::View::of(req.headers(), &r);
    let consumed_authorization = if r.prefix.is_some() {
        crate::web::authorize_browser(shared, req.headers(), req.method(), &r, &view)
            .await?
            .consumed_authorization()
    } else {
        let audience = r.audience_path();
        let claim = r.claim(
            req.headers(),
            &audience,
            Rights::SEND,
            r.hc.requires_client_authorization,
        );
        authorize(shared, claim)
            .await?
            .presented
            .consumed_authorization()
    };
    let listener = shared
        .presence
        .pick(&r.hc.name)
        .ok_or(RelayError::ListenerNotConnected)?;
    let mut connect_headers = crate::web::for_listener(
        forwarded_headers(req.headers(), consumed_authorization),
        &view,
    );
    if !listener.header_arrays {
        connect_headers = connect_headers.folded();
    }
    let mut address = format!(
        "{}/$hc/{}{}?",
        listener.base_url,
        address::encode_name(&r.hc.name),
        r.suffix
    );
    if !r.query.app_query.is_empty() {
        address.push_str(&r.query.app_query);
        address.push('&');
    }
    address.push_str(&format!("sb-hc-action=accept&sb-hc-id={}", r.tracking));
    let mut accept = Accept {
        address,
        id: r.tracking.to_string(),
        connect_headers,
        remote_endpoint: r.transport.map(|t| RemoteEndpoint {
            address: t.peer.ip().to_string(),
            port: t.peer.port(),
        }),
    };
    // Our own senders may take an early 101 (no sub-protocol to wait for the listener's
    // choice of); see `relay_core::standby`.
    let early = req.headers().contains_key(EARLY_HEADER)
        && handshake::offered_protocols(req.headers()).is_empty();
    let sender_upgrade = hyper::upgrade::on(&mut req);
    let arrival = match via_standby(shared, &listener, &accept, early).await? {
        Some(Paired::Answered(arrival)) => arrival,
        Some(Paired::Early(standby)) => {
            Shared::count(&shared.counters.standby_early);
            crate::early::spawn(shared, sender_upgrade, standby, listener, accept);
            return Ok(switching(&accept_key, None));
        }
        None => via_control_channel(shared, &listener, &mut accept).await?,
    };
    match arrival {
        Arrival::Rejected {
            status,
            description,
        } => Err(RelayError::Rejected {
            status,
            description,
        }),
        Arrival::Accepted { socket, protocol } => {
            spawn_pair(
                shared,
                sender_upgrade,
                socket,
                &r.tracking,
                listener.revoked.clone(),
            );
            Ok(switching(&accept_key, protocol.as_deref()))
        }
    }
}

/// A sender handed to a standby socket.
enum Paired {
    /// The listener answered.
    Answered(Arrival),
    /// Early pairing: the `accept` is on the socket, the answer still to come.
    Early(Box<RelayHalves>),
}

/// Hands the sender to one of the listener's parked standby sockets. `None` when none is
/// parked or the one taken failed before the listener answered.
async fn via_standby(
    shared: &Shared,
    listener: &ListenerHandle,
    accept: &Accept,
    early: bool,
) -> Result<Option<Paired>, RelayError> {
    let Some(pool) = &listener.standby else {
        return Ok(None);
    };
    let json = ListenerCommand::Accept(accept.clone()).encode();
    let Some(outcome) = pool.dispatch(json, early) else {
        return Ok(None);
    };
    match tokio::time::timeout(shared.limits.accept_timeout, outcome).await {
        Ok(Ok(crate::standby::Outcome::Answered(arrival))) => {
            Shared::count(&shared.counters.standby_accepts);
            Ok(Some(Paired::Answered(arrival)))
        }
        Ok(Ok(crate::standby::Outcome::Dispatched(standby))) => Ok(Some(Paired::Early(standby))),
        Ok(Ok(crate::standby::Outcome::Failed) | Err(_)) => {
            Shared::count(&shared.counters.standby_fallbacks);
            Ok(None)
        }
        Err(_) => {
            Shared::count(&shared.counters.rendezvous_timeouts);
            Err(RelayError::GatewayTimeout)
        }
    }
}

/// The standard path: a single-use rendezvous address sent over the control channel.
pub(crate) async fn via_control_channel(
    shared: &Shared,
    listener: &ListenerHandle,
    accept: &mut Accept,
) -> Result<Arrival, RelayError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let guard = shared
        .rendezvous
        .add_address(Pending::Accept {
            listener_id: listener.id,
            tx,
        })
        .map_err(|_| RelayError::Busy("pending rendezvous"))?;
    accept
        .address
        .push_str(&format!("&{RENDEZVOUS_PARAM}={}", guard.key()));
    let deadline = tokio::time::Instant::now() + shared.limits.accept_timeout;
    let notice = Outbound::Text(ListenerCommand::Accept(accept.clone()).encode());
    control::enqueue(listener, notice, deadline).await?;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(arrival)) => Ok(arrival),
        Ok(Err(_)) => Err(RelayError::ListenerFailed(
            "the listener disconnected".into(),
        )),
        Err(_) => {
            Shared::count(&shared.counters.rendezvous_timeouts);
            Err(RelayError::GatewayTimeout)
        }
    }
}

/// `sb-hc-action=standby`: one of our listeners parks a pre-opened rendezvous socket.
fn standby(
    shared: &Arc<Shared>,
    mut req: Request,
    r: &Resolved,
) -> Result<Response<Body>, RelayError> {
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    // The key is the credential: it names one live control channel.
    let pool = req
        .headers()
        .get(STANDBY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|key| shared.standby.get(key))
        .filter(|pool| pool.hc().eq_ignore_ascii_case(&r.hc.name))
        .ok_or(RelayError::RendezvousExpired)?;
    let place = pool
        .reserve()
        .ok_or(RelayError::Busy("standby sockets for this listener"))?;
    let upgrade = hyper::upgrade::on(&mut req);
    crate::standby::spawn(shared, place, upgrade);
    Ok(switching(&accept_key, None))
}

fn spawn_pair(
    shared: &Arc<Shared>,
    sender: hyper::upgrade::OnUpgrade,
    listener: ListenerSocket,
    tracking: &TrackingId,
    revoked: Option<tokio_util::sync::CancellationToken>,
) {
    let buffer = shared.limits.relay_buffer_bytes;
    let shared = Arc::clone(shared);
    let span = tracing::info_span!("relay", tracking = %tracking);
    let tasks = shared.tasks.clone();
    tasks.spawn(
        async move {
            let (Ok(sender), Some(listener)) = tokio::join!(sender, listener.open(buffer)) else {
                tracing::debug!("an upgrade failed before relaying");
                return;
            };
            let sender = relay_io_halves(sender, buffer);
            relay_pair(&shared, sender, listener, revoked).await;
        }
        .instrument(span),
    );
}

/// Relays a paired sender and listener until both close, the hard stop, or the
/// revocation of a certificate listener.
pub(crate) async fn relay_pair(
    shared: &Shared,
    mut sender: RelayHalves,
    mut listener: RelayHalves,
    revoked: Option<tokio_util::sync::CancellationToken>,
) {
    // In-flight connections may finish during the drain; only the hard stop cuts them.
    let shutdown = shared.hard_stop.child_token();
    sender
        .0
        .grow_when_busy(shared.limits.relay_buffer_max_bytes);
    listener
        .0
        .grow_when_busy(shared.limits.relay_buffer_max_bytes);
    let counters = &shared.counters;
    counters.sender_connects.fetch_add(1, Ordering::Relaxed);
    counters.active_connections.fetch_add(1, Ordering::Relaxed);
    let relay = pump::relay(sender, listener, shutdown.clone(), counters);
    tokio::pin!(relay);
    let revocation = async {
        match revoked {
            Some(revoked) => revoked.cancelled_owned().await,
            None => std::future::pending().await,
        }
    };
    let relayed = tokio::select! {
        relayed = &mut relay => relayed,
        () = revocation => {
            // Close both sides at the next frame boundary, as on a hard stop.
            shutdown.cancel();
            relay.await
        }
    };
    counters.active_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(
        to_listener = relayed.to_listener,
        to_sender = relayed.to_sender,
        "relay finished"
    );
}

type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Frame reader and writer of an upgraded server-side socket.
pub(crate) type RelayHalves = (
    relay_io::WsReader<tokio::io::ReadHalf<Upgraded>>,
    relay_io::WsWriter<tokio::io::WriteHalf<Upgraded>>,
);

/// Frame reader and writer over an upgraded server-side socket.
pub(crate) fn relay_io_halves(upgraded: hyper::upgrade::Upgraded, buffer: usize) -> RelayHalves {
    let (r, w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    (
        relay_io::WsReader::new(r, relay_io::Role::Server, buffer),
        relay_io::WsWriter::new(w, relay_io::Role::Server),
    )
}

/// `sb-hc-action=accept` on a capability address: the listener accepts or rejects a sender.
fn accept(
    shared: &Arc<Shared>,
    mut req: Request,
    query: &RelayQuery,
) -> Result<Response<Body>, RelayError> {
    let cap = capability(req.uri().query())?;
    let reject = query.status_code.as_deref().map(|code| {
        (
            crate::rendezvous::refusal_status(code.parse().ok()),
            query
                .status_description
                .clone()
                .unwrap_or_else(|| "Rejected by the listener".into()),
        )
    });
    let accept_key = match reject {
        Some(_) => None,
        None => Some(
            handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?,
        ),
    };
    let Some(Pending::Accept { tx, .. }) = shared.rendezvous.take_address(&cap) else {
        return Err(RelayError::RendezvousExpired);
    };
    if let Some((status, description)) = reject {
        let _ = tx.send(Arrival::Rejected {
            status,
            description,
        });
        return Ok(gone());
    }
    let protocol = handshake::offered_protocols(req.headers())
        .into_iter()
        .next();
    let upgrade = hyper::upgrade::on(&mut req);
    tx.send(Arrival::Accepted {
        socket: ListenerSocket::Upgrade(upgrade),
        protocol: protocol.clone(),
    })
    .map_err(|_| RelayError::RendezvousExpired)?;
    Ok(switching(
        &accept_key.unwrap_or_default(),
        protocol.as_deref(),
    ))
}

/// `sb-hc-action=request` on a capability address: the HTTP rendezvous.
fn request_rendezvous(
    shared: &Arc<Shared>,
    mut req: Request,
    _query: &RelayQuery,
) -> Result<Response<Body>, RelayError> {
    let cap = capability(req.uri().query())?;
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    let Some(Pending::Request {
        listener_id,
        request_id,
    }) = shared.rendezvous.take_address(&cap)
    else {
        return Err(RelayError::RendezvousExpired);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    http_relay::spawn_rendezvous(shared, upgrade, listener_id, request_id);
    Ok(switching(&accept_key, None))
}

fn capability(query: Option<&str>) -> Result<String, RelayError> {
    form_pairs(query.unwrap_or_default())
        .find(|(k, _)| k == RENDEZVOUS_PARAM)
        .map(|(_, v)| v)
        .ok_or(RelayError::RendezvousExpired)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
}

/// The `101 Switching Protocols` answer.
fn switching(accept_key: &str, protocol: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept_key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert(SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

/// `410 Gone`: the protocol's answer to a successful reject.
fn gone() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::GONE;
    resp
}

/// Every header of the sender except relay credentials, in canonical case.
fn forwarded_headers(headers: &HeaderMap, drop_authorization: bool) -> Headers {
    let list = headers
        .iter()
        .filter(|(name, _)| !relay_core::http_rules::is_relay_credential(name))
        .filter(|(name, _)| !(drop_authorization && *name == http::header::AUTHORIZATION))
        .filter_map(|(name, value)| {
            Some((
                canonical_case(name.as_str()),
                value.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    Headers(list)
}

/// `sec-websocket-key` → `Sec-WebSocket-Key`, `x-custom` → `X-Custom`.
pub(crate) fn canonical_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('-').enumerate() {
        if i > 0 {
            out.push('-');
        }
        if part.eq_ignore_ascii_case("websocket") {
            out.push_str("WebSocket");
            continue;
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// Base of rendezvous addresses for a listener: `public_url`, else its own scheme and Host.
fn base_url(shared: &Shared, headers: &HeaderMap, transport: Option<Transport>) -> String {
    if let Some(url) = &shared.public_url {
        return url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
    }
    let scheme = if crate::web::behind_tls(headers, transport) {
        "wss"
    } else {
        "ws"
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ', '\\']));
    let host = match (host, transport) {
        (Some(h), _) => h.to_owned(),
        (None, Some(t)) => t.peer.to_string(),
        (None, None) => "localhost".into(),
    };
    format!("{scheme}://{host}")
}

/// Whether the method may be relayed over HTTP.
pub(crate) fn relayable(method: &Method) -> bool {
    method != Method::CONNECT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_header_case() {
        assert_eq!(canonical_case("sec-websocket-key"), "Sec-WebSocket-Key");
        assert_eq!(canonical_case("x-custom"), "X-Custom");
        assert_eq!(canonical_case("host"), "Host");
    }
}
