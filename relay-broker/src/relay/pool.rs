//! The standby pools: each control channel that asked for standby sockets owns a [`Pool`]
//! of parked sockets, found by its key. The parked sockets themselves are tasks in
//! `standby`; this is what the control channel, presence and `connect` share with them.
//!
//! In a cluster the load balancer spreads a listener's standbys over the nodes. A key is
//! `<node>.<pool>.<max>.<mac>`, the mac an HMAC under the cluster secret over the rest and
//! the hybrid connection, so every node can check it. A node that is not the channel's
//! *adopts* the pool: it parks the socket itself, in a pool of its own with the same id, and
//! its senders use it without any other node on the way. A single node signs with a
//! random secret of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use ring::hmac;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::relay::rendezvous::Arrival;
use crate::seams::node::NodeId;

/// Hex digits of the HMAC-SHA256 in a key.
const MAC_HEX: usize = 64;

/// The pools of every control channel with standbys parked here, by pool id: this node's
/// channels', and those adopted for channels on other nodes.
#[derive(Debug)]
pub(crate) struct Pools {
    by_id: Arc<DashMap<String, Arc<Pool>>>,
    signer: hmac::Key,
}

/// A key that checked out: which pool of which node's channel, and its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StandbyKey {
    pub(crate) node: NodeId,
    pub(crate) pool: String,
    pub(crate) max: usize,
    key: String,
}

impl Pools {
    /// Pools whose keys are signed with `secret` (the cluster's, so that every node can
    /// check them).
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            by_id: Arc::default(),
            signer: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// What a key's mac signs: every other part of it, and the hybrid connection.
    fn signed(node: &NodeId, pool: &str, max: usize, hc: &str) -> String {
        format!(
            "relay standby key\n{node}\n{pool}\n{max}\n{}",
            hc.to_ascii_lowercase()
        )
    }

