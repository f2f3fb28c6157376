//! The cluster's listener directory: this node's own listeners, authoritative, and every
//! other node's as its heartbeats last told them. A node that misses [`DEAD_AFTER`] of
//! beats is dropped, and with it its listeners.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::wire::{Beat, Snapshot, WireListener};
use crate::seams::directory::{Directory, ListenerRef, LocalDirectory, Refused, Usable, pick_from};
use crate::seams::node::{ListenerKey, NodeId};

/// How often a node beats.
pub const BEAT: Duration = Duration::from_millis(250);
/// Silence after which a node counts as gone: three missed beats.
pub const DEAD_AFTER: Duration = Duration::from_millis(750);
/// How long senders wait for the listeners of a node that left, or fell silent, to come back
/// elsewhere (ours reconnect within 100 ms of a going-away close and ping often enough to
/// see a dead node within about a second, and then connect and register).
pub(super) const HANDOVER: Duration = Duration::from_secs(2);

/// Until when senders wait for the listeners of a node last heard at `seen`.
fn handover_end(seen: Instant) -> Instant {
    seen + DEAD_AFTER + HANDOVER
}

/// Another node, as its beats describe it.
#[derive(Debug)]
struct Remote {
    epoch: u64,
    version: u64,
    seen: Instant,
    peer: SocketAddr,
    listeners: Vec<ListenerRef>,
}

/// The directory of one node of a cluster.
#[derive(Debug)]
pub struct ClusterDirectory {
    me: NodeId,
    local: LocalDirectory,
    version: AtomicU64,
    changed: tokio::sync::Notify,
    remote: RwLock<HashMap<NodeId, Remote>>,
    next: DashMap<String, AtomicUsize>,
    /// Hybrid connections (lowercase) whose listeners are moving off a node that left, and
    /// until when their senders wait for them.
    moving: DashMap<String, Instant>,
}

