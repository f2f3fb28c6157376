//! Async WebSocket plumbing shared by the broker, listener and sender.
//!
//! The relay needs things general-purpose WebSocket crates do not give: frames relayed as
//! they arrive (never whole messages), Close frames forwarded without an automatic echo so
//! half-close works, and sending after the peer's Close. So framing is done here, on top of
//! `relay_core::frame`, over any `AsyncRead`/`AsyncWrite`.
//!
//! | module | responsibility |
//! |---|---|
//! | [`reader`] | [`WsReader`]: frame headers and payload, read in place from a fixed buffer |
//! | [`writer`] | [`WsWriter`]: frames out, masked when acting as a client |
//! | [`message`] | whole-message reads with a size limit, for control traffic |
//! | [`stream`] | [`WsByteStream`]: binary messages as an `AsyncRead + AsyncWrite` byte stream |
//! | [`client`] | the client upgrade over TCP or TLS, with the response's status and headers |
//! | [`http1`] | one-shot HTTP/1.1 JSON calls to the broker's own endpoints |
//! | [`proxy`] | outbound through an HTTP CONNECT or SOCKS5 proxy, from config or the environment |
//! | [`pump`] | frames from one client WebSocket to another (a WebSocket backend behind a listener) |
//! | [`server`] | checking an upgrade request and building the `101` answer |
//! | [`splice`] | a client WebSocket spliced to TCP without intermediate copies, with half-close |
//! | [`secure_fs`] | atomic writes of secrets with mode 0600, private directories |
//! | [`tls`] | rustls client configuration: webpki roots plus an optional private CA |

pub mod client;
pub mod http1;
pub mod message;
pub mod proxy;
pub mod pump;
pub mod reader;
pub mod secure_fs;
pub mod server;
pub mod splice;
pub mod stream;
pub mod tls;
pub mod writer;

mod error;

pub use error::WsError;
pub use message::Message;
pub use reader::WsReader;
pub use stream::WsByteStream;
pub use writer::WsWriter;

/// Which end of the WebSocket this process is. Clients mask what they send; servers must not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepted the upgrade (the broker).
    Server,
    /// Made the upgrade (listener and sender).
    Client,
}
pub use rustls;
