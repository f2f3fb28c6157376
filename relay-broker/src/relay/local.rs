//! The control channels this node holds, by number: the node-local half of a listener
//! (its queue, its close tokens, its standby pool), kept apart from the [`ListenerRef`]
//! in the directory that every node may see. Also the data plane's two cross-listener
//! steps, which go through the seams when the listener is on another node: picking a
//! listener, and delivering a notice to it. An inline response finds the node that waits
//! for it the same way.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::pool::Pool;
use super::rendezvous::{ListenerResponse, ResponseBody};
use super::sessions::Revoked;
use crate::RelayError;
use crate::seams::directory::{ListenerRef, Usable};
use crate::seams::interconnect::{Delivery, Inbox, InlineResponse, Notice, Undelivered};
use crate::seams::node::{ListenerKey, NodeId};

/// How long a sender whose listener vanished before its rendezvous waits for another.
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a sender waiting for moving listeners looks again.
const MOVING_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a listener on another node that a notice failed to reach is picked last.
const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// One control channel of this node.
#[derive(Debug)]
pub(crate) struct LocalChannel {
    /// The channel's outgoing queue.
    pub(crate) tx: mpsc::Sender<Notice>,
    /// Cancelled to close the channel (shutdown).
    pub(crate) close: CancellationToken,
    /// Cancelled when a newer channel of the same instance replaced this one.
    pub(crate) replaced: CancellationToken,
    /// For certificate listeners: cancelled on revocation, which also cuts its relays.
    pub(crate) revoked: Option<Revoked>,
}

/// This node's channels, by number.
#[derive(Debug, Default)]
pub(crate) struct Channels(DashMap<u64, Arc<LocalChannel>>);

impl Channels {
    pub(crate) fn insert(&self, channel: u64, local: Arc<LocalChannel>) {
        self.0.insert(channel, local);
    }

    pub(crate) fn remove(&self, channel: u64) {
        self.0.remove(&channel);
    }

    pub(crate) fn get(&self, channel: u64) -> Option<Arc<LocalChannel>> {
        self.0.get(&channel).map(|c| Arc::clone(c.value()))
    }

    /// How many channels this node holds.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Closes every channel (a fenced node).
    fn close_all(&self) {
        for c in self.0.iter() {
            c.close.cancel();
        }
    }
}

/// A listener picked for a sender: its reference, its handles when this node holds it, and
/// its standby pool when some of its standbys are parked here.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) listener: ListenerRef,
    pub(crate) local: Option<Arc<LocalChannel>>,
    standby: Option<Arc<Pool>>,
}

impl Target {
    /// The pool of its standbys parked on this node (its own node's, or adopted here).
    pub(crate) fn standby(&self) -> Option<&Arc<Pool>> {
        self.standby.as_ref()
    }
}

impl Relay {
    /// [`pick_or`](Self::pick_or), waiting (bounded) while `hc`'s listeners move off a node
    /// that is shutting down: a sender in that gap is paired with a listener at its new
    /// node instead of hearing that none is connected.
    pub(crate) async fn find(&self, hc: &str, none: RelayError) -> Result<Target, RelayError> {
        loop {
            if let Some(target) = self.pick(hc) {
                return Ok(target);
            }
            match self.directory.moving(hc) {
                Some(until) if std::time::Instant::now() < until => {
                    tokio::time::sleep(MOVING_POLL).await;
                }
                _ => return self.pick_or(hc, none),
            }
        }
    }

    /// After a notice to `failed` found its channel gone before the rendezvous: another
    /// listener. In a cluster it waits, at most [`RETRY_WAIT`], while the failed one is the
    /// only one on offer or none is: its node may be leaving before its last beat got here,
    /// or dead before the heartbeats said so, and the listener is coming back elsewhere.
    pub(crate) async fn find_other(
        &self,
        hc: &str,
        failed: &ListenerKey,
        error: RelayError,
    ) -> Result<Target, RelayError> {
        if !self.clustered {
            return self.pick_or(hc, error);
        }
        let until = std::time::Instant::now() + RETRY_WAIT;
        loop {
            match self.pick(hc) {
                Some(target) if target.listener.key != *failed => return Ok(target),
                _ if std::time::Instant::now() >= until => return Err(error),
                _ => tokio::time::sleep(MOVING_POLL).await,
            }
        }
    }

