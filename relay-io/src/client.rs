//! The client side of the upgrade: TCP (with `TCP_NODELAY`), optional TLS, the HTTP/1.1
//! upgrade request with caller headers, and a checked `101` response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use relay_core::frame::accept_key;
use relay_core::limits::MAX_HEADER_BYTES;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{Role, WsError, WsReader, WsWriter};

/// A client transport: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTls {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to open a WebSocket.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Extra request headers (the relay token goes here as `ServiceBusAuthorization`).
    pub headers: Vec<(String, String)>,
    /// Sub-protocols to offer, most preferred first.
    pub protocols: Vec<String>,
    /// TLS configuration for `wss://`; `None` uses the public web roots.
    pub tls: Option<Arc<ClientConfig>>,
    /// Bound on TCP connect, TLS and the upgrade together.
    pub timeout: Duration,
    /// Read buffer of the resulting [`WsReader`].
    pub read_buffer: usize,
    /// Proxies to tunnel through; `None` connects directly.
    pub proxy: Option<Arc<crate::proxy::ProxyRules>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            protocols: Vec::new(),
            tls: None,
            timeout: Duration::from_secs(30),
            read_buffer: crate::reader::DEFAULT_BUFFER,
            proxy: None,
        }
    }
}

/// An open client WebSocket.
#[derive(Debug)]
pub struct Connected {
    /// Incoming frames.
    pub reader: WsReader<ReadHalf<MaybeTls>>,
    /// Outgoing frames (masked).
    pub writer: WsWriter<WriteHalf<MaybeTls>>,
    /// The sub-protocol the server chose.
    pub protocol: Option<String>,
    /// The `101` response's headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

/// The parts of a `ws://` or `wss://` URL the handshake needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Whether TLS is used.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Value of the `Host` header.
    pub authority: String,
    /// Request target: path and query.
    pub path_and_query: String,
    /// `sb://` to a loopback host: try TLS, then plain ws (a local broker on its default).
    pub plain_fallback: bool,
}

