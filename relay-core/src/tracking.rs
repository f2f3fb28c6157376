//! Tracking ids: every error the broker reports (status text, close reason, JSON body)
//! carries one, so a support ticket can be matched with the broker's logs.

use std::fmt;

/// A tracking id, either chosen by the client (`sb-hc-id`) or minted by the broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrackingId(String);

/// Longest client-chosen tracking id kept verbatim; longer ones are replaced.
const MAX_CLIENT_ID_LEN: usize = 128;

impl TrackingId {
    /// Mints a fresh random id.
    #[must_use]
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Uses the client's `sb-hc-id` when it is sane, otherwise mints one.
    #[must_use]
    pub fn from_client(id: Option<&str>) -> Self {
        Self::from_client_on(id, None)
    }

    /// Like [`TrackingId::from_client`], and a minted id ends in `_{node}` (a broker
    /// node's id, from the sane alphabet), so a ticket names the node that saw the request.
    #[must_use]
    pub fn from_client_on(id: Option<&str>, node: Option<&str>) -> Self {
        match (id, node) {
            (Some(id), _) if is_sane(id) => Self(id.to_owned()),
            (_, Some(node)) if is_sane(node) => Self(format!("{}_{node}", uuid::Uuid::new_v4())),
            _ => Self::new(),
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrackingId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TrackingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Client ids end up in URLs, JSON and status lines, so only a conservative alphabet is kept.
fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_client_ids_and_replaces_others() {
        assert_eq!(TrackingId::from_client(Some("t-1")).as_str(), "t-1");
        let odd = TrackingId::from_client(Some("a b\r\n"));
        assert_ne!(odd.as_str(), "a b\r\n");
        assert_eq!(odd.as_str().len(), 36);
        assert_eq!(TrackingId::from_client(None).as_str().len(), 36);
        let minted = TrackingId::from_client_on(None, Some("node-1"));
        assert!(minted.as_str().ends_with("_node-1") && minted.as_str().len() == 43);
        assert_eq!(
            TrackingId::from_client_on(Some("t-1"), Some("n")).as_str(),
            "t-1"
        );
    }
}
