//! Hybrid connections and authorization rules from the configuration file.

use relay_core::sas::{Rights, SharedAccessKey};

use super::{HybridConnection, RawHc, RawRule};

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

pub(super) fn hybrid_connections(raw: Vec<RawHc>) -> Result<Vec<HybridConnection>, String> {
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

pub(super) fn rule(raw: RawRule, hcs: &[HybridConnection]) -> Result<SharedAccessKey, String> {
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
