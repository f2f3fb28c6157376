//! A sender's way to a listener over the control channel (a single-use rendezvous address),
//! and the relay of a paired sender and listener until both close.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use relay_core::address::RENDEZVOUS_PARAM;
use relay_core::control::{Accept, ListenerCommand};
use relay_core::tracking::TrackingId;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use super::Relay;
use super::local::Target;
use super::rendezvous::{Arrival, ListenerSocket, Pending};
use super::sessions::Revoked;
use super::socket::{RelayHalves, relay_io_halves};
use crate::seams::interconnect::Notice;
use crate::{RelayError, pump};

/// The standard path: a single-use rendezvous address sent over the control channel.
pub(crate) async fn via_control_channel(
    shared: &Relay,
    target: &Target,
    accept: &mut Accept,
) -> Result<Arrival, RelayError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let guard = shared
        .rendezvous
        .add_address(Pending::Accept {
            listener_id: target.listener.key.clone(),
            tx,
        })
        .map_err(|_| RelayError::Busy("pending rendezvous"))?;
    accept
        .address
        .push_str(&format!("&{RENDEZVOUS_PARAM}={}", guard.key()));
    let deadline = tokio::time::Instant::now() + shared.limits.accept_timeout;
    let notice = Notice::Text(ListenerCommand::Accept(accept.clone()).encode());
    shared.deliver(target, notice, deadline).await?;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(arrival)) => Ok(arrival),
        Ok(Err(_)) => Err(RelayError::ListenerFailed(
            "the listener disconnected".into(),
        )),
        Err(_) => {
            crate::metrics::count(&shared.counters.rendezvous_timeouts);
            Err(RelayError::GatewayTimeout)
        }
    }
}

pub(super) fn spawn_pair(
    shared: &Arc<Relay>,
    sender: hyper::upgrade::OnUpgrade,
    listener: ListenerSocket,
    tracking: &TrackingId,
    revoked: Option<Revoked>,
    permit: OwnedSemaphorePermit,
) {
    let buffer = shared.limits.relay_buffer_bytes;
    let shared = Arc::clone(shared);
    let span = tracing::info_span!("relay", tracking = %tracking);
    let tasks = shared.tasks.clone();
    tasks.spawn(
        async move {
            let _permit = permit;
            let (Ok(sender), Some(listener)) = tokio::join!(sender, listener.open(buffer)) else {
                tracing::debug!("an upgrade failed before relaying");
                return;
            };
            let sender = relay_io_halves(sender, buffer);
            relay_pair(&shared, sender, listener, revoked).await;
        }
        .instrument(span),
    );
}

/// Relays a paired sender and listener until both close, the hard stop, or the
/// revocation of a certificate listener.
pub(crate) async fn relay_pair(
    shared: &Relay,
    mut sender: RelayHalves,
    mut listener: RelayHalves,
    revoked: Option<Revoked>,
) {
    // In-flight connections may finish during the drain; only the hard stop cuts them.
    let shutdown = shared.hard_stop.child_token();
    sender
        .0
        .grow_when_busy(shared.limits.relay_buffer_max_bytes);
    listener
        .0
        .grow_when_busy(shared.limits.relay_buffer_max_bytes);
    let counters = &shared.counters;
    counters.sender_connects.fetch_add(1, Ordering::Relaxed);
    counters.active_connections.fetch_add(1, Ordering::Relaxed);
    let relay = pump::relay(sender, listener, shutdown.clone(), counters);
    tokio::pin!(relay);
    let revocation = async {
        match revoked {
            Some(revoked) => revoked.cancelled_owned().await,
            None => std::future::pending().await,
        }
    };
    let relayed = tokio::select! {
        relayed = &mut relay => relayed,
        () = revocation => {
            // Close both sides at the next frame boundary, as on a hard stop.
            shutdown.cancel();
            relay.await
        }
    };
    counters.active_connections.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(
        to_listener = relayed.to_listener,
        to_sender = relayed.to_sender,
        "relay finished"
    );
}