    /// A new pool of up to `max` sockets for a control channel of node `node`. The key
    /// starts with the node, as capabilities do.
    pub(crate) fn open(
        &self,
        node: &NodeId,
        hc: &str,
        max: usize,
        closed: CancellationToken,
    ) -> Arc<Pool> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mac = hmac::sign(&self.signer, Self::signed(node, &id, max, hc).as_bytes());
        let key = format!("{node}.{id}.{max}.{}", hex(mac.as_ref()));
        let pool = Arc::new(Pool::new(key, id.clone(), hc, max, closed));
        self.by_id.insert(id, Arc::clone(&pool));
        pool
    }

    /// Checks a key presented for hybrid connection `hc`: made by a node of this cluster
    /// for a channel of that hybrid connection. Says nothing of whether the channel lives.
    pub(crate) fn verify(&self, key: &str, hc: &str) -> Option<StandbyKey> {
        let mut parts = key.split('.');
        let (node, pool, max, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || mac.len() != MAC_HEX {
            return None;
        }
        let node = NodeId::new(node).ok()?;
        let max: usize = max.parse().ok()?;
        if max == 0 || max > relay_core::standby::MAX_STANDBY {
            return None;
        }
        let signed = Self::signed(&node, pool, max, hc);
        hmac::verify(&self.signer, signed.as_bytes(), &unhex(mac)?).ok()?;
        Some(StandbyKey {
            node,
            pool: pool.to_owned(),
            max,
            key: key.to_owned(),
        })
    }

    /// The pool of a key that checked out, if it is parked here.
    pub(crate) fn get(&self, key: &StandbyKey) -> Option<Arc<Pool>> {
        self.by_id
            .get(&key.pool)
            .map(|p| Arc::clone(&p))
            .filter(|p| p.key == key.key)
    }

    /// The pool with id `pool`, if this node has one (its own channel's or adopted).
    pub(crate) fn by_id(&self, pool: &str) -> Option<Arc<Pool>> {
        self.by_id.get(pool).map(|p| Arc::clone(&p))
    }

    /// A place for one more socket in this node's pool for a channel on another node,
    /// made on its first socket. `closed` is what closes the pool's sockets (shutdown).
    /// The pool goes when its last socket does: made and reserved under one lock, so that
    /// a socket never parks in a pool that is no longer found.
    pub(crate) fn adopt(
        &self,
        key: &StandbyKey,
        hc: &str,
        closed: impl FnOnce() -> CancellationToken,
    ) -> Option<Place> {
        let place = {
            let entry = self.by_id.entry(key.pool.clone()).or_insert_with(|| {
                let mut pool = Pool::new(key.key.clone(), key.pool.clone(), hc, key.max, closed());
                pool.adopted = Some(Arc::downgrade(&self.by_id));
                Arc::new(pool)
            });
            if entry.key != key.key {
                return None;
            }
            entry.reserve()
        };
        if place.is_none() {
            // Made for nothing (shutting down): not left behind without sockets.
            self.by_id.remove_if(&key.pool, |_, p| {
                p.adopted.is_some() && p.open.load(Ordering::Acquire) == 0
            });
        }
        place
    }

    /// Sockets parked over all pools (for metrics).
    pub(crate) fn parked(&self) -> usize {
        self.by_id.iter().map(|p| p.lock().len()).sum()
    }

    /// Closes a pool with its control channel: its parked sockets are closed.
    pub(crate) fn close(&self, pool: &Pool) {
        self.by_id.remove(&pool.id);
        pool.closed.cancel();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A sender's `accept` for a parked socket, and where its outcome goes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) accept: String,
    /// Hand the socket over once the `accept` is written (early pairing), instead of
    /// waiting for the listener's answer here.
    pub(crate) early: bool,
    pub(crate) outcome: oneshot::Sender<Outcome>,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The listener answered on the socket.
    Answered(Arrival),
    /// Early pairing: the `accept` is written; the receipt and answer are still to come.
    Dispatched(Box<crate::relay::socket::RelayHalves>),
    /// The socket failed before the listener answered: use the control channel.
    Failed,
}

/// The standby sockets of one control channel (opaque outside the broker).
#[derive(Debug)]
pub struct Pool {
    pub(crate) key: String,
    /// The random part of the key, the same on every node that parks its sockets.
    pub(crate) id: String,
    pub(crate) hc: String,
    pub(crate) max: usize,
    /// Parked sockets by id, oldest first; each entry is the way to give it a job.
    pub(crate) parked: std::sync::Mutex<Vec<(u64, oneshot::Sender<Job>)>>,
    /// Sockets upgrading, parked or answering: bounded by `max`.
    pub(crate) open: AtomicUsize,
    pub(crate) next: AtomicU64,
    pub(crate) closed: CancellationToken,
    /// For a pool adopted for a channel on another node: the map it leaves with its last
    /// socket.
    adopted: Option<std::sync::Weak<DashMap<String, Arc<Pool>>>>,
}

/// A reserved place in a pool, released when dropped.
#[derive(Debug)]
pub(crate) struct Place(pub(crate) Arc<Pool>);

impl Drop for Place {
    fn drop(&mut self) {
        let pool = &self.0;
        let left = pool.open.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0
            && let Some(map) = pool.adopted.as_ref().and_then(std::sync::Weak::upgrade)
        {
            map.remove_if(&pool.id, |_, p| {
                Arc::ptr_eq(p, pool) && p.open.load(Ordering::Acquire) == 0
            });
        }
    }
}

impl Pool {
    fn new(key: String, id: String, hc: &str, max: usize, closed: CancellationToken) -> Self {
        Self {
            key,
            id,
            hc: hc.to_owned(),
            max,
            parked: std::sync::Mutex::new(Vec::with_capacity(max)),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            closed,
            adopted: None,
        }
    }

    /// Whether a sender here could have a parked socket now.
    pub(crate) fn has_parked(&self) -> bool {
        !self.lock().is_empty()
    }

    /// The key that standby upgrades present.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// How many sockets the listener may keep.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Reserves a place for one more socket; `None` when the pool is full or closed.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Place> {
        if self.closed.is_cancelled() {
            return None;
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }

    /// Hands `accept` to the newest parked socket; `None` when none is parked.
    pub(crate) fn dispatch(
        &self,
        accept: String,
        early: bool,
    ) -> Option<oneshot::Receiver<Outcome>> {
        let (outcome, rx) = oneshot::channel();
        let mut job = Job {
            accept,
            early,
            outcome,
        };
        loop {
            let (_, parked) = self.lock().pop()?;
            // A socket whose task has just ended hands the job back: try the next.
            match parked.send(job) {
                Ok(()) => return Some(rx),
                Err(refused) => job = refused,
            }
        }
    }

    pub(crate) fn park(&self) -> (u64, oneshot::Receiver<Job>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().push((id, tx));
        (id, rx)
    }

    /// Drops every parked socket: their tasks close them and the listener opens new ones.
    pub(crate) fn retire_parked(&self) {
        self.lock().clear();
    }

    pub(crate) fn unpark(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, oneshot::Sender<Job>)>> {
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn a_key_checks_out_on_every_node_for_its_own_hybrid_connection_only() {
        let (b, a) = (Pools::new(b"cluster secret"), Pools::new(b"cluster secret"));
        let pool = b.open(&node("b"), "Site-7", 3, CancellationToken::new());
        let key = a
            .verify(pool.key(), "site-7")
            .expect("any node of the cluster");
        assert_eq!(
            (key.node, key.max, key.pool),
            (node("b"), 3, pool.id.clone())
        );
        assert!(
            a.verify(pool.key(), "site-8").is_none(),
            "another hybrid connection"
        );
        assert!(Pools::new(b"other").verify(pool.key(), "site-7").is_none());
        let parts: Vec<&str> = pool.key().split('.').collect();
        let forged = [
            format!("c.{}.{}.{}", parts[1], parts[2], parts[3]),
            format!("b.{}.{}.{}", parts[1], 9, parts[3]),
            format!("b.{}.{}.{}", "0".repeat(32), parts[2], parts[3]),
            format!("b.{}.{}.{}0", parts[1], parts[2], &parts[3][1..]),
            format!("{}.extra", pool.key()),
            format!("b.{}.{}", parts[1], parts[2]),
            "b.x.0.zz".into(),
        ];
        for key in forged {
            assert!(a.verify(&key, "site-7").is_none(), "{key}");
        }
    }

    #[test]
    fn an_adopted_pool_is_bounded_and_goes_with_its_last_socket() {
        let (b, a) = (Pools::new(b"s"), Pools::new(b"s"));
        let own = b.open(&node("b"), "hc", 2, CancellationToken::new());
        let key = a.verify(own.key(), "hc").unwrap();
        assert!(a.get(&key).is_none(), "not parked here yet");
        let first = a.adopt(&key, "hc", CancellationToken::new).unwrap();
        let second = a.adopt(&key, "hc", CancellationToken::new).unwrap();
        assert!(
            a.adopt(&key, "hc", CancellationToken::new).is_none(),
            "max per node"
        );
        assert!(Arc::ptr_eq(&first.0, &second.0));
        assert!(a.by_id(&key.pool).is_some());
        drop(first);
        assert!(a.by_id(&key.pool).is_some(), "one socket left");
        drop(second);
        assert!(a.by_id(&key.pool).is_none(), "gone with its last socket");
        // The channel's own pool stays without sockets: it closes with its channel.
        drop(
            b.get(&b.verify(own.key(), "hc").unwrap())
                .unwrap()
                .reserve(),
        );
        assert!(b.by_id(&own.id).is_some());
    }

    #[test]
    fn a_pool_made_while_shutting_down_is_not_left_behind() {
        let (b, a) = (Pools::new(b"s"), Pools::new(b"s"));
        let own = b.open(&node("b"), "hc", 2, CancellationToken::new());
        let key = a.verify(own.key(), "hc").unwrap();
        let closed = || {
            let token = CancellationToken::new();
            token.cancel();
            token
        };
        assert!(a.adopt(&key, "hc", closed).is_none());
        assert!(a.by_id(&key.pool).is_none());
    }
}