    /// [`pick`](Self::pick), or why not: `none` when no listener is connected, but 503 when
    /// this node is out of its cluster (joining or fenced) and its view cannot say so.
    pub(crate) fn pick_or(&self, hc: &str, none: RelayError) -> Result<Target, RelayError> {
        self.pick(hc)
            .ok_or_else(|| match self.interconnect.ready() {
                Err(why) if self.clustered => {
                    RelayError::Fenced(format!("it cannot see the cluster's listeners: {why}"))
                }
                _ => none,
            })
    }

    /// The listener for the next sender on `hc`, spread round robin and preferring one with
    /// room in its queue; `None` only when none is connected. In a cluster a listener with
    /// a standby parked on this node comes first: its connect then needs no other node.
    pub(crate) fn pick(&self, hc: &str) -> Option<Target> {
        let usable = |l: &ListenerRef| {
            if l.key.node != self.node {
                // One that a notice just failed to reach goes last until its node beats
                // again or is dropped: the next sender tries another listener first.
                return match self.suspects.get(&l.key) {
                    Some(at) if at.elapsed() < SUSPECT_FOR => Usable::Busy,
                    _ => Usable::Ready,
                };
            }
            match self.channels.get(l.key.channel) {
                Some(c) if c.close.is_cancelled() || c.tx.is_closed() => Usable::Gone,
                Some(c) if c.tx.capacity() == 0 => Usable::Busy,
                Some(_) => Usable::Ready,
                None => Usable::Gone,
            }
        };
        let with_standby_here = |l: &ListenerRef| match self.standby_here(l) {
            Some(pool) if pool.has_parked() && usable(l) == Usable::Ready => Usable::Ready,
            _ => Usable::Gone,
        };
        let listener = self
            .clustered
            .then(|| self.directory.pick(hc, &with_standby_here))
            .flatten()
            .or_else(|| self.directory.pick(hc, &usable))?;
        let local = (listener.key.node == self.node)
            .then(|| self.channels.get(listener.key.channel))
            .flatten();
        let standby = self.standby_here(&listener);
        Some(Target {
            listener,
            local,
            standby,
        })
    }

    /// The pool of `listener`'s standbys on this node, if any are parked or opening here.
    fn standby_here(&self, listener: &ListenerRef) -> Option<Arc<Pool>> {
        self.standby.by_id(listener.standby.as_deref()?)
    }

    /// Whether the last notice to `target`, a listener on another node, found nobody there.
    pub(crate) fn unreachable(&self, target: &Target) -> bool {
        target.local.is_none() && self.suspects.contains_key(&target.listener.key)
    }

    /// What closes relays to `target` on revocation: its own hold when it is ours, else a
    /// hold this node takes on the certificate listener (the revocation bus reaches it here).
    pub(crate) fn revoked(&self, target: &Target) -> Option<Revoked> {
        match &target.local {
            Some(local) => local.revoked.clone(),
            None => Some(
                self.sessions
                    .hold(target.listener.cert_listener.as_deref()?),
            ),
        }
    }

    /// Queues a notice for a listener, waiting until `deadline` for room when its queue is
    /// full (a burst); then 503, never "no listener".
    pub(crate) async fn deliver(
        &self,
        target: &Target,
        notice: Notice,
        deadline: tokio::time::Instant,
    ) -> Result<(), RelayError> {
        let delivered = match &target.local {
            Some(local) => send(local, notice, deadline).await,
            None => {
                crate::metrics::count(&self.counters.cluster_notices);
                let delivered = self
                    .interconnect
                    .deliver(&target.listener.key, notice, deadline)
                    .await;
                match delivered {
                    Err(Undelivered::Gone) => {
                        crate::metrics::count(&self.counters.cluster_notice_failures);
                        self.suspects
                            .insert(target.listener.key.clone(), std::time::Instant::now());
                    }
                    Ok(()) => {
                        self.suspects.remove(&target.listener.key);
                    }
                    Err(Undelivered::Full) => {}
                }
                delivered
            }
        };
        delivered.map_err(|e| match e {
            Undelivered::Gone => RelayError::ListenerFailed("the listener disconnected".into()),
            Undelivered::Full => RelayError::Busy("listener control queue"),
        })
    }

