//! A request resolved against the namespace: which hybrid connection, which path under it,
//! and what the request must prove.

use http::HeaderMap;
use relay_core::address::{self, HcPath, RelayQuery};
use relay_core::sas::Rights;
use relay_core::tracking::TrackingId;

use super::Relay;
use super::auth::Claim;
use crate::RelayError;
use crate::config::HybridConnection;
use crate::seams::Transport;

/// A request resolved against the namespace.
pub(crate) struct Resolved {
    pub(crate) hc: HybridConnection,
    /// Raw path after the name: empty or starting with `/`.
    pub(crate) suffix: String,
    /// The raw path as the client sent it, without `/$hc`.
    pub(crate) raw_path: String,
    pub(crate) query: RelayQuery,
    pub(crate) tracking: TrackingId,
    pub(crate) transport: Option<Transport>,
    /// The path under which a browser sees the hybrid connection (`/site/ui`, empty in host
    /// mode); `None` for the protocol's `/$hc/` addresses.
    pub(crate) prefix: Option<String>,
    /// Whether it was reached by its own host name.
    pub(crate) host_mode: bool,
}

impl Resolved {
    /// What this request must prove: `needs` on `path`, unless not `required`.
    pub(crate) fn claim<'a>(
        &'a self,
        headers: &'a HeaderMap,
        path: &'a str,
        needs: Rights,
        required: bool,
    ) -> Claim<'a> {
        Claim {
            headers,
            query: &self.query,
            transport: self.transport,
            hc: &self.hc.name,
            path,
            needs,
            required,
        }
    }

    /// `hc` or `hc/suffix`, decoded, for the token audience check.
    pub(crate) fn audience_path(&self) -> String {
        let suffix = percent_encoding::percent_decode_str(&self.suffix).decode_utf8_lossy();
        format!("{}{}", self.hc.name, suffix.trim_end_matches('/'))
    }
}

/// Host mode: the whole path is the hybrid connection's.
pub(super) fn resolve_host(
    shared: &Relay,
    hc: &str,
    path: &str,
    query: RelayQuery,
    tracking: TrackingId,
    transport: Option<Transport>,
) -> Result<Resolved, RelayError> {
    let hc = shared
        .store
        .hybrid_connection(hc)
        .ok_or(RelayError::EndpointNotFound)?;
    Ok(Resolved {
        raw_path: format!("/{}{path}", address::encode_name(&hc.name)),
        hc,
        suffix: path.to_owned(),
        query,
        tracking,
        transport,
        prefix: Some(String::new()),
        host_mode: true,
    })
}

pub(super) fn resolve(
    shared: &Relay,
    rest: &str,
    query: RelayQuery,
    tracking: TrackingId,
    transport: Option<Transport>,
) -> Result<Resolved, RelayError> {
    let hit = HcPath::resolve(rest, |name| {
        shared.store.hybrid_connection(name).map(|h| h.name)
    })
    .ok_or(RelayError::EndpointNotFound)?;
    let hc = shared
        .store
        .hybrid_connection(&hit.name)
        .ok_or(RelayError::EndpointNotFound)?;
    Ok(Resolved {
        hc,
        suffix: hit.suffix.to_owned(),
        raw_path: format!("/{rest}"),
        query,
        tracking,
        transport,
        prefix: None,
        host_mode: false,
    })
}
