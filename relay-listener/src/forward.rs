//! Forwards every relayed connection to a TCP target ([`TcpForward`]), or to one of several
//! targets named by the sender ([`PortMap`]). End of stream on either side is passed on as a
//! half-close, and the other direction keeps flowing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::handler::{Handler, IncomingConnection};
use crate::limits::{RateLimit, Throttled};

/// Forwards connections to `target` (`host:port`).
#[derive(Clone, Debug)]
pub struct TcpForward {
    /// Where to connect.
    pub target: String,
    /// Bound on connecting to the target.
    pub connect_timeout: Duration,
    /// Paces bytes towards the target (shared by the endpoint's connections).
    pub to_target: Option<Arc<RateLimit>>,
    /// Paces bytes from the target.
    pub from_target: Option<Arc<RateLimit>>,
}

impl TcpForward {
    /// Forwards to `target` with a 10 s connect timeout.
    #[must_use]
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            connect_timeout: Duration::from_secs(10),
            to_target: None,
            from_target: None,
        }
    }
}

/// Logical port names on one hybrid connection: the sender connects to `/{hc}/{port}` and
/// reaches that port's target, so one edge agent exposes many devices without a hybrid
/// connection each. An unknown or missing name is refused with 404 or 400, naming the ports.
#[derive(Clone, Debug)]
pub struct PortMap {
    ports: BTreeMap<String, TcpForward>,
}

impl PortMap {
    /// Ports by name.
    #[must_use]
    pub fn new(ports: BTreeMap<String, TcpForward>) -> Self {
        Self { ports }
    }

    fn names(&self) -> String {
        self.ports.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl Handler for PortMap {
    async fn on_connection(&self, conn: IncomingConnection) {
        let name = conn
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        let name = percent_decode(name);
        match self.ports.get(name.as_str()) {
            Some(forward) => forward.on_connection(conn).await,
            None if name.is_empty() => {
                let why = format!("name a port: connect to /<hc>/<port> ({})", self.names());
                let _ = conn.reject(400, &why).await;
            }
            None => {
                tracing::warn!(connection = %conn.id, port = %name, "unknown port; rejecting");
                let why = format!(
                    "no port '{name}' here; this listener serves {}",
                    self.names()
                );
                let _ = conn.reject(404, &why).await;
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

impl Handler for TcpForward {
    async fn on_connection(&self, conn: IncomingConnection) {
        let id = conn.id.clone();
        // Connect first, so an unreachable target is a clear 502 for the sender.
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.target))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::warn!(connection = %id, target = %self.target, error = %e, "target unreachable; rejecting");
                let _ = conn
                    .reject(502, &format!("target {} unreachable", self.target))
                    .await;
                return;
            }
            Err(_) => {
                let _ = conn
                    .reject(504, &format!("target {} timed out", self.target))
                    .await;
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Until the stream ends in order, any close (a failed accept, an abort, this agent
        // killed) resets the target instead of handing it a FIN that reads as complete.
        relay_io::splice::reset_on_close(&tcp);
        let stream = match conn.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "accept failed");
                return;
            }
        };
        let (mut from_tcp, mut to_tcp) = tcp.into_split();
        let tcp = (
            Throttled::new(&mut from_tcp, self.from_target.clone()),
            Throttled::new(&mut to_tcp, self.to_target.clone()),
        );
        let spliced = relay_io::splice::splice(stream.into_parts(), tcp).await;
        let tcp = from_tcp.reunite(to_tcp);
        match spliced {
            Ok(s) => {
                tracing::debug!(
                    connection = %id,
                    to_target = s.to_tcp,
                    from_target = s.to_ws,
                    "connection finished"
                );
                if let Ok(tcp) = &tcp {
                    relay_io::splice::finished(tcp);
                }
            }
            // Dropped with SO_LINGER 0: a truncated upload must not reach the target as a
            // finished one.
            Err(e) => {
                tracing::info!(connection = %id, error = %e, "connection aborted; resetting the target connection");
            }
        }
    }
}
