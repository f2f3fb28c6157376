//! The listener agent: many endpoints from one configuration, each its own control channel
//! with its own limits, one credential and proxy for all, a local status endpoint, and a
//! graceful shutdown that stops accepting and lets in-flight connections finish up to a
//! deadline.

pub mod config;
mod enroll;
mod status;

use std::sync::Arc;

use relay_io::proxy::ProxyRules;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, ConfigError, Credentials, Endpoint, Target};
pub use enroll::enroll;
pub use status::{EndpointState, EndpointStatus, fetch_status};

use crate::forward::{PortMap, TcpForward};
use crate::handler::{Handler, IncomingConnection, RelayBody};
use crate::limits::{Gate, Limited, RateLimit};
use crate::reverse_proxy::HttpProxy;
use crate::{CertificateIdentity, Listener, ListenerConfig, SasKeySource};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The identity directory could not be loaded.
    #[error("loading the identity (run `relay-listener register` first): {0}")]
    Identity(#[from] crate::IdentityError),
    /// TLS, proxy or backend settings were unusable.
    #[error(transparent)]
    Setup(#[from] relay_io::WsError),
    /// Registering with the enrollment token failed for good.
    #[error("enrollment: {0}")]
    Enrollment(String),
    /// The status endpoint could not be bound.
    #[error("binding the status endpoint {addr}: {source}")]
    Status {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What one endpoint does with its connections.
enum Forwarder {
    Tcp(TcpForward),
    Http(HttpProxy),
    Ports(PortMap),
}

impl Handler for Forwarder {
    async fn on_connection(&self, conn: IncomingConnection) {
        match self {
            Self::Tcp(h) => h.on_connection(conn).await,
            Self::Http(h) => h.on_connection(conn).await,
            Self::Ports(h) => h.on_connection(conn).await,
        }
    }

    async fn on_request(&self, req: http::Request<RelayBody>) -> http::Response<RelayBody> {
        match self {
            Self::Http(h) => h.on_request(req).await,
            Self::Tcp(h) => h.on_request(req).await,
            Self::Ports(h) => h.on_request(req).await,
        }
    }
}

/// A running endpoint: its listener and what is in flight on it.
struct Running {
    endpoint: Endpoint,
    listener: Arc<Listener>,
    gate: Gate,
    handler: Arc<Limited<Forwarder>>,
}

/// The agent, built from an [`AgentConfig`].
pub struct Agent {
    config: AgentConfig,
    identity: Option<Arc<CertificateIdentity>>,
    proxy: Option<Arc<ProxyRules>>,
    /// What renewal presents: the certificate over mTLS, or nothing (proof of possession).
    renew_tls: Option<Arc<relay_io::rustls::ClientConfig>>,
    running: Vec<Running>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("endpoint", &self.config.endpoint)
            .field("endpoints", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// The credential every endpoint's listener presents, loaded once.
fn credential(credentials: &Credentials) -> Result<crate::Credential, AgentError> {
    Ok(match credentials {
        Credentials::Certificate {
            identity,
            proof_of_possession,
            ..
        } => crate::Credential::Certificate(Arc::new(
            CertificateIdentity::load(identity)?.with_proof_of_possession(*proof_of_possession),
        )),
        Credentials::Sas { key_name, key } => {
            crate::Credential::Token(Arc::new(SasKeySource::new(key_name.clone(), key.clone())))
        }
        Credentials::SasToken(token) => {
            crate::Credential::Token(Arc::new(crate::StaticToken(token.clone())))
        }
    })
}

impl Agent {
    /// Loads the credential and builds every endpoint; nothing connects yet.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let proxy = proxy_rules(&config)?;
        let ca = config.ca_cert.as_deref();
        let credential = credential(&config.credentials)?;
        let plain_tls = relay_io::tls::client_config(ca)?;
        let label = instance_label(&config);
        let mut running = Vec::new();
        for endpoint in &config.endpoints {
            let mut listener = match &credential {
                crate::Credential::Certificate(identity) => ListenerConfig::with_certificate(
                    config.endpoint.clone(),
                    endpoint.hc.clone(),
                    Arc::clone(identity),
                    ca,
                )
                .map_err(|e| relay_io::WsError::Tls(e.to_string()))?,
                crate::Credential::Token(source) => {
                    let mut c = ListenerConfig::new(
                        config.endpoint.clone(),
                        endpoint.hc.clone(),
                        Arc::clone(source),
                    );
                    c.tls = Some(Arc::clone(&plain_tls));
                    c
                }
            };
            listener.proxy = proxy.clone();
            listener.instance = Some(instance_name(&label, endpoint));
            listener.standby = endpoint.standby;
            // The endpoint's gate refuses past max_connections with its own count; the
            // library's bound only backs it up, so it is never the lower one.
            listener.max_in_flight =
                (endpoint.max_connections as usize).max(crate::DEFAULT_MAX_IN_FLIGHT);
            let gate = Gate::new(endpoint.max_connections);
            let forwarder = forwarder(endpoint, &plain_tls)?;
            running.push(Running {
                endpoint: endpoint.clone(),
                listener: Arc::new(Listener::new(listener)),
                handler: Arc::new(Limited::new(forwarder, gate.clone())),
                gate,
            });
        }
        let identity = match credential {
            crate::Credential::Certificate(identity) => Some(identity),
            crate::Credential::Token(_) => None,
        };
        let renew_tls = identity
            .as_ref()
            .map(|identity| identity.client_config(ca))
            .transpose()?;
        Ok(Self {
            config,
            identity,
            proxy,
            renew_tls,
            running,
        })
    }

    /// Runs every endpoint until `shutdown`, then stops accepting (control channels close)
    /// and waits up to the drain deadline for in-flight connections.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let statuses: Vec<_> = self
            .running
            .iter()
            .map(|r| (r.endpoint.clone(), r.listener.status(), r.gate.clone()))
            .collect();
        if let Some(addr) = self.config.status_bind {
            let server = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Status { addr, source })?;
            tracing::info!(%addr, "status endpoint");
            tokio::spawn(status::serve(server, statuses, shutdown.clone()));
        }
        if let (Some(identity), Some(tls)) = (&self.identity, &self.renew_tls) {
            tokio::spawn(keep_renewed(
                Arc::clone(identity),
                self.config.endpoint.clone(),
                Arc::clone(tls),
                self.proxy.clone(),
                shutdown.clone(),
            ));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for r in &self.running {
            let (listener, handler, stop) = (
                Arc::clone(&r.listener),
                Arc::clone(&r.handler),
                shutdown.clone(),
            );
            tasks.spawn(async move { listener.run(handler, stop).await });
        }
        while tasks.join_next().await.is_some() {}
        let drain = self.config.shutdown_drain;
        let waits = self.running.iter().map(|r| async move {
            if !r.gate.drain(drain).await {
                tracing::warn!(hc = %r.endpoint.hc, in_flight = r.gate.in_flight(), "drain deadline reached; cutting connections");
            }
        });
        futures_util::future::join_all(waits).await;
        Ok(())
    }
}

/// What the agent calls itself on a hybrid connection: its label plus the endpoint, so
/// restarts replace exactly their own channels.
fn instance_name(label: &str, endpoint: &Endpoint) -> String {
    let mut name = format!("{label}/{}", endpoint.hc);
    name.truncate(relay_core::control::MAX_INSTANCE_LEN);
    name.retain(|c| c.is_ascii_graphic());
    name
}

/// `[agent].instance`, else `<host name>~<id>` with the stable id kept in the state
/// directory: two agents on one host, or cloned machines, differ although their host names
/// do not. Without a state directory, the host name alone (as before).
fn instance_label(config: &AgentConfig) -> String {
    if let Some(instance) = &config.instance {
        return instance.clone();
    }
    let dir = config
        .state_dir
        .clone()
        .or_else(|| match &config.credentials {
            Credentials::Certificate { identity, .. } => Some(identity.clone()),
            _ => std::env::var_os("STATE_DIRECTORY").and_then(|d| std::env::split_paths(&d).next()),
        });
    let Some(dir) = dir else {
        tracing::warn!(
            "no state directory ([agent].state_dir or --state-dir): naming this agent by its host name only; two agents with the same host name would replace each other"
        );
        return hostname();
    };
    match stable_id(&dir) {
        Ok(id) => format!("{}~{id}", hostname()),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the instance id; naming this agent by its host name only");
            hostname()
        }
    }
}

/// The id in `dir/instance-id`, made on first use.
fn stable_id(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("instance-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if (8..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_owned());
        }
    }
    std::fs::create_dir_all(dir)?;
    let id: String = (0..8)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = dir.join("instance-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

fn hostname() -> String {
    let from_file = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_file
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay-agent".into())
}

/// Enrolls if needed, builds the agent and runs it until `shutdown`.
pub async fn run_config(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    enroll(&config, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    Agent::new(config)?.run(shutdown).await
}

fn proxy_rules(config: &AgentConfig) -> Result<Option<Arc<ProxyRules>>, relay_io::WsError> {
    Ok(match &config.proxy {
        Some((url, no_proxy)) => Some(ProxyRules::new(url, no_proxy)?),
        None => Some(ProxyRules::from_env()?).filter(|r| *r != ProxyRules::default()),
    }
    .map(Arc::new))
}

fn forwarder(
    endpoint: &Endpoint,
    tls: &Arc<relay_io::rustls::ClientConfig>,
) -> Result<Forwarder, relay_io::WsError> {
    // One bandwidth budget per direction for the endpoint, whichever port a connection uses.
    let limits = endpoint
        .bandwidth
        .map(|rate| (RateLimit::new(rate), RateLimit::new(rate)));
    let tcp = |target: &str| {
        let mut forward = TcpForward::new(target);
        if let Some((to, from)) = &limits {
            forward.to_target = Some(Arc::clone(to));
            forward.from_target = Some(Arc::clone(from));
        }
        forward
    };
    Ok(match &endpoint.target {
        Target::Tcp(target) => Forwarder::Tcp(tcp(target)),
        Target::Http(base) => {
            Forwarder::Http(HttpProxy::new(&endpoint.hc, base, Some(Arc::clone(tls)))?)
        }
        Target::Ports(ports) => Forwarder::Ports(PortMap::new(
            ports
                .iter()
                .map(|(name, target)| (name.clone(), tcp(target)))
                .collect(),
        )),
    })
}

/// Renews the certificate in the background; a refusal is final, so say what to do.
async fn keep_renewed(
    identity: Arc<CertificateIdentity>,
    endpoint: String,
    tls: Arc<relay_io::rustls::ClientConfig>,
    proxy: Option<Arc<ProxyRules>>,
    shutdown: CancellationToken,
) {
    if let Err(e) = identity.keep_renewed(endpoint, tls, proxy, shutdown).await {
        tracing::error!(error = %e, "certificate renewal refused: the listener was revoked or its person lost the right; it keeps listening until the certificate expires, then register it again");
    }
}
