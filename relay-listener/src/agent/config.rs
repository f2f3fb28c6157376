//! The agent's TOML file, validated once into typed values. Errors name the file, the key
//! and the fix. Relative paths are taken from the file's directory.
//!
//! ```toml
//! [broker]
//! endpoint = "wss://relay.example.com:9400"
//! identity = "identity"                 # from `relay-listener register`; or the SAS keys:
//! # enrollment_token_file = "enroll.token"  # unattended: register on first start
//! # sas_key_name = "site-7"; sas_key_env = "RELAY_SAS_KEY"   (or sas_key = "...")
//! # connection_string_env = "RELAY_CONNECTION_STRING"
//! # proof_of_possession = false          # behind an L7 proxy that ends TLS
//! # ca_cert = "server-ca.pem"
//! # proxy = "http://user:password@proxy.corp:3128"   # else HTTPS_PROXY / ALL_PROXY / NO_PROXY
//! # no_proxy = "localhost,.internal"
//!
//! [agent]
//! # status_bind = "127.0.0.1:9401"       # local status endpoint for `relay-listener status`
//! # shutdown_drain_secs = 10
//! # instance = "site-7-gw1"             # survives restarts; default: a stable id in state_dir
//! # state_dir = "/var/lib/relay-agent"   # default: the identity directory, or $STATE_DIRECTORY
//!
//! [[endpoints]]
//! hc = "orders"
//! tcp = "127.0.0.1:5432"
//! # max_connections = 256                # more are refused with 503
//! # bandwidth_bytes_per_sec = 10000000   # each direction, shared by the endpoint
//! # standby = 3                          # sockets pre-opened to our broker; 0 = none
//!
//! [[endpoints]]
//! hc = "webui"
//! http = "http://127.0.0.1:8080/"
//!
//! [[endpoints]]
//! hc = "edge-7"
//! ports = { plc = "10.0.0.5:502", camera = "10.0.0.6:554" }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod sections;

/// Default bound on connections and requests in flight per endpoint.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Largest allowed `max_connections`.
pub const MAX_MAX_CONNECTIONS: u32 = 65_536;
pub use crate::standby::DEFAULT_STANDBY;

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    source_name: String,
    message: String,
}

/// How the agent proves itself to the broker.
#[derive(Clone)]
pub enum Credentials {
    /// A SAS rule and key.
    Sas {
        /// Rule name.
        key_name: String,
        /// The key.
        key: String,
    },
    /// A ready SAS token (a connection string's `SharedAccessSignature`); it is not renewed.
    SasToken(String),
    /// The certificate identity written by `relay-listener register`.
    Certificate {
        /// Its directory.
        identity: PathBuf,
        /// Prove the key by a signed login (broker behind a TLS-ending proxy).
        proof_of_possession: bool,
        /// A file holding a single-use enrollment token: with no identity yet, the agent
        /// registers itself on start (making its key in its own account), then deletes it.
        enrollment_token_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sas { key_name, .. } => write!(f, "Sas({key_name})"),
            Self::SasToken(_) => f.write_str("SasToken"),
            Self::Certificate { identity, .. } => write!(f, "Certificate({})", identity.display()),
        }
    }
}

/// What an endpoint forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP `host:port`.
    Tcp(String),
    /// An HTTP(S) base URL, reverse-proxied (WebSocket upgrades included).
    Http(String),
    /// Logical port names, each a TCP `host:port`.
    Ports(BTreeMap<String, String>),
}

/// One hybrid connection served by the agent.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The hybrid connection.
    pub hc: String,
    /// Where its connections go.
    pub target: Target,
    /// Connections and requests in flight at most.
    pub max_connections: u32,
    /// Bytes per second in each direction, shared by the endpoint's connections.
    pub bandwidth: Option<u64>,
    /// Rendezvous sockets kept open in advance, when the broker offers them.
    pub standby: usize,
}

/// The whole agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Broker base URL.
    pub endpoint: String,
    /// The credential.
    pub credentials: Credentials,
    /// Extra trusted root for the broker (and https backends).
    pub ca_cert: Option<PathBuf>,
    /// An explicit proxy URL and its bypass list; `None` uses the environment.
    pub proxy: Option<(String, String)>,
    /// Local status endpoint.
    pub status_bind: Option<SocketAddr>,
    /// How long in-flight connections may finish on shutdown.
    pub shutdown_drain: Duration,
    /// This agent's name across restarts (default: a stable id kept in `state_dir`).
    pub instance: Option<String>,
    /// Where the agent keeps its state (its instance id); default: the identity directory,
    /// else systemd's `$STATE_DIRECTORY`.
    pub state_dir: Option<PathBuf>,
    /// The endpoints, at least one.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    broker: RawBroker,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    endpoint: Option<String>,
    identity: Option<PathBuf>,
    proof_of_possession: Option<bool>,
    enrollment_token_file: Option<PathBuf>,
    sas_key_name: Option<String>,
    sas_key: Option<String>,
    sas_key_env: Option<String>,
    connection_string_env: Option<String>,
    ca_cert: Option<PathBuf>,
    proxy: Option<String>,
    no_proxy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    status_bind: Option<String>,
    shutdown_drain_secs: Option<u64>,
    instance: Option<String>,
    state_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    hc: String,
    tcp: Option<String>,
    http: Option<String>,
    ports: Option<BTreeMap<String, String>>,
    max_connections: Option<u32>,
    bandwidth_bytes_per_sec: Option<u64>,
    standby: Option<usize>,
}

impl AgentConfig {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &name, base, |v| std::env::var(v).ok())
    }

    /// Validates `text` (from `source_name`); paths are relative to `base`, and `*_env`
    /// keys are read through `env`.
    pub fn parse(
        text: &str,
        source_name: &str,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError {
            source_name: source_name.to_owned(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        let broker = sections::broker(raw.broker, base, &env, &invalid)?;
        let agent = sections::agent(raw.agent, base, &invalid)?;
        Ok(Self {
            endpoint: broker.endpoint,
            credentials: broker.credentials,
            ca_cert: broker.ca_cert,
            proxy: broker.proxy,
            status_bind: agent.status_bind,
            shutdown_drain: agent.shutdown_drain,
            instance: agent.instance,
            state_dir: agent.state_dir,
            endpoints: sections::endpoints(raw.endpoints, &invalid)?,
        })
    }
}

#[cfg(test)]
mod tests;
