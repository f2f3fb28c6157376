//! A self-hosted broker that speaks the Azure Relay Hybrid Connections protocol, so that
//! Microsoft's own clients (hyco-ws, hyco-https, .NET, azbridge) work against it unmodified.
//!
//! Embed it as an axum [`Router`](axum::Router) via [`Broker::router`], or run it on a bound
//! listener with [`Broker::serve`]. The `relay-broker` binary does the latter.
//!
//! | module | responsibility |
//! |---|---|
//! | [`config`] | the TOML contract, validated into typed limits, entities and rules |
//! | `routes` | dispatch of every request: WebSocket actions by `sb-hc-action`, else HTTP relay |
//! | `auth` | token extraction, SAS checks and throttling of failures |
//! | `control` | one task per listener control channel: queue, pings, renewal, responses |
//! | [`pump`] | the frame relay between a sender and a listener (public for benchmarks and embedders) |
//! | `http_relay` | relayed HTTP: inline or rendezvous, deadlines, header rules |
//! | [`presence`] | which listeners serve which hybrid connection (a seam for clustering) |
//! | [`store`] | entities, rules and the audit trail: in memory or SQLite |
//! | [`ca`] | the certificate authority for listener identities |
//! | [`admin`] | the versioned administration API (`/$admin/v1`) |
//! | `pop` | proof-of-possession login for listeners behind an L7 proxy that ends TLS |
//! | `rendezvous` | bounded maps of pending capability addresses and requests |
//! | [`error`] | every status the broker answers with, and its tracking id |
//! | [`metrics`] | counters and the Prometheus rendering of `/metrics` |
//! | `server` | the accept loop: TLS, HTTP/1.1 limits, graceful shutdown |
//! | `web` | browser access: `X-Forwarded-*`, the session cookie and its CSRF rules, host mode |

pub mod admin;
pub mod ca;
pub mod config;
pub mod error;
pub mod metrics;
pub mod presence;
pub mod pump;
pub mod store;

mod auth;
mod control;
mod early;
mod http_relay;
mod identity;
mod limiter;
mod pop;
mod registration;
mod rendezvous;
mod routes;

mod server;
mod standby;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{BrokerConfig, HybridConnection, Limits};
pub use error::RelayError;
pub use metrics::Counters;
pub use presence::{LocalPresence, Presence, Refused};
pub use server::ServeOptions;
pub use standby::Pool as StandbyPool;
pub use store::{AuditEvent, MemoryStore, SqliteStore, Store, StoreError};

/// How a request reached the broker; inserted by [`Broker::serve`]. A host app that nests
/// the router may insert it too, otherwise addresses default to `ws://` and no remote
/// endpoint is reported.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection used TLS.
    pub tls: bool,
}

/// Failures opening a broker's durable state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate authority could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) public_url: Option<String>,
    /// Path of `public_url` (e.g. `/relay` when nested there); token audiences may include it.
    pub(crate) mount: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) presence: Arc<dyn Presence>,
    pub(crate) rendezvous: Arc<rendezvous::Rendezvous>,
    pub(crate) limiter: limiter::AuthLimiter,
    /// Cancelled when shutdown starts: no new work, control channels close with 1001.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the drain bound is reached: relayed connections are cut.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) next_listener: AtomicU64,
    /// The certificate authority, when `[ca]` is configured.
    pub(crate) ca: Option<Arc<ca::CertificateAuthority>>,
    /// Lifetime of listener certificates (`[ca].cert_lifetime_hours`).
    pub(crate) ca_lifetime: std::time::Duration,
    /// What revocation closes, per certificate-authenticated listener.
    pub(crate) sessions: identity::Sessions,
    /// Proof-of-possession logins, when `[ca].proof_of_possession` is on.
    pub(crate) pop: Option<Arc<pop::PopLogins>>,
    pub(crate) counters: Counters,
    /// Standby sockets of our own listeners, by control channel.
    pub(crate) standby: standby::Pools,
    /// Host names per hybrid connection, when `[server].host_base` is set.
    pub(crate) hosts: Option<config::HostMode>,
}

