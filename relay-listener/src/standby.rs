//! Standby sockets: rendezvous WebSockets opened before any sender arrives, when the broker
//! offers them (our extension; the protocol is in [`relay_core::standby`]). A sender handed
//! to a standby is paired without this listener dialling the broker first, which takes a
//! TCP (and TLS) handshake and an upgrade off every new connection.

use std::sync::Arc;
use std::time::Duration;

use relay_core::control::ListenerCommand;
use relay_core::limits::MAX_INLINE_BODY_MESSAGE_BYTES;
use relay_core::standby::{STANDBY_HEADER, STANDBY_KEY_HEADER, StandbyReply};
use relay_io::client::{ConnectOptions, Connected};
use relay_io::{Message, WsError};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::{Answer, Handler};

/// Default standby sockets per endpoint. Replacing a used one takes a connection setup
/// across the listener's link; three keep a 5 ms link's connects off the slow path at
/// about 70 new connections a second (BENCHMARKS.md).
pub const DEFAULT_STANDBY: usize = 3;

/// Read buffer of a parked socket; it grows when the socket starts carrying data.
const PARKED_BUFFER: usize = 1024;
/// Longest wait for a handler's answer before the replacement standby opens.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// Pause after an answer before the replacement opens, so that it does not compete with
/// the new connection's first round trips either.
const REPLACE_PAUSE: Duration = Duration::from_millis(2);
/// A standby that ends sooner than this without a sender counts as a failed attempt.
const SHORT_LIVED: Duration = Duration::from_secs(1);

/// What the broker granted on the control channel's `101`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    key: String,
    count: usize,
}

impl Grant {
    /// The grant in the `101` headers, if the broker offered one.
    pub(crate) fn from_headers(headers: &[(String, String)], asked: usize) -> Option<Self> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let key = get(STANDBY_KEY_HEADER).filter(|k| !k.is_empty())?;
        let count = relay_core::standby::requested(get(STANDBY_HEADER)?, asked)?;
        Some(Self {
            key: key.to_owned(),
            count,
        })
    }
}

/// The request header asking for `n` standbys.
pub(crate) fn request_header(n: usize) -> (String, String) {
    (STANDBY_HEADER.into(), n.to_string())
}

/// Where the standbys of one control channel connect, and what handles their senders.
pub(crate) struct Standbys<H> {
    pub(crate) url: String,
    pub(crate) options: ConnectOptions,
    pub(crate) handler: Arc<H>,
    /// The hybrid connection, to read an `accept`'s path against.
    pub(crate) hc: String,
    /// The listener's bounded work, which a sender on a standby counts against too.
    pub(crate) work: crate::work::Work,
}

impl<H: Handler> Standbys<H> {
    /// Keeps the granted number of standbys open until `done` (the control channel ended).
    pub(crate) async fn keep(self, grant: Grant, done: CancellationToken) {
        let mut options = self.options.clone();
        options.read_buffer = PARKED_BUFFER;
        options.headers.push((STANDBY_KEY_HEADER.into(), grant.key));
        let this = Arc::new(Self { options, ..self });
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..grant.count {
            let this = Arc::clone(&this);
            let done = done.clone();
            slots.spawn(async move { this.slot(&done).await });
        }
        tokio::select! {
            () = done.cancelled() => {}
            () = async { while slots.join_next().await.is_some() {} } => {}
        }
    }

    /// One standby after another: open, wait for a sender, hand it over, open the next.
    async fn slot(&self, done: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let opened = tokio::time::Instant::now();
            let connected = tokio::select! {
                () = done.cancelled() => return,
                c = relay_io::client::connect(&self.url, &self.options) => c,
            };
            let parked = match connected {
                Ok(c) => c,
                // The key died with its control channel, which reconnects on its own.
                Err(WsError::Refused {
                    status: 403 | 404, ..
                }) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "standby connect failed");
                    if !pause(&mut backoff, done).await {
                        return;
                    }
                    continue;
                }
            };
            let served = tokio::select! {
                () = done.cancelled() => return,
                served = self.wait(parked) => served,
            };
            if served || opened.elapsed() >= SHORT_LIVED {
                backoff.reset();
            } else if !pause(&mut backoff, done).await {
                return;
            }
        }
    }

    /// Waits on a parked socket; true when it carried a sender to the handler.
    async fn wait(&self, mut parked: Connected) -> bool {
        let accept = match parked.reader.message(MAX_INLINE_BODY_MESSAGE_BYTES).await {
            Ok(Some(Message::Text(text))) => {
                match ListenerCommand::decode(text.as_bytes(), MAX_INLINE_BODY_MESSAGE_BYTES) {
                    Ok(ListenerCommand::Accept(accept)) => accept,
                    _ => {
                        tracing::debug!("ignoring a malformed standby job");
                        return false;
                    }
                }
            }
            // Retired by the broker, or gone.
            _ => return false,
        };
        // Confirmed before deciding, so the broker can tell a live socket from a dead one.
        let receipt = StandbyReply::Received {}.encode();
        if parked.writer.text(&receipt).await.is_err() {
            return false;
        }
        let (answered, wait) = tokio::sync::oneshot::channel();
        let answer = Answer::Standby(Box::new(parked), answered);
        let conn = crate::channel::incoming(accept, &self.hc, answer);
        match self.work.admit() {
            Some(permit) => {
                let handler = Arc::clone(&self.handler);
                self.work
                    .spawn(permit, async move { handler.on_connection(conn).await });
            }
            None => {
                let busy = self.work.busy_text();
                self.work.refuse(async move {
                    let _ = conn.reject(503, &busy).await;
                });
            }
        }
        // Opening the replacement now would compete with this sender's answer; bursts are
        // what the other standbys are for. Bounded: a handler that never answers is cut
        // off by the broker, and the replacement opens anyway.
        let _ = tokio::time::timeout(ANSWER_WAIT, wait).await;
        tokio::time::sleep(REPLACE_PAUSE).await;
        true
    }
}

/// Sleeps the next backoff delay; false when `done` came first.
async fn pause(backoff: &mut Backoff, done: &CancellationToken) -> bool {
    tokio::select! {
        () = done.cancelled() => false,
        () = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_grant_needs_a_key_and_a_count() {
        let granted = headers(&[("relay-standby", "4"), ("relay-standby-key", "k")]);
        assert_eq!(
            Grant::from_headers(&granted, 2),
            Some(Grant {
                key: "k".into(),
                count: 2
            })
        );
        assert_eq!(
            Grant::from_headers(&headers(&[("relay-standby", "4")]), 2),
            None
        );
        assert_eq!(
            Grant::from_headers(&headers(&[("relay-standby-key", "k")]), 2),
            None
        );
        assert_eq!(Grant::from_headers(&granted, 0), None);
    }
}