impl ClusterDirectory {
    pub(super) fn new(me: NodeId) -> Self {
        Self {
            me,
            local: LocalDirectory::default(),
            version: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            remote: RwLock::default(),
            next: DashMap::new(),
            moving: DashMap::new(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Remote>> {
        // Entries are replaced whole; a panic elsewhere cannot leave one half-written.
        self.remote.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Remote>> {
        self.remote.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Live listeners of `hc` on other nodes.
    fn remote_listeners(&self, hc: &str) -> Vec<ListenerRef> {
        let now = Instant::now();
        self.read()
            .values()
            .filter(|r| now.duration_since(r.seen) < DEAD_AFTER)
            .flat_map(|r| r.listeners.iter().filter(|l| l.hc.eq_ignore_ascii_case(hc)))
            .cloned()
            .collect()
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// Resolves when this node's set changed since the last beat.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// This node's set and its version (read first: a change while listing is carried by
    /// the next beat).
    pub(super) fn own(&self) -> (u64, Vec<WireListener>) {
        let version = self.version.load(Ordering::Acquire);
        let listeners = self.local.all().iter().map(WireListener::from).collect();
        (version, listeners)
    }

    /// Takes in another node's beat; whether its set must be asked for (the beat named a
    /// version this node has not seen and did not carry the set).
    pub(super) fn heard(&self, beat: Beat) -> bool {
        let Ok(node) = NodeId::new(&beat.node) else {
            return false;
        };
        if node == self.me {
            return false;
        }
        let mut remote = self.write();
        let entry = remote.entry(node.clone()).or_insert_with(|| {
            tracing::info!(%node, "node joined");
            Remote {
                epoch: beat.epoch,
                version: u64::MAX,
                seen: Instant::now(),
                peer: beat.peer,
                listeners: Vec::new(),
            }
        });
        if entry.epoch != beat.epoch {
            tracing::info!(%node, "node restarted");
            entry.epoch = beat.epoch;
            entry.version = u64::MAX;
            entry.listeners.clear();
        }
        entry.seen = Instant::now();
        if beat.leaving {
            // Silent from now on: out of every view at once, and out at the next sweep,
            // which reports its listeners gone.
            tracing::info!(%node, "node leaving");
            entry.seen = entry.seen.checked_sub(DEAD_AFTER).unwrap_or(entry.seen);
            // Its listeners were told to go (1001) and come back on other nodes.
            let until = Instant::now() + HANDOVER;
            for l in &entry.listeners {
                self.moving.insert(l.hc.to_ascii_lowercase(), until);
            }
            return false;
        }
        entry.peer = beat.peer;
        match beat.listeners {
            Some(listeners) => {
                entry.version = beat.version;
                entry.listeners = refs(listeners, &node);
                false
            }
            None => entry.version != beat.version,
        }
    }

    /// Takes in a set asked for after [`heard`](Self::heard); older than what is held, it
    /// is dropped.
    pub(super) fn snapshot(&self, node: &NodeId, snapshot: Snapshot) {
        let mut remote = self.write();
        if let Some(entry) = remote.get_mut(node)
            && entry.epoch == snapshot.epoch
            && (entry.version == u64::MAX || snapshot.version >= entry.version)
        {
            entry.version = snapshot.version;
            entry.listeners = refs(snapshot.listeners, node);
        }
    }

    /// Drops nodes silent for [`DEAD_AFTER`]; the keys of the listeners they held. Their
    /// hybrid connections are moving until [`HANDOVER`] after the node fell silent: a killed
    /// or hung node's listeners reconnect through the load balancer, and a sender that comes
    /// meanwhile waits for them rather than hearing a 404 that stops being true in a second.
    pub(super) fn sweep(&self) -> Vec<ListenerKey> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.write().retain(|node, r| {
            let live = now.duration_since(r.seen) < DEAD_AFTER;
            if !live {
                tracing::warn!(%node, listeners = r.listeners.len(), "node silent for three heartbeats: dropped");
                gone.extend(r.listeners.iter().map(|l| l.key.clone()));
                let until = handover_end(r.seen);
                for l in &r.listeners {
                    let hc = l.hc.to_ascii_lowercase();
                    let mut at = self.moving.entry(hc).or_insert(until);
                    *at = (*at).max(until);
                }
            }
            live
        });
        gone
    }

    /// Where node `node`'s peer port is, while it is live.
    pub(super) fn peer_of(&self, node: &NodeId) -> Option<SocketAddr> {
        let now = Instant::now();
        self.read()
            .get(node)
            .filter(|r| now.duration_since(r.seen) < DEAD_AFTER)
            .map(|r| r.peer)
    }

    /// The live nodes other than this one.
    pub(super) fn nodes(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let mut nodes: Vec<NodeId> = self
            .read()
            .iter()
            .filter(|(_, r)| now.duration_since(r.seen) < DEAD_AFTER)
            .map(|(n, _)| n.clone())
            .collect();
        nodes.sort();
        nodes
    }
}

/// Only the listeners a node may speak for: its own.
fn refs(listeners: Vec<WireListener>, node: &NodeId) -> Vec<ListenerRef> {
    listeners
        .into_iter()
        .filter_map(WireListener::into_ref)
        .filter(|l| &l.key.node == node)
        .collect()
}

impl Directory for ClusterDirectory {
    /// The quota counts every node's listeners as this node last heard them: two nodes
    /// registering the last place within one heartbeat may both succeed (at most one over
    /// per node), which the next registration sees.
    fn register(&self, listener: ListenerRef, max: usize) -> Result<Vec<ListenerKey>, Refused> {
        let remote = self.remote_listeners(&listener.hc);
        let stale: Vec<ListenerKey> = match &listener.instance {
            Some(instance) => remote
                .iter()
                .filter(|l| l.instance.as_ref() == Some(instance))
                .map(|l| l.key.clone())
                .collect(),
            None => Vec::new(),
        };
        let others = remote.len() - stale.len();
        if others >= max {
            return Err(Refused::QuotaExceeded);
        }
        let mut replaced = self.local.register(listener, max - others)?;
        if !stale.is_empty() {
            // Until their nodes beat again, the stale ones are not picked here.
            let mut view = self.write();
            for r in view.values_mut() {
                r.listeners.retain(|l| !stale.contains(&l.key));
            }
        }
        replaced.extend(stale);
        self.bump();
        Ok(replaced)
    }

    fn unregister(&self, hc: &str, key: &ListenerKey) {
        self.local.unregister(hc, key);
        self.bump();
    }

    fn pick(&self, hc: &str, usable: &dyn Fn(&ListenerRef) -> Usable) -> Option<ListenerRef> {
        let mut all = self.listeners(hc);
        if all.is_empty() {
            return None;
        }
        all.sort_by(|a, b| (&a.key.node, a.key.channel).cmp(&(&b.key.node, b.key.channel)));
        let start = self
            .next
            .entry(hc.to_ascii_lowercase())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        pick_from(&all, start, usable).0
    }

    fn listeners(&self, hc: &str) -> Vec<ListenerRef> {
        let mut all = self.local.listeners(hc);
        all.extend(self.remote_listeners(hc));
        all
    }

    fn count(&self, hc: &str) -> usize {
        self.local.count(hc) + self.remote_listeners(hc).len()
    }

    fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, (String, usize)> = HashMap::new();
        let now = Instant::now();
        let remote = self.read();
        let live = remote
            .values()
            .filter(|r| now.duration_since(r.seen) < DEAD_AFTER)
            .flat_map(|r| r.listeners.iter());
        for l in self.local.all().iter().chain(live) {
            counts
                .entry(l.hc.to_ascii_lowercase())
                .or_insert_with(|| (l.hc.to_string(), 0))
                .1 += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_values().collect();
        counts.sort();
        counts
    }

    fn moving(&self, hc: &str) -> Option<Instant> {
        let now = Instant::now();
        // A node silent for DEAD_AFTER is out of every view before the next sweep drops it
        // and records its hybrid connections as moving; until then, ask it directly.
        let silent = self
            .read()
            .values()
            .filter(|r| now.duration_since(r.seen) >= DEAD_AFTER)
            .filter(|r| r.listeners.iter().any(|l| l.hc.eq_ignore_ascii_case(hc)))
            .map(|r| handover_end(r.seen))
            .max();
        let key = hc.to_ascii_lowercase();
        let recorded = self.moving.get(&key).map(|at| *at);
        if recorded.is_some_and(|at| at <= now) {
            self.moving.remove_if(&key, |_, at| *at <= now);
        }
        recorded.max(silent).filter(|at| *at > now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn listener(node: &str, channel: u64, instance: Option<&str>) -> ListenerRef {
        ListenerRef {
            key: ListenerKey {
                node: NodeId::new(node).unwrap(),
                channel,
            },
            hc: "Orders".into(),
            base_url: "ws://x".into(),
            instance: instance.map(Arc::from),
            header_arrays: false,
            cert_listener: None,
            standby: None,
        }
    }

    fn beat(node: &str, epoch: u64, version: u64, listeners: Option<Vec<ListenerRef>>) -> Beat {
        Beat {
            node: node.into(),
            epoch,
            version,
            peer: "127.0.0.1:1".parse().unwrap(),
            listeners: listeners.map(|ls| ls.iter().map(WireListener::from).collect()),
            leaving: false,
        }
    }

    #[test]
    fn other_nodes_listeners_count_pick_and_replace_across_nodes() {
        let d = ClusterDirectory::new(NodeId::new("a").unwrap());
        d.register(listener("a", 1, None), 3).unwrap();
        let theirs = vec![
            listener("b", 1, Some("sas:k|agent")),
            listener("b", 2, None),
        ];
        assert!(!d.heard(beat("b", 9, 1, Some(theirs))));
        assert_eq!(d.count("orders"), 3);
        assert_eq!(d.counts(), [("Orders".to_owned(), 3)]);
        assert_eq!(
            d.register(listener("a", 2, None), 3),
            Err(Refused::QuotaExceeded),
            "the quota is the cluster's"
        );
        let mut picked: Vec<String> = (0..3)
            .map(|_| {
                d.pick("orders", &|_| Usable::Ready)
                    .unwrap()
                    .key
                    .to_string()
            })
            .collect();
        picked.sort();
        assert_eq!(picked, ["a.1", "b.1", "b.2"], "round robin over every node");
        // The agent restarted and reached node a: its stale channel on b is replaced.
        let replaced = d
            .register(listener("a", 3, Some("sas:k|agent")), 3)
            .unwrap();
        assert_eq!(replaced, [listener("b", 1, None).key]);
        assert_eq!(d.count("orders"), 3);
    }

    #[test]
    fn a_beat_without_the_set_asks_for_it_and_silence_drops_the_node() {
        let d = ClusterDirectory::new(NodeId::new("a").unwrap());
        assert!(d.heard(beat("b", 1, 4, None)), "unknown version: ask");
        let b = NodeId::new("b").unwrap();
        d.snapshot(
            &b,
            Snapshot {
                epoch: 1,
                version: 4,
                listeners: vec![WireListener::from(&listener("b", 1, None))],
            },
        );
        assert!(
            !d.heard(beat("b", 1, 4, None)),
            "known version: nothing to ask"
        );
        assert_eq!(d.count("orders"), 1);
        // A set claiming another node's listener is not believed.
        d.heard(beat("b", 1, 5, Some(vec![listener("c", 1, None)])));
        assert_eq!(d.count("orders"), 0);
        // A restart (new epoch) forgets the old set until the new one arrives.
        d.heard(beat("b", 1, 6, Some(vec![listener("b", 1, None)])));
        assert!(d.heard(beat("b", 2, 0, None)));
        assert_eq!(d.count("orders"), 0);
        assert_eq!(d.peer_of(&b), Some("127.0.0.1:1".parse().unwrap()));
        d.write().get_mut(&b).unwrap().seen -= DEAD_AFTER;
        assert_eq!(d.peer_of(&b), None);
        d.heard(beat("b", 2, 1, Some(vec![listener("b", 7, None)])));
        d.write().get_mut(&b).unwrap().seen -= DEAD_AFTER;
        assert_eq!(d.sweep(), [listener("b", 7, None).key]);
        assert!(d.nodes().is_empty());
    }

    #[test]
    fn a_leaving_node_is_out_of_every_view_at_once() {
        let d = ClusterDirectory::new(NodeId::new("a").unwrap());
        d.heard(beat("b", 1, 1, Some(vec![listener("b", 1, None)])));
        assert_eq!(d.count("orders"), 1);
        let mut last = beat("b", 1, u64::MAX, Some(Vec::new()));
        last.leaving = true;
        assert!(!d.heard(last));
        assert_eq!(d.count("orders"), 0);
        assert!(d.pick("orders", &|_| Usable::Ready).is_none());
        assert!(
            d.moving("ORDERS").is_some(),
            "its senders wait for the listener to move"
        );
        assert!(d.moving("other").is_none());
        assert_eq!(d.peer_of(&NodeId::new("b").unwrap()), None);
        assert_eq!(
            d.sweep(),
            [listener("b", 1, None).key],
            "gone, for the inbox"
        );
    }

    #[test]
    fn a_silent_nodes_senders_wait_for_its_listeners_until_the_handover_ends() {
        let d = ClusterDirectory::new(NodeId::new("a").unwrap());
        let b = NodeId::new("b").unwrap();
        d.heard(beat("b", 1, 1, Some(vec![listener("b", 1, None)])));
        assert!(d.moving("orders").is_none(), "live: nothing moves");
        // Silent for three beats: out of the views, and moving before any sweep.
        d.write().get_mut(&b).unwrap().seen -= DEAD_AFTER;
        assert_eq!(d.count("orders"), 0);
        let until = d.moving("ORDERS").expect("moving once silent");
        assert!(until > Instant::now() + HANDOVER - DEAD_AFTER);
        // The sweep drops the node and keeps the handover.
        assert_eq!(d.sweep(), [listener("b", 1, None).key]);
        assert_eq!(d.moving("orders"), Some(until));
        assert!(d.moving("other").is_none());
        // Silent for longer than the handover: its senders hear the usual 404 again.
        d.heard(beat("b", 1, 2, Some(vec![listener("b", 2, None)])));
        d.write().get_mut(&b).unwrap().seen -= DEAD_AFTER + HANDOVER;
        d.moving.clear();
        assert!(d.moving("orders").is_none());
        d.sweep();
        assert!(
            d.moving("orders").is_none(),
            "an old silence is no handover"
        );
    }
}
