//! Relayed HTTP (`/{hc}[/suffix]`): a sender's request goes to a listener inline on the
//! control channel when small (at most 64 kB of headers and body), otherwise as an
//! address-only notice with the request streamed over a rendezvous socket. The response comes
//! back inline or over an `sb-hc-action=request` rendezvous, where its body is streamed to the
//! sender as it arrives, with bounded buffering.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use relay_core::control::{self, Headers, ListenerCommand, RemoteEndpoint};
use relay_core::frame::{OpCode, close_code};
use relay_core::http_rules::{connection_tokens, is_hop_by_hop, is_relay_credential, via};
use relay_core::limits::INLINE_BODY_LIMIT;
use relay_core::sas::Rights;
use relay_io::{Message, WsError, WsReader, WsWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::RelayError;
use crate::relay::Relay;
use crate::relay::auth::authorize;
use crate::relay::local::Target;
use crate::relay::rendezvous::{
    ListenerResponse, OutgoingRequest, Pending, RequestSlot, ResponseBody,
};
use crate::relay::resolve::Resolved;
use crate::relay::socket::relay_io_halves;
use crate::relay::web::Access;
use crate::seams::interconnect::Notice as Outbound;
use crate::seams::node::ListenerKey;
use relay_core::address::RENDEZVOUS_PARAM;

mod rendezvous;
mod response;

pub(crate) use rendezvous::spawn_rendezvous;
use response::build_response;

/// Response body chunks buffered between a rendezvous socket and the sender.
const BODY_CHANNEL: usize = 8;

/// Relays one HTTP request to a listener and returns its response: access, listener,
/// notice, answer, in that order. One sequence, each step a call, because the address
/// reservation it holds must live from the notice to the answer.
pub(crate) async fn handle(
    shared: &Arc<Relay>,
    req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    if is_runtime_info(&req, &r) {
        // Any valid rule may read runtime information; relaying needs Send.
        let audience = r.audience_path();
        let claim = r.claim(req.headers(), &audience, Rights::NONE, true);
        authorize(shared, claim).await?;
        return Ok(runtime_information(shared, &r));
    }
    let view = crate::relay::web::View::of(req.headers(), &r);
    let access =
        crate::relay::web::authorize_browser(shared, req.headers(), req.method(), &r, &view)
            .await?;
    let refresh = match access {
        Access::Login(page) => return Ok(page),
        Access::Session { ref refresh } => refresh.clone(),
        Access::Token(_) => None,
    };
    let listener = shared.find(&r.hc.name, RelayError::NoListener).await?;
    let (parts, body) = req.into_parts();
    let (headers, has_body, inline) = listener_headers(&parts.headers, &access, &view, &listener);

    // Named after this node: the listener's inline answer may reach another one first.
    let request_id = shared.node.suffix(&uuid::Uuid::new_v4().to_string());
    let address_guard = shared
        .rendezvous
        .add_address(Pending::Request {
            listener_id: listener.listener.key.clone(),
            request_id: request_id.clone(),
        })
        .map_err(|_| RelayError::Busy("pending rendezvous"))?;
    let address = request_address(
        shared,
        &listener,
        &parts.headers,
        &r,
        &request_id,
        address_guard.key(),
    );
    let full = control::Request {
        request_target: Some(request_target(&r)),
        method: Some(parts.method.as_str().to_owned()),
        request_headers: Some(headers),
        body: Some(has_body),
        remote_endpoint: r.transport.map(|t| RemoteEndpoint {
            address: t.peer.ip().to_string(),
            port: t.peer.port(),
        }),
        ..control::Request::address_only(address.clone(), request_id.clone())
    };
    let (notice, outgoing) = if inline {
        let body = has_body.then_some(body);
        (inline_notice(shared, full, body).await?, None)
    } else {
        address_only(full, address, body)
    };
    let answer = answer(shared, &listener, &request_id, notice, outgoing).await?;
    drop(address_guard);
    if let ResponseBody::Full(bytes) = &answer.body {
        shared
            .counters
            .bytes_to_sender
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    let head = RequestHead {
        method: parts.method,
        host: view.host,
        refresh,
    };
    Ok(build_response(
        answer,
        &head,
        shared.limits.http_request_timeout,
    ))
}

/// The request headers as the listener gets them (folded for a listener that cannot read
/// arrays), whether there is a body, and whether the request goes inline.
fn listener_headers(
    headers: &HeaderMap,
    access: &Access,
    view: &crate::relay::web::View,
    listener: &Target,
) -> (Headers, bool, bool) {
    let mut out = crate::relay::web::for_listener(
        request_headers(headers, access.consumed_authorization(), &view.host),
        view,
    );
    if !listener.listener.header_arrays {
        out = out.folded();
    }
    let header_bytes: usize = out.0.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let (has_body, inline) = body_shape(headers, header_bytes);
    (out, has_body, inline)
}

/// The rendezvous address a listener dials for this request: the node that waits, as the
/// listener reached it (its own), or as the sender reached this one.
fn request_address(
    shared: &Relay,
    listener: &Target,
    headers: &HeaderMap,
    r: &Resolved,
    request_id: &str,
    key: &str,
) -> String {
    let base = crate::relay::web::rendezvous_base(shared, listener, headers, r.transport);
    format!(
        "{base}/$hc/{}?sb-hc-action=request&sb-hc-id={request_id}&{RENDEZVOUS_PARAM}={key}",
        relay_core::address::encode_name(&r.hc.name),
    )
}

/// The path and the application's query, as the listener's `requestTarget`.
fn request_target(r: &Resolved) -> String {
    let mut target = r.raw_path.clone();
    if !r.query.app_query.is_empty() {
        target.push('?');
        target.push_str(&r.query.app_query);
    }
    target
}

/// Delivers the notice and waits for the listener's answer. One deadline for the whole
/// request: waiting for room in a busy listener's queue (a burst), then for its answer.
async fn answer(
    shared: &Relay,
    listener: &Target,
    request_id: &str,
    notice: Outbound,
    outgoing: Option<OutgoingRequest>,
) -> Result<ListenerResponse, RelayError> {
    let (respond, response) = oneshot::channel();
    let _request_guard = shared
        .rendezvous
        .add_request(
            request_id,
            RequestSlot {
                listener_id: listener.listener.key.clone(),
                respond,
                outgoing: std::sync::Mutex::new(outgoing),
            },
        )
        .map_err(|_| RelayError::Busy("pending requests"))?;
    let deadline = tokio::time::Instant::now() + shared.limits.http_request_timeout;
    shared.deliver(listener, notice, deadline).await?;
    match tokio::time::timeout_at(deadline, response).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(RelayError::ListenerFailed(
            "the listener disconnected or broke protocol".into(),
        )),
        Err(_) => Err(RelayError::GatewayTimeout),
    }
}

/// Whether a request has a body, and whether it goes inline: headers and body within
/// [`INLINE_BODY_LIMIT`] with a known length. Checked arithmetic: a huge `Content-Length`
/// must not overflow into "small".
fn body_shape(headers: &HeaderMap, header_bytes: usize) -> (bool, bool) {
    let content_length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    let has_body = chunked || content_length.is_some_and(|n| n > 0);
    let inline = !has_body
        || content_length.is_some_and(|n| {
            !chunked
                && usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_add(header_bytes))
                    .is_some_and(|total| total <= INLINE_BODY_LIMIT)
        });
    (has_body, inline)
}

