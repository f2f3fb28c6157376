//! Early pairing (see [`relay_core::standby`]): the sender already has its `101` while the
//! listener decides on a standby socket. This task forwards the sender's first frames right
//! behind the `accept`, keeps a copy of them until the listener confirms receipt, and then
//! relays as usual. A standby that never confirms is given up for the control channel, and
//! the copy is replayed there, so nothing the sender sent is lost.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use relay_core::control::Accept;
use relay_core::frame::{FrameHeader, OpCode, close_code};
use relay_core::standby::{
    CLOSE_REJECTED, EarlyCopy, Exchange, Failure, Heard, Kept, MAX_REPLY_BYTES, Next,
    rejection_reason,
};
use relay_io::{WsError, WsReader};
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::relay::local::Target;
use crate::relay::pairing::{relay_pair, via_control_channel};
use crate::relay::rendezvous::Arrival;
use crate::relay::socket::{RelayHalves, relay_io_halves};

/// Why the sender is closed instead of relayed: a close code and reason.
type Refusal = (u16, String);

/// The writer half of a standby socket.
type StandbyWriter = relay_io::WsWriter<tokio::io::WriteHalf<crate::relay::socket::BoxSocket>>;

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

/// What one frame of the sender did while the listener decides.
enum Forwarded {
    /// Written to the standby (and kept until its receipt).
    Sent,
    /// Left unread for the relay: a control frame, more than the copy holds, or the end.
    Paused,
    /// The standby failed before it confirmed receipt: the control channel may still work.
    StandbyDead,
}

/// Forwards sender frames until the listener has answered, and returns its socket. The
/// rules (receipt, answer, deadlines, the copy) are relay_core's [`Exchange`] and
/// [`EarlyCopy`]; this moves frames and timers: one `select!` over both sockets, the
/// deadline and the hard stop, then the fallback.
async fn decide<R>(
    shared: &Relay,
    sender: &mut WsReader<R>,
    standby: RelayHalves,
    listener: &Target,
    accept: Accept,
) -> Result<RelayHalves, Refusal>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let (mut l_reader, mut l_writer) = standby;
    let now = || tokio::time::Instant::now().into_std();
    let mut exchange = Exchange::new(now(), shared.limits.accept_timeout);
    let mut copy = EarlyCopy::default();
    let mut paused = false;
    loop {
        let deadline = tokio::time::Instant::from_std(exchange.deadline());
        let mut text = Vec::new();
        let next = tokio::select! {
            biased;
            header = l_reader.header() => exchange.on_heard(hear(&mut l_reader, header, &mut text).await),
            header = sender.header(), if !paused => {
                let frame = Frame { header, deadline, received: exchange.received() };
                match forward(shared, sender, frame, &mut l_writer, &mut copy).await? {
                    Forwarded::Sent => continue,
                    Forwarded::Paused => { paused = true; continue; }
                    Forwarded::StandbyDead => Next::Dead,
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
    drop((l_reader, l_writer));
    fall_back(shared, listener, accept, copy).await
}

/// What the standby said, as the exchange hears it: a complete small text, or anything else.
async fn hear<'t, R>(
    reader: &mut WsReader<R>,
    header: Result<Option<FrameHeader>, WsError>,
    text: &'t mut Vec<u8>,
) -> Heard<'t>
where
    R: tokio::io::AsyncRead + Unpin,
{
    match header {
        Ok(Some(h)) if h.opcode == OpCode::Text && h.payload_len <= MAX_REPLY_BYTES as u64 => {
            match reader.read_small_payload(text).await {
                Ok(()) => Heard::Text(text),
                Err(_) => Heard::Closed,
            }
        }
        Ok(Some(_)) => Heard::Other,
        Ok(None) | Err(_) => Heard::Closed,
    }
}

/// One header read from the sender, and when the listener must have answered by.
struct Frame {
    header: Result<Option<FrameHeader>, WsError>,
    deadline: tokio::time::Instant,
    /// Whether the standby already confirmed receipt (a failed write is then final).
    received: bool,
}

/// Forwards one sender frame to the standby, keeping a copy until the receipt. The sender
/// is no longer read once it sent a control frame, more than can be kept, or its end: what
/// is left waits, in place, for the relay.
async fn forward<R>(
    shared: &Relay,
    sender: &mut WsReader<R>,
    frame: Frame,
    l_writer: &mut StandbyWriter,
    copy: &mut EarlyCopy,
) -> Result<Forwarded, Refusal>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let h = match frame.header {
        Ok(Some(h)) if copy.may_forward(h.opcode, h.payload_len) => h,
        Ok(Some(_)) if sender.unread_header() => return Ok(Forwarded::Paused),
        Ok(Some(_)) => return Err((close_code::INTERNAL_ERROR, "internal error".into())),
        Ok(None) => return Ok(Forwarded::Paused),
        Err(e) => return Err(sender_gone(l_writer, &e).await),
    };
    let mut payload = Vec::with_capacity(h.payload_len as usize);
    if let Err(e) = sender.read_small_payload(&mut payload).await {
        return Err(sender_gone(l_writer, &e).await);
    }
    let wrote = tokio::time::timeout_at(frame.deadline, async {
        l_writer.send(h.fin, h.opcode, &payload).await?;
        l_writer.flush().await
    })
    .await;
    shared
        .counters
        .bytes_to_listener
        .fetch_add(payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // Kept until the receipt, also when the write failed half-way.
    copy.forwarded(Kept {
        fin: h.fin,
        opcode: h.opcode,
        payload,
    });
    match (wrote, frame.received) {
        (Ok(Ok(())), _) => Ok(Forwarded::Sent),
        (_, false) => Ok(Forwarded::StandbyDead),
        (_, true) => Err((
            close_code::INTERNAL_ERROR,
            "The listener's standby socket failed".into(),
        )),
    }
}

/// The sender broke the protocol or vanished: the standby is told, and nothing is relayed.
async fn sender_gone(l_writer: &mut StandbyWriter, e: &WsError) -> Refusal {
    let _ = l_writer
        .close(close_code::GOING_AWAY, "the sender went away")
        .await;
    (close_code::PROTOCOL_ERROR, e.to_string())
}

/// The standby never confirmed receipt, so it is likely dead, and its siblings with it: the
/// `accept` goes over the control channel, and the copy is replayed on the socket that
/// arrives there.
async fn fall_back(
    shared: &Relay,
    listener: &Target,
    mut accept: Accept,
    mut copy: EarlyCopy,
) -> Result<RelayHalves, Refusal> {
    tracing::debug!("standby did not confirm receipt; using the control channel");
    if let Some(pool) = listener.standby() {
        pool.retire_parked();
    }
    crate::metrics::count(&shared.counters.standby_fallbacks);
    let retained = copy.replay();
    let internal = |e: &dyn std::fmt::Display| (close_code::INTERNAL_ERROR, e.to_string());
    let arrival = via_control_channel(shared, listener, &mut accept)
        .await
        .map_err(|e| internal(&e))?;
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
        return Err(internal(&"The listener's upgrade failed"));
    };
    let replay = async {
        for frame in &retained {
            writer.send(frame.fin, frame.opcode, &frame.payload).await?;
        }
        writer.flush().await
    };
    replay.await.map_err(|e| internal(&e))?;
    Ok((reader, writer))
}
