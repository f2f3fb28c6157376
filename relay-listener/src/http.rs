//! Relayed HTTP on the listener side: turn a `request` into an `http::Request`, call the
//! handler, and send the response inline (small and complete) or over the request's
//! rendezvous address (large or streaming), as the protocol prescribes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use relay_core::control::{self, Headers, ListenerCommand};
use relay_core::frame::{OpCode, close_code};
use relay_core::http_rules::is_hop_by_hop;
use relay_core::limits::{INLINE_BODY_LIMIT, MAX_CONTROL_MESSAGE_BYTES};
use relay_io::client::{ConnectOptions, MaybeTls};
use relay_io::{Message, WsError, WsReader, WsWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::channel::Out;
use crate::handler::{BoxError, Handler, RelayBody, full_body};

/// What request handling needs from its session.
pub(crate) struct Ctx {
    pub(crate) out: mpsc::Sender<Out>,
    pub(crate) options: ConnectOptions,
    pub(crate) hc: String,
}

/// How long a response may take to finish before it goes over a rendezvous instead of
/// inline: a body that starts and then pauses (server-sent events, long polls) must reach the
/// sender as it is produced, not once 64 KiB have gathered or the body ended.
const INLINE_WINDOW: Duration = Duration::from_millis(20);

type Writer = WsWriter<WriteHalf<MaybeTls>>;
type Reader = WsReader<ReadHalf<MaybeTls>>;

/// Handles one request notice.
pub(crate) async fn serve<H: Handler>(
    handler: Arc<H>,
    ctx: Arc<Ctx>,
    request: control::Request,
    body: Option<Bytes>,
) {
    let id = request.id.clone();
    let result = if request.is_address_only() {
        serve_rendezvous(&*handler, &ctx, request).await
    } else {
        serve_inline(&*handler, &ctx, request, body).await
    };
    if let Err(e) = result {
        tracing::warn!(request = %id, error = %e, "relayed request failed");
    }
}

/// Answers a request that came inline: the handler's response goes back on the control
/// channel when it is small and complete within [`INLINE_WINDOW`], else over a rendezvous,
/// streamed, starting with the bytes the window gathered.
async fn serve_inline<H: Handler>(
    handler: &H,
    ctx: &Ctx,
    request: control::Request,
    body: Option<Bytes>,
) -> Result<(), WsError> {
    let address = request.address.clone();
    let id = request.id.clone();
    let head_only = is_head(&request);
    let req = build_request(request, full_body(body.unwrap_or_default()), &ctx.hc);
    let resp = handler.on_request(req).await;
    let (parts, mut body) = resp.into_parts();
    let buffered = match first_window(&mut body).await {
        Window::Complete(buffered) => {
            let has_body = !buffered.is_empty();
            let json =
                ListenerCommand::Response(response_head(&id, &parts, has_body, head_only)).encode();
            let msg = if has_body {
                Out::TextWithBody(json, buffered.freeze())
            } else {
                Out::Text(json)
            };
            return send_control(ctx, msg).await;
        }
        Window::Failed(e) => {
            // Nothing went out yet: the sender gets a 502 now, not a 504 at the deadline.
            tracing::warn!(request = %id, error = %e, "the handler's response failed before it was sent");
            let json = ListenerCommand::Response(failed_head(&id)).encode();
            let body = Bytes::from(format!("the response failed: {e}"));
            return send_control(ctx, Out::TextWithBody(json, body)).await;
        }
        Window::Open(buffered) => buffered,
    };
    let mut connected = crate::rendezvous::dial(&address, &ctx.options).await?;
    let head = response_head(&id, &parts, true, head_only);
    send_response(&mut connected.writer, &head, Some(buffered.freeze()), body).await?;
    let _ = connected.writer.close(close_code::NORMAL, "").await;
    Ok(())
}

/// What a response body gave within [`INLINE_WINDOW`].
enum Window {
    /// It ended, within [`INLINE_BODY_LIMIT`]: the response goes inline.
    Complete(BytesMut),
    /// It is still going, or too large: these bytes start the rendezvous stream.
    Open(BytesMut),
    /// It failed before anything was sent.
    Failed(String),
}

async fn first_window(body: &mut RelayBody) -> Window {
    // `frame()` is cancel-safe, so the deadline loses nothing.
    let deadline = tokio::time::Instant::now() + INLINE_WINDOW;
    let mut buffered = BytesMut::new();
    while buffered.len() <= INLINE_BODY_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => return Window::Complete(buffered),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buffered.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => return Window::Failed(e.to_string()),
        }
    }
    Window::Open(buffered)
}

async fn send_control(ctx: &Ctx, msg: Out) -> Result<(), WsError> {
    ctx.out
        .send(msg)
        .await
        .map_err(|_| WsError::Io(std::io::ErrorKind::BrokenPipe.into()))
}

