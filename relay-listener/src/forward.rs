//! Forwards every relayed connection to a TCP target. End of stream on either side is passed
//! on as a half-close, and the other direction keeps flowing.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::handler::{Handler, IncomingConnection};

/// Forwards connections to `target` (`host:port`).
#[derive(Clone, Debug)]
pub struct TcpForward {
    /// Where to connect.
    pub target: String,
    /// Bound on connecting to the target.
    pub connect_timeout: Duration,
}

impl TcpForward {
    /// Forwards to `target` with a 10 s connect timeout.
    #[must_use]
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
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
        let stream = match conn.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = %id, error = %e, "accept failed");
                return;
            }
        };
        match relay_io::splice::splice(stream.into_parts(), tcp.into_split()).await {
            Ok(s) => tracing::debug!(
                connection = %id,
                to_target = s.to_tcp,
                from_target = s.to_ws,
                "connection finished"
            ),
            Err(e) => {
                tracing::debug!(connection = %id, error = %e, "connection ended with an error");
            }
        }
    }
}
