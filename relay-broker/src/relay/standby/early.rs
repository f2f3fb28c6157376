//! Early pairing (see [`relay_core::standby`]): the sender already has its `101` while the
//! listener decides on a standby socket. This task forwards the sender's first frames right
//! behind the `accept`, keeps a copy of them until the listener confirms receipt, and then
//! relays as usual. A standby that never confirms is given up for the control channel, and
//! the copy is replayed there, so nothing the sender sent is lost.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use relay_core::control::Accept;
use relay_core::frame::{OpCode, close_code};
use relay_core::standby::{
    CLOSE_REJECTED, EarlyCopy, Exchange, Failure, Heard, Kept, MAX_REPLY_BYTES, Next,
    rejection_reason,
};
use relay_io::WsReader;
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::relay::local::Target;
use crate::relay::pairing::{relay_pair, via_control_channel};
use crate::relay::rendezvous::Arrival;
use crate::relay::socket::{RelayHalves, relay_io_halves};

/// Why the sender is closed instead of relayed: a close code and reason.
type Refusal = (u16, String);

/// Relays an early-paired sender once its upgrade completes. `accept` and `listener` are
/// what the control-channel fallback needs.
pub(crate) fn spawn(
    shared: &Arc<Relay>,
    sender: OnUpgrade,
    standby: Box<RelayHalves>,
    (listener, accept): (Target, Accept),
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let shared = Arc::clone(shared);
    let span = tracing::info_span!("relay", tracking = %accept.id, early = true);
    shared.tasks.clone().spawn(
        async move {
            let _permit = permit;
            let buffer = shared.limits.relay_buffer_bytes;
            let Ok(sender) = sender.await else {
                tracing::debug!("the sender's upgrade failed before relaying");
                return;
            };
            let (mut s_reader, mut s_writer) = relay_io_halves(sender, buffer);
            let (mut l_reader, l_writer) = *standby;
            l_reader.set_capacity(buffer);
            let revoked = shared.revoked(&listener);
            let decided = decide(
                &shared,
                &mut s_reader,
                (l_reader, l_writer),
                &listener,
                accept,
            )
            .await;
            match decided {
                Ok(paired) => relay_pair(&shared, (s_reader, s_writer), paired, revoked).await,
                Err((code, reason)) => {
                    tracing::debug!(code, reason, "early-paired sender refused");
                    let _ = s_writer.close(code, &reason).await;
                }
            }
        }
        .instrument(span),
    );
}

