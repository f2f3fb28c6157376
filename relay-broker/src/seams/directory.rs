//! The listener directory: which listeners serve which hybrid connection, as serialisable
//! references (node, channel, instance). The node-local handles (the control channel's
//! queue, its close token, its standby pool) stay in the node that holds the channel; a
//! cluster keeps this directory in NATS and the rest of the data plane does not change.

use std::sync::Arc;

use dashmap::DashMap;

use super::node::ListenerKey;

/// A connected listener, as every node may see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRef {
    /// Its control channel.
    pub key: ListenerKey,
    /// Its hybrid connection, as registered.
    pub hc: Arc<str>,
    /// Base of rendezvous addresses as the listener reached its node (`wss://host:port`).
    pub base_url: Arc<str>,
    /// The agent instance behind the channel, with its credential
    /// (`<principal>|<relay-listener-instance>`): a newer channel with the same value
    /// replaces this one.
    pub instance: Option<Arc<str>>,
    /// Whether it reads a repeated header as an array (our listener says so on `listen`);
    /// standard clients get repeated request headers folded into one value.
    pub header_arrays: bool,
    /// For certificate listeners, the registered listener id: a node relaying for it holds
    /// its session there, so a revocation cuts those relays too.
    pub cert_listener: Option<Arc<str>>,
    /// The id of its standby pool, when it keeps standby sockets: a node where some of them
    /// are parked finds them by it.
    pub standby: Option<Arc<str>>,
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

/// Whether the node picking a listener can hand it a sender now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usable {
    /// Room in its queue (or on another node, whose queue is that node's to judge).
    Ready,
    /// Open, but its queue is full: a sender may wait for room, bounded.
    Busy,
    /// Its channel is closing: skip it.
    Gone,
}

/// Listener registration and routing.
pub trait Directory: Send + Sync + 'static {
    /// Adds a listener unless its hybrid connection already has `max` listeners. A listener
    /// with the same `instance` as one already there replaces it: the keys returned are the
    /// stale channels, which their nodes close (a restarted agent takes over at once).
    fn register(&self, listener: ListenerRef, max: usize) -> Result<Vec<ListenerKey>, Refused>;
    /// Removes a listener.
    fn unregister(&self, hc: &str, key: &ListenerKey);
    /// Picks the listener for the next sender, spreading load round robin and preferring one
    /// that `usable` says is ready; `None` only when none is open.
    fn pick(&self, hc: &str, usable: &dyn Fn(&ListenerRef) -> Usable) -> Option<ListenerRef>;
    /// Every listener of a hybrid connection, as this node knows them.
    fn listeners(&self, hc: &str) -> Vec<ListenerRef>;
    /// How many listeners a hybrid connection has.
    fn count(&self, hc: &str) -> usize;
    /// Listener counts per hybrid connection (for metrics).
    fn counts(&self) -> Vec<(String, usize)>;
    /// Until when senders on `hc` wait for a listener rather than hear that none is
    /// connected: its listeners are moving off a node that is shutting down.
    fn moving(&self, hc: &str) -> Option<std::time::Instant> {
        let _ = hc;
        None
    }
}

/// Round robin from `start`: the first listener `usable` calls ready, else the first busy
/// one (the caller waits, bounded, for room: a burst is not "no listener"); with how many
/// were looked at.
pub(crate) fn pick_from(
    listeners: &[ListenerRef],
    start: usize,
    usable: &dyn Fn(&ListenerRef) -> Usable,
) -> (Option<ListenerRef>, usize) {
    let n = listeners.len();
    let mut busy = None;
    for i in 0..n {
        let l = &listeners[start.wrapping_add(i) % n];
        match usable(l) {
            Usable::Ready => return (Some(l.clone()), i + 1),
            Usable::Busy => {
                busy.get_or_insert_with(|| l.clone());
            }
            Usable::Gone => {}
        }
    }
    (busy, n)
}

