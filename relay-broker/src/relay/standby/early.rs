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
    CLOSE_REJECTED, EARLY_RETAINED_BYTES, MAX_REPLY_BYTES, RECEIPT_DEADLINE, StandbyReply,
    rejection_reason,
};
use relay_io::WsReader;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::relay::local::Target;
use crate::relay::pairing::{relay_pair, via_control_channel};
use crate::relay::rendezvous::Arrival;
use crate::relay::socket::{RelayHalves, relay_io_halves};

/// A sender frame forwarded before the listener confirmed receipt.
struct Forwarded {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

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

/// Forwards sender frames until the listener has answered, and returns its socket.
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
    let mut retained: Vec<Forwarded> = Vec::new();
    let mut retained_bytes = 0usize;
    let mut confirmed = false;
    // The sender is no longer read once it sent a control frame, more than can be kept, or
    // its end: what is left waits, in place, for the relay.
    let mut paused = false;
    let receipt_by = Instant::now() + RECEIPT_DEADLINE;
    let answer_by = Instant::now() + shared.limits.accept_timeout;
    loop {
        let deadline = if confirmed { answer_by } else { receipt_by };
        tokio::select! {
            biased;
            header = l_reader.header() => {
                let reply = match header {
                    Ok(Some(h)) if h.opcode == OpCode::Text && h.payload_len <= MAX_REPLY_BYTES as u64 => {
                        let mut text = Vec::new();
                        match l_reader.read_small_payload(&mut text).await {
                            Ok(()) => StandbyReply::decode(&text).ok(),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                };
                match (confirmed, reply) {
                    (false, Some(StandbyReply::Received {})) => {
                        confirmed = true;
                        retained = Vec::new();
                    }
                    (true, Some(StandbyReply::Accepted { .. })) => {
                        crate::metrics::count(&shared.counters.standby_accepts);
                        return Ok((l_reader, l_writer));
                    }
                    (true, Some(StandbyReply::Rejected { status_code, status_description })) => {
                        crate::metrics::count(&shared.counters.standby_accepts);
                        let _ = l_writer.close(close_code::NORMAL, "rejected").await;
                        return Err((CLOSE_REJECTED, rejection_reason(status_code, &status_description)));
                    }
                    // Gone or garbled before confirming receipt: the control channel still may work.
                    (false, _) => break,
                    (true, _) => {
                        return Err((close_code::INTERNAL_ERROR, "The listener failed on its standby socket".into()));
                    }
                }
            }
            header = sender.header(), if !paused => {
                let room = if confirmed { EARLY_RETAINED_BYTES } else { EARLY_RETAINED_BYTES - retained_bytes };
                let h = match header {
                    Ok(Some(h)) if !h.opcode.is_control() && h.payload_len <= room as u64 => h,
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
                match (wrote, confirmed) {
                    (Ok(Ok(())), true) => {}
                    (Ok(Ok(())), false) => {
                        retained_bytes += payload.len();
                        retained.push(Forwarded { fin: h.fin, opcode: h.opcode, payload });
                    }
                    (_, false) => {
                        retained.push(Forwarded { fin: h.fin, opcode: h.opcode, payload });
                        break;
                    }
                    (_, true) => {
                        return Err((close_code::INTERNAL_ERROR, "The listener's standby socket failed".into()));
                    }
                }
            }
            () = shared.hard_stop.cancelled() => {
                let _ = l_writer.close(close_code::GOING_AWAY, "the broker is shutting down").await;
                return Err((close_code::GOING_AWAY, "The broker is shutting down".into()));
            }
            () = tokio::time::sleep_until(deadline) => {
                if confirmed {
                    crate::metrics::count(&shared.counters.rendezvous_timeouts);
                    return Err((close_code::INTERNAL_ERROR, "The listener did not answer in time".into()));
                }
                break;
            }
        }
    }
    // The standby never confirmed receipt: likely dead, and its siblings with it.
    tracing::debug!("standby did not confirm receipt; using the control channel");
    if let Some(pool) = listener.standby() {
        pool.retire_parked();
    }
    crate::metrics::count(&shared.counters.standby_fallbacks);
    drop((l_reader, l_writer));
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