    /// Completes request `request_id` with a listener's inline answer: here when this node
    /// waits for it, else on the node its id names. Whether it was pending.
    pub(crate) fn complete(
        &self,
        request_id: &str,
        from: &ListenerKey,
        response: ListenerResponse,
    ) -> bool {
        match NodeId::of_suffixed(request_id) {
            Some(node) if node != self.node => {
                let body = match response.body {
                    ResponseBody::Full(bytes) => Some(bytes),
                    ResponseBody::Empty | ResponseBody::Stream(_) => None,
                };
                let inline = InlineResponse {
                    head: response.head,
                    body,
                };
                self.interconnect.respond(&node, request_id, from, inline)
            }
            _ => self.rendezvous.complete(request_id, from, response),
        }
    }

    /// Fails request `request_id`: the listener promised a body and sent something else.
    pub(crate) fn fail(&self, request_id: &str, from: &ListenerKey) {
        match NodeId::of_suffixed(request_id) {
            Some(node) if node != self.node => {
                let head = relay_core::control::Response {
                    request_id: request_id.to_owned(),
                    status_code: 502,
                    status_description: Some("The listener sent no body for its response".into()),
                    response_headers: relay_core::control::Headers::default(),
                    body: false,
                };
                let inline = InlineResponse { head, body: None };
                self.interconnect.respond(&node, request_id, from, inline);
            }
            _ => self.rendezvous.fail(request_id, from),
        }
    }

    /// Whether a response to `request_id` from `from` is expected. Requests waiting on
    /// another node are that node's to judge when the response gets there.
    pub(crate) fn expects(&self, request_id: &str, from: &ListenerKey) -> bool {
        match NodeId::of_suffixed(request_id) {
            Some(node) if node != self.node => true,
            _ => self.rendezvous.is_pending(request_id, from),
        }
    }

    /// A channel of this node ended: nothing more is routed to it, and what waits for it,
    /// here or on other nodes, fails now.
    pub(crate) fn channel_ended(&self, listener: &ListenerRef) {
        self.directory.unregister(&listener.hc, &listener.key);
        self.channels.remove(listener.key.channel);
        self.rendezvous.drop_listener(&listener.key);
        self.interconnect.listener_gone(&listener.key);
    }

    /// Closes the channels a newer channel of the same instance replaced, wherever they are.
    pub(crate) fn close_replaced(&self, keys: &[ListenerKey]) {
        for key in keys {
            if key.node == self.node {
                if let Some(c) = self.channels.get(key.channel) {
                    c.replaced.cancel();
                }
            } else {
                self.interconnect.replaced(key);
            }
        }
    }
}

async fn send(
    local: &LocalChannel,
    notice: Notice,
    deadline: tokio::time::Instant,
) -> Result<(), Undelivered> {
    match tokio::time::timeout_at(deadline, local.tx.send(notice)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Undelivered::Gone),
        Err(_) => Err(Undelivered::Full),
    }
}

/// What other nodes bring this one.
impl Inbox for Relay {
    fn deliver(&self, channel: u64, notice: Notice, deadline: tokio::time::Instant) -> Delivery {
        let local = self.channels.get(channel);
        Box::pin(async move {
            match local {
                Some(local) => send(&local, notice, deadline).await,
                None => Err(Undelivered::Gone),
            }
        })
    }

    fn respond(&self, request_id: &str, from: &ListenerKey, response: InlineResponse) -> bool {
        let body = match response.body {
            Some(bytes) => ResponseBody::Full(bytes),
            None => ResponseBody::Empty,
        };
        let response = ListenerResponse {
            head: response.head,
            body,
        };
        self.rendezvous.complete(request_id, from, response)
    }

    fn listener_gone(&self, key: &ListenerKey) {
        if key.node != self.node {
            self.rendezvous.drop_listener(key);
            self.suspects.remove(key);
        }
    }

    fn replaced(&self, channel: u64) {
        if let Some(c) = self.channels.get(channel) {
            c.replaced.cancel();
        }
    }

    fn fence(&self, fenced: bool) {
        let was = self
            .fenced
            .swap(fenced, std::sync::atomic::Ordering::AcqRel);
        if fenced && !was {
            tracing::warn!(node = %self.node, "cut off from the cluster: fencing (closing control channels and certificate sessions)");
            crate::metrics::count(&self.counters.cluster_fenced);
            self.sessions.close_all();
            self.channels.close_all();
        } else if was && !fenced {
            tracing::info!(node = %self.node, "back in the cluster: taking listeners again");
        }
    }
}
