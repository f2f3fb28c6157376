//! Broker configuration: the TOML file of the CLI contract, validated once into typed values.
//!
//! Unknown keys are errors that name the key, and so is setting both `key` and `key_env`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::sas::{Rights, SharedAccessKey};
use serde::Deserialize;

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
    /// The SQLite file of the durable store; `None` keeps state in memory.
    pub store: Option<PathBuf>,
    /// The certificate authority for listener identities; `None` disables it.
    pub ca: Option<CaConfig>,
    /// Host names per hybrid connection (host mode); `None` serves paths only.
    pub hosts: Option<HostMode>,
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

/// Every bound the broker enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Life of a single-use rendezvous address.
    pub accept_timeout: Duration,
    /// A sender gets 504 when no response starts within this, or a response body idles this long.
    pub http_request_timeout: Duration,
    /// Concurrent listeners per hybrid connection.
    pub max_listeners_per_hc: usize,
    /// Interval of broker pings on control channels; two silent intervals close the channel.
    pub ping_interval: Duration,
    /// How long after its token expires a control channel may stay open without renewal.
    pub token_grace: Duration,
    /// Rendezvous entries waiting for a listener, over all hybrid connections.
    pub max_pending_rendezvous: usize,
    /// Largest JSON control message accepted from a listener.
    pub max_control_message_bytes: usize,
    /// Read buffer per relayed socket direction; bounds relay memory per connection.
    pub relay_buffer_bytes: usize,
    /// What that buffer grows to once a transfer keeps filling it (bulk data costs fewer
    /// system calls); interactive and idle connections keep `relay_buffer_bytes`.
    pub relay_buffer_max_bytes: usize,
    /// Queue of control messages to one listener. A sender that finds it full waits, within
    /// its deadline, for room; past that it gets 503 with `Retry-After`.
    pub control_queue: usize,
    /// Client connections (TCP, before any request) the broker holds at once; past it new
    /// ones are closed at once and counted (`relay_connections_refused_total`).
    pub max_connections: usize,
    /// Relayed WebSocket connections at once, over all hybrid connections; past it a sender
    /// gets 503 with `Retry-After` (`relay_relays_refused_total`).
    pub max_relays: usize,
    /// Time allowed for graceful shutdown before connections are cut.
    pub shutdown_drain: Duration,
    /// Failed authentications per client and credential within a minute before throttling.
    pub auth_failures_per_minute: u32,
    /// Standby sockets one of our listeners may keep open in advance, so a sender is paired
    /// without the listener dialling back; 0 turns the extension off.
    pub standby_per_listener: usize,
    /// Idle standby sockets are retired (and replaced by the listener) after about this long.
    pub standby_max_age: Duration,
    /// Life of a browser session cookie after its last use; it never outlives the token that
    /// opened it.
    pub browser_session: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            accept_timeout: Duration::from_secs(30),
            http_request_timeout: Duration::from_secs(60),
            max_listeners_per_hc: relay_core::limits::DEFAULT_MAX_LISTENERS_PER_HC,
            ping_interval: Duration::from_secs(30),
            token_grace: Duration::from_secs(300),
            max_pending_rendezvous: 10_000,
            max_control_message_bytes: relay_core::limits::MAX_CONTROL_MESSAGE_BYTES,
            relay_buffer_bytes: 64 * 1024,
            relay_buffer_max_bytes: 256 * 1024,
            control_queue: 256,
            max_connections: 20_000,
            max_relays: 10_000,
            shutdown_drain: Duration::from_secs(10),
            auth_failures_per_minute: 20,
            standby_per_listener: 4,
            standby_max_age: Duration::from_secs(300),
            browser_session: Duration::from_secs(900),
        }
    }
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    accept_timeout_secs: Option<f64>,
    http_request_timeout_secs: Option<f64>,
    max_listeners_per_hc: Option<usize>,
    ping_interval_secs: Option<f64>,
    token_grace_secs: Option<f64>,
    max_pending_rendezvous: Option<usize>,
    max_control_message_bytes: Option<usize>,
    relay_buffer_bytes: Option<usize>,
    relay_buffer_max_bytes: Option<usize>,
    shutdown_drain_secs: Option<f64>,
    auth_failures_per_minute: Option<u32>,
    standby_per_listener: Option<usize>,
    standby_max_age_secs: Option<f64>,
    browser_session_secs: Option<f64>,
    control_queue: Option<usize>,
    max_connections: Option<usize>,
    max_relays: Option<usize>,
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
        Ok(Self {
            bind,
            public_url,
            tls,
            limits,
            hybrid_connections,
            rules,
            store: raw.store.map(|s| s.path),
            ca,
            hosts,
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

fn limits(raw: &RawLimits) -> Result<Limits, String> {
    let d = Limits::default();
    let secs = |v: Option<f64>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "{name} = {s}: must be a positive number of seconds"
        )),
    };
    let count = |v: Option<usize>, name: &str, default: usize, min: usize| match v {
        None => Ok(default),
        Some(n) if n >= min => Ok(n),
        Some(n) => Err(format!("{name} = {n}: must be at least {min}")),
    };
    let relay_buffer_bytes = count(
        raw.relay_buffer_bytes,
        "relay_buffer_bytes",
        d.relay_buffer_bytes,
        1024,
    )?;
    Ok(Limits {
        accept_timeout: secs(
            raw.accept_timeout_secs,
            "accept_timeout_secs",
            d.accept_timeout,
        )?,
        http_request_timeout: secs(
            raw.http_request_timeout_secs,
            "http_request_timeout_secs",
            d.http_request_timeout,
        )?,
        max_listeners_per_hc: count(
            raw.max_listeners_per_hc,
            "max_listeners_per_hc",
            d.max_listeners_per_hc,
            1,
        )?,
        ping_interval: secs(
            raw.ping_interval_secs,
            "ping_interval_secs",
            d.ping_interval,
        )?,
        token_grace: if raw.token_grace_secs == Some(0.0) {
            Duration::ZERO
        } else {
            secs(raw.token_grace_secs, "token_grace_secs", d.token_grace)?
        },
        max_pending_rendezvous: count(
            raw.max_pending_rendezvous,
            "max_pending_rendezvous",
            d.max_pending_rendezvous,
            1,
        )?,
        max_control_message_bytes: count(
            raw.max_control_message_bytes,
            "max_control_message_bytes",
            d.max_control_message_bytes,
            1024,
        )?,
        relay_buffer_bytes,
        relay_buffer_max_bytes: count(
            raw.relay_buffer_max_bytes,
            "relay_buffer_max_bytes",
            d.relay_buffer_max_bytes.max(relay_buffer_bytes),
            relay_buffer_bytes,
        )?,
        control_queue: count(raw.control_queue, "control_queue", d.control_queue, 1)?,
        max_connections: count(raw.max_connections, "max_connections", d.max_connections, 1)?,
        max_relays: count(raw.max_relays, "max_relays", d.max_relays, 1)?,
        shutdown_drain: secs(
            raw.shutdown_drain_secs,
            "shutdown_drain_secs",
            d.shutdown_drain,
        )?,
        auth_failures_per_minute: raw
            .auth_failures_per_minute
            .unwrap_or(d.auth_failures_per_minute)
            .max(1),
        standby_per_listener: match raw.standby_per_listener {
            Some(n) if n > relay_core::standby::MAX_STANDBY => {
                return Err(format!(
                    "standby_per_listener = {n}: must be at most {}",
                    relay_core::standby::MAX_STANDBY
                ));
            }
            n => n.unwrap_or(d.standby_per_listener),
        },
        standby_max_age: secs(
            raw.standby_max_age_secs,
            "standby_max_age_secs",
            d.standby_max_age,
        )?,
        browser_session: secs(
            raw.browser_session_secs,
            "browser_session_secs",
            d.browser_session,
        )?,
    })
}

