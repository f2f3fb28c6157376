//! The relay data plane: listen, connect, rendezvous, standby sockets, early pairing, HTTP
//! relay. It never imports `identity/` (the build without the `identity` feature proves it):
//! a certificate listener is checked through the [`Authority`] seam, revocations arrive on
//! the revocation bus, audit events leave through the audit sink.
//!
//! The walk of one sender goes down only:
//!
//! ```text
//! dispatch → connect → standby (parked socket, early pairing) or pairing (rendezvous) → pump
//!          → http    → channel (the notice) → rendezvous (the answer)
//!          → listen  → channel
//!          → answer  (a listener on a capability address: accept, reject, request, standby)
//! ```
//!
//! | module | responsibility |
//! |---|---|
//! | `dispatch` | size checks, WebSocket or HTTP, action → handler, host mode |
//! | `resolve` | a path (or host) against the namespace: [`Resolved`](resolve::Resolved) |
//! | `auth` | token extraction, SAS checks and throttling of failures |
//! | `listen` | `sb-hc-action=listen`: credentials, instance, standby grant |
//! | `channel` | one task per listener control channel: queue, pings, renewal, responses |
//! | `connect` | `sb-hc-action=connect` and browser WebSockets: the notice and the pairing |
//! | `pairing` | a notice over the control channel, and the relay of a paired sender and listener |
//! | `pool` | each listener's pool of parked standby sockets |
//! | `standby` | the parked standby sockets' tasks, early pairing |
//! | `answer` | the listener's side of a capability address |
//! | `http_relay` | relayed HTTP: inline or rendezvous, deadlines, header rules |
//! | `rendezvous` | bounded maps of pending capability addresses and requests |
//! | `local` | this node's control channels; picking a listener and delivering to it, here or through the seams |
//! | `sessions` | what a revocation closes on this node |
//! | `web` | browser access: `X-Forwarded-*`, the session cookie and its CSRF rules, host mode |
//! | `socket` | the upgraded socket as frame halves, and the 101 answer |

mod answer;
mod auth;
mod channel;
mod connect;
mod dispatch;
mod http_relay;
mod listen;
pub(crate) mod local;
mod pairing;
pub(crate) mod pool;
mod rendezvous;
mod resolve;
pub(crate) mod sessions;
mod socket;
pub(crate) mod standby;
mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{HostMode, Limits};
use crate::limiter::AuthLimiter;
use crate::metrics::Counters;
use crate::seams::audit::AuditSink;
use crate::seams::authority::Authority;
use crate::seams::directory::Directory;
use crate::seams::interconnect::Interconnect;
use crate::seams::node::NodeId;
use crate::store::Namespace;

/// Everything the data plane shares between its tasks.
pub(crate) struct Relay {
    pub(crate) limits: Limits,
    pub(crate) public_url: Option<String>,
    /// Path of `public_url` (e.g. `/relay` when nested there); token audiences may include it.
    pub(crate) mount: String,
    /// Hybrid connections and rules: the data plane's only part of the store.
    pub(crate) store: Arc<dyn Namespace>,
    /// This node.
    pub(crate) node: NodeId,
    /// Which listeners serve which hybrid connection, on every node.
    pub(crate) directory: Arc<dyn Directory>,
    /// The way to channels on other nodes.
    pub(crate) interconnect: Arc<dyn Interconnect>,
    /// The control channels this node holds.
    pub(crate) channels: local::Channels,
    pub(crate) rendezvous: Arc<rendezvous::Rendezvous>,
    pub(crate) limiter: Arc<AuthLimiter>,
    /// Cancelled when shutdown starts: no new work, control channels close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the drain bound is reached: relayed connections are cut.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    next_listener: AtomicU64,
    /// Identity's answers for certificate listeners; `None` without a CA.
    pub(crate) authority: Option<Arc<dyn Authority>>,
    /// What revocation closes, per certificate-authenticated listener.
    pub(crate) sessions: Arc<sessions::Sessions>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) audit: AuditSink,
    /// Standby sockets parked here, by pool: for this node's channels and for others'.
    pub(crate) standby: pool::Pools,
    /// Host names per hybrid connection, when `[server].host_base` is set.
    pub(crate) hosts: Option<HostMode>,
    /// Relayed connections now (the bound of `[limits].max_relays`).
    pub(crate) relays: Arc<tokio::sync::Semaphore>,
    /// This node's own address for rendezvous addresses (`[cluster].advertise_url`), else
    /// the address the client used.
    pub(crate) advertise_url: Option<String>,
    /// Whether this node is one of a cluster: a sender then prefers a listener with a
    /// standby parked here.
    pub(crate) clustered: bool,
    /// Set while the node is cut off from its cluster (see `Inbox::fence`).
    pub(crate) fenced: std::sync::atomic::AtomicBool,
    /// Listeners on other nodes that a notice recently failed to reach, and when.
    pub(crate) suspects: dashmap::DashMap<crate::seams::node::ListenerKey, std::time::Instant>,
}

