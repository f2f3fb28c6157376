//! Header rules for relayed HTTP.
//!
//! RFC 7230 connection-level headers never cross the relay in either direction, relay
//! credentials never reach a listener, and the broker adds itself to `Via`.

use http::HeaderName;

/// Connection-level headers removed from relayed requests and responses.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "close",
];

/// Whether a header is connection-level and must not be relayed. `connection_tokens` are the
/// names listed in the message's own `Connection` header.
#[must_use]
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// The header names listed in `Connection`, lower-cased.
#[must_use]
pub fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a header carries a relay credential that a listener must never see.
#[must_use]
pub fn is_relay_credential(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.eq_ignore_ascii_case(crate::auth::SERVICE_BUS_AUTHORIZATION)
        || name.eq_ignore_ascii_case(crate::pop::SESSION_HEADER)
}

/// The `Via` value after this broker (`host`) handled a message: appended to any existing one.
#[must_use]
pub fn via(existing: Option<&str>, protocol: &str, host: &str) -> String {
    let hop = format!("{protocol} {host}");
    match existing {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {hop}"),
        _ => hop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_via() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, X-Secret"),
        );
        let tokens = connection_tokens(&h);
        assert!(is_hop_by_hop("x-secret", &tokens));
        assert!(is_hop_by_hop("Transfer-Encoding", &[]));
        assert!(!is_hop_by_hop("via", &[]));
        assert!(!is_hop_by_hop("content-type", &tokens));
        assert_eq!(via(None, "1.1", "relay"), "1.1 relay");
        assert_eq!(via(Some("1.0 a"), "1.1", "relay"), "1.0 a, 1.1 relay");
    }
}
