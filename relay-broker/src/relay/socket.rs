//! The upgraded socket as frame halves, and the answers that complete a WebSocket handshake.

use axum::body::Body;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{HeaderValue, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

/// Any byte stream a relayed socket runs over: hyper's upgraded connection in service, an
/// in-memory duplex in unit tests, a spliced peer connection in a cluster. Erased, so the
/// tasks that move frames do not name hyper (its `Upgraded` is a boxed stream already, so
/// this costs no extra copy).
pub(crate) trait Socket:
    AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static
{
}
impl<T: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static> Socket for T {}

/// A relayed socket, whatever carries it.
pub(crate) type BoxSocket = Box<dyn Socket>;

/// Frame reader and writer of a server-side socket.
pub(crate) type RelayHalves = (
    relay_io::WsReader<ReadHalf<BoxSocket>>,
    relay_io::WsWriter<WriteHalf<BoxSocket>>,
);

/// Frame reader and writer over an upgraded server-side socket.
pub(crate) fn relay_io_halves(upgraded: hyper::upgrade::Upgraded, buffer: usize) -> RelayHalves {
    halves(Box::new(hyper_util::rt::TokioIo::new(upgraded)), buffer)
}

/// Frame reader and writer over any server-side socket.
pub(crate) fn halves(socket: BoxSocket, buffer: usize) -> RelayHalves {
    let (r, w) = tokio::io::split(socket);
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
