//! The HTTP reverse-proxy endpoint: relayed HTTP requests and WebSocket connections go to a
//! local web application at a base URL, so a central team can open a remote site's web UI
//! through the relay.
//!
//! What a real web app needs to work under `https://broker/{hc}/`:
//! - the path: `/{hc}/rest` becomes `{base path}/rest`, the query unchanged;
//! - headers: hop-by-hop ones dropped, `Host` set to the backend's (virtual hosts),
//!   `X-Forwarded-Host`, `X-Forwarded-Prefix` and `X-Forwarded-For` added;
//! - the prefix: the path under which the browser sees the app, as our broker says in
//!   `X-Forwarded-Prefix` (`/{hc}` in path mode, `/` when the hybrid connection has its own
//!   host name), else `/{hc}`;
//! - redirects and cookies: a `Location` pointing into the backend (absolute URL or path) is
//!   rewritten to `{prefix}/...`, and a cookie `Path=/...` to `Path={prefix}/...`, so the
//!   browser stays on the relay;
//! - WebSocket: a sender's WebSocket becomes a WebSocket upgrade to the backend (same path,
//!   headers and sub-protocols); a backend refusal is passed on as the sender's status.
//!
//! Each request uses its own backend connection, so connection-bound authentication (NTLM,
//! Negotiate) of one user never leaks to another.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use relay_io::client::{ConnectOptions, MaybeTls, Target};
use relay_io::rustls::ClientConfig;

use crate::handler::{BoxError, Handler, IncomingConnection, RelayBody, full_body};

/// Bound on connecting to the backend (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reverse proxy to one base URL.
#[derive(Clone, Debug)]
pub struct HttpProxy {
    hc: String,
    base: Target,
    /// The base path without a trailing `/` (empty for the root).
    base_path: String,
    tls: Option<Arc<ClientConfig>>,
}

impl HttpProxy {
    /// Proxies hybrid connection `hc` to `base` (`http://host:port[/path]` or `https://`).
    /// `tls` verifies an https backend (a private CA goes there).
    pub fn new(
        hc: &str,
        base: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Self, relay_io::WsError> {
        let target = Target::parse(base)?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(relay_io::WsError::Url(format!(
                "{base}: the backend must be an http:// or https:// URL"
            )));
        }
        let base_path = target
            .path_and_query
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            hc: hc.trim_matches('/').to_owned(),
            base: target,
            base_path,
            tls,
        })
    }

    /// `/{hc}/rest?q` → `{base}/rest?q`.
    fn backend_target(&self, relayed: &str) -> String {
        let (path, query) = relayed
            .split_once('?')
            .map_or((relayed, None), |(p, q)| (p, Some(q)));
        let rest = strip_hc(path, &self.hc);
        let mut target = format!(
            "{}{}",
            self.base_path,
            if rest.is_empty() { "/" } else { rest }
        );
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
    }

    async fn dial(&self) -> Result<MaybeTls, relay_io::WsError> {
        let tls = self.tls.as_ref();
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            relay_io::client::dial(&self.base, tls, None),
        )
        .await
        .map_err(|_| relay_io::WsError::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    /// The path prefix the browser sees, without a trailing `/` (empty at the root).
    fn prefix(&self, headers: &HeaderMap) -> String {
        match headers
            .get("x-forwarded-prefix")
            .and_then(|v| v.to_str().ok())
        {
            Some(p) if p.starts_with('/') => p.trim_end_matches('/').to_owned(),
            _ => format!("/{}", self.hc),
        }
    }

    async fn forward(&self, req: Request<RelayBody>) -> Result<Response<RelayBody>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let relayed = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let remote = parts.extensions.get::<std::net::SocketAddr>().copied();
        let prefix = self.prefix(&parts.headers);
        forwarded_headers(&mut parts.headers, &prefix, &self.base.authority, remote);
        parts.uri = Uri::try_from(self.backend_target(&relayed))?;
        let head_only = parts.method == http::Method::HEAD;
        let io = self.dial().await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        let resp = send.send_request(Request::from_parts(parts, body)).await?;
        let (mut parts, body) = resp.into_parts();
        // A HEAD answer's length is the GET's body length, which the browser needs.
        let length = head_only
            .then(|| parts.headers.get(header::CONTENT_LENGTH).cloned())
            .flatten();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(length) = length {
            parts.headers.insert(header::CONTENT_LENGTH, length);
        }
        self.rewrite_response_headers(&mut parts.headers, &prefix);
        Ok(Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
        ))
    }

    /// Keeps the browser on the relay: redirects and cookie paths into the backend are
    /// moved under the prefix.
    fn rewrite_response_headers(&self, headers: &mut HeaderMap, prefix: &str) {
        if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            if let Some(rewritten) = self.rewrite_location(location, prefix) {
                if let Ok(v) = HeaderValue::try_from(rewritten) {
                    headers.insert(header::LOCATION, v);
                }
            }
        }
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| {
                v.to_str()
                    .ok()
                    .map(|c| self.rewrite_cookie(c, prefix))
                    .and_then(|c| HeaderValue::try_from(c).ok())
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        if !cookies.is_empty() {
            headers.remove(header::SET_COOKIE);
            for cookie in cookies {
                headers.append(header::SET_COOKIE, cookie);
            }
        }
    }

    fn rewrite_location(&self, location: &str, prefix: &str) -> Option<String> {
        let scheme = if self.base.tls { "https://" } else { "http://" };
        let origin = format!("{scheme}{}", self.base.authority);
        let path = match location.strip_prefix(origin.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            Some(_) => return None,
            None if location.starts_with('/') && !location.starts_with("//") => location,
            None => return None,
        };
        let rest = self.strip_base(path);
        let rest = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_owned()
        };
        Some(format!("{prefix}{rest}"))
    }

    /// `path` without the base path, when it lies under it.
    fn strip_base<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix(self.base_path.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            _ => path,
        }
    }

    fn rewrite_cookie(&self, cookie: &str, prefix: &str) -> String {
        cookie
            .split(';')
            .map(|attr| {
                let trimmed = attr.trim_start();
                match trimmed.get(..5) {
                    Some(name) if name.eq_ignore_ascii_case("path=") => {
                        let path = &trimmed[5..];
                        let rest = self.strip_base(path);
                        let lead = &attr[..attr.len() - trimmed.len()];
                        let rest = if rest == "/" && !prefix.is_empty() {
                            ""
                        } else {
                            rest
                        };
                        let rest = if rest.is_empty() && prefix.is_empty() {
                            "/"
                        } else {
                            rest
                        };
                        format!("{lead}Path={prefix}{rest}")
                    }
                    _ => attr.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The backend's WebSocket address for `conn` and the headers and sub-protocols to
    /// offer it: the sender's, with forwarding headers and without the handshake's own.
    fn backend_websocket(&self, conn: &IncomingConnection) -> (String, ConnectOptions) {
        let scheme = if self.base.tls { "wss" } else { "ws" };
        let relayed = if conn.query.is_empty() {
            format!("/{}{}", self.hc, conn.path)
        } else {
            format!("/{}{}?{}", self.hc, conn.path, conn.query)
        };
        let url = format!(
            "{scheme}://{}{}",
            self.base.authority,
            self.backend_target(&relayed)
        );
        let mut headers = conn.headers.clone();
        let prefix = self.prefix(&headers);
        forwarded_headers(&mut headers, &prefix, &self.base.authority, conn.remote);
        for name in [
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
            "sec-websocket-extensions",
            "host",
        ] {
            headers.remove(name);
        }
        let options = ConnectOptions {
            headers: headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            protocols: conn.offered_protocols(),
            tls: self.tls.clone(),
            timeout: CONNECT_TIMEOUT,
            ..ConnectOptions::default()
        };
        (url, options)
    }

    /// A sender's WebSocket, proxied to the backend's: the backend's handshake answer
    /// (sub-protocol or refusal) is the sender's, then frames are spliced both ways.
    async fn websocket(&self, conn: IncomingConnection) {
        let id = conn.id.clone();
        let (url, options) = self.backend_websocket(&conn);
        let backend = match relay_io::client::connect(&url, &options).await {
            Ok(b) => b,
            Err(relay_io::WsError::Refused { status, reason }) => {
                let _ = conn.reject(status, &reason).await;
                return;
            }
            Err(e) => {
                tracing::warn!(connection = %id, backend = %url, error = %e, "backend WebSocket failed; rejecting");
                let _ = conn.reject(502, &format!("backend unreachable: {e}")).await;
                return;
            }
        };
        let relay = match conn.accept_with_protocol(backend.protocol.clone()).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "accept failed");
                return;
            }
        };
        let (mut rr, mut rw) = relay.into_parts();
        let (mut br, mut bw) = (backend.reader, backend.writer);
        let result = tokio::try_join!(
            relay_io::pump::frames(&mut rr, &mut bw),
            relay_io::pump::frames(&mut br, &mut rw)
        );
        if let Err(e) = result {
            tracing::debug!(connection = %id, error = %e, "proxied WebSocket ended with an error");
        }
    }
}

