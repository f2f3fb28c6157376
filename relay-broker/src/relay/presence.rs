//! The presence seam: which listeners are connected to which hybrid connection, and which
//! one gets the next sender.
//!
//! [`LocalPresence`] keeps it in memory for one broker. The cluster issue adds a shared
//! implementation that routes to listeners on other nodes.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A message for a listener's control channel.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON control message.
    Text(String),
    /// A JSON control message followed, with nothing in between, by its body message.
    TextWithBody(String, Bytes),
}

/// A connected listener, as the rest of the broker sees it.
#[derive(Clone, Debug)]
pub struct ListenerHandle {
    /// Unique within this broker's lifetime.
    pub id: u64,
    /// Its hybrid connection, as registered.
    pub hc: Arc<str>,
    /// Base of rendezvous addresses for this listener (`wss://host:port`).
    pub base_url: Arc<str>,
    /// Its control channel's outgoing queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the control channel (shutdown).
    pub close: CancellationToken,
    /// For certificate listeners: cancelled on revocation, which also cuts the connections
    /// relayed to this listener.
    pub revoked: Option<crate::relay::sessions::Revoked>,
    /// The agent instance behind this channel, with its credential
    /// (`<principal>|<relay-listener-instance>`): a newer channel with the same value
    /// replaces this one.
    pub instance: Option<Arc<str>>,
    /// Cancelled when a newer channel of the same instance replaced this one.
    pub replaced: CancellationToken,
    /// Sockets this listener opened in advance, when it asked for them (our extension);
    /// `None` for standard clients and for listeners on other nodes.
    pub standby: Option<Arc<crate::relay::pool::Pool>>,
    /// Whether it reads a repeated header as an array (our listener says so on `listen`);
    /// standard clients get repeated request headers folded into one value.
    pub header_arrays: bool,
}

/// Why a listener was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The hybrid connection already has its maximum number of listeners.
    QuotaExceeded,
    /// Its instance replaced a channel of the same instance [`FLAP_REPLACEMENTS`] times within
    /// [`FLAP_WINDOW`]: two live agents share one instance id (a cloned machine, a copied
    /// state directory) and would replace each other for ever. The channel already there
    /// stays.
    InstanceFlapping,
}

/// Replacements of one instance within [`FLAP_WINDOW`] that mark it as shared by two agents.
pub const FLAP_REPLACEMENTS: usize = 4;
/// The window in which [`FLAP_REPLACEMENTS`] replacements mean flapping, not restarts.
pub const FLAP_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Listener presence and routing.
pub trait Presence: Send + Sync + 'static {
    /// Adds a listener unless its hybrid connection already has `max` listeners. A listener
    /// with the same `instance` as one already there replaces it (whose `replaced` token is
    /// cancelled): a restarted agent takes over from its own stale channel at once.
    fn register(&self, handle: ListenerHandle, max: usize) -> Result<(), Refused>;
    /// Removes a listener.
    fn unregister(&self, hc: &str, id: u64);
    /// Picks the listener for the next sender, spreading load and preferring one whose
    /// control queue has room; `None` only when none is connected.
    fn pick(&self, hc: &str) -> Option<ListenerHandle>;
    /// How many listeners a hybrid connection has.
    fn count(&self, hc: &str) -> usize;
    /// Every connected listener (for shutdown).
    fn all(&self) -> Vec<ListenerHandle>;
    /// Listener counts per hybrid connection (for metrics).
    fn counts(&self) -> Vec<(String, usize)>;
}

#[derive(Debug, Default)]
struct Slot {
    listeners: Vec<ListenerHandle>,
    next: usize,
    /// Recent replacements per instance, newest last, at most [`FLAP_REPLACEMENTS`] each.
    replacements: Vec<(Arc<str>, std::collections::VecDeque<std::time::Instant>)>,
}

impl Slot {
    /// Records a replacement of `instance`; whether it is one too many for [`FLAP_WINDOW`].
    fn flapping(&mut self, instance: &Arc<str>) -> bool {
        let now = std::time::Instant::now();
        self.replacements.retain(|(_, times)| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < FLAP_WINDOW)
        });
        let times = match self.replacements.iter_mut().find(|(i, _)| i == instance) {
            Some((_, times)) => times,
            None => {
                self.replacements
                    .push((Arc::clone(instance), Default::default()));
                &mut self.replacements.last_mut().expect("just pushed").1
            }
        };
        times.retain(|t| now.duration_since(*t) < FLAP_WINDOW);
        if times.len() + 1 >= FLAP_REPLACEMENTS {
            return true;
        }
        times.push_back(now);
        false
    }
}

/// In-memory presence for a single broker, with round-robin spreading.
#[derive(Debug, Default)]
pub struct LocalPresence {
    slots: DashMap<String, Slot>,
}

impl Presence for LocalPresence {
    fn register(&self, handle: ListenerHandle, max: usize) -> Result<(), Refused> {
        let mut slot = self
            .slots
            .entry(handle.hc.to_ascii_lowercase())
            .or_default();
        if let Some(instance) = &handle.instance {
            let replaces = slot
                .listeners
                .iter()
                .any(|l| l.instance.as_ref() == Some(instance));
            if replaces && slot.flapping(instance) {
                return Err(Refused::InstanceFlapping);
            }
            slot.listeners.retain(|l| {
                let stale = l.instance.as_ref() == Some(instance);
                if stale {
                    l.replaced.cancel();
                }
                !stale
            });
        }
        if slot.listeners.len() >= max {
            return Err(Refused::QuotaExceeded);
        }
        slot.listeners.push(handle);
        Ok(())
    }

