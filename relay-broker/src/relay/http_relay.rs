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
use crate::relay::rendezvous::{
    ListenerResponse, OutgoingRequest, Pending, RequestSlot, ResponseBody,
};
use crate::relay::resolve::Resolved;
use crate::relay::socket::relay_io_halves;
use crate::relay::web::Access;
use crate::seams::interconnect::Notice as Outbound;
use crate::seams::node::ListenerKey;
use relay_core::address::RENDEZVOUS_PARAM;

/// Response body chunks buffered between a rendezvous socket and the sender.
const BODY_CHANNEL: usize = 8;

/// Relays one HTTP request to a listener and returns its response.
pub(crate) async fn handle(
    shared: &Arc<Relay>,
    req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    let runtime_info = is_runtime_info(&req, &r);
    let view = crate::relay::web::View::of(req.headers(), &r);
    let access = if runtime_info {
        // Any valid rule may read runtime information; relaying needs Send.
        let audience = r.audience_path();
        let claim = r.claim(req.headers(), &audience, Rights::NONE, true);
        authorize(shared, claim).await?;
        return Ok(runtime_information(shared, &r));
    } else {
        crate::relay::web::authorize_browser(shared, req.headers(), req.method(), &r, &view).await?
    };
    let refresh = match access {
        Access::Login(page) => return Ok(page),
        Access::Session { ref refresh } => refresh.clone(),
        Access::Token(_) => None,
    };
    let listener = shared.pick(&r.hc.name).ok_or(RelayError::NoListener)?;
    let (parts, body) = req.into_parts();
    let head = RequestHead {
        method: parts.method.clone(),
        host: view.host.clone(),
        refresh,
    };
    let mut headers = crate::relay::web::for_listener(
        request_headers(&parts.headers, access.consumed_authorization(), &view.host),
        &view,
    );
    if !listener.listener.header_arrays {
        headers = headers.folded();
    }
    let header_bytes: usize = headers.0.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let content_length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let has_body = chunked || content_length.is_some_and(|n| n > 0);
    // Checked arithmetic: a huge Content-Length must not overflow into "small".
    let inline = !has_body
        || content_length.is_some_and(|n| {
            !chunked
                && usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_add(header_bytes))
                    .is_some_and(|total| total <= INLINE_BODY_LIMIT)
        });

    // Named after this node: the listener's inline answer may reach another one first.
    let request_id = shared.node.suffix(&uuid::Uuid::new_v4().to_string());
    let address_guard = shared
        .rendezvous
        .add_address(Pending::Request {
            listener_id: listener.listener.key.clone(),
            request_id: request_id.clone(),
        })
        .map_err(|_| RelayError::Busy("pending rendezvous"))?;
    // The listener dials the node that waits: its own, as it reached it, or this one.
    let base = match &listener.local {
        Some(_) => listener.listener.base_url.to_string(),
        None => crate::relay::web::base_url(shared, &parts.headers, r.transport),
    };
    let address = format!(
        "{base}/$hc/{}?sb-hc-action=request&sb-hc-id={request_id}&{RENDEZVOUS_PARAM}={}",
        relay_core::address::encode_name(&r.hc.name),
        address_guard.key()
    );
    let mut target = r.raw_path.clone();
    if !r.query.app_query.is_empty() {
        target.push('?');
        target.push_str(&r.query.app_query);
    }
    let full = control::Request {
        address: address.clone(),
        id: request_id.clone(),
        request_target: Some(target),
        method: Some(parts.method.as_str().to_owned()),
        request_headers: Some(headers),
        body: Some(has_body),
        remote_endpoint: r.transport.map(|t| RemoteEndpoint {
            address: t.peer.ip().to_string(),
            port: t.peer.port(),
        }),
    };

    let (respond, response) = oneshot::channel();
    let (notice, outgoing) = if inline {
        let bytes = if has_body {
            Some(read_small_body(body, shared.limits.http_request_timeout).await?)
        } else {
            None
        };
        let json = ListenerCommand::Request(full).encode();
        let notice = match bytes {
            Some(b) => {
                shared
                    .counters
                    .bytes_to_listener
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                Outbound::TextWithBody(json, b)
            }
            None => Outbound::Text(json),
        };
        (notice, None)
    } else {
        let short = control::Request {
            address,
            id: request_id.clone(),
            request_target: None,
            method: None,
            request_headers: None,
            body: None,
            remote_endpoint: None,
        };
        let outgoing = OutgoingRequest {
            json: ListenerCommand::Request(full).encode(),
            body: Some(body),
        };
        (
            Outbound::Text(ListenerCommand::Request(short).encode()),
            Some(outgoing),
        )
    };
    let _request_guard = shared
        .rendezvous
        .add_request(
            &request_id,
            RequestSlot {
                listener_id: listener.listener.key.clone(),
                respond,
                outgoing: std::sync::Mutex::new(outgoing),
            },
        )
        .map_err(|_| RelayError::Busy("pending requests"))?;
    // One deadline for the whole request: waiting for room in a busy listener's queue (a
    // burst), then for its answer.
    let deadline = tokio::time::Instant::now() + shared.limits.http_request_timeout;
    shared.deliver(&listener, notice, deadline).await?;
    let answer = match tokio::time::timeout_at(deadline, response).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => {
            return Err(RelayError::ListenerFailed(
                "the listener disconnected or broke protocol".into(),
            ));
        }
        Err(_) => return Err(RelayError::GatewayTimeout),
    };
    drop(address_guard);
    if let ResponseBody::Full(bytes) = &answer.body {
        shared
            .counters
            .bytes_to_sender
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    Ok(build_response(
        answer,
        &head,
        shared.limits.http_request_timeout,
    ))
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

fn build_response(answer: ListenerResponse, req: &RequestHead, idle: Duration) -> Response<Body> {
    let ListenerResponse { head, body } = answer;
    let body = match body {
        ResponseBody::Empty => Body::empty(),
        ResponseBody::Full(bytes) => Body::from(bytes),
        ResponseBody::Stream(rx) => stream_body(rx, idle),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(head.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    let tokens: Vec<String> = head
        .response_headers
        .get("connection")
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let headers = resp.headers_mut();
    let mut previous_via = None;
    for (name, value) in &head.response_headers.0 {
        if is_hop_by_hop(name, &tokens) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            continue;
        };
        if name == http::header::VIA {
            previous_via = value.to_str().ok().map(str::to_owned);
            continue;
        }
        headers.append(name, value);
    }
    if let Ok(v) = HeaderValue::try_from(via(previous_via.as_deref(), "1.1", &req.host)) {
        headers.insert(http::header::VIA, v);
    }
    if req.method == http::Method::HEAD {
        // RFC 9110 §9.3.2: HEAD answers with the GET's fields, the length of the body it
        // does not send included.
        if let Some(length) = head_length(&head.response_headers) {
            headers.insert(http::header::CONTENT_LENGTH, length);
        }
    }
    if let Some(cookie) = req
        .refresh
        .as_deref()
        .and_then(|c| HeaderValue::try_from(c).ok())
    {
        headers.append(http::header::SET_COOKIE, cookie);
    }
    if let Some(phrase) = head
        .status_description
        .and_then(|d| hyper::ext::ReasonPhrase::try_from(d.into_bytes()).ok())
    {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

/// The listener's `Content-Length` for a HEAD answer, when it is one number.
fn head_length(headers: &Headers) -> Option<HeaderValue> {
    let value = headers.get("content-length")?.trim();
    value.parse::<u64>().ok()?;
    HeaderValue::try_from(value).ok()
}

/// A response body fed by a rendezvous socket; a gap longer than `idle` ends it with an error.
fn stream_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>, idle: Duration) -> Body {
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(item)) => Some((item, rx)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "response body idle",
                )),
                rx,
            )),
        }
    });
    Body::from_stream(stream)
}