#[derive(Debug, Default)]
struct Slot {
    listeners: Vec<ListenerRef>,
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

/// The directory in memory: one broker's, or several brokers' in one process (tests).
#[derive(Debug, Default)]
pub struct LocalDirectory {
    slots: DashMap<String, Slot>,
}

impl LocalDirectory {
    /// Every listener.
    pub(crate) fn all(&self) -> Vec<ListenerRef> {
        self.slots
            .iter()
            .flat_map(|s| s.listeners.clone())
            .collect()
    }
}

impl Directory for LocalDirectory {
    fn register(&self, listener: ListenerRef, max: usize) -> Result<Vec<ListenerKey>, Refused> {
        let mut slot = self
            .slots
            .entry(listener.hc.to_ascii_lowercase())
            .or_default();
        let mut replaced = Vec::new();
        if let Some(instance) = &listener.instance {
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
                    replaced.push(l.key.clone());
                }
                !stale
            });
        }
        if slot.listeners.len() >= max {
            return Err(Refused::QuotaExceeded);
        }
        slot.listeners.push(listener);
        Ok(replaced)
    }

    fn unregister(&self, hc: &str, key: &ListenerKey) {
        let hc = hc.to_ascii_lowercase();
        let empty = self.slots.get_mut(&hc).is_some_and(|mut slot| {
            slot.listeners.retain(|l| &l.key != key);
            slot.listeners.is_empty()
        });
        if empty {
            self.slots
                .remove_if(&hc, |_, slot| slot.listeners.is_empty());
        }
    }

    fn pick(&self, hc: &str, usable: &dyn Fn(&ListenerRef) -> Usable) -> Option<ListenerRef> {
        let mut slot = self.slots.get_mut(&hc.to_ascii_lowercase())?;
        let start = slot.next;
        let (picked, tried) = pick_from(&slot.listeners, start, usable);
        slot.next = start.wrapping_add(tried);
        picked
    }

    fn listeners(&self, hc: &str) -> Vec<ListenerRef> {
        self.slots
            .get(&hc.to_ascii_lowercase())
            .map_or_else(Vec::new, |s| s.listeners.clone())
    }

    fn count(&self, hc: &str) -> usize {
        self.slots
            .get(&hc.to_ascii_lowercase())
            .map_or(0, |s| s.listeners.len())
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
    use crate::seams::node::NodeId;

    fn at(node: &str, channel: u64) -> ListenerRef {
        ListenerRef {
            key: ListenerKey {
                node: NodeId::new(node).unwrap(),
                channel,
            },
            hc: "Orders".into(),
            base_url: "ws://x".into(),
            instance: None,
            header_arrays: false,
            cert_listener: None,
            standby: None,
        }
    }

    fn listener(channel: u64) -> ListenerRef {
        at("a", channel)
    }

    fn ready(_: &ListenerRef) -> Usable {
        Usable::Ready
    }

    #[test]
    fn quota_round_robin_and_removal() {
        let d = LocalDirectory::default();
        for id in 0..3 {
            d.register(listener(id), 3).unwrap();
        }
        assert_eq!(d.register(listener(9), 3), Err(Refused::QuotaExceeded));
        let picks: Vec<u64> = (0..6)
            .map(|_| d.pick("orders", &ready).unwrap().key.channel)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        for id in 0..3 {
            d.unregister("ORDERS", &listener(id).key);
        }
        assert_eq!(d.count("orders"), 0);
        assert!(d.pick("orders", &ready).is_none());
    }

    #[test]
    fn a_busy_listener_is_still_a_listener_and_a_closing_one_is_not() {
        let d = LocalDirectory::default();
        d.register(listener(1), 3).unwrap();
        let state = |l: &ListenerRef| match l.key.channel {
            1 => Usable::Busy,
            2 => Usable::Ready,
            _ => Usable::Gone,
        };
        let pick = |d: &LocalDirectory| d.pick("orders", &state).map(|l| l.key.channel);
        assert_eq!(pick(&d), Some(1), "busy, not absent");
        d.register(listener(2), 3).unwrap();
        d.register(listener(3), 3).unwrap();
        for _ in 0..4 {
            assert_eq!(pick(&d), Some(2), "room wins, the closing one never");
        }
    }

    #[test]
    fn the_same_instance_replaces_its_stale_channel_on_any_node() {
        let d = LocalDirectory::default();
        let with = |node, id, instance: &str| ListenerRef {
            instance: Some(instance.into()),
            ..at(node, id)
        };
        d.register(with("a", 1, "sas:root|agent-a"), 2).unwrap();
        d.register(with("a", 2, "sas:other|agent-a"), 2).unwrap();
        // Full, but the newcomer (on another node) replaces its own instance's channel.
        let replaced = d.register(with("b", 3, "sas:root|agent-a"), 2).unwrap();
        assert_eq!(replaced, [at("a", 1).key]);
        let mut ids: Vec<u64> = (0..2)
            .map(|_| d.pick("orders", &ready).unwrap().key.channel)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3], "another credential's channel is left alone");
        assert_eq!(
            d.register(with("a", 4, "sas:root|agent-b"), 2),
            Err(Refused::QuotaExceeded)
        );
    }

    #[test]
    fn two_live_agents_sharing_an_instance_stop_replacing_each_other() {
        let d = LocalDirectory::default();
        let with = |id| ListenerRef {
            instance: Some("sas:root|cloned~1234abcd/orders".into()),
            ..listener(id)
        };
        d.register(with(1), 5).unwrap();
        // A restart or two replaces the stale channel at once ...
        for id in 2..=FLAP_REPLACEMENTS as u64 {
            d.register(with(id), 5).unwrap();
        }
        // ... but the next replacement within the window is the loop of two live agents.
        assert_eq!(d.register(with(99), 5), Err(Refused::InstanceFlapping));
        assert_eq!(d.count("orders"), 1);
        assert_eq!(
            d.pick("orders", &ready).unwrap().key.channel,
            FLAP_REPLACEMENTS as u64,
            "the one there stays"
        );
    }
}
