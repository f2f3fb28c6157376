//! The interconnect: how one node reaches a control channel held by another. A sender's
//! node delivers the `accept` or `request` notice to the node holding the listener's
//! channel; that node brings an inline response back to the node that waits. Frames never
//! travel this way: the listener dials the waiting node's rendezvous address itself.
//!
//! A node joins with its [`Inbox`]; [`LocalInterconnect`] connects the brokers of one
//! process (the embedded default, and the two-broker test). A cluster implements the same
//! trait over NATS request/reply.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{RwLock, Weak};

use bytes::Bytes;

use super::node::{ListenerKey, NodeId};

/// A message for a listener's control channel.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A JSON control message.
    Text(String),
    /// A JSON control message followed, with nothing in between, by its body message.
    TextWithBody(String, Bytes),
}

/// Why a notice did not reach its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The channel (or its node) is gone.
    Gone,
    /// The channel's queue stayed full until the deadline.
    Full,
}

/// A listener's inline answer to an HTTP request, on its way to the node that waits.
#[derive(Debug, Clone)]
pub struct InlineResponse {
    /// The `response` control message.
    pub head: relay_core::control::Response,
    /// Its body message, when it had one.
    pub body: Option<Bytes>,
}

/// A delivery in progress.
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), Undelivered>> + Send>>;

/// What a node does with what the interconnect brings it.
pub trait Inbox: Send + Sync + 'static {
    /// Queues `notice` on control channel `channel` of this node, waiting for room until
    /// `deadline`.
    fn deliver(&self, channel: u64, notice: Notice, deadline: tokio::time::Instant) -> Delivery;
    /// Completes request `request_id` waiting here, if `from` is the listener it went to.
    fn respond(&self, request_id: &str, from: &ListenerKey, response: InlineResponse) -> bool;
    /// A listener's channel ended: what waits here for it fails now, not at its deadline.
    fn listener_gone(&self, key: &ListenerKey);
    /// A newer channel of the same agent instance replaced channel `channel` of this node.
    fn replaced(&self, channel: u64);
    /// The node lost (`true`) or regained (`false`) the cluster: while fenced it closes its
    /// control channels and certificate sessions (nobody else can see them or revoke them)
    /// and takes no new listeners, so its agents move to nodes that can be reached.
    fn fence(&self, fenced: bool);
}

/// A capability request that reached a node other than the one holding the capability:
/// the interconnect hands it on and the answer (often a `101`) comes back.
pub type Forwarded = Pin<Box<dyn Future<Output = Option<http::Response<axum::body::Body>>> + Send>>;

/// The nodes' way to each other.
pub trait Interconnect: Send + Sync + 'static {
    /// Adds a node; the interconnect keeps only a weak link, so a dropped node leaves.
    fn join(&self, node: NodeId, inbox: Weak<dyn Inbox>);
    /// Delivers a notice to the node holding `to`.
    fn deliver(&self, to: &ListenerKey, notice: Notice, deadline: tokio::time::Instant)
    -> Delivery;
    /// Brings an inline response to the node that waits for `request_id`.
    fn respond(
        &self,
        to: &NodeId,
        request_id: &str,
        from: &ListenerKey,
        response: InlineResponse,
    ) -> bool;
    /// Tells every node that a listener's channel ended.
    fn listener_gone(&self, key: &ListenerKey);
    /// Tells the node holding `key` that its channel was replaced.
    fn replaced(&self, key: &ListenerKey);
    /// Hands a rendezvous request (`accept`, `request`) for a capability of node `to` on to
    /// that node, splicing the upgraded socket; `None` when it cannot (no such node, no way
    /// to it), and the caller answers as for an expired capability.
    fn forward(&self, to: &NodeId, req: axum::extract::Request) -> Forwarded {
        let _ = (to, req);
        Box::pin(async { None })
    }
    /// Whether this node is in its cluster now; the reason when not (`/readyz` says it).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Tells the other nodes that this one is shutting down, so that they stop routing to
    /// it at once rather than when its heartbeats stop; bounded in time.
    fn leave(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The brokers of one process, reaching each other by direct calls.
#[derive(Default)]
pub struct LocalInterconnect {
    nodes: RwLock<HashMap<NodeId, Weak<dyn Inbox>>>,
}

impl std::fmt::Debug for LocalInterconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInterconnect")
            .field("nodes", &self.read().len())
            .finish()
    }
}

impl LocalInterconnect {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Weak<dyn Inbox>>> {
        // The map is only ever inserted into whole; a panic elsewhere leaves it consistent.
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn node(&self, node: &NodeId) -> Option<std::sync::Arc<dyn Inbox>> {
        self.read().get(node)?.upgrade()
    }
}

impl Interconnect for LocalInterconnect {
    fn join(&self, node: NodeId, inbox: Weak<dyn Inbox>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, inbox| inbox.strong_count() > 0);
        nodes.insert(node, inbox);
    }

    fn deliver(
        &self,
        to: &ListenerKey,
        notice: Notice,
        deadline: tokio::time::Instant,
    ) -> Delivery {
        match self.node(&to.node) {
            Some(inbox) => inbox.deliver(to.channel, notice, deadline),
            None => Box::pin(async { Err(Undelivered::Gone) }),
        }
    }

    fn respond(
        &self,
        to: &NodeId,
        request_id: &str,
        from: &ListenerKey,
        response: InlineResponse,
    ) -> bool {
        self.node(to)
            .is_some_and(|inbox| inbox.respond(request_id, from, response))
    }

    fn listener_gone(&self, key: &ListenerKey) {
        let nodes: Vec<_> = self.read().values().filter_map(Weak::upgrade).collect();
        for inbox in nodes {
            inbox.listener_gone(key);
        }
    }

    fn replaced(&self, key: &ListenerKey) {
        if let Some(inbox) = self.node(&key.node) {
            inbox.replaced(key.channel);
        }
    }
}