/// Serves the listener's side of an HTTP rendezvous once its upgrade completes.
pub(crate) fn spawn_rendezvous(
    shared: &Arc<Relay>,
    upgrade: OnUpgrade,
    listener_id: ListenerKey,
    request_id: String,
) {
    let shared = Arc::clone(shared);
    let span =
        tracing::info_span!("http_rendezvous", request = %request_id, listener = %listener_id);
    shared.tasks.clone().spawn(
        async move {
            let Ok(upgraded) = upgrade.await else { return };
            let (mut reader, mut writer) =
                relay_io_halves(upgraded, shared.limits.relay_buffer_bytes);
            let idle = shared.limits.http_request_timeout;
            if let Some(outgoing) = shared.rendezvous.take_outgoing(&request_id) {
                let sent = &shared.counters.bytes_to_listener;
                if let Err(e) = send_request(&mut writer, outgoing, idle, sent).await {
                    tracing::debug!(error = %e, "sending the request over the rendezvous failed");
                    shared.rendezvous.fail(&request_id, &listener_id);
                    let _ = writer.close(close_code::GOING_AWAY, "sender gone").await;
                    return;
                }
            }
            let rendezvous = Rendezvous {
                shared: &shared,
                request_id: &request_id,
                listener_id: &listener_id,
                idle,
            };
            match rendezvous.relay_response(&mut reader, &mut writer).await {
                Ok(()) => {
                    let _ = writer.close(close_code::NORMAL, "").await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relaying the response failed");
                    shared.rendezvous.fail(&request_id, &listener_id);
                    let _ = writer
                        .close(close_code::PROTOCOL_ERROR, "bad response")
                        .await;
                }
            }
        }
        .instrument(span),
    );
}

