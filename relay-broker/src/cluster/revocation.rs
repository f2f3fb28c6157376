//! Revocation across the cluster: applied here at once, broadcast on `relay.revoke`, and
//! backed by a poll of the store's revocation sequence every [`POLL`], so a lost broadcast
//! costs at most one poll.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use super::wire::{self, Revoke};
use crate::seams::node::NodeId;
use crate::seams::revocation::{Apply, LocalRevocations, RevocationBus};
use crate::store::IdentityStore;

/// How often every node reads the store's revocation sequence.
pub const POLL: Duration = Duration::from_millis(250);

/// The cluster's revocation bus.
pub(crate) struct NatsRevocations {
    local: LocalRevocations,
    client: async_nats::Client,
    me: NodeId,
}

impl NatsRevocations {
    pub(super) fn new(client: async_nats::Client, me: NodeId) -> Arc<Self> {
        let bus = Arc::new(Self {
            local: LocalRevocations::default(),
            client,
            me,
        });
        tokio::spawn(Arc::clone(&bus).hear());
        bus
    }

    async fn hear(self: Arc<Self>) {
        let Ok(mut revocations) = self.client.subscribe(wire::REVOKE).await else {
            tracing::error!("cannot subscribe to revocations");
            return;
        };
        while let Some(msg) = revocations.next().await {
            if let Ok(r) = serde_json::from_slice::<Revoke>(&msg.payload)
                && r.from != self.me.as_str()
            {
                self.local.publish(&r.listener_id);
            }
        }
    }

    /// Applies every revocation the store numbers after the one seen last, every [`POLL`].
    pub(super) fn follow(self: &Arc<Self>, store: Arc<dyn IdentityStore>) {
        let bus = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = None;
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(bus) = bus.upgrade() else { return };
                let store = Arc::clone(&store);
                let polled =
                    tokio::task::spawn_blocking(move || store.revocations_since(seen)).await;
                match polled {
                    Ok(Ok((head, ids))) => {
                        for id in &ids {
                            bus.local.publish(id);
                        }
                        if !ids.is_empty() {
                            tracing::debug!(n = ids.len(), "revocations from the store's sequence");
                        }
                        seen = Some(head);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "polling revocations failed"),
                    Err(_) => return,
                }
            }
        });
    }
}

impl RevocationBus for NatsRevocations {
    fn publish(&self, listener_id: &str) {
        self.local.publish(listener_id);
        let message = Revoke {
            listener_id: listener_id.to_owned(),
            from: self.me.to_string(),
        };
        let payload = serde_json::to_vec(&message).expect("revocations serialise");
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(wire::REVOKE, payload.into()).await {
                tracing::warn!(error = %e, "revocation broadcast failed; the store's sequence carries it");
            }
        });
    }

    fn subscribe(&self, apply: Apply) {
        self.local.subscribe(apply);
    }
}