/// A broker: shared state plus the ways to serve it. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker whose entities and rules come from the configuration.
    #[must_use]
    pub fn new(config: &BrokerConfig) -> Self {
        let store = Arc::new(MemoryStore::new(&config.hybrid_connections, &config.rules));
        Self::with_backends(
            config.limits.clone(),
            config.public_url.clone(),
            store,
            Arc::new(LocalPresence::default()),
        )
        .with_hosts(config.hosts.clone())
    }

    /// Serves hybrid connections by host name too (`[server].host_base`); call it before
    /// the broker is cloned.
    #[must_use]
    pub(crate) fn with_hosts(mut self, hosts: Option<config::HostMode>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hosts = hosts;
        }
        self
    }

    /// A broker from configuration, opening what it names: the SQLite store of `[store]`
    /// (else state stays in memory) and the certificate authority of `[ca]`, created on first
    /// start. Use this rather than [`Broker::new`] whenever those sections may be present.
    pub fn open(config: &BrokerConfig) -> Result<Self, OpenError> {
        let store: Arc<dyn Store> = match &config.store {
            Some(path) => Arc::new(SqliteStore::open(
                path,
                &config.hybrid_connections,
                &config.rules,
            )?),
            None => Arc::new(MemoryStore::new(&config.hybrid_connections, &config.rules)),
        };
        let mut broker = Self::with_backends(
            config.limits.clone(),
            config.public_url.clone(),
            store,
            Arc::new(LocalPresence::default()),
        )
        .with_hosts(config.hosts.clone());
        if let Some(ca) = &config.ca {
            let authority = ca::CertificateAuthority::load_or_create(
                &ca.dir,
                &ca.trust_domain,
                time::OffsetDateTime::now_utc(),
            )?;
            let logins = ca
                .proof_of_possession
                .then(|| pop::PopLogins::new(&authority).map(Arc::new))
                .transpose()?;
            if let Some(shared) = Arc::get_mut(&mut broker.shared) {
                shared.ca = Some(Arc::new(authority));
                shared.ca_lifetime = ca.cert_lifetime;
                shared.pop = logins;
            }
        }
        Ok(broker)
    }

    /// The certificate authority, when configured.
    #[must_use]
    pub fn ca(&self) -> Option<&ca::CertificateAuthority> {
        self.shared.ca.as_deref()
    }

    /// A TLS server configuration from PEM files that also verifies listener client
    /// certificates against this broker's CA, when one is configured (the certificate stays
    /// optional, so SAS clients share the port).
    pub fn server_tls(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Arc<rustls::ServerConfig>, OpenError> {
        let client_cas = match &self.shared.ca {
            Some(ca) => vec![ca.issuing_der()?],
            None => Vec::new(),
        };
        relay_io::tls::server_config_with_client_ca(cert, key, &client_cas)
            .map_err(|e| OpenError::Tls(e.to_string()))
    }

    /// The store (for administration and audit).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// A broker with chosen store and presence backends.
    #[must_use]
    pub fn with_backends(
        limits: Limits,
        public_url: Option<String>,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
    ) -> Self {
        let shared = Shared {
            rendezvous: Arc::new(rendezvous::Rendezvous::new(limits.max_pending_rendezvous)),
            limiter: limiter::AuthLimiter::new(limits.auth_failures_per_minute),
            limits,
            mount: public_url.as_deref().map(mount_path).unwrap_or_default(),
            public_url,
            store,
            presence,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_listener: AtomicU64::new(1),
            ca: None,
            ca_lifetime: std::time::Duration::from_secs(7 * 86_400),
            sessions: identity::Sessions::default(),
            pop: None,
            counters: Counters::default(),
            standby: standby::Pools::default(),
            hosts: None,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The axum router serving every relay path. Nest it with `nest_service` and set
    /// `public_url` to the prefix's external URL so rendezvous addresses point back to it.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.shared))
    }

    /// Number of listeners connected to a hybrid connection.
    #[must_use]
    pub fn listener_count(&self, hc: &str) -> usize {
        self.shared.presence.count(hc)
    }

    /// Counters for diagnostics.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Pending rendezvous entries (addresses and requests).
    #[must_use]
    pub fn pending_rendezvous(&self) -> usize {
        self.shared.rendezvous.len()
    }

    /// Starts closing: control channels get Close 1001 and relayed connections are told to end.
    pub fn begin_shutdown(&self) {
        self.shared.shutdown.cancel();
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

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// The path part of a URL: `wss://h:1/relay` → `/relay`.
fn mount_path(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    without_scheme
        .split_once('/')
        .map_or(String::new(), |(_, path)| {
            format!("/{}", path.trim_matches('/'))
        })
}

impl Shared {
    pub(crate) fn next_listener_id(&self) -> u64 {
        self.next_listener.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