/// Paths the broker serves itself (`/healthz`, `/readyz`, `/metrics`); no hybrid
/// connection may take these names.
pub const RESERVED_NAMES: [&str; 3] = ["healthz", "readyz", "metrics"];

/// A hybrid connection name, trimmed of slashes, or why it cannot be one.
pub(crate) fn checked_hc_name(raw: &str) -> Result<String, String> {
    let name = raw.trim_matches('/').to_owned();
    if name.is_empty()
        || name.len() > relay_core::address::MAX_NAME_LEN
        || name.contains(['?', '#', '$', ' ', '*'])
    {
        return Err(format!(
            "name '{raw}' is empty, too long or has ?, #, $, * or space"
        ));
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
        return Err(format!(
            "name '{name}' is reserved for the broker's own endpoint /{name}"
        ));
    }
    Ok(name)
}

fn hybrid_connections(raw: Vec<RawHc>) -> Result<Vec<HybridConnection>, String> {
    let mut out: Vec<HybridConnection> = Vec::with_capacity(raw.len());
    for hc in raw {
        let name = checked_hc_name(&hc.name).map_err(|e| format!("[[hybrid_connections]] {e}"))?;
        if out.iter().any(|h| h.name.eq_ignore_ascii_case(&name)) {
            return Err(format!(
                "[[hybrid_connections]] name '{name}' is defined twice"
            ));
        }
        out.push(HybridConnection {
            name,
            requires_client_authorization: hc.requires_client_authorization,
        });
    }
    Ok(out)
}

