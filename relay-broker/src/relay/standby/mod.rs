//! Standby sockets: rendezvous WebSockets our own listeners open before any sender arrives
//! (the protocol is in [`relay_core::standby`]).
//!
//! Each control channel that asked for standbys owns a [`Pool`], found by its key. Each
//! parked socket is one task that owns it: it waits for a [`Job`], for the listener to go
//! away, for its age bound, or for the pool to close with the control channel. A sender's
//! `connect` hands its `accept` text to the newest parked socket; the task writes it, reads
//! the listener's [`StandbyReply`](relay_core::standby::StandbyReply) and hands the socket back for relaying. If the socket
//! fails before the listener answered, the sender falls back to the control channel.

pub(crate) mod early;

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use relay_core::frame::close_code;
use relay_core::standby::{Exchange, Failure, Heard, MAX_REPLY_BYTES, Next};
use relay_io::Message;
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::relay::pool::{Job, Outcome, Place};
use crate::relay::rendezvous::{Arrival, ListenerSocket};
use crate::relay::socket::relay_io_halves;

/// Read buffer of a parked socket; it grows to the relay buffer once it carries data.
const PARKED_BUFFER: usize = 1024;

/// Parks an upgraded standby socket until a sender needs it, then relays the listener's
/// answer. `standby_max_age` bounds how long an idle socket is trusted. One task's life,
/// in order (parked, dispatched, answered), each step a little IO around relay_core's
/// [`Exchange`].
pub(crate) fn spawn(shared: &Arc<Relay>, place: Place, upgrade: OnUpgrade) {
    let shared = Arc::clone(shared);
    let span = tracing::debug_span!("standby", hc = %place.0.hc);
    shared.tasks.clone().spawn(
        async move {
            let Ok(upgraded) = upgrade.await else { return };
            let (mut reader, mut writer) = relay_io_halves(upgraded, PARKED_BUFFER);
            let pool = Arc::clone(&place.0);
            let (id, job) = pool.park();
            // Jitter spreads the replacements of sockets parked together.
            let age = shared
                .limits
                .standby_max_age
                .mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.0));
            let job = tokio::select! {
                job = job => job,
                // The listener sends nothing on a parked socket: any frame, Close included,
                // or the end of the stream retires it.
                _ = reader.header() => { pool.unpark(id); return }
                () = tokio::time::sleep(age) => {
                    pool.unpark(id);
                    let _ = writer.close(close_code::NORMAL, "standby retired").await;
                    return;
                }
                () = pool.closed.cancelled() => {
                    pool.unpark(id);
                    let _ = writer.close(close_code::GOING_AWAY, "control channel closed").await;
                    return;
                }
            };
            let Ok(Job {
                accept,
                early,
                mut outcome,
            }) = job
            else {
                // Retired with the rest of the pool after a dead one was found.
                let _ = writer.close(close_code::NORMAL, "standby retired").await;
                return;
            };
            // No longer parked: the listener may open its replacement at once.
            drop(place);
            if writer.text(&accept).await.is_err() {
                let _ = outcome.send(Outcome::Failed);
                return;
            }
            if early {
                let _ = outcome.send(Outcome::Dispatched(Box::new((reader, writer))));
                return;
            }
            // The rules of receipt and answer are relay_core's; this only moves frames.
            let now = || tokio::time::Instant::now().into_std();
            let mut exchange = Exchange::new(now(), shared.limits.accept_timeout);
            let next = loop {
                let deadline = tokio::time::Instant::from_std(exchange.deadline());
                let next = tokio::select! {
                    got = reader.message(MAX_REPLY_BYTES) => {
                        let got = Got::from(got);
                        if matches!(got, Got::Other) {
                            crate::metrics::count(&shared.counters.unsolicited);
                        }
                        exchange.on_heard(got.heard())
                    }
                    () = tokio::time::sleep_until(deadline) => exchange.on_time(now()),
                    // The sender gave up (its own deadline): nothing is left to answer.
                    () = outcome.closed() => return,
                };
                if !matches!(next, Next::Wait(_)) {
                    break next;
                }
            };
            match next {
                Next::Wait(_) => {}
                Next::Accepted(protocol) => {
                    reader.set_capacity(shared.limits.relay_buffer_bytes);
                    let socket = ListenerSocket::Open(Box::new((reader, writer)));
                    let _ = outcome.send(Outcome::Answered(Arrival::Accepted { socket, protocol }));
                }
                Next::Rejected {
                    status,
                    description,
                } => {
                    let _ = outcome.send(Outcome::Answered(Arrival::Rejected {
                        status: crate::relay::rendezvous::refusal_status(Some(status)),
                        description,
                    }));
                    let _ = writer.close(close_code::NORMAL, "rejected").await;
                }
                Next::Dead => {
                    // Silent or broken: its siblings likely went through the same middlebox.
                    tracing::debug!("standby did not confirm receipt; using the control channel");
                    pool.retire_parked();
                    let _ = outcome.send(Outcome::Failed);
                }
                Next::Failed(failure) => {
                    let _ = outcome.send(listener_failed(failure.describe()));
                    if failure == Failure::Garbled {
                        let _ = writer
                            .close(close_code::PROTOCOL_ERROR, "expected a standby reply")
                            .await;
                    }
                }
            }
        }
        .instrument(span),
    );
}

/// A message read on a standby socket, owned until the exchange has looked at it.
enum Got {
    Text(String),
    Other,
    Closed,
}

impl From<Result<Option<Message>, relay_io::WsError>> for Got {
    fn from(read: Result<Option<Message>, relay_io::WsError>) -> Self {
        match read {
            Ok(Some(Message::Text(text))) => Self::Text(text),
            Ok(Some(Message::Close(_)) | None) | Err(_) => Self::Closed,
            Ok(Some(_)) => Self::Other,
        }
    }
}

impl Got {
    fn heard(&self) -> Heard<'_> {
        match self {
            Self::Text(text) => Heard::Text(text.as_bytes()),
            Self::Other => Heard::Other,
            Self::Closed => Heard::Closed,
        }
    }
}

/// The listener took the job and then failed it: the sender gets 502, since the listener
/// may already have acted on the `accept` and a second try could act twice.
fn listener_failed(what: &str) -> Outcome {
    Outcome::Answered(Arrival::Rejected {
        status: http::StatusCode::BAD_GATEWAY,
        description: format!("The listener {what}"),
    })
}
