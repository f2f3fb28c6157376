//! The accept loop: optional TLS, HTTP/1.1 with bounded headers, upgrades, and a graceful
//! shutdown that stops accepting, closes control channels with 1001 and drains within a bound.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use relay_core::limits::MAX_HEADER_BYTES;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::Broker;
use crate::seams::Transport;
use crate::seams::authority::PeerCertificate;
use crate::store::AuditKind;

/// Time a client has to finish the TLS handshake, and then again to send its request head
/// (slowloris bound).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before TCP keep-alive probes start, and the interval between them.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How to serve.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// TLS server configuration; `None` serves plain ws/http.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

pub(crate) async fn serve(
    broker: Broker,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let router = broker.router();
    // Connections are tracked apart from relay tasks so both can be drained on shutdown.
    let connections = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let acceptor = options.tls.map(tokio_rustls::TlsAcceptor::from);
    let relay = Arc::clone(broker.relay());
    // Every connection holds a permit until it closes: a flood past the bound is closed at
    // once instead of taking file descriptors and memory from the connections already served.
    let open = Arc::new(tokio::sync::Semaphore::new(relay.limits.max_connections));
    // The peer port stays open through the drain: a rendezvous pending here may still
    // arrive through another node.
    let peers = tokio_util::sync::CancellationToken::new();
    if let Some(cluster) = broker.cluster() {
        cluster
            .serve_peers(router.clone(), connections.clone(), peers.clone())
            .await?;
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            crate::metrics::count(&relay.counters.connections_refused);
            tracing::debug!(%peer, "connection bound reached; closing");
            drop(stream);
            continue;
        };
        tune(&stream);
        let conn = Accepted {
            router: router.clone(),
            acceptor: acceptor.clone(),
            stop: stop.clone(),
            broker: broker.clone(),
        };
        connections.spawn(async move {
            let _permit = permit;
            conn.serve(stream, peer).await;
        });
    }
    drop(listener);
    drain(&broker, &connections, &stop).await;
    peers.cancel();
    Ok(())
}

/// Low latency for relayed frames, and keep-alive probes: relayed connections may idle for
/// hours, and the probes find dead peers.
fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// What each accepted connection needs to be served.
struct Accepted {
    router: axum::Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio_util::sync::CancellationToken,
    broker: Broker,
}

impl Accepted {
    /// Serves one connection, after its TLS handshake when there is one (bounded in time).
    async fn serve(self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let Some(acceptor) = self.acceptor else {
            let transport = Transport { peer, tls: false };
            serve_connection(stream, transport, None, self.router, self.stop).await;
            return;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let cert = client_certificate(&self.broker, &tls);
                let transport = Transport { peer, tls: true };
                serve_connection(tls, transport, cert, self.router, self.stop).await;
            }
            Ok(Err(e)) => handshake_failed(&self.broker, peer, &e),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
}

/// Shutdown: control channels close with 1001, connections and relays drain within
/// `shutdown_drain`, and what is left is cut.
async fn drain(
    broker: &Broker,
    connections: &tokio_util::task::TaskTracker,
    stop: &tokio_util::sync::CancellationToken,
) {
    tracing::info!("shutting down: closing control channels and draining");
    broker.begin_shutdown();
    let shared = broker.relay();
    shared.interconnect.leave().await;
    let drain = shared.limits.shutdown_drain;
    stop.cancel();
    connections.close();
    shared.tasks.close();
    let drained = tokio::time::timeout(drain, async {
        connections.wait().await;
        shared.tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            drain_secs = drain.as_secs_f64(),
            "drain bound reached; cutting remaining connections"
        );
        // Relayed connections get a Close 1001 at their next frame boundary.
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.tasks.wait()).await;
    }
}

/// A refused client certificate (expired, not yet valid, unknown issuer, wrong EKU) is a
/// rejected listener attempt and is audited; other handshake failures are only logged. The
/// audit is throttled per address like any credential failure, so a flood cannot fill it.
fn handshake_failed(broker: &Broker, peer: std::net::SocketAddr, e: &std::io::Error) {
    tracing::debug!(%peer, error = %e, "TLS handshake failed");
    let refused_cert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)));
    if !refused_cert {
        return;
    }
    let shared = broker.relay();
    let credential = crate::limiter::AuthLimiter::fingerprint(Some("client certificate"));
    crate::metrics::count(&shared.counters.auth_failures);
    if shared.limiter.is_throttled(peer.ip(), credential) {
        return;
    }
    shared.limiter.record_failure(peer.ip(), credential);
    let detail = format!("TLS handshake from {}: {e}", peer.ip());
    shared
        .audit
        .record(AuditKind::ListenerRejected, "", &detail);
}

/// The listener named by a verified client certificate, if the client presented one.
fn client_certificate<S>(
    broker: &Broker,
    tls: &tokio_rustls::server::TlsStream<S>,
) -> Option<Arc<PeerCertificate>> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    broker
        .relay()
        .authority
        .as_ref()?
        .identify(leaf)
        .map(Arc::new)
}

/// `cert` is `Some` only over TLS with a verified client certificate.
pub(crate) async fn serve_connection<S>(
    stream: S,
    transport: Transport,
    cert: Option<Arc<PeerCertificate>>,
    router: axum::Router,
    stop: tokio_util::sync::CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(transport);
        if let Some(cert) = &cert {
            req.extensions_mut().insert(Arc::clone(cert));
        }
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192) + 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            // Finish the request in flight, then close; upgraded sockets are handed off
            // already and are drained through the broker's own task tracker.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %transport.peer, error = %e, "connection ended with an error");
    }
}