/// What the data plane is built from; the rest it makes itself.
pub(crate) struct Parts {
    pub(crate) limits: Limits,
    pub(crate) public_url: Option<String>,
    pub(crate) store: Arc<dyn Namespace>,
    pub(crate) node: NodeId,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) interconnect: Arc<dyn Interconnect>,
    pub(crate) limiter: Arc<AuthLimiter>,
    pub(crate) authority: Option<Arc<dyn Authority>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) audit: AuditSink,
    pub(crate) hosts: Option<HostMode>,
    pub(crate) advertise_url: Option<String>,
    /// The cluster secret, when this node is one (standby keys are signed with it).
    pub(crate) cluster_secret: Option<Vec<u8>>,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) hard_stop: CancellationToken,
}

impl Relay {
    pub(crate) fn new(parts: Parts) -> Self {
        let limits = parts.limits;
        Self {
            rendezvous: Arc::new(rendezvous::Rendezvous::new(
                limits.max_pending_rendezvous,
                parts.node.clone(),
            )),
            relays: Arc::new(tokio::sync::Semaphore::new(limits.max_relays)),
            mount: crate::config::mount_path(parts.public_url.as_deref()),
            public_url: parts.public_url,
            store: parts.store,
            node: parts.node,
            directory: parts.directory,
            interconnect: parts.interconnect,
            channels: local::Channels::default(),
            limiter: parts.limiter,
            shutdown: parts.shutdown,
            hard_stop: parts.hard_stop,
            tasks: parts.tasks,
            next_listener: AtomicU64::new(1),
            authority: parts.authority,
            sessions: Arc::default(),
            counters: parts.counters,
            audit: parts.audit,
            standby: pool::Pools::new(
                &parts
                    .cluster_secret
                    .clone()
                    .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
            ),
            clustered: parts.cluster_secret.is_some(),
            hosts: parts.hosts,
            advertise_url: parts.advertise_url,
            fenced: std::sync::atomic::AtomicBool::new(false),
            suspects: dashmap::DashMap::new(),
            limits,
        }
    }

    pub(crate) fn next_listener_id(&self) -> u64 {
        self.next_listener.fetch_add(1, Ordering::Relaxed)
    }

    /// The data plane's routes: every path that is not the broker's own.
    pub(crate) fn router(self: &Arc<Self>) -> axum::Router {
        dispatch::router(Arc::clone(self))
    }

    /// Closes what a revoked listener has open here (the revocation bus calls it).
    pub(crate) fn revoke(&self, listener_id: &str) {
        self.sessions.close(listener_id);
    }

    /// Answers requests for hybrid connections served by host name (`[server].host_base`)
    /// before any other route: their whole path space is the edge's.
    pub(crate) fn host_layer(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(
            Arc::clone(self),
            dispatch::host_mode,
        ))
    }

    /// Pending rendezvous entries (addresses and requests).
    pub(crate) fn pending_rendezvous(&self) -> usize {
        self.rendezvous.len()
    }

    /// A data plane on in-process seams and an empty in-memory store, for the unit tests of
    /// its tasks.
    #[cfg(test)]
    pub(crate) fn for_tests(limits: Limits) -> Self {
        let store = Arc::new(crate::store::MemoryStore::new(&[], &[]));
        Self::new(Parts {
            limits,
            public_url: None,
            store: Arc::clone(&store) as Arc<dyn Namespace>,
            node: NodeId::random(),
            directory: Arc::new(crate::seams::directory::LocalDirectory::default()),
            interconnect: Arc::new(crate::seams::interconnect::LocalInterconnect::default()),
            limiter: Arc::new(AuthLimiter::new(60)),
            authority: None,
            counters: Arc::default(),
            audit: AuditSink::new(store, 16),
            hosts: None,
            advertise_url: None,
            cluster_secret: None,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        })
    }
}
