//! `[cluster]`: this node's place among several brokers behind one address.

use std::net::SocketAddr;

use serde::Deserialize;

/// Shortest cluster secret, in bytes: it keys the HMAC of standby keys and of peer logins.
pub const MIN_SECRET_LEN: usize = 16;

/// Longest node id.
pub const MAX_NODE_ID_LEN: usize = 32;

/// Whether `id` may name a node: 1 to [`MAX_NODE_ID_LEN`] of `a-z`, `0-9` and `-` (it
/// appears in URLs, ids and NATS subjects). The one rule, for the config and `NodeId`.
#[must_use]
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A validated `[cluster]` section.
#[derive(Clone)]
pub struct ClusterConfig {
    /// This node, unique in the cluster (checked with [`is_node_id`]).
    pub node_id: String,
    /// NATS servers (`nats://host:port`), one or more.
    pub nats: Vec<String>,
    /// Where this node accepts rendezvous sockets that other nodes splice to it.
    pub peer_bind: SocketAddr,
    /// The address other nodes dial for `peer_bind` (default: `peer_bind` itself).
    pub peer_address: SocketAddr,
    /// This node's own address (`ws://` or `wss://`), for per-node rendezvous addresses;
    /// `None` hands out the shared address and splices.
    pub advertise_url: Option<String>,
    /// The secret every node shares.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("nats", &self.nats)
            .field("peer_bind", &self.peer_bind)
            .field("peer_address", &self.peer_address)
            .field("advertise_url", &self.advertise_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    node_id: Option<String>,
    #[serde(default)]
    nats: Vec<String>,
    peer_bind: Option<String>,
    peer_address: Option<String>,
    advertise_url: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
}

/// Checks `[cluster]`; every error names the key and the fix.
pub(super) fn cluster(
    raw: RawCluster,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClusterConfig, String> {
    let node_id = match raw.node_id {
        Some(id) => id,
        None => env("HOSTNAME")
            .map(|h| h.to_ascii_lowercase())
            .ok_or("[cluster].node_id is required (unique per node, e.g. \"b1\")")?,
    };
    if !is_node_id(&node_id) {
        return Err(format!(
            "[cluster].node_id '{node_id}': 1 to {MAX_NODE_ID_LEN} of a-z, 0-9 and '-' (e.g. \"b1\")"
        ));
    }
    if raw.nats.is_empty() {
        return Err(
            "[cluster].nats needs one or more servers, e.g. [\"nats://127.0.0.1:4222\"]".into(),
        );
    }
    for url in &raw.nats {
        let rest = url.strip_prefix("nats://").ok_or_else(|| {
            format!(
                "[cluster].nats: '{url}' must start with nats:// (e.g. \"nats://10.0.0.5:4222\")"
            )
        })?;
        if rest.is_empty() || rest.contains(['/', '?', ' ']) {
            return Err(format!("[cluster].nats: '{url}' is not nats://host:port"));
        }
    }
    let peer_bind = raw
        .peer_bind
        .ok_or("[cluster].peer_bind is required: the node-to-node port, e.g. \"0.0.0.0:9410\"")?;
    let peer_bind: SocketAddr = peer_bind
        .parse()
        .map_err(|_| format!("[cluster].peer_bind: '{peer_bind}' is not host:port"))?;
    let peer_address = match raw.peer_address {
        Some(a) => a
            .parse()
            .map_err(|_| format!("[cluster].peer_address: '{a}' is not ip:port"))?,
        None if peer_bind.ip().is_unspecified() => {
            return Err(format!(
                "[cluster].peer_bind = \"{peer_bind}\" listens on every address: set peer_address to the one other nodes dial (e.g. \"10.0.0.7:{}\")",
                peer_bind.port()
            ));
        }
        None => peer_bind,
    };
    let advertise_url = raw
        .advertise_url
        .map(|u| u.trim_end_matches('/').to_owned());
    if let Some(url) = &advertise_url {
        let host = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))
            .ok_or_else(|| {
                format!("[cluster].advertise_url: '{url}' must start with ws:// or wss://")
            })?;
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "[cluster].advertise_url: '{url}' must be scheme://host[:port] and nothing else"
            ));
        }
    }
    let secret = match (raw.secret, raw.secret_env) {
        (Some(s), None) => s,
        (None, Some(var)) => env(&var)
            .ok_or_else(|| format!("[cluster].secret_env = \"{var}\": that variable is not set"))?,
        (Some(_), Some(_)) => return Err("[cluster]: set secret or secret_env, not both".into()),
        (None, None) => {
            return Err("[cluster] needs secret_env = \"RELAY_CLUSTER_SECRET\" (or secret = \"...\"), the same on every node".into());
        }
    };
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "[cluster] secret: at least {MIN_SECRET_LEN} bytes (e.g. openssl rand -hex 32)"
        ));
    }
    Ok(ClusterConfig {
        node_id,
        nats: raw.nats,
        peer_bind,
        peer_address,
        advertise_url,
        secret: secret.into_bytes(),
    })
}
