//! Broker configuration: the TOML file of the CLI contract, validated once into typed values.
//!
//! Unknown keys are errors that name the key, and so is setting both `key` and `key_env`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::sas::SharedAccessKey;
use serde::Deserialize;

mod cluster;
mod entities;
mod limits;
#[cfg(test)]
mod tests;

pub use cluster::{ClusterConfig, MAX_NODE_ID_LEN, MIN_SECRET_LEN, is_node_id};
pub use entities::RESERVED_NAMES;
pub(crate) use entities::checked_hc_name;
use entities::{hybrid_connections, rule};
pub use limits::Limits;
use limits::{RawLimits, limits};

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said, with the key and line.
        message: String,
    },
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Validated broker configuration.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Address the binary binds; libraries take a bound listener instead.
    pub bind: SocketAddr,
    /// Base of `accept`/`request` addresses; `None` = the listener's own scheme and Host.
    pub public_url: Option<String>,
    /// PEM certificate chain and key for TLS; `None` = plain ws/http.
    pub tls: Option<TlsFiles>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Hybrid connections that exist.
    pub hybrid_connections: Vec<HybridConnection>,
    /// SAS rules.
    pub rules: Vec<SharedAccessKey>,
    /// Where the durable state lives; `None` keeps it in memory.
    pub store: Option<StoreLocation>,
    /// The certificate authority for listener identities; `None` disables it.
    pub ca: Option<CaConfig>,
    /// Host names per hybrid connection (host mode); `None` serves paths only.
    pub hosts: Option<HostMode>,
    /// This node's place in a cluster; `None` is a single broker.
    pub cluster: Option<ClusterConfig>,
}

/// Host mode: `[server].host_base` and `[[server.hosts]]`. A request whose `Host` is a label
/// under the base goes to that label's hybrid connection with its path untouched.
#[derive(Clone, Debug)]
pub struct HostMode {
    /// The wildcard base, `*.relay.example.com`.
    pub base: relay_core::web::HostBase,
    /// Labels mapped by table, which win over the rule (`/` written `--`).
    pub table: Vec<(String, String)>,
}

impl HostMode {
    /// The hybrid connection name a label stands for: the table's, else by the rule.
    #[must_use]
    pub fn hc_for(&self, label: &str) -> String {
        let label = label.to_ascii_lowercase();
        self.table.iter().find(|(l, _)| *l == label).map_or_else(
            || relay_core::web::hc_for_label(&label),
            |(_, hc)| hc.clone(),
        )
    }
}

/// `[ca]`: where the CA lives and what it issues.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// Directory of the root and issuing CA files, created on first start.
    pub dir: PathBuf,
    /// Lifetime of listener certificates.
    pub cert_lifetime: Duration,
    /// Trust domain in listener SAN URIs (`spiffe://<domain>/listener/<id>`).
    pub trust_domain: String,
    /// Whether listeners behind an L7 proxy that ends TLS may log in by proof of possession
    /// of their certificate's key (off by default: mTLS to the broker is stronger).
    pub proof_of_possession: bool,
}

/// Paths of the server certificate chain and key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A hybrid connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HybridConnection {
    /// Name; may contain `/`.
    pub name: String,
    /// Whether senders need a Send token (Azure's `requiresClientAuthorization`).
    pub requires_client_authorization: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    hybrid_connections: Vec<RawHc>,
    #[serde(default)]
    authorization_rules: Vec<RawRule>,
    store: Option<RawStore>,
    ca: Option<RawCa>,
    cluster: Option<cluster::RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    url: Option<String>,
    password_env: Option<String>,
}

/// `[store]`: an embedded SQLite file, or a PostgreSQL database the nodes of a cluster share.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// `path = "relay.db"`.
    Sqlite(PathBuf),
    /// `url = "postgres://…"` (its `Debug` leaves the password out).
    Postgres(Box<tokio_postgres::Config>),
}