/// Forwards sender frames until the listener has answered, and returns its socket. The
/// rules (receipt, answer, deadlines, the copy) are relay_core's [`Exchange`] and
/// [`EarlyCopy`]; this moves frames and timers. It stays one function because it is one
/// `select!` over both sockets, the deadline and the hard stop, then the fallback in order.
async fn decide<R>(
    shared: &Relay,
    sender: &mut WsReader<R>,
    standby: RelayHalves,
    listener: &Target,
    mut accept: Accept,
) -> Result<RelayHalves, Refusal>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let (mut l_reader, mut l_writer) = standby;
    let now = || tokio::time::Instant::now().into_std();
    let mut exchange = Exchange::new(now(), shared.limits.accept_timeout);
    let mut copy = EarlyCopy::default();
    // The sender is no longer read once it sent a control frame, more than can be kept, or
    // its end: what is left waits, in place, for the relay.
    let mut paused = false;
    loop {
        let deadline = tokio::time::Instant::from_std(exchange.deadline());
        let next = tokio::select! {
            biased;
            header = l_reader.header() => {
                let mut text = Vec::new();
                let heard = match header {
                    Ok(Some(h)) if h.opcode == OpCode::Text && h.payload_len <= MAX_REPLY_BYTES as u64 => {
                        match l_reader.read_small_payload(&mut text).await {
                            Ok(()) => Heard::Text(&text),
                            Err(_) => Heard::Closed,
                        }
                    }
                    Ok(Some(_)) => Heard::Other,
                    Ok(None) | Err(_) => Heard::Closed,
                };
                exchange.on_heard(heard)
            }
            header = sender.header(), if !paused => {
                let h = match header {
                    Ok(Some(h)) if copy.may_forward(h.opcode, h.payload_len) => h,
                    Ok(Some(_)) => {
                        paused = sender.unread_header();
                        if !paused {
                            return Err((close_code::INTERNAL_ERROR, "internal error".into()));
                        }
                        continue;
                    }
                    Ok(None) => {
                        paused = true;
                        continue;
                    }
                    Err(e) => {
                        // The sender broke the protocol or vanished: nothing to relay.
                        let _ = l_writer.close(close_code::GOING_AWAY, "the sender went away").await;
                        return Err((close_code::PROTOCOL_ERROR, e.to_string()));
                    }
                };
                let mut payload = Vec::with_capacity(h.payload_len as usize);
                if let Err(e) = sender.read_small_payload(&mut payload).await {
                    let _ = l_writer.close(close_code::GOING_AWAY, "the sender went away").await;
                    return Err((close_code::PROTOCOL_ERROR, e.to_string()));
                }
                let wrote = tokio::time::timeout_at(deadline, async {
                    l_writer.send(h.fin, h.opcode, &payload).await?;
                    l_writer.flush().await
                })
                .await;
                shared.counters.bytes_to_listener.fetch_add(payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
                // Kept until the receipt, also when the write failed half-way.
                copy.forwarded(Kept { fin: h.fin, opcode: h.opcode, payload });
                match (wrote, exchange.received()) {
                    (Ok(Ok(())), _) => continue,
                    (_, false) => Next::Dead,
                    (_, true) => {
                        return Err((close_code::INTERNAL_ERROR, "The listener's standby socket failed".into()));
                    }
                }
            }
            () = shared.hard_stop.cancelled() => {
                let _ = l_writer.close(close_code::GOING_AWAY, "the broker is shutting down").await;
                return Err((close_code::GOING_AWAY, "The broker is shutting down".into()));
            }
            () = tokio::time::sleep_until(deadline) => exchange.on_time(now()),
        };
        match next {
            Next::Wait(_) => {
                if exchange.received() {
                    copy.confirm();
                }
            }
            Next::Accepted(_) => {
                crate::metrics::count(&shared.counters.standby_accepts);
                return Ok((l_reader, l_writer));
            }
            Next::Rejected {
                status,
                description,
            } => {
                crate::metrics::count(&shared.counters.standby_accepts);
                let _ = l_writer.close(close_code::NORMAL, "rejected").await;
                return Err((CLOSE_REJECTED, rejection_reason(status, &description)));
            }
            Next::Failed(failure) => {
                if failure == Failure::TimedOut {
                    crate::metrics::count(&shared.counters.rendezvous_timeouts);
                }
                return Err((
                    close_code::INTERNAL_ERROR,
                    format!("The listener {}", failure.describe()),
                ));
            }
            // Gone or garbled before confirming receipt: the control channel still may work.
            Next::Dead => break,
        }
    }
    // The standby never confirmed receipt: likely dead, and its siblings with it.
    tracing::debug!("standby did not confirm receipt; using the control channel");
    if let Some(pool) = listener.standby() {
        pool.retire_parked();
    }
    crate::metrics::count(&shared.counters.standby_fallbacks);
    drop((l_reader, l_writer));
    let retained = copy.replay();
    let arrival = via_control_channel(shared, listener, &mut accept)
        .await
        .map_err(|e| (close_code::INTERNAL_ERROR, e.to_string()))?;
    let socket = match arrival {
        Arrival::Rejected {
            status,
            description,
        } => {
            return Err((
                CLOSE_REJECTED,
                rejection_reason(status.as_u16(), &description),
            ));
        }
        Arrival::Accepted { socket, .. } => socket,
    };
    let Some((reader, mut writer)) = socket.open(shared.limits.relay_buffer_bytes).await else {
        return Err((
            close_code::INTERNAL_ERROR,
            "The listener's upgrade failed".into(),
        ));
    };
    let replay = async {
        for frame in &retained {
            writer.send(frame.fin, frame.opcode, &frame.payload).await?;
        }
        writer.flush().await
    };
    replay
        .await
        .map_err(|e| (close_code::INTERNAL_ERROR, e.to_string()))?;
    Ok((reader, writer))
}
