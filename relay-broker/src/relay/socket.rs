//! The upgraded socket as frame halves, and the answers that complete a WebSocket handshake.

use axum::body::Body;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{HeaderValue, Response, StatusCode};

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

/// The `101 Switching Protocols` answer.
pub(crate) fn switching(accept_key: &str, protocol: Option<&str>) -> Response<Body> {
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