/// Checks `[store]`: exactly one of `path` and `url`; a URL that parses, names a database,
/// and asks for no TLS this build cannot give; the password from `password_env` if named.
fn store_location(
    raw: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StoreLocation, String> {
    let url = match (raw.path, raw.url) {
        (Some(path), None) => {
            if raw.password_env.is_some() {
                return Err("[store].password_env goes with url, not path".into());
            }
            return Ok(StoreLocation::Sqlite(path));
        }
        (None, Some(url)) => url,
        (Some(_), Some(_)) => {
            return Err("[store]: give path (SQLite) or url (PostgreSQL), not both".into());
        }
        (None, None) => {
            return Err(
                "[store] needs path = \"relay.db\" (SQLite) or url = \"postgres://user@host/db\" (PostgreSQL)"
                    .into(),
            );
        }
    };
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(format!(
            "[store].url must start with postgres:// (for example \"postgres://relay@db.example.com/relay\"), not {:?}",
            url.split(':').next().unwrap_or_default()
        ));
    }
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("[store].url is not a PostgreSQL URL: {e}"))?;
    if config.get_dbname().is_none() {
        return Err("[store].url names no database (postgres://user@host/DATABASE)".into());
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err("[store].url asks for sslmode=require, and this broker does not speak TLS to PostgreSQL yet: reach the database over a private network or a local socket, or through a TLS tunnel, with sslmode=disable or prefer".into());
    }
    if let Some(var) = raw.password_env {
        let password = env(&var)
            .ok_or_else(|| format!("[store].password_env = \"{var}\": that variable is not set"))?;
        config.password(password);
    }
    Ok(StoreLocation::Postgres(Box::new(config)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    dir: PathBuf,
    cert_lifetime_hours: Option<f64>,
    trust_domain: Option<String>,
    proof_of_possession: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    bind: Option<String>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    host_base: Option<String>,
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    hybrid_connection: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHc {
    name: String,
    #[serde(default = "yes")]
    requires_client_authorization: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    key: Option<String>,
    key_env: Option<String>,
    secondary_key: Option<String>,
    rights: Vec<String>,
    hybrid_connection: Option<String>,
}

impl BrokerConfig {
    /// Loads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let invalid = |msg: String| ConfigError::Invalid(format!("{origin}: {msg}"));
        let bind = raw.server.bind.as_deref().unwrap_or("127.0.0.1:9400");
        let bind = bind
            .parse()
            .map_err(|_| invalid(format!("[server].bind: '{bind}' is not host:port")))?;
        let tls = match (raw.server.tls_cert, raw.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "[server]: set both tls_cert and tls_key, or neither".into(),
                ));
            }
        };
        let public_url = raw
            .server
            .public_url
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(url) = &public_url {
            if !["ws://", "wss://", "http://", "https://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err(invalid(format!(
                    "[server].public_url: '{url}' must start with ws://, wss://, http:// or https://"
                )));
            }
        }
        let limits = limits(&raw.limits).map_err(|m| invalid(format!("[limits].{m}")))?;
        let hybrid_connections = hybrid_connections(raw.hybrid_connections).map_err(invalid)?;
        let rules = raw
            .authorization_rules
            .into_iter()
            .map(|r| rule(r, &hybrid_connections))
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let ca = raw.ca.map(|ca| ca_config(ca, &invalid)).transpose()?;
        let hosts = host_mode(raw.server.host_base, raw.server.hosts).map_err(invalid)?;
        let env = |var: &str| std::env::var(var).ok();
        let store = raw
            .store
            .map(|s| store_location(s, &env))
            .transpose()
            .map_err(invalid)?;
        let cluster = raw
            .cluster
            .map(|c| cluster::cluster(c, &env))
            .transpose()
            .map_err(invalid)?;
        if cluster.is_some() && !matches!(store, Some(StoreLocation::Postgres(_))) {
            return Err(invalid(
                "[cluster] needs the store every node shares: [store] url = \"postgres://relay@db.example.com/relay\"".into(),
            ));
        }
        Ok(Self {
            bind,
            public_url,
            tls,
            limits,
            hybrid_connections,
            rules,
            store,
            ca,
            hosts,
            cluster,
        })
    }
}

fn host_mode(base: Option<String>, table: Vec<RawHost>) -> Result<Option<HostMode>, String> {
    let Some(base) = base else {
        if table.is_empty() {
            return Ok(None);
        }
        return Err(
            "[[server.hosts]] needs [server].host_base (for example \"*.relay.example.com\")"
                .into(),
        );
    };
    let base =
        relay_core::web::HostBase::parse(&base).map_err(|e| format!("[server].host_base {e}"))?;
    let mut mapped: Vec<(String, String)> = Vec::with_capacity(table.len());
    for host in table {
        let label = host.name.to_ascii_lowercase();
        if !relay_core::web::is_host_label(&label) {
            return Err(format!(
                "[[server.hosts]] name '{}': one DNS label of letters, digits and '-' (at most 63)",
                host.name
            ));
        }
        if mapped.iter().any(|(l, _)| *l == label) {
            return Err(format!("[[server.hosts]] name '{label}' is mapped twice"));
        }
        let hc = checked_hc_name(&host.hybrid_connection)
            .map_err(|e| format!("[[server.hosts]] '{label}': hybrid_connection {e}"))?;
        mapped.push((label, hc));
    }
    Ok(Some(HostMode {
        base,
        table: mapped,
    }))
}

fn ca_config(
    raw: RawCa,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<CaConfig, ConfigError> {
    let hours = raw.cert_lifetime_hours.unwrap_or(168.0);
    // The registration design allows 1 hour to 30 days.
    if !(1.0..=720.0).contains(&hours) {
        return Err(invalid(format!(
            "[ca].cert_lifetime_hours = {hours}: must be between 1 and 720"
        )));
    }
    let trust_domain = raw.trust_domain.unwrap_or_else(|| "relay".into());
    if trust_domain.is_empty()
        || !trust_domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err(invalid(format!(
            "[ca].trust_domain = '{trust_domain}': use letters, digits, '-' and '.'"
        )));
    }
    Ok(CaConfig {
        dir: raw.dir,
        cert_lifetime: Duration::from_secs_f64(hours * 3600.0),
        trust_domain,
        proof_of_possession: raw.proof_of_possession.unwrap_or(false),
    })
}

/// The path part of a public URL, where the broker is mounted: `wss://h:1/relay` →
/// `/relay`; empty without a URL or a path.
#[must_use]
pub fn mount_path(url: Option<&str>) -> String {
    let Some(url) = url else {
        return String::new();
    };
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    without_scheme
        .split_once('/')
        .map_or(String::new(), |(_, path)| {
            format!("/{}", path.trim_matches('/'))
        })
}