impl Target {
    /// Parses a URL; `ws`/`http` mean plain, `wss`/`https`/`sb` mean TLS.
    pub fn parse(url: &str) -> Result<Self, WsError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| WsError::Url(format!("{url}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws" | "http") => false,
            Some("wss" | "https" | "sb") => true,
            other => return Err(WsError::Url(format!("{url}: unsupported scheme {other:?}"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| WsError::Url(format!("{url}: no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let plain_fallback = uri.scheme_str() == Some("sb") && loopback;
        Ok(Self {
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
            plain_fallback,
        })
    }
}

/// Opens a TCP (and TLS) connection to `target`, through the proxy `proxy` picks for it.
pub async fn dial(
    target: &Target,
    tls: Option<&Arc<ClientConfig>>,
    proxy: Option<&crate::proxy::ProxyRules>,
) -> Result<MaybeTls, WsError> {
    let via = proxy.and_then(|rules| rules.for_target(&target.host, target.tls));
    let tcp = match via {
        Some(proxy) => proxy.tunnel(&target.host, target.port).await?,
        None => TcpStream::connect((target.host.as_str(), target.port)).await?,
    };
    tcp.set_nodelay(true)?;
    if !target.tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let config = match tls {
        Some(config) => Arc::clone(config),
        None => crate::tls::client_config(None)?,
    };
    let name =
        ServerName::try_from(target.host.clone()).map_err(|e| WsError::Url(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| WsError::Tls(e.to_string()))?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// Opens a client WebSocket to `url`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Connected, WsError> {
    bounded(
        options.timeout,
        "WebSocket connect",
        connect_inner(url, options),
    )
    .await
}

/// `work`, or a timed-out error naming `what` after `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, WsError>>,
) -> Result<T, WsError> {
    tokio::time::timeout(limit, work).await.map_err(|_| {
        WsError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ))
    })?
}

async fn connect_inner(url: &str, options: &ConnectOptions) -> Result<Connected, WsError> {
    let mut target = Target::parse(url)?;
    let proxy = options.proxy.as_deref();
    let io = match dial(&target, options.tls.as_ref(), proxy).await {
        Err(WsError::Tls(e)) if target.plain_fallback => {
            tracing::debug!(error = %e, "no TLS on the loopback broker; using plain ws");
            target.tls = false;
            dial(&target, None, proxy).await?
        }
        other => other?,
    };
    upgrade(io, &target, options).await
}

/// Opens a client WebSocket to `url` over `io`, a connection already dialled to its host
/// (see [`dial`]): only the upgrade is left to do.
pub async fn connect_over(
    io: MaybeTls,
    url: &str,
    options: &ConnectOptions,
) -> Result<Connected, WsError> {
    let target = Target::parse(url)?;
    bounded(
        options.timeout,
        "WebSocket upgrade",
        upgrade(io, &target, options),
    )
    .await
}

/// Whether an idle connection is still open: no end of stream, error or stray byte is
/// waiting on it. Never blocks.
pub fn is_idle_and_open(io: &mut MaybeTls) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(io)
        .poll_read(&mut cx, &mut buf)
        .is_pending()
}

async fn upgrade(
    mut io: MaybeTls,
    target: &Target,
    options: &ConnectOptions,
) -> Result<Connected, WsError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    io.write_all(upgrade_request(target, &key, options).as_bytes())
        .await?;
    io.flush().await?;
    let (head, leftover) = read_head(&mut io).await?;
    let (protocol, headers) = check_response(&head, &key, &options.protocols)?;
    let (r, w) = tokio::io::split(io);
    Ok(Connected {
        reader: WsReader::with_prefix(r, Role::Client, options.read_buffer, &leftover),
        writer: WsWriter::new(w, Role::Client),
        protocol,
        headers,
    })
}

fn upgrade_request(target: &Target, key: &str, options: &ConnectOptions) -> String {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.path_and_query, target.authority
    );
    if !options.protocols.is_empty() {
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            options.protocols.join(", ")
        ));
    }
    for (name, value) in &options.headers {
        // Header injection is impossible by construction: CR and LF are refused.
        if !name.contains(['\r', '\n', ':']) && !value.contains(['\r', '\n']) {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    req.push_str("\r\n");
    req
}

/// Reads the response head (bounded) and returns it with any bytes read past it.
async fn read_head(io: &mut MaybeTls) -> Result<(Vec<u8>, Vec<u8>), WsError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(WsError::Handshake(
                "connection closed during the upgrade".into(),
            ));
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = searched_from + pos + 4;
            let leftover = buf.split_off(end);
            return Ok((buf, leftover));
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(WsError::Handshake("response headers too large".into()));
        }
    }
}

/// The chosen sub-protocol and the response headers of a valid `101`.
type Accepted = (Option<String>, Vec<(String, String)>);

fn check_response(head: &[u8], key: &str, offered: &[String]) -> Result<Accepted, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head)
        .map_err(|e| WsError::Handshake(e.to_string()))?;
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        return Err(WsError::Refused {
            status,
            reason: resp.reason.unwrap_or_default().to_owned(),
        });
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if header("sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_str()) {
        return Err(WsError::Handshake(
            "Sec-WebSocket-Accept does not match".into(),
        ));
    }
    let protocol = header("sec-websocket-protocol").map(|p| p.trim().to_owned());
    if let Some(p) = &protocol {
        if !offered.iter().any(|o| o == p) {
            return Err(WsError::Handshake(format!(
                "server chose sub-protocol {p} that was not offered"
            )));
        }
    }
    let headers = resp
        .headers
        .iter()
        .filter_map(|h| {
            let value = std::str::from_utf8(h.value).ok()?;
            Some((h.name.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    Ok((protocol, headers))
}

/// A client WebSocket used as a byte stream (what listeners accept and senders open).
pub type ClientStream = crate::WsByteStream<ReadHalf<MaybeTls>, WriteHalf<MaybeTls>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("wss://127.0.0.1:9443/$hc/a/b?sb-hc-action=listen").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "127.0.0.1", 9443));
        assert_eq!(t.path_and_query, "/$hc/a/b?sb-hc-action=listen");
        let t = Target::parse("ws://[::1]/x").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.authority.as_str()),
            (false, "::1", 80, "[::1]")
        );
        assert!(Target::parse("ftp://x/").is_err());
    }

    #[test]
    fn refused_upgrade_keeps_reason() {
        let err = check_response(
            b"HTTP/1.1 401 Unauthorized TrackingId:abc\r\n\r\n",
            "k",
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(err, WsError::Refused { status: 401, ref reason } if reason.contains("TrackingId:abc"))
        );
    }
}