/// The whole request on the control channel: its JSON, and its body as the next message.
async fn inline_notice(
    shared: &Relay,
    full: control::Request,
    body: Option<Body>,
) -> Result<Outbound, RelayError> {
    let json = ListenerCommand::Request(full).encode();
    let Some(body) = body else {
        return Ok(Outbound::Text(json));
    };
    let bytes = read_small_body(body, shared.limits.http_request_timeout).await?;
    shared
        .counters
        .bytes_to_listener
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(Outbound::TextWithBody(json, bytes))
}

/// The address-only notice, and the whole request kept for the rendezvous that asks for it.
fn address_only(
    full: control::Request,
    address: String,
    body: Body,
) -> (Outbound, Option<OutgoingRequest>) {
    let short = control::Request::address_only(address, full.id.clone());
    let outgoing = OutgoingRequest {
        json: ListenerCommand::Request(full).encode(),
        body: Some(body),
    };
    (
        Outbound::Text(ListenerCommand::Request(short).encode()),
        Some(outgoing),
    )
}

/// What shaping the response needs to know of its request.
struct RequestHead {
    method: http::Method,
    /// The `Host` the sender used, for `Via`.
    host: String,
    /// A renewed session cookie to set.
    refresh: Option<String>,
}

/// The .NET SDK's `GetRuntimeInformationAsync`: `GET /{hc}?api-version=...` with
/// `X-PROCESS-AT: ServiceBus`, told apart from a relayed GET by that header.
fn is_runtime_info(req: &Request, r: &Resolved) -> bool {
    req.method() == http::Method::GET
        && r.suffix.trim_matches('/').is_empty()
        && r.query
            .app_query
            .split('&')
            .any(|p| p.starts_with("api-version="))
        && req
            .headers()
            .get("x-process-at")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"servicebus"))
}

fn runtime_information(shared: &Relay, r: &Resolved) -> Response<Body> {
    let count = shared.directory.count(&r.hc.name);
    let body = format!(
        r#"<entry xmlns="http://www.w3.org/2005/Atom"><title type="text">{name}</title><content type="application/xml"><HybridConnectionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><RequiresClientAuthorization>{auth}</RequiresClientAuthorization><ListenerCount>{count}</ListenerCount></HybridConnectionDescription></content></entry>"#,
        name = xml_escape(&r.hc.name),
        auth = r.hc.requires_client_authorization,
    );
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/atom+xml;type=entry;charset=utf-8"),
    );
    resp
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn read_small_body(body: Body, deadline: Duration) -> Result<Bytes, RelayError> {
    let limited = http_body_util::Limited::new(body, INLINE_BODY_LIMIT);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(RelayError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
        Err(_) => Err(RelayError::BadRequest(
            "the request body did not arrive in time".into(),
        )),
    }
}

/// Request headers for the listener: no connection-level headers, no relay credentials, and
/// this broker added to `Via`.
fn request_headers(headers: &HeaderMap, drop_authorization: bool, host: &str) -> Headers {
    let tokens = connection_tokens(headers);
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str(), &tokens) && !is_relay_credential(name))
        .filter(|(name, _)| !(drop_authorization && *name == http::header::AUTHORIZATION))
        .filter(|(name, _)| *name != http::header::VIA)
        .filter_map(|(name, value)| {
            Some((
                relay_core::http_rules::canonical_case(name.as_str()),
                value.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    let previous = headers.get(http::header::VIA).and_then(|v| v.to_str().ok());
    out.push(("Via".into(), via(previous, "1.1", host)));
    Headers(out)
}

#[cfg(test)]
mod tests;
