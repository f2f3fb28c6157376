//! The standby pools: each control channel that asked for standby sockets owns a [`Pool`]
//! of parked sockets, found by its key. The parked sockets themselves are tasks in
//! `standby`; this is what the control channel, presence and `connect` share with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::relay::rendezvous::Arrival;

/// The pools of every control channel with standbys, by key.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    by_key: DashMap<String, Arc<Pool>>,
}

impl Pools {
    /// A new pool of up to `max` sockets for a control channel of node `node`. The key
    /// starts with the node, as capabilities do: a standby that the load balancer takes to
    /// another node is spliced back to this one.
    pub(crate) fn open(
        &self,
        node: &crate::seams::node::NodeId,
        hc: &str,
        max: usize,
        closed: CancellationToken,
    ) -> Arc<Pool> {
        let key = format!(
            "{node}.{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let pool = Arc::new(Pool {
            key: key.clone(),
            hc: hc.to_owned(),
            max,
            parked: std::sync::Mutex::new(Vec::with_capacity(max)),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            closed,
        });
        self.by_key.insert(key, Arc::clone(&pool));
        pool
    }

    /// The pool behind a key, if its control channel still lives.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Pool>> {
        self.by_key.get(key).map(|p| Arc::clone(&p))
    }

    /// Sockets parked over all pools (for metrics).
    pub(crate) fn parked(&self) -> usize {
        self.by_key.iter().map(|p| p.lock().len()).sum()
    }

    /// Closes a pool with its control channel: its parked sockets are closed.
    pub(crate) fn close(&self, pool: &Pool) {
        self.by_key.remove(&pool.key);
        pool.closed.cancel();
    }
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
    pub(crate) hc: String,
    pub(crate) max: usize,
    /// Parked sockets by id, oldest first; each entry is the way to give it a job.
    pub(crate) parked: std::sync::Mutex<Vec<(u64, oneshot::Sender<Job>)>>,
    /// Sockets upgrading, parked or answering: bounded by `max`.
    pub(crate) open: AtomicUsize,
    pub(crate) next: AtomicU64,
    pub(crate) closed: CancellationToken,
}

/// A reserved place in a pool, released when dropped.
#[derive(Debug)]
pub(crate) struct Place(pub(crate) Arc<Pool>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// The key that standby upgrades present.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The hybrid connection of the control channel.
    pub(crate) fn hc(&self) -> &str {
        &self.hc
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