async fn serve_rendezvous<H: Handler>(
    handler: &H,
    ctx: &Ctx,
    notice: control::Request,
) -> Result<(), WsError> {
    let connected = crate::rendezvous::dial(&notice.address, &ctx.options).await?;
    let (mut reader, mut writer) = (connected.reader, connected.writer);
    let request = loop {
        match reader.message(MAX_CONTROL_MESSAGE_BYTES).await? {
            Some(Message::Text(text)) => {
                match ListenerCommand::decode(text.as_bytes(), MAX_CONTROL_MESSAGE_BYTES) {
                    Ok(ListenerCommand::Request(r)) => break r,
                    _ => {
                        return Err(WsError::Handshake(
                            "expected a request on the rendezvous".into(),
                        ));
                    }
                }
            }
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            _ => {
                return Err(WsError::Handshake(
                    "rendezvous closed before the request".into(),
                ));
            }
        }
    };
    let id = request.id.clone();
    let head_only = is_head(&request);
    let body = if request.body == Some(true) {
        streaming_body(reader)
    } else {
        full_body(Bytes::new())
    };
    let req = build_request(request, body, &ctx.hc);
    let (parts, body) = handler.on_request(req).await.into_parts();
    let head = response_head(&id, &parts, true, head_only);
    send_response(&mut writer, &head, None, body).await?;
    let _ = writer.close(close_code::NORMAL, "").await;
    Ok(())
}

/// The request body message, streamed from the rendezvous as its fragments arrive.
fn streaming_body(mut reader: Reader) -> RelayBody {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    tokio::spawn(async move {
        let result: Result<(), WsError> = async {
            loop {
                let header = reader.header().await?.ok_or(WsError::UnexpectedEof)?;
                if header.opcode.is_control() {
                    reader.read_small_payload(&mut Vec::new()).await?;
                    continue;
                }
                while reader.fill_payload().await? > 0 {
                    let chunk = Bytes::copy_from_slice(reader.payload());
                    reader.consume(chunk.len());
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                }
                if header.fin {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(Box::new(e))).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (item.map(http_body::Frame::data), rx))
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// Writes the response JSON and then the body as one fragmented binary message, each part
/// sent as soon as the handler produced it.
async fn send_response(
    writer: &mut Writer,
    head: &control::Response,
    first: Option<Bytes>,
    mut body: RelayBody,
) -> Result<(), WsError> {
    writer
        .text(&ListenerCommand::Response(head.clone()).encode())
        .await?;
    let mut opcode = OpCode::Binary;
    if let Some(first) = first.filter(|b| !b.is_empty()) {
        writer.send(false, opcode, &first).await?;
        opcode = OpCode::Continuation;
    }
    writer.flush().await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // The head is out: only an abort tells the sender the body is cut.
                let _ = writer
                    .close(close_code::INTERNAL_ERROR, "aborted: the response failed")
                    .await;
                return Err(WsError::Io(std::io::Error::other(e)));
            }
        };
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                writer.send(false, opcode, &data).await?;
                writer.flush().await?;
                opcode = OpCode::Continuation;
            }
        }
    }
    writer.send(true, opcode, &[]).await?;
    writer.flush().await?;
    Ok(())
}

/// The head of a 502 for a response that failed before anything was sent.
/// Answers a request at once with 503 (the listener's bound is reached), inline.
pub(crate) async fn refuse(ctx: &Ctx, id: &str, why: &str) {
    let head = control::Response {
        request_id: id.to_owned(),
        status_code: 503,
        status_description: Some("Service Unavailable".into()),
        response_headers: Headers(vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("retry-after".into(), "1".into()),
        ]),
        body: true,
    };
    let json = ListenerCommand::Response(head).encode();
    let _ = ctx
        .out
        .send(Out::TextWithBody(json, Bytes::from(why.to_owned())))
        .await;
}

fn failed_head(id: &str) -> control::Response {
    control::Response {
        request_id: id.to_owned(),
        status_code: 502,
        status_description: Some("Bad Gateway".into()),
        response_headers: Headers(vec![(
            "content-type".into(),
            "text/plain; charset=utf-8".into(),
        )]),
        body: true,
    }
}

fn is_head(request: &control::Request) -> bool {
    request
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"))
}

/// The response's JSON head. A HEAD answer keeps its `Content-Length`: it is the length of
/// the body a GET would have had (RFC 9110 §9.3.2), not a framing header here.
fn response_head(
    id: &str,
    parts: &http::response::Parts,
    body: bool,
    head_only: bool,
) -> control::Response {
    let tokens = relay_core::http_rules::connection_tokens(&parts.headers);
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| {
            (head_only && *k == http::header::CONTENT_LENGTH) || !is_hop_by_hop(k.as_str(), &tokens)
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    control::Response {
        request_id: id.to_owned(),
        status_code: parts.status.as_u16(),
        status_description: parts.status.canonical_reason().map(str::to_owned),
        response_headers: Headers(headers),
        body,
    }
}

fn build_request(request: control::Request, body: RelayBody, hc: &str) -> http::Request<RelayBody> {
    let target = request.request_target.unwrap_or_else(|| format!("/{hc}"));
    let mut builder = http::Request::builder()
        .method(request.method.as_deref().unwrap_or("GET"))
        .uri(target.as_str());
    for (name, value) in request.request_headers.map(|h| h.0).unwrap_or_default() {
        builder = builder.header(name, value);
    }
    if let Some(remote) = request
        .remote_endpoint
        .and_then(|r| Some(std::net::SocketAddr::new(r.address.parse().ok()?, r.port)))
    {
        builder = builder.extension(remote);
    }
    builder.body(body).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "malformed relayed request; answering with an empty GET");
        http::Request::new(full_body(Bytes::new()))
    })
}
