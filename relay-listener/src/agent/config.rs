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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
        let b = raw.broker;
        let from_env = |key: &str, var: &str| {
            env(var).ok_or_else(|| {
                invalid(format!(
                    "[broker].{key} = \"{var}\": that variable is not set"
                ))
            })
        };
        let connection_string = b
            .connection_string_env
            .as_deref()
            .map(|var| from_env("connection_string_env", var))
            .transpose()?
            .map(|cs| {
                relay_core::connection_string::ConnectionString::parse(&cs)
                    .map_err(|e| invalid(format!("[broker].connection_string_env: {e}")))
            })
            .transpose()?;
        let endpoint = match (&b.endpoint, &connection_string) {
            (Some(e), _) => e.clone(),
            (None, Some(cs)) => cs.ws_endpoint(),
            (None, None) => {
                return Err(invalid(
                    "[broker].endpoint is required (e.g. \"wss://relay.example.com\")".into(),
                ));
            }
        };
        let key = match (&b.sas_key, &b.sas_key_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "[broker]: give sas_key or sas_key_env, not both".into(),
                ));
            }
            (Some(k), None) => Some(k.clone()),
            (None, Some(var)) => Some(from_env("sas_key_env", var)?),
            (None, None) => connection_string.as_ref().and_then(|cs| cs.key.clone()),
        };
        let key_name = b.sas_key_name.clone().or_else(|| {
            connection_string
                .as_ref()
                .and_then(|cs| cs.key_name.clone())
        });
        let credentials = match (b.identity, key_name, key) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "[broker]: identity replaces the SAS key; give one or the other".into(),
                ));
            }
            (Some(dir), None, None) => Credentials::Certificate {
                identity: base.join(dir),
                proof_of_possession: b.proof_of_possession.unwrap_or(false),
                enrollment_token_file: b.enrollment_token_file.map(|f| base.join(f)),
            },
            (None, Some(key_name), Some(key)) => Credentials::Sas { key_name, key },
            (None, None, None)
                if connection_string
                    .as_ref()
                    .is_some_and(|cs| cs.signature.is_some()) =>
            {
                Credentials::SasToken(
                    connection_string
                        .and_then(|cs| cs.signature)
                        .unwrap_or_default(),
                )
            }
            (None, _, _) => {
                return Err(invalid("[broker]: give identity (from `relay-listener register`) or sas_key_name with sas_key or sas_key_env".into()));
            }
        };
        if b.proof_of_possession.is_some()
            && !matches!(credentials, Credentials::Certificate { .. })
        {
            return Err(invalid(
                "[broker].proof_of_possession needs identity".into(),
            ));
        }
        if b.no_proxy.is_some() && b.proxy.is_none() {
            return Err(invalid(
                "[broker].no_proxy needs proxy (or use NO_PROXY with HTTPS_PROXY)".into(),
            ));
        }
        if let Some(proxy) = &b.proxy {
            relay_io::proxy::Proxy::parse(proxy)
                .map_err(|e| invalid(format!("[broker].proxy: {e}")))?;
        }
        let status_bind = raw
            .agent
            .status_bind
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    invalid(format!(
                        "[agent].status_bind = \"{s}\": use ip:port, e.g. 127.0.0.1:9401"
                    ))
                })
            })
            .transpose()?;
        let drain = raw.agent.shutdown_drain_secs.unwrap_or(10);
        if drain > 3600 {
            return Err(invalid(format!(
                "[agent].shutdown_drain_secs = {drain}: at most 3600"
            )));
        }
        let instance = raw.agent.instance;
        if instance.as_ref().is_some_and(|i| {
            i.is_empty() || i.len() > 64 || !i.chars().all(|c| c.is_ascii_graphic())
        }) {
            return Err(invalid(
                "[agent].instance: 1 to 64 visible ASCII characters".into(),
            ));
        }
        let endpoints = endpoints(raw.endpoints, &invalid)?;
        Ok(Self {
            endpoint,
            credentials,
            ca_cert: b.ca_cert.map(|p| base.join(p)),
            proxy: b.proxy.map(|p| (p, b.no_proxy.unwrap_or_default())),
            status_bind,
            shutdown_drain: Duration::from_secs(drain),
            instance,
            state_dir: raw.agent.state_dir.map(|d| base.join(d)),
            endpoints,
        })
    }
}

fn endpoints(
    raw: Vec<RawEndpoint>,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<Vec<Endpoint>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "no [[endpoints]]: add one with hc and tcp, http or ports".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("[[endpoints]] #{} (hc = \"{}\")", i + 1, e.hc);
            let hc = e.hc.trim_matches('/').to_owned();
            if hc.is_empty() {
                return Err(invalid(format!("{at}: hc is empty")));
            }
            if !seen.insert(hc.clone()) {
                return Err(invalid(format!(
                    "{at}: hc appears twice; use ports for several targets on one hybrid connection"
                )));
            }
            let target = match (e.tcp, e.http, e.ports) {
                (Some(tcp), None, None) => Target::Tcp(
                    host_port(&tcp)
                        .map_err(|why| invalid(format!("{at}: tcp = \"{tcp}\": {why}")))?,
                ),
                (None, Some(http), None) => {
                    if !(http.starts_with("http://") || http.starts_with("https://")) {
                        return Err(invalid(format!(
                            "{at}: http = \"{http}\": use an http:// or https:// URL"
                        )));
                    }
                    Target::Http(http)
                }
                (None, None, Some(ports)) => {
                    if ports.is_empty() {
                        return Err(invalid(format!("{at}: ports is empty")));
                    }
                    for (name, target) in &ports {
                        if name.is_empty() || name.contains(['/', '?', '#']) {
                            return Err(invalid(format!(
                                "{at}: port name \"{name}\": no '/', '?' or '#'"
                            )));
                        }
                        host_port(target).map_err(|why| {
                            invalid(format!("{at}: ports.{name} = \"{target}\": {why}"))
                        })?;
                    }
                    Target::Ports(ports)
                }
                _ => {
                    return Err(invalid(format!(
                        "{at}: give exactly one of tcp, http or ports"
                    )));
                }
            };
            let max_connections = e.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
            if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
                return Err(invalid(format!(
                    "{at}: max_connections = {max_connections}: 1 to {MAX_MAX_CONNECTIONS}"
                )));
            }
            if e.bandwidth_bytes_per_sec == Some(0) {
                return Err(invalid(format!(
                    "{at}: bandwidth_bytes_per_sec = 0: leave it out for no limit"
                )));
            }
            if matches!(target, Target::Http(_)) && e.bandwidth_bytes_per_sec.is_some() {
                return Err(invalid(format!(
                    "{at}: bandwidth_bytes_per_sec applies to tcp and ports endpoints"
                )));
            }
            let standby = e.standby.unwrap_or(DEFAULT_STANDBY);
            if standby > relay_core::standby::MAX_STANDBY {
                return Err(invalid(format!(
                    "{at}: standby = {standby}: 0 to {}",
                    relay_core::standby::MAX_STANDBY
                )));
            }
            Ok(Endpoint {
                hc,
                target,
                max_connections,
                bandwidth: e.bandwidth_bytes_per_sec,
                standby,
            })
        })
        .collect()
}

fn host_port(text: &str) -> Result<String, &'static str> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(text.to_owned())
        }
        _ => Err("use host:port"),
    }
}

#[cfg(test)]
mod tests;