impl Handler for HttpProxy {
    async fn on_connection(&self, conn: IncomingConnection) {
        self.websocket(conn).await;
    }

    async fn on_request(&self, req: Request<RelayBody>) -> Response<RelayBody> {
        match self.forward(req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(backend = %self.base.authority, error = %e, "backend request failed");
                let mut resp = Response::new(full_body(Bytes::from(format!(
                    "the backend {} did not answer: {e}",
                    self.base.authority
                ))));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                resp
            }
        }
    }
}

/// The path after `/{hc}` (the hybrid connection name, raw or percent-encoded).
fn strip_hc<'a>(path: &'a str, hc: &str) -> &'a str {
    let encoded = relay_core::address::encode_name(hc);
    for name in [hc, encoded.as_str()] {
        if let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(name)) {
            if rest.is_empty() || rest.starts_with('/') {
                return rest;
            }
        }
    }
    path
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let tokens = relay_core::http_rules::connection_tokens(headers);
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| relay_core::http_rules::is_hop_by_hop(k.as_str(), &tokens))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// `prefix` is where the browser sees the app (empty at the root: no `X-Forwarded-Prefix`).
fn forwarded_headers(
    headers: &mut HeaderMap,
    prefix: &str,
    backend: &str,
    remote: Option<std::net::SocketAddr>,
) {
    let original_host = headers.remove(header::HOST);
    strip_hop_by_hop(headers);
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if let Ok(v) = HeaderValue::try_from(backend) {
        headers.insert(header::HOST, v);
    }
    headers.remove("x-forwarded-prefix");
    if !prefix.is_empty() {
        if let Ok(v) = HeaderValue::try_from(prefix) {
            headers.insert("x-forwarded-prefix", v);
        }
    }
    if let Some(ip) = remote.map(|r| r.ip().to_string()) {
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert("x-forwarded-for", v);
        }
    }
}

#[cfg(test)]
mod tests;