/// Streams the request JSON and body (one binary message, in fragments) to the listener.
async fn send_request<W: AsyncWrite + Unpin>(
    writer: &mut WsWriter<W>,
    outgoing: OutgoingRequest,
    idle: Duration,
    sent: &AtomicU64,
) -> Result<(), WsError> {
    writer.text(&outgoing.json).await?;
    let Some(mut body) = outgoing.body else {
        return Ok(());
    };
    let mut opcode = OpCode::Binary;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))?;
        match frame {
            None => break,
            Some(Err(e)) => return Err(WsError::Io(std::io::Error::other(e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                        writer.send(false, opcode, &data).await?;
                        opcode = OpCode::Continuation;
                    }
                }
            }
        }
    }
    writer.send(true, opcode, &[]).await?;
    writer.flush().await?;
    Ok(())
}

struct Rendezvous<'a> {
    shared: &'a Relay,
    request_id: &'a str,
    listener_id: &'a ListenerKey,
    idle: Duration,
}

impl Rendezvous<'_> {
    async fn relay_response<R, W>(
        &self,
        reader: &mut WsReader<R>,
        writer: &mut WsWriter<W>,
    ) -> Result<(), WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limit = self.shared.limits.max_control_message_bytes;
        let head = loop {
            let message = tokio::time::timeout(self.idle, reader.message(limit))
                .await
                .map_err(|_| timed_out())??;
            match message {
                Some(Message::Text(text)) => {
                    match ListenerCommand::decode(text.as_bytes(), limit) {
                        Ok(ListenerCommand::Response(head))
                            if head.request_id == self.request_id =>
                        {
                            break head;
                        }
                        _ => {
                            return Err(WsError::Handshake(
                                "expected the response for this request".into(),
                            ));
                        }
                    }
                }
                Some(Message::Ping(p)) => {
                    writer.send(true, OpCode::Pong, &p).await?;
                    writer.flush().await?;
                }
                Some(Message::Pong(_)) => {}
                Some(Message::Binary(b)) if b.is_empty() => {}
                Some(Message::Binary(_)) => {
                    return Err(WsError::Handshake("body before response".into()));
                }
                Some(Message::Close(_)) | None => return Err(WsError::UnexpectedEof),
            }
        };
        if !head.body {
            self.shared.rendezvous.complete(
                self.request_id,
                self.listener_id,
                ListenerResponse {
                    head,
                    body: ResponseBody::Empty,
                },
            );
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let answer = ListenerResponse {
            head,
            body: ResponseBody::Stream(rx),
        };
        if !self
            .shared
            .rendezvous
            .complete(self.request_id, self.listener_id, answer)
        {
            return Ok(());
        }
        let result = self.stream_body(reader, writer, &tx).await;
        if let Err(e) = &result {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
        result
    }

    /// Moves the body message's fragments into the sender's response as they arrive.
    async fn stream_body<R, W>(
        &self,
        reader: &mut WsReader<R>,
        writer: &mut WsWriter<W>,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut started = false;
        loop {
            let header = tokio::time::timeout(self.idle, reader.header())
                .await
                .map_err(|_| timed_out())??;
            let header = header.ok_or(WsError::UnexpectedEof)?;
            match header.opcode {
                OpCode::Binary | OpCode::Continuation
                    if (header.opcode == OpCode::Continuation) == started =>
                {
                    started = true;
                    while tokio::time::timeout(self.idle, reader.fill_payload())
                        .await
                        .map_err(|_| timed_out())??
                        > 0
                    {
                        let chunk = Bytes::copy_from_slice(reader.payload());
                        let n = chunk.len();
                        reader.consume(n);
                        self.shared
                            .counters
                            .bytes_to_sender
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the sender went away
                        }
                    }
                    if header.fin {
                        return Ok(());
                    }
                }
                OpCode::Ping => {
                    let mut payload = Vec::new();
                    reader.read_small_payload(&mut payload).await?;
                    writer.send(true, OpCode::Pong, &payload).await?;
                    writer.flush().await?;
                }
                OpCode::Pong => reader.read_small_payload(&mut Vec::new()).await?,
                _ => {
                    return Err(WsError::Handshake(
                        "unexpected frame in the response body".into(),
                    ));
                }
            }
        }
    }
}

fn timed_out() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "listener idle",
    ))
}