    fn unregister(&self, hc: &str, id: u64) {
        let key = hc.to_ascii_lowercase();
        let empty = self.slots.get_mut(&key).is_some_and(|mut slot| {
            slot.listeners.retain(|l| l.id != id);
            slot.listeners.is_empty()
        });
        if empty {
            self.slots
                .remove_if(&key, |_, slot| slot.listeners.is_empty());
        }
    }

    fn pick(&self, hc: &str) -> Option<ListenerHandle> {
        let mut slot = self.slots.get_mut(&hc.to_ascii_lowercase())?;
        let n = slot.listeners.len();
        // Prefer a listener with room in its queue; when every open one is full, still hand
        // one out: the caller waits, bounded, for room (a burst is not "no listener").
        let mut full = None;
        for _ in 0..n {
            let i = slot.next % n;
            slot.next = slot.next.wrapping_add(1);
            let l = &slot.listeners[i];
            if l.close.is_cancelled() || l.tx.is_closed() {
                continue;
            }
            if l.tx.capacity() > 0 {
                return Some(l.clone());
            }
            full.get_or_insert_with(|| l.clone());
        }
        full
    }

    fn count(&self, hc: &str) -> usize {
        self.slots
            .get(&hc.to_ascii_lowercase())
            .map_or(0, |s| s.listeners.len())
    }

    fn all(&self) -> Vec<ListenerHandle> {
        self.slots
            .iter()
            .flat_map(|s| s.listeners.clone())
            .collect()
    }

    fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = self
            .slots
            .iter()
            .filter_map(|s| Some((s.listeners.first()?.hc.to_string(), s.listeners.len())))
            .collect();
        counts.sort();
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64) -> ListenerHandle {
        let (tx, rx) = mpsc::channel(1);
        // An open control channel: its receiver lives as long as the test.
        std::mem::forget(rx);
        ListenerHandle {
            id,
            hc: "Orders".into(),
            base_url: "ws://x".into(),
            tx,
            close: CancellationToken::new(),
            revoked: None,
            instance: None,
            replaced: CancellationToken::new(),
            standby: None,
            header_arrays: false,
        }
    }

    #[test]
    fn quota_round_robin_and_removal() {
        let p = LocalPresence::default();
        for id in 0..3 {
            p.register(handle(id), 3).unwrap();
        }
        assert_eq!(p.register(handle(9), 3), Err(Refused::QuotaExceeded));
        let picks: Vec<u64> = (0..6).map(|_| p.pick("orders").unwrap().id).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for id in 0..3 {
            p.unregister("ORDERS", id);
        }
        assert_eq!(p.count("orders"), 0);
        assert!(p.pick("orders").is_none());
    }

    #[test]
    fn a_full_queue_is_still_a_listener() {
        let p = LocalPresence::default();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        std::mem::forget(rx);
        let full = ListenerHandle { tx, ..handle(1) };
        full.tx.try_send(Outbound::Text("queued".into())).unwrap();
        p.register(full, 2).unwrap();
        assert_eq!(p.pick("orders").map(|l| l.id), Some(1), "busy, not absent");
        let roomy = handle(2);
        p.register(roomy, 2).unwrap();
        for _ in 0..4 {
            assert_eq!(p.pick("orders").map(|l| l.id), Some(2), "room wins");
        }
    }

    #[test]
    fn the_same_instance_replaces_its_stale_channel() {
        let p = LocalPresence::default();
        let with = |id, instance: &str| ListenerHandle {
            instance: Some(instance.into()),
            ..handle(id)
        };
        let old = with(1, "sas:root|agent-a");
        p.register(old.clone(), 2).unwrap();
        p.register(with(2, "sas:other|agent-a"), 2).unwrap();
        // Full, but the newcomer replaces its own instance's channel.
        p.register(with(3, "sas:root|agent-a"), 2).unwrap();
        assert!(old.replaced.is_cancelled());
        let mut ids: Vec<u64> = (0..2).map(|_| p.pick("orders").unwrap().id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3], "another credential's channel is left alone");
        assert_eq!(
            p.register(with(4, "sas:root|agent-b"), 2),
            Err(Refused::QuotaExceeded)
        );
    }

    #[test]
    fn two_live_agents_sharing_an_instance_stop_replacing_each_other() {
        let p = LocalPresence::default();
        let with = |id| ListenerHandle {
            instance: Some("sas:root|cloned~1234abcd/orders".into()),
            ..handle(id)
        };
        p.register(with(1), 5).unwrap();
        // A restart or two replaces the stale channel at once ...
        for id in 2..=FLAP_REPLACEMENTS as u64 {
            p.register(with(id), 5).unwrap();
        }
        // ... but the next replacement within the window is the loop of two live agents.
        assert_eq!(p.register(with(99), 5), Err(Refused::InstanceFlapping));
        assert_eq!(p.count("orders"), 1);
        assert_eq!(
            p.pick("orders").unwrap().id,
            FLAP_REPLACEMENTS as u64,
            "the one there stays"
        );
    }
}
