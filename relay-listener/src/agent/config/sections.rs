//! Each section of the agent's file, validated into its typed values: one function per
//! section, one per endpoint, so that each error is raised next to the key it names.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ConfigError, Credentials, DEFAULT_MAX_CONNECTIONS, DEFAULT_STANDBY, Endpoint,
    MAX_MAX_CONNECTIONS, RawAgent, RawBroker, RawEndpoint, Target,
};

/// `[broker]`, validated.
pub(super) struct Broker {
    pub(super) endpoint: String,
    pub(super) credentials: Credentials,
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) proxy: Option<(String, String)>,
}

/// `[agent]`, validated.
pub(super) struct Agent {
    pub(super) status_bind: Option<SocketAddr>,
    pub(super) shutdown_drain: Duration,
    pub(super) instance: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
}

type Invalid<'a> = &'a dyn Fn(String) -> ConfigError;

/// `[broker]`: the endpoint, exactly one credential (from keys, variables or a connection
/// string), the CA and the proxy.
pub(super) fn broker(
    b: RawBroker,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: Invalid<'_>,
) -> Result<Broker, ConfigError> {
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
    let token = connection_string.and_then(|cs| cs.signature);
    let credentials = credentials(&b, base, key_name, key, token, invalid)?;
    Ok(Broker {
        endpoint,
        credentials,
        proxy: proxy(&b, invalid)?,
        ca_cert: b.ca_cert.map(|p| base.join(p)),
    })
}

/// `[broker].proxy` and `no_proxy`, checked: (proxy URL, no-proxy list).
fn proxy(b: &RawBroker, invalid: Invalid<'_>) -> Result<Option<(String, String)>, ConfigError> {
    if b.no_proxy.is_some() && b.proxy.is_none() {
        return Err(invalid(
            "[broker].no_proxy needs proxy (or use NO_PROXY with HTTPS_PROXY)".into(),
        ));
    }
    let Some(proxy) = &b.proxy else {
        return Ok(None);
    };
    relay_io::proxy::Proxy::parse(proxy).map_err(|e| invalid(format!("[broker].proxy: {e}")))?;
    Ok(Some((
        proxy.clone(),
        b.no_proxy.clone().unwrap_or_default(),
    )))
}

/// Exactly one credential: a certificate identity, a SAS rule and key, or a ready token.
fn credentials(
    b: &RawBroker,
    base: &Path,
    key_name: Option<String>,
    key: Option<String>,
    token: Option<String>,
    invalid: Invalid<'_>,
) -> Result<Credentials, ConfigError> {
    let credentials = match (&b.identity, key_name, key, token) {
        (Some(_), Some(_), _, _) | (Some(_), _, Some(_), _) => {
            return Err(invalid(
                "[broker]: identity replaces the SAS key; give one or the other".into(),
            ));
        }
        (Some(dir), None, None, _) => Credentials::Certificate {
            identity: base.join(dir),
            proof_of_possession: b.proof_of_possession.unwrap_or(false),
            enrollment_token_file: b.enrollment_token_file.as_ref().map(|f| base.join(f)),
        },
        (None, Some(key_name), Some(key), _) => Credentials::Sas { key_name, key },
        (None, None, None, Some(token)) => Credentials::SasToken(token),
        (None, _, _, _) => {
            return Err(invalid("[broker]: give identity (from `relay-listener register`) or sas_key_name with sas_key or sas_key_env".into()));
        }
    };
    if b.proof_of_possession.is_some() && !matches!(credentials, Credentials::Certificate { .. }) {
        return Err(invalid(
            "[broker].proof_of_possession needs identity".into(),
        ));
    }
    Ok(credentials)
}

pub(super) fn agent(a: RawAgent, base: &Path, invalid: Invalid<'_>) -> Result<Agent, ConfigError> {
    let status_bind = a
        .status_bind
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "[agent].status_bind = \"{s}\": use ip:port, e.g. 127.0.0.1:9401"
                ))
            })
        })
        .transpose()?;
    let drain = a.shutdown_drain_secs.unwrap_or(10);
    if drain > 3600 {
        return Err(invalid(format!(
            "[agent].shutdown_drain_secs = {drain}: at most 3600"
        )));
    }
    if a.instance
        .as_ref()
        .is_some_and(|i| i.is_empty() || i.len() > 64 || !i.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(invalid(
            "[agent].instance: 1 to 64 visible ASCII characters".into(),
        ));
    }
    Ok(Agent {
        status_bind,
        shutdown_drain: Duration::from_secs(drain),
        instance: a.instance,
        state_dir: a.state_dir.map(|d| base.join(d)),
    })
}

pub(super) fn endpoints(
    raw: Vec<RawEndpoint>,
    invalid: Invalid<'_>,
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
            endpoint(hc, e, &|why| invalid(format!("{at}: {why}")))
        })
        .collect()
}

/// One `[[endpoints]]` entry; `invalid` prefixes its position.
fn endpoint(hc: String, e: RawEndpoint, invalid: Invalid<'_>) -> Result<Endpoint, ConfigError> {
    let target = target(e.tcp, e.http, e.ports, invalid)?;
    let max_connections = e.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
        return Err(invalid(format!(
            "max_connections = {max_connections}: 1 to {MAX_MAX_CONNECTIONS}"
        )));
    }
    if e.bandwidth_bytes_per_sec == Some(0) {
        return Err(invalid(
            "bandwidth_bytes_per_sec = 0: leave it out for no limit".into(),
        ));
    }
    if matches!(target, Target::Http(_)) && e.bandwidth_bytes_per_sec.is_some() {
        return Err(invalid(
            "bandwidth_bytes_per_sec applies to tcp and ports endpoints".into(),
        ));
    }
    let standby = e.standby.unwrap_or(DEFAULT_STANDBY);
    if standby > relay_core::standby::MAX_STANDBY {
        return Err(invalid(format!(
            "standby = {standby}: 0 to {}",
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
}

/// Exactly one of `tcp`, `http` or `ports`.
fn target(
    tcp: Option<String>,
    http: Option<String>,
    ports: Option<std::collections::BTreeMap<String, String>>,
    invalid: Invalid<'_>,
) -> Result<Target, ConfigError> {
    match (tcp, http, ports) {
        (Some(tcp), None, None) => {
            Ok(Target::Tcp(host_port(&tcp).map_err(|why| {
                invalid(format!("tcp = \"{tcp}\": {why}"))
            })?))
        }
        (None, Some(http), None) => {
            if !(http.starts_with("http://") || http.starts_with("https://")) {
                return Err(invalid(format!(
                    "http = \"{http}\": use an http:// or https:// URL"
                )));
            }
            Ok(Target::Http(http))
        }
        (None, None, Some(ports)) => {
            if ports.is_empty() {
                return Err(invalid("ports is empty".into()));
            }
            for (name, target) in &ports {
                if name.is_empty() || name.contains(['/', '?', '#']) {
                    return Err(invalid(format!("port name \"{name}\": no '/', '?' or '#'")));
                }
                host_port(target)
                    .map_err(|why| invalid(format!("ports.{name} = \"{target}\": {why}")))?;
            }
            Ok(Target::Ports(ports))
        }
        _ => Err(invalid("give exactly one of tcp, http or ports".into())),
    }
}

fn host_port(text: &str) -> Result<String, &'static str> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(text.to_owned())
        }
        _ => Err("use host:port"),
    }
}
