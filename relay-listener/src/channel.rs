//! What the control channel carries between its parts: the writer's queue, and the
//! connection a handler gets for an `accept`. Below `listener`, `http` and `standby`, which
//! all use it.

use bytes::Bytes;
use relay_core::control;

use crate::handler::{Answer, IncomingConnection};

/// Messages for the control channel writer.
pub(crate) enum Out {
    Text(String),
    TextWithBody(String, Bytes),
    Pong(Vec<u8>),
}

/// The connection a handler gets for an `accept`, answered by `answer`.
pub(crate) fn incoming(accept: control::Accept, hc: &str, answer: Answer) -> IncomingConnection {
    let (path, query) = split_address(&accept.address, hc);
    let headers = accept
        .connect_headers
        .0
        .iter()
        .filter_map(|(k, v)| {
            Some((
                ::http::HeaderName::try_from(k.as_str()).ok()?,
                ::http::HeaderValue::try_from(v.as_str()).ok()?,
            ))
        })
        .collect();
    let remote = accept
        .remote_endpoint
        .and_then(|r| Some(std::net::SocketAddr::new(r.address.parse().ok()?, r.port)));
    IncomingConnection {
        id: accept.id,
        path,
        query,
        headers,
        remote,
        answer,
    }
}

/// The path after the hybrid connection name, and the query without `sb-hc-*`.
fn split_address(address: &str, hc: &str) -> (String, String) {
    let (before, query) = address.split_once('?').unwrap_or((address, ""));
    let path = before.split_once("/$hc/").map_or("", |(_, p)| p);
    let encoded = relay_core::address::encode_name(hc);
    let suffix = path
        .strip_prefix(encoded.as_str())
        .or_else(|| path.strip_prefix(hc))
        .unwrap_or("");
    (
        suffix.to_owned(),
        relay_core::address::strip_reserved(query),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_parts() {
        let (p, q) = split_address(
            "ws://h/$hc/a/b/sub/x?x=1&sb-hc-action=accept&sb-hc-id=t",
            "a/b",
        );
        assert_eq!((p.as_str(), q.as_str()), ("/sub/x", "x=1"));
        let (p, q) = split_address("ws://h/$hc/hc?sb-hc-action=accept", "hc");
        assert_eq!((p.as_str(), q.as_str()), ("", ""));
    }
}
