//! The peer port: a listener's rendezvous socket that the load balancer gave to the wrong
//! node is handed, head and all, to the node that holds its capability. That node serves
//! it as if the listener had dialled it; the node in between only copies bytes.
//!
//! A peer connection opens with one line, `RELAYPEER1 <from> <unix ms> <client> <tls>
//! <hmac>`, the HMAC-SHA256 of the rest under the cluster secret, at most [`SKEW`] old.
//! Then plain HTTP/1.1 follows, exactly as from a client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::hmac;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::seams::Transport;
use crate::seams::node::NodeId;

const MAGIC: &str = "RELAYPEER1";
/// How far a preface's clock may be from ours.
const SKEW: Duration = Duration::from_secs(30);
/// Longest preface line.
const MAX_PREFACE: usize = 512;
/// Bytes copied per read in each direction of a splice: large enough that a bulk stream
/// moves in few system calls (tokio's default of 8 KiB halves the throughput here).
const SPLICE_BUFFER: usize = 256 * 1024;
/// Time to connect to a peer and to read its preface.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// The key both ends sign the preface with.
#[derive(Clone)]
pub(crate) struct PeerKey(hmac::Key);

impl PeerKey {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn sign(&self, fields: &str) -> String {
        let tag = hmac::sign(&self.0, fields.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The preface line for a socket from `client` (over TLS or not) that `from` hands on.
    fn preface(&self, from: &NodeId, transport: Transport, now_ms: u64) -> String {
        let fields = format!(
            "{MAGIC} {from} {now_ms} {} {}",
            transport.peer,
            u8::from(transport.tls)
        );
        let mac = self.sign(&fields);
        format!("{fields} {mac}\n")
    }

    /// The client's transport from a preface line, if it is signed and fresh.
    fn check(&self, line: &str, now_ms: u64) -> Result<(NodeId, Transport), &'static str> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (fields, mac) = line.rsplit_once(' ').ok_or("no MAC")?;
        let mac = decode_hex(mac).ok_or("MAC is not hex")?;
        // ring's verify compares in constant time.
        hmac::verify(&self.0, fields.as_bytes(), &mac).map_err(|_| "bad MAC")?;
        let mut parts = fields.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err("not a peer preface");
        }
        let from = parts
            .next()
            .and_then(|n| NodeId::new(n).ok())
            .ok_or("bad node")?;
        let at: u64 = parts
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or("bad time")?;
        if now_ms.abs_diff(at) > SKEW.as_millis() as u64 {
            return Err("stale preface (clock skew or a replay)");
        }
        let peer: SocketAddr = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("bad client")?;
        let tls = match parts.next() {
            Some("1") => true,
            Some("0") => false,
            _ => return Err("bad tls flag"),
        };
        Ok((from, Transport { peer, tls }))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Accepts peer connections until `stop`, serving each with `router` after its preface.
pub(crate) async fn serve(
    listener: TcpListener,
    key: PeerKey,
    router: axum::Router,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, addr) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (key, router, stop) = (key.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(
                PEER_TIMEOUT,
                (&mut reader).take(MAX_PREFACE as u64).read_line(&mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(n)) if n > 0 && line.ends_with('\n')) {
                tracing::debug!(%addr, "peer connection without a preface");
                return;
            }
            match key.check(&line, now_ms()) {
                Ok((from, transport)) => {
                    tracing::debug!(%from, client = %transport.peer, "spliced rendezvous socket");
                    crate::server::serve_connection(reader, transport, None, router, stop).await;
                }
                Err(why) => tracing::warn!(%addr, why, "peer connection refused"),
            }
        });
    }
}

/// Hands `req` (a rendezvous upgrade that reached this node) to the node at `peer`, and
/// splices the two sockets once that node switched protocols. `None` when the peer cannot
/// be reached or broke HTTP.
pub(crate) async fn splice(
    peer: SocketAddr,
    key: &PeerKey,
    me: &NodeId,
    mut req: axum::extract::Request,
) -> Option<Response<Body>> {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: false,
        });
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut stream = tokio::time::timeout(PEER_TIMEOUT, TcpStream::connect(peer))
        .await
        .ok()?
        .inspect_err(|e| tracing::warn!(%peer, error = %e, "peer port unreachable"))
        .ok()?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(key.preface(me, transport, now_ms()).as_bytes())
        .await
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "peer connection ended");
        }
    });
    let mut resp = tokio::time::timeout(PEER_TIMEOUT, sender.send_request(onward(&req)?))
        .await
        .ok()?
        .ok()?;
    let mut back = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        back = back.header(name, value);
    }
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // A refusal (expired capability, a reject's 410): small, passed on as it is.
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            64 * 1024,
        ))
        .await
        .ok()?
        .to_bytes();
        return back.body(Body::from(body)).ok();
    }
    tokio::spawn(copy_both_ways(
        client_upgrade,
        hyper::upgrade::on(&mut resp),
    ));
    back.body(Body::empty()).ok()
}

/// Once both sides have switched protocols, bytes both ways until either ends: the frames
/// are the two ends' business, and an error on one side ends both.
async fn copy_both_ways(client: hyper::upgrade::OnUpgrade, peer: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(peer)) = (client.await, peer.await) else {
        return;
    };
    let (mut client, mut peer) = (TokioIo::new(client), TokioIo::new(peer));
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut peer,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await;
}

/// The request as the owner node gets it: the same line and headers, no body (an upgrade).
fn onward(req: &axum::extract::Request) -> Option<Request<Body>> {
    let mut onward = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in req.headers() {
        onward = onward.header(name, value);
    }
    onward.body(Body::empty()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefaces_are_signed_fresh_and_name_the_client() {
        let key = PeerKey::new(b"0123456789abcdef0123");
        let me = NodeId::new("b2").unwrap();
        let t = Transport {
            peer: "10.1.2.3:4567".parse().unwrap(),
            tls: true,
        };
        let line = key.preface(&me, t, 1_000_000);
        let (from, back) = key.check(&line, 1_000_000 + 29_000).unwrap();
        assert_eq!(from, me);
        assert_eq!((back.peer, back.tls), (t.peer, true));
        assert!(key.check(&line, 1_000_000 + 31_000).is_err(), "stale");
        let other = PeerKey::new(b"another secret of 16+");
        assert_eq!(other.check(&line, 1_000_000).err(), Some("bad MAC"));
        let tampered = line.replace("10.1.2.3", "10.9.9.9");
        assert_eq!(key.check(&tampered, 1_000_000).err(), Some("bad MAC"));
        assert!(key.check("RELAYPEER1 x", 0).is_err());
    }
}