fn rule(raw: RawRule, hcs: &[HybridConnection]) -> Result<SharedAccessKey, String> {
    let at = format!("[[authorization_rules]] '{}'", raw.name);
    let key = match (raw.key, raw.key_env) {
        (Some(_), Some(_)) => return Err(format!("{at}: set key or key_env, not both")),
        (Some(key), None) => key,
        (None, Some(var)) => {
            std::env::var(&var).map_err(|_| format!("{at}: key_env {var} is not set"))?
        }
        (None, None) => return Err(format!("{at}: key or key_env is required")),
    };
    if key.is_empty() {
        return Err(format!("{at}: the key is empty"));
    }
    let mut rights = Rights::NONE;
    for r in &raw.rights {
        rights = rights.union(
            Rights::parse(r)
                .ok_or_else(|| format!("{at}: unknown right '{r}' (Listen, Send, Manage)"))?,
        );
    }
    if rights == Rights::NONE {
        return Err(format!(
            "{at}: rights must list at least one of Listen, Send, Manage"
        ));
    }
    if let Some(hc) = &raw.hybrid_connection {
        if !hcs
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(hc.trim_matches('/')))
        {
            return Err(format!("{at}: hybrid_connection '{hc}' is not defined"));
        }
    }
    Ok(SharedAccessKey {
        name: raw.name,
        key,
        secondary_key: raw.secondary_key,
        rights,
        hybrid_connection: raw
            .hybrid_connection
            .map(|h| h.trim_matches('/').to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[server]
bind = "127.0.0.1:0"
[limits]
accept_timeout_secs = 2
[[hybrid_connections]]
name = "a/b"
[[hybrid_connections]]
name = "open"
requires_client_authorization = false
[[authorization_rules]]
name = "root"
key = "k"
rights = ["Manage"]
[[authorization_rules]]
name = "l"
key = "k2"
rights = ["Listen"]
hybrid_connection = "a/b"
"#;

    #[test]
    fn parses_the_contract_example() {
        let c = BrokerConfig::parse(FULL, "t").unwrap();
        assert_eq!(c.limits.accept_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_listeners_per_hc, 25);
        assert!(!c.hybrid_connections[1].requires_client_authorization);
        assert!(c.rules[0].rights.contains(Rights::LISTEN));
        assert_eq!(c.rules[1].hybrid_connection.as_deref(), Some("a/b"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| BrokerConfig::parse(text, "f.toml").unwrap_err().to_string();
        assert!(err("[limits]\nbogus = 1").contains("bogus"));
        assert!(err("[server]\nport = 1").contains("port"));
        let both = "[[authorization_rules]]\nname='r'\nkey='k'\nkey_env='X'\nrights=['Send']";
        assert!(err(both).contains("key or key_env, not both"));
        assert!(err("[limits]\naccept_timeout_secs = -1").contains("accept_timeout_secs"));
        assert!(err("[server]\ntls_cert = 'c.pem'").contains("tls_key"));
        let scoped =
            "[[authorization_rules]]\nname='r'\nkey='k'\nrights=['Send']\nhybrid_connection='nope'";
        assert!(err(scoped).contains("'nope' is not defined"));
        assert!(
            err("[[authorization_rules]]\nname='r'\nkey='k'\nrights=['Read']")
                .contains("unknown right")
        );
    }

    #[test]
    fn store_and_ca_sections() {
        let c = BrokerConfig::parse(
            "[store]\npath = 'data/relay.db'\n[ca]\ndir = 'data/ca'\ncert_lifetime_hours = 24",
            "t",
        )
        .unwrap();
        assert_eq!(c.store.as_deref(), Some(Path::new("data/relay.db")));
        let ca = c.ca.unwrap();
        assert_eq!(
            (ca.cert_lifetime, ca.trust_domain.as_str()),
            (Duration::from_secs(86_400), "relay")
        );
        let err =
            BrokerConfig::parse("[ca]\ndir = 'x'\ncert_lifetime_hours = 0.1", "t").unwrap_err();
        assert!(err.to_string().contains("cert_lifetime_hours"));
        assert!(
            BrokerConfig::parse("[store]\nfile = 'x'", "t")
                .unwrap_err()
                .to_string()
                .contains("file")
        );
    }

    #[test]
    fn reserved_names_are_refused() {
        let err = BrokerConfig::parse("[[hybrid_connections]]\nname = 'metrics'", "t").unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn host_mode_is_validated() {
        let c = BrokerConfig::parse(
            "[server]\nhost_base = '*.relay.example.com'\n[[server.hosts]]\nname = 'Site-7-UI'\nhybrid_connection = 'site-7/ui'",
            "t",
        )
        .unwrap();
        let hosts = c.hosts.unwrap();
        assert_eq!(hosts.hc_for("site-7-ui"), "site-7/ui");
        assert_eq!(hosts.hc_for("a--b"), "a/b");
        let err = |text: &str| BrokerConfig::parse(text, "f.toml").unwrap_err().to_string();
        assert!(err("[server]\nhost_base = 'relay.example.com'").contains("host_base"));
        assert!(err("[[server.hosts]]\nname = 'a'\nhybrid_connection = 'a'").contains("host_base"));
        let table = |name: &str| {
            format!(
                "[server]\nhost_base = '*.r.example'\n[[server.hosts]]\nname = '{name}'\nhybrid_connection = 'x'"
            )
        };
        assert!(err(&table("a.b")).contains("DNS label"));
        assert!(err(&table("-a")).contains("DNS label"));
        assert!(err("[limits]\nbrowser_session_secs = 0").contains("browser_session_secs"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = BrokerConfig::parse("", "t").unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:9400");
        assert!(c.tls.is_none() && c.rules.is_empty());
    }
}
