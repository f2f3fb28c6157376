//! Revocation as a message: identity publishes "close listener X" once, and every node
//! applies it to the sessions it holds. In one process that is a direct call; a cluster
//! publishes on NATS and backs it with a poll of the store's revocation sequence.

use std::sync::{Arc, RwLock};

/// What a node does with a revocation: close the listener's control channels and relays.
pub type Apply = Arc<dyn Fn(&str) + Send + Sync>;

/// Publish and subscribe for revoked listeners.
pub trait RevocationBus: Send + Sync + 'static {
    /// Closes everything `listener_id` has open, on every node that subscribed (this one too).
    fn publish(&self, listener_id: &str);

    /// Adds a node's way of applying revocations; each node subscribes once, when it is built.
    fn subscribe(&self, apply: Apply);
}

/// The in-process bus: every subscriber is called before `publish` returns.
#[derive(Default)]
pub struct LocalRevocations {
    subscribers: RwLock<Vec<Apply>>,
}

impl std::fmt::Debug for LocalRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRevocations")
            .field("subscribers", &self.read().len())
            .finish()
    }
}

impl LocalRevocations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Apply>> {
        // A subscriber that panicked leaves no half-written state behind: the list is only
        // ever pushed to.
        self.subscribers.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl RevocationBus for LocalRevocations {
    fn publish(&self, listener_id: &str) {
        let subscribers: Vec<Apply> = self.read().clone();
        for apply in subscribers {
            apply(listener_id);
        }
    }

    fn subscribe(&self, apply: Apply) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(apply);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn every_subscriber_applies_every_revocation() {
        let bus = LocalRevocations::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for node in ["a", "b"] {
            let seen = Arc::clone(&seen);
            bus.subscribe(Arc::new(move |id: &str| {
                seen.lock().unwrap().push(format!("{node}:{id}"));
            }));
        }
        bus.publish("l1");
        assert_eq!(*seen.lock().unwrap(), ["a:l1", "b:l1"]);
    }
}
