//! A self-hosted broker that speaks the Azure Relay Hybrid Connections protocol, so that
//! Microsoft's own clients (hyco-ws, hyco-https, .NET, azbridge) work against it unmodified.
//!
//! Build one with [`Broker::builder`], then embed it as an axum [`Router`](axum::Router) via
//! [`Broker::router`], or run it on a bound listener with [`Broker::serve`]. The
//! `relay-broker` binary does the latter.
//!
//! Two planes, joined only here and through [`seams`]:
//!
//! | module | responsibility |
//! |---|---|
//! | `relay` | the data plane: dispatch, listen, connect, rendezvous, standby, HTTP relay |
//! | [`identity`] | the control plane (feature `identity`): persons, CA, registration, PoP, admin API |
//! | [`seams`] | what crosses between the planes and, later, between nodes: authority, revocation, audit |
//! | [`store`] | entities, rules and the audit trail: in memory, SQLite or PostgreSQL |
//! | [`cluster`] | the seams over NATS, the peer port: several nodes behind one address |
//! | [`config`] | the TOML contract, validated into typed limits, entities and rules |
//! | `router` | the composition of the planes' routes, each with its own state |
//! | `health` | `/healthz`, `/readyz`, `/metrics` |
//! | `server` | the accept loop: TLS, the connection bound, HTTP/1.1 limits, graceful shutdown |
//! | [`pump`] | the frame relay between a sender and a listener (public for benchmarks and embedders) |
//! | [`error`] | every status the data plane answers with, and its tracking id |
//! | [`metrics`] | counters and the Prometheus rendering of `/metrics` |
//! | `limiter` | throttling of failed authentications, shared by both planes |
//!
//! The arrows point one way: this file → `router`, `server` → `relay`, `identity`, `health`;
//! `relay` and `identity` → `seams`, `store`; neither plane imports the other
//! (`.ci/module-cycles.py` checks it, and `cargo check --no-default-features` builds the
//! broker without `identity`).

pub mod cluster;
pub mod config;
pub mod error;
#[cfg(feature = "identity")]
pub mod identity;
pub mod metrics;
pub mod pump;
pub mod seams;
pub mod store;

mod health;
mod limiter;
mod relay;
mod router;
mod server;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{BrokerConfig, HybridConnection, Limits, StoreLocation};
pub use error::RelayError;
#[cfg(feature = "identity")]
pub use identity::{admin, ca};
pub use metrics::Counters;
pub use relay::pool::Pool as StandbyPool;
pub use seams::Transport;
pub use seams::directory::{Directory, LocalDirectory, Refused};
pub use seams::interconnect::{Interconnect, LocalInterconnect};
pub use seams::node::NodeId;
pub use seams::revocation::{LocalRevocations, RevocationBus};
pub use server::ServeOptions;
pub use store::{
    AuditEvent, AuditStore, IdentityStore, MemoryStore, Namespace, PostgresStore, SqliteStore,
    Store, StoreError,
};

use relay::Relay;
use seams::audit::{AUDIT_QUEUE, AuditSink};

/// Failures building a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate authority could not be loaded or created.
    #[cfg(feature = "identity")]
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The configuration asks for something this build or this builder would ignore.
    #[error("{0}")]
    Ignored(String),
}

