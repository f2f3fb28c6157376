//! The local status endpoint (`GET /status` on `[agent].status_bind`, loopback by intent):
//! each endpoint as CONNECTED, CONNECTING (with the last error and the next retry) or
//! REVOKED, with what is in flight. `relay-listener status` reads and prints it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Target};
use crate::Status;
use crate::limits::Gate;

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointState {
    /// The control channel is up.
    Connected,
    /// Trying to connect.
    Connecting,
    /// The broker revoked the listener.
    Revoked,
    /// Shut down.
    Stopped,
}

/// One endpoint's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The hybrid connection.
    pub hc: String,
    /// `tcp host:port`, `http URL` or `ports a, b`.
    pub target: String,
    /// The state.
    pub state: EndpointState,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt.
    pub next_retry_unix: Option<u64>,
    /// Connections and requests in flight.
    pub in_flight: u32,
    /// Their bound.
    pub max_connections: u32,
}

type Watched = Vec<(Endpoint, watch::Receiver<Status>, Gate)>;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn snapshot(watched: &Watched) -> Vec<EndpointStatus> {
    watched
        .iter()
        .map(|(endpoint, status, gate)| {
            let (state, last_error, next_retry) = match &*status.borrow() {
                Status::Connected => (EndpointState::Connected, None, None),
                Status::Connecting {
                    last_error,
                    next_retry,
                    ..
                } => (
                    EndpointState::Connecting,
                    last_error.clone(),
                    next_retry.map(unix),
                ),
                Status::Revoked {
                    last_error,
                    next_retry,
                } => (
                    EndpointState::Revoked,
                    Some(last_error.clone()),
                    Some(unix(*next_retry)),
                ),
                Status::Stopped => (EndpointState::Stopped, None, None),
            };
            EndpointStatus {
                hc: endpoint.hc.clone(),
                target: match &endpoint.target {
                    Target::Tcp(t) => format!("tcp {t}"),
                    Target::Http(u) => format!("http {u}"),
                    Target::Ports(p) => {
                        format!("ports {}", p.keys().cloned().collect::<Vec<_>>().join(", "))
                    }
                },
                state,
                last_error,
                next_retry_unix: next_retry,
                in_flight: gate.in_flight(),
                max_connections: gate.max(),
            }
        })
        .collect()
}

/// Serves `GET /status` until `shutdown`. Requests are tiny and answered one per connection.
pub(crate) async fn serve(
    server: tokio::net::TcpListener,
    watched: Watched,
    shutdown: CancellationToken,
) {
    loop {
        let (mut tcp, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = server.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // EMFILE and the like: back off rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let body = serde_json::to_string(&snapshot(&watched)).unwrap_or_default();
        tokio::spawn(async move {
            // Read the request head (bounded), whatever it asks: there is one resource.
            let mut head = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut head)).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}

/// Reads a running agent's status from its status endpoint.
pub async fn fetch_status(
    addr: std::net::SocketAddr,
) -> Result<Vec<EndpointStatus>, relay_io::WsError> {
    let url = format!("http://{addr}/status");
    let (status, body) = relay_io::http1::call(&url, "GET", &[], &[], None).await?;
    if status != 200 {
        return Err(relay_io::WsError::Refused {
            status,
            reason: "status endpoint".into(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| relay_io::WsError::Handshake(e.to_string()))
}
