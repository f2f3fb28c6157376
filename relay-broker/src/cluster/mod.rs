//! Cluster mode: several brokers behind one address, coordinating through NATS, with their
//! durable state in PostgreSQL (`[cluster]`, `[store] url`). This module implements the
//! seams a single broker keeps in memory; the data plane does not know which it has.
//!
//! | part | what it does |
//! |---|---|
//! | `directory` | this node's listeners and every other node's, from their heartbeats |
//! | `presence` | heartbeats, asking for missed sets, dropping silent nodes, fencing |
//! | `interconnect` | notices as NATS requests to the owning node, inline responses back |
//! | `peer` | the peer port: rendezvous sockets that landed on the wrong node, spliced |
//! | `revocation` | revocations broadcast, backed by a poll of the store's sequence |
//! | `wire` | subjects and message formats |
//!
//! Frames and streamed bodies never travel over NATS (no flow control, 1 MB payloads);
//! they go from the listener to the sender's node, at most one spliced hop.

mod directory;
mod interconnect;
mod peer;
mod presence;
mod revocation;
mod wire;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use directory::{BEAT, ClusterDirectory, DEAD_AFTER};
pub use presence::FENCE_AFTER;
pub use revocation::POLL as REVOCATION_POLL;

use crate::config::ClusterConfig;
use crate::seams::directory::Directory;
use crate::seams::interconnect::Interconnect;
use crate::seams::node::NodeId;
use crate::seams::revocation::RevocationBus;
use crate::store::IdentityStore;

/// NATS client pings: a dead server is noticed after about three of them.
const NATS_PING: Duration = Duration::from_millis(400);

/// Failures joining a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The NATS servers' addresses were refused by the client.
    #[error("[cluster].nats: {0}")]
    Nats(String),
    /// The node id is not one (a config built by hand, not parsed).
    #[error("[cluster].node_id: {0}")]
    NodeId(String),
}

/// This node's membership: its NATS connection and the seams built on it.
pub struct Cluster {
    config: ClusterConfig,
    node: NodeId,
    directory: Arc<ClusterDirectory>,
    interconnect: Arc<interconnect::NatsInterconnect>,
    revocations: Arc<revocation::NatsRevocations>,
    key: peer::PeerKey,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS (retrying in the background while no server answers: the node
    /// starts, not ready, and joins when one does) and starts the revocation subscription.
    ///
    /// # Errors
    /// When the NATS addresses cannot be used at all.
    pub async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let me = NodeId::new(&config.node_id).map_err(ClusterError::NodeId)?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("relay-broker {me}"))
            .ping_interval(NATS_PING)
            .connection_timeout(Duration::from_secs(1))
            .request_timeout(Some(Duration::from_secs(2)))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS");
            })
            .connect(config.nats.as_slice())
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let directory = Arc::new(ClusterDirectory::new(me.clone()));
        let health = Arc::new(presence::Health::default());
        let key = peer::PeerKey::new(&config.secret);
        let presence = Arc::new(presence::Presence {
            client: client.clone(),
            directory: Arc::clone(&directory),
            me: me.clone(),
            epoch: rand::random(),
            peer: config.peer_address,
            health: Arc::clone(&health),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        let interconnect = Arc::new(interconnect::NatsInterconnect(Arc::new(
            interconnect::Inner {
                client: client.clone(),
                me: me.clone(),
                directory: Arc::clone(&directory),
                key: key.clone(),
                health,
                presence,
                inbox: OnceLock::new(),
            },
        )));
        let revocations = revocation::NatsRevocations::new(client, me.clone());
        Ok(Self {
            config: config.clone(),
            node: me,
            directory,
            interconnect,
            revocations,
            key,
        })
    }

    /// This node.
    #[must_use]
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The configuration it was joined with.
    #[must_use]
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The live nodes other than this one, as this node's view has them.
    #[must_use]
    pub fn peers(&self) -> Vec<NodeId> {
        self.directory.nodes()
    }

    pub(crate) fn directory(&self) -> Arc<dyn Directory> {
        Arc::clone(&self.directory) as _
    }

    pub(crate) fn interconnect(&self) -> Arc<dyn Interconnect> {
        Arc::clone(&self.interconnect) as _
    }

    pub(crate) fn revocations(&self) -> Arc<dyn RevocationBus> {
        Arc::clone(&self.revocations) as _
    }

    /// Applies the store's revocations as the backstop of the broadcast.
    pub(crate) fn follow(&self, store: Arc<dyn IdentityStore>) {
        self.revocations.follow(store);
    }

    /// Serves the peer port with `router` until `stop`.
    pub(crate) async fn serve_peers(
        &self,
        router: axum::Router,
        connections: tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.config.peer_bind)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("[cluster].peer_bind {}: {e}", self.config.peer_bind),
                )
            })?;
        tracing::info!(addr = %self.config.peer_bind, "peer port");
        let key = self.key.clone();
        tokio::spawn(peer::serve(listener, key, router, connections, stop));
        Ok(())
    }
}