/// A broker: the data plane, the identity plane when built in, and the ways to serve them.
/// Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    relay: Arc<Relay>,
    #[cfg(feature = "identity")]
    identity: Arc<identity::Identity>,
    store: Arc<dyn Store>,
    cluster: Option<Arc<cluster::Cluster>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("limits", &self.relay.limits)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Broker`] from its configuration, opening what it names: the SQLite or
/// PostgreSQL store of `[store]` (else state stays in memory) and the certificate authority
/// of `[ca]`, created on first start. Backends given here replace the embedded defaults; a configuration
/// section that would then be ignored is refused, never dropped without a word.
#[must_use = "call build()"]
pub struct BrokerBuilder<'a> {
    config: &'a BrokerConfig,
    store: Option<Arc<dyn Store>>,
    node: Option<NodeId>,
    directory: Option<Arc<dyn Directory>>,
    interconnect: Option<Arc<dyn Interconnect>>,
    revocations: Option<Arc<dyn RevocationBus>>,
    cluster: Option<cluster::Cluster>,
}

impl std::fmt::Debug for BrokerBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder").finish_non_exhaustive()
    }
}

impl<'a> BrokerBuilder<'a> {
    /// Uses `store` instead of the one `[store]` names (refused when `[store]` is set).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Names this node (the default is a random id).
    pub fn node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// Shares a listener directory with other brokers (the default is this broker's own).
    pub fn directory(mut self, directory: Arc<dyn Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Joins an interconnect to other brokers (the default reaches no other).
    pub fn interconnect(mut self, interconnect: Arc<dyn Interconnect>) -> Self {
        self.interconnect = Some(interconnect);
        self
    }

    /// Shares a revocation bus with other brokers (the default reaches this one only).
    pub fn revocations(mut self, bus: Arc<dyn RevocationBus>) -> Self {
        self.revocations = Some(bus);
        self
    }

    /// Makes this broker a node of `cluster` (see [`cluster::Cluster::connect`]): its
    /// directory, interconnect and revocation bus replace the in-process ones.
    pub fn cluster(mut self, cluster: cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The broker, its store open and its CA loaded or created. One sequence of assembly,
    /// the only place where the planes and the seams meet.
    pub fn build(self) -> Result<Broker, OpenError> {
        let config = self.config;
        let mut this = self;
        let cluster = this.cluster.take();
        match &cluster {
            None if config.cluster.is_some() => {
                return Err(OpenError::Ignored(
                    "[cluster] is set: join with cluster::Cluster::connect and pass it to BrokerBuilder::cluster".into(),
                ));
            }
            Some(c) => {
                if this.directory.is_some()
                    || this.interconnect.is_some()
                    || this.revocations.is_some()
                {
                    return Err(OpenError::Ignored(
                        "a cluster brings its own directory, interconnect and revocation bus: give the cluster or those, not both".into(),
                    ));
                }
                this.node = Some(c.node().clone());
                this.directory = Some(c.directory());
                this.interconnect = Some(c.interconnect());
                this.revocations = Some(c.revocations());
            }
            None => {}
        }
        let this = this;
        let store = open_store(this.store, config)?;
        let revocations = this
            .revocations
            .unwrap_or_else(|| Arc::new(LocalRevocations::default()));
        let counters = Arc::new(Counters::default());
        let limiter = Arc::new(limiter::AuthLimiter::new(
            config.limits.auth_failures_per_minute,
        ));
        let audit = AuditSink::new(
            Arc::clone(&store) as Arc<dyn store::AuditStore>,
            AUDIT_QUEUE,
        );
        // Without the identity plane nobody else takes `audit`, and the clone is redundant.
        #[cfg_attr(not(feature = "identity"), allow(clippy::redundant_clone))]
        let parts = relay::Parts {
            limits: config.limits.clone(),
            public_url: config.public_url.clone(),
            store: Arc::clone(&store) as Arc<dyn store::Namespace>,
            node: this.node.unwrap_or_else(NodeId::random),
            directory: this
                .directory
                .unwrap_or_else(|| Arc::new(LocalDirectory::default())),
            interconnect: this
                .interconnect
                .unwrap_or_else(|| Arc::new(LocalInterconnect::default())),
            limiter: Arc::clone(&limiter),
            authority: None,
            counters: Arc::clone(&counters),
            audit: audit.clone(),
            hosts: config.hosts.clone(),
            advertise_url: cluster
                .as_ref()
                .and_then(|c| c.config().advertise_url.clone()),
            cluster_secret: cluster.as_ref().map(|c| c.config().secret.clone()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        };
        #[cfg(not(feature = "identity"))]
        let relay = {
            if config.ca.is_some() {
                return Err(OpenError::Ignored(
                    "[ca] needs the broker's identity feature, which this build leaves out".into(),
                ));
            }
            Relay::new(parts)
        };
        #[cfg(feature = "identity")]
        let (relay, identity) = {
            let identity = identity::Identity::open(identity::Parts {
                config,
                store: Arc::clone(&store),
                limiter,
                counters,
                revocations: Arc::clone(&revocations),
                audit,
            })?;
            let authority = identity.authority();
            let relay = Relay::new(relay::Parts { authority, ..parts });
            (relay, Arc::new(identity))
        };
        let relay = Arc::new(relay);
        join(&relay, &revocations);
        if let Some(c) = &cluster {
            c.follow(Arc::clone(&store) as Arc<dyn store::IdentityStore>);
        }
        Ok(Broker {
            relay,
            #[cfg(feature = "identity")]
            identity,
            store,
            cluster: cluster.map(Arc::new),
        })
    }
}

/// The store the config names, or the one given to the builder; never both.
fn open_store(
    given: Option<Arc<dyn Store>>,
    config: &BrokerConfig,
) -> Result<Arc<dyn Store>, OpenError> {
    Ok(match (given, &config.store) {
        (Some(_), Some(_)) => {
            return Err(OpenError::Ignored(
                "[store] is set, and a store was given to the builder too: remove one".into(),
            ));
        }
        (Some(store), None) => store,
        (None, Some(StoreLocation::Sqlite(path))) => Arc::new(SqliteStore::open(
            path,
            &config.hybrid_connections,
            &config.rules,
        )?),
        (None, Some(StoreLocation::Postgres(url))) => Arc::new(PostgresStore::open(
            (**url).clone(),
            &config.hybrid_connections,
            &config.rules,
        )?),
        (None, None) => Arc::new(MemoryStore::new(&config.hybrid_connections, &config.rules)),
    })
}

/// Joins the data plane to the shared seams: notices for its channels, revocations for its
/// sessions. Both hold only weak links, so a dropped broker does not live on in them.
fn join(relay: &Arc<Relay>, revocations: &Arc<dyn RevocationBus>) {
    let inbox: Arc<dyn seams::interconnect::Inbox> = Arc::clone(relay) as _;
    relay
        .interconnect
        .join(relay.node.clone(), Arc::downgrade(&inbox));
    let weak = Arc::downgrade(relay);
    revocations.subscribe(Arc::new(move |listener_id: &str| {
        if let Some(relay) = weak.upgrade() {
            relay.revoke(listener_id);
        }
    }));
}

impl Broker {
    /// A builder for a broker from `config`.
    pub fn builder(config: &BrokerConfig) -> BrokerBuilder<'_> {
        BrokerBuilder {
            config,
            store: None,
            node: None,
            directory: None,
            interconnect: None,
            revocations: None,
            cluster: None,
        }
    }

    /// The certificate authority, when configured.
    #[cfg(feature = "identity")]
    #[must_use]
    pub fn ca(&self) -> Option<&ca::CertificateAuthority> {
        self.identity.ca.as_deref()
    }

    /// A TLS server configuration from PEM files that also verifies listener client
    /// certificates against this broker's CA, when one is configured (the certificate stays
    /// optional, so SAS clients share the port).
    pub fn server_tls(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Arc<rustls::ServerConfig>, OpenError> {
        #[cfg(feature = "identity")]
        let client_cas = match &self.identity.ca {
            Some(ca) => vec![ca.issuing_der()?],
            None => Vec::new(),
        };
        #[cfg(not(feature = "identity"))]
        let client_cas: Vec<rustls_pki_types::CertificateDer<'static>> = Vec::new();
        relay_io::tls::server_config_with_client_ca(cert, key, &client_cas)
            .map_err(|e| OpenError::Tls(e.to_string()))
    }

    /// The store (for administration and audit).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The axum router serving every path. Nest it with `nest_service` and set
    /// `public_url` to the prefix's external URL so rendezvous addresses point back to it.
    pub fn router(&self) -> axum::Router {
        router::compose(
            &self.relay,
            #[cfg(feature = "identity")]
            &self.identity,
        )
    }

    /// Number of listeners connected to a hybrid connection.
    #[must_use]
    pub fn listener_count(&self, hc: &str) -> usize {
        self.relay.directory.count(hc)
    }

    /// Counters for diagnostics.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.relay.counters
    }

    /// Pending rendezvous entries (addresses and requests).
    #[must_use]
    pub fn pending_rendezvous(&self) -> usize {
        self.relay.pending_rendezvous()
    }

    /// Waits until every audit event recorded so far is written.
    pub async fn flush_audit(&self) {
        self.relay.audit.flush().await;
    }

    /// Starts closing: control channels get Close 1001 and relayed connections are told to end.
    pub fn begin_shutdown(&self) {
        self.relay.shutdown.cancel();
    }

    /// Serves on an already bound listener until `shutdown` resolves, then drains within
    /// `limits.shutdown_drain`. Run it in a spawned task rather than in `block_on`: each
    /// accepted connection is spawned from here, and from a runtime worker that costs no
    /// cross-thread wake-up.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        options: ServeOptions,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        server::serve(self.clone(), listener, options, shutdown).await
    }

    pub(crate) fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Waits, at most `bound`, until this node is in its cluster (at once without one);
    /// whether it is. A node opens its public port after this: a load balancer that has not
    /// yet seen a restart then meets a refused connection, which it retries on another
    /// node, instead of a node answering 503 while it learns the cluster's listeners.
    pub async fn joined(&self, bound: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        while self.relay.interconnect.ready().is_err() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// This node's cluster, when it is one.
    #[must_use]
    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }
}
