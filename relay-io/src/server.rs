//! The server side of the upgrade handshake (RFC 6455 §4.2), as pure checks on headers.

use http::HeaderMap;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use relay_core::frame::accept_key;

/// Whether the request asks for a WebSocket upgrade at all.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, &UPGRADE, "websocket")
        && header_has_token(headers, &CONNECTION, "upgrade")
}

/// Checks a WebSocket upgrade request and returns the `Sec-WebSocket-Accept` value.
pub fn accept_for(headers: &HeaderMap) -> Result<String, &'static str> {
    if !is_upgrade(headers) {
        return Err("not a WebSocket upgrade");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or("Sec-WebSocket-Key is missing")?;
    if key.len() != 24 {
        return Err("Sec-WebSocket-Key is malformed");
    }
    Ok(accept_key(key.as_bytes()))
}

/// The sub-protocols a client offered, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn header_has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "WebSocket".parse().unwrap());
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(accept_for(&h), Err("Sec-WebSocket-Version must be 13"));
        h.insert(SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        assert_eq!(accept_for(&h), Err("Sec-WebSocket-Key is missing"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(accept_for(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        h.append(SEC_WEBSOCKET_PROTOCOL, "chat.v2, chat.v1".parse().unwrap());
        assert_eq!(offered_protocols(&h), ["chat.v2", "chat.v1"]);
    }
}
