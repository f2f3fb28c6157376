//! The sender side of Hybrid Connections: open a relayed connection to a listener as an
//! `AsyncRead + AsyncWrite` byte stream (or use its frames directly), and mint SAS tokens.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_sender::SenderError> {
//! use tokio::io::AsyncWriteExt;
//! let token = relay_sender::sas_token("ws://127.0.0.1:9400", "orders", "RootManageSharedAccessKey", "key", 3600);
//! let options = relay_sender::ConnectOptions { token: Some(token), ..Default::default() };
//! let mut conn = relay_sender::connect("ws://127.0.0.1:9400", "orders", &options).await?;
//! conn.stream.write_all(b"hello").await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_core::connection_string::{http_base, ws_base};
pub use relay_io::client::ClientStream as RelayStream;
use relay_io::{WsByteStream, WsError};

mod warm;
pub use warm::WarmDialer;

/// Sender failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SenderError {
    /// The WebSocket layer failed; a refused upgrade carries the broker's status and tracking id.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// The stream failed after connecting.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SenderError {
    /// The HTTP status of a refused connect, if that is what happened.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Ws(WsError::Refused { status, .. }) => Some(*status),
            _ => None,
        }
    }

    /// What an operator should check.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        match self.status()? {
            401 => Some("the key is wrong, expired, or not valid for this hybrid connection"),
            403 => Some("the rule lacks the Send right"),
            404 => Some("the hybrid connection does not exist or no listener is connected"),
            504 => Some("the listener did not answer in time"),
            _ => None,
        }
    }
}

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// The SAS token (sent as `ServiceBusAuthorization`); `None` for anonymous senders.
    pub token: Option<String>,
    /// Path after the hybrid connection name (empty or starting with `/`).
    pub path: String,
    /// Application query, passed to the listener.
    pub query: String,
    /// Tracking id (`sb-hc-id`); the listener sees it as the connection id.
    pub id: Option<String>,
    /// Extra headers, passed to the listener.
    pub headers: Vec<(String, String)>,
    /// Sub-protocols to offer.
    pub protocols: Vec<String>,
    /// TLS configuration for `wss://`.
    pub tls: Option<Arc<relay_io::rustls::ClientConfig>>,
    /// Bound on connecting (defaults to 70 s, as .NET senders wait).
    pub timeout: Option<Duration>,
    /// Proxies to reach the broker through; `None` connects directly.
    pub proxy: Option<Arc<relay_io::proxy::ProxyRules>>,
    /// Take an early `101` from our broker when the listener keeps standby sockets: the
    /// first bytes travel with the listener's `accept`, one round trip sooner. A refusal
    /// then arrives as a Close with `relay_core::standby::CLOSE_REJECTED` (the status in
    /// its reason) instead of as the upgrade's status. Ignored with sub-protocols.
    pub early_pairing: bool,
}

/// An open relayed connection.
#[derive(Debug)]
pub struct Connection {
    /// The byte stream; `shutdown` half-closes, the peer's Close is end of stream.
    pub stream: RelayStream,
    /// The sub-protocol the listener chose.
    pub protocol: Option<String>,
}

/// The `connect` URL for a hybrid connection.
#[must_use]
pub fn connect_url(endpoint: &str, hc: &str, options: &ConnectOptions) -> String {
    let mut url = format!(
        "{}/$hc/{}{}?",
        ws_base(endpoint),
        relay_core::address::encode_name(hc),
        options.path
    );
    if !options.query.is_empty() {
        url.push_str(&options.query);
        url.push('&');
    }
    url.push_str("sb-hc-action=connect");
    if let Some(id) = &options.id {
        url = relay_core::address::append_query(&url, "sb-hc-id", id);
    }
    url
}

/// Opens a relayed connection to a listener of `hc`.
pub async fn connect(
    endpoint: &str,
    hc: &str,
    options: &ConnectOptions,
) -> Result<Connection, SenderError> {
    let ws = ws_options(options);
    let connected = relay_io::client::connect(&connect_url(endpoint, hc, options), &ws).await?;
    Ok(Connection::from(connected))
}

impl From<relay_io::client::Connected> for Connection {
    fn from(c: relay_io::client::Connected) -> Self {
        Self {
            stream: WsByteStream::new(c.reader, c.writer),
            protocol: c.protocol,
        }
    }
}

fn ws_options(options: &ConnectOptions) -> relay_io::client::ConnectOptions {
    let mut ws = relay_io::client::ConnectOptions {
        headers: options.headers.clone(),
        protocols: options.protocols.clone(),
        tls: options.tls.clone(),
        timeout: options.timeout.unwrap_or(Duration::from_secs(70)),
        proxy: options.proxy.clone(),
        ..relay_io::client::ConnectOptions::default()
    };
    if let Some(token) = &options.token {
        ws.headers
            .push(("ServiceBusAuthorization".into(), token.clone()));
    }
    if options.early_pairing {
        ws.headers
            .push((relay_core::standby::EARLY_HEADER.into(), "1".into()));
    }
    ws
}

/// A SAS token for `hc` on `endpoint`, valid for `ttl_secs`, with the audience the Node
/// clients use (`http(s)://host:port/hc`).
#[must_use]
pub fn sas_token(endpoint: &str, hc: &str, key_name: &str, key: &str, ttl_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let audience = format!("{}/{}", http_base(endpoint), hc.trim_matches('/'));
    relay_core::sas::create_token(&audience, key_name, key, now + ttl_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_connect_urls() {
        let o = ConnectOptions {
            path: "/sub".into(),
            query: "x=1".into(),
            id: Some("t 1".into()),
            ..Default::default()
        };
        assert_eq!(
            connect_url("sb://h:1/", "a/b", &o),
            "sb://h:1/$hc/a/b/sub?x=1&sb-hc-action=connect&sb-hc-id=t+1"
        );
        let t = sas_token("ws://h:1", "hc", "n", "k", 60);
        assert!(t.starts_with("SharedAccessSignature sr=http%3A%2F%2Fh%3A1%2Fhc&"));
    }
}
