//! Standby sockets: rendezvous WebSockets our own listeners open before any sender arrives
//! (the protocol is in [`relay_core::standby`]).
//!
//! Each control channel that asked for standbys owns a [`Pool`], found by its key. Each
//! parked socket is one task that owns it: it waits for a [`Job`], for the listener to go
//! away, for its age bound, or for the pool to close with the control channel. A sender's
//! `connect` hands its `accept` text to the newest parked socket; the task writes it, reads
//! the listener's [`StandbyReply`] and hands the socket back for relaying. If the socket
//! fails before the listener answered, the sender falls back to the control channel.

pub(crate) mod early;

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use relay_core::frame::close_code;
use relay_core::standby::{MAX_REPLY_BYTES, RECEIPT_DEADLINE, StandbyReply};
use relay_io::Message;
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::relay::pool::{Job, Outcome, Place};
use crate::relay::rendezvous::{Arrival, ListenerSocket};
use crate::relay::socket::relay_io_halves;

/// Read buffer of a parked socket; it grows to the relay buffer once it carries data.
const PARKED_BUFFER: usize = 1024;

/// Parks an upgraded standby socket until a sender needs it, then relays the listener's
/// answer. `standby_max_age` bounds how long an idle socket is trusted.
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
            let age = shared.limits.standby_max_age.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.0));
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
            let receipt = tokio::time::timeout(RECEIPT_DEADLINE, reader.message(MAX_REPLY_BYTES));
            let received = matches!(
                receipt.await.map(|m| m.ok().flatten()),
                Ok(Some(Message::Text(ref t)))
                    if StandbyReply::decode(t.as_bytes()).is_ok_and(|r| r == StandbyReply::Received {})
            );
            if !received {
                // Silent or broken: its siblings likely went through the same middlebox.
                tracing::debug!("standby did not confirm receipt; using the control channel");
                pool.retire_parked();
                let _ = outcome.send(Outcome::Failed);
                return;
            }
            // Bounded by the sender's own wait, which drops `outcome` at its deadline.
            let reply = tokio::select! {
                reply = reader.message(MAX_REPLY_BYTES) => reply,
                () = outcome.closed() => return,
            };
            let text = match reply {
                Ok(Some(Message::Text(text))) => text,
                Ok(Some(Message::Close(_)) | None) | Err(_) => {
                    let _ = outcome.send(listener_failed("closed its standby socket without an answer"));
                    return;
                }
                Ok(Some(other)) => {
                    tracing::debug!(?other, "unexpected frame before the standby reply");
                    crate::metrics::count(&shared.counters.unsolicited);
                    let _ = outcome.send(listener_failed("sent no answer on its standby socket"));
                    let _ = writer.close(close_code::PROTOCOL_ERROR, "expected a reply").await;
                    return;
                }
            };
            match StandbyReply::decode(text.as_bytes()) {
                Ok(StandbyReply::Accepted { protocol }) => {
                    reader.set_capacity(shared.limits.relay_buffer_bytes);
                    let socket = ListenerSocket::Open(Box::new((reader, writer)));
                    let arrival = Arrival::Accepted { socket, protocol };
                    let _ = outcome.send(Outcome::Answered(arrival));
                }
                Ok(StandbyReply::Rejected {
                    status_code,
                    status_description,
                }) => {
                    let _ = outcome.send(Outcome::Answered(Arrival::Rejected {
                        status: crate::relay::rendezvous::refusal_status(Some(status_code)),
                        description: status_description,
                    }));
                    let _ = writer.close(close_code::NORMAL, "rejected").await;
                }
                Ok(StandbyReply::Received {}) | Err(_) => {
                    tracing::debug!("malformed standby reply");
                    let _ = outcome.send(listener_failed("a malformed answer on its standby socket"));
                    let _ = writer.close(close_code::PROTOCOL_ERROR, "malformed reply").await;
                }
            }
        }
        .instrument(span),
    );
}

/// The listener took the job and then failed it: the sender gets 502, since the listener
/// may already have acted on the `accept` and a second try could act twice.
fn listener_failed(what: &str) -> Outcome {
    Outcome::Answered(Arrival::Rejected {
        status: http::StatusCode::BAD_GATEWAY,
        description: format!("The listener {what}"),
    })
}
