//! What the nodes say to each other over NATS: subjects, and messages as JSON with an
//! optional binary tail (a notice's or an inline response's body travels as raw bytes, not
//! as base64).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::seams::directory::ListenerRef;
use crate::seams::node::{ListenerKey, NodeId};

/// Every node's heartbeat, `relay.presence.<node>`.
pub(super) const PRESENCE: &str = "relay.presence";
/// Broadcast: a listener's channel ended.
pub(super) const GONE: &str = "relay.gone";
/// Broadcast: close everything a certificate listener has open.
pub(super) const REVOKE: &str = "relay.revoke";

/// A node's own subject for `kind` (`deliver`, `respond`, `replaced`, `presence`).
pub(super) fn node_subject(node: &NodeId, kind: &str) -> String {
    format!("relay.node.{node}.{kind}")
}

/// A heartbeat: who, how to reach its peer port, and the version of its listener set. The
/// set itself rides along when it changed since the last beat, and every few beats anyway.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Beat {
    pub(super) node: String,
    /// Random per process start: a restarted node's versions start again.
    pub(super) epoch: u64,
    pub(super) version: u64,
    pub(super) peer: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) listeners: Option<Vec<WireListener>>,
    /// The node's last beat: it is shutting down (older nodes ignore the field and drop
    /// it when its beats stop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) leaving: bool,
}

/// A node's answer to `relay.node.<node>.presence`: its whole set.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub(super) epoch: u64,
    pub(super) version: u64,
    pub(super) listeners: Vec<WireListener>,
}

/// [`ListenerRef`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireListener {
    pub(super) node: String,
    pub(super) channel: u64,
    pub(super) hc: String,
    pub(super) base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) instance: Option<String>,
    #[serde(default)]
    pub(super) header_arrays: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cert_listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) standby: Option<String>,
}

impl From<&ListenerRef> for WireListener {
    fn from(l: &ListenerRef) -> Self {
        Self {
            node: l.key.node.to_string(),
            channel: l.key.channel,
            hc: l.hc.to_string(),
            base_url: l.base_url.to_string(),
            instance: l.instance.as_deref().map(str::to_owned),
            header_arrays: l.header_arrays,
            cert_listener: l.cert_listener.as_deref().map(str::to_owned),
            standby: l.standby.as_deref().map(str::to_owned),
        }
    }
}

impl WireListener {
    /// The reference, if it names a valid node.
    pub(super) fn into_ref(self) -> Option<ListenerRef> {
        Some(ListenerRef {
            key: ListenerKey {
                node: NodeId::new(&self.node).ok()?,
                channel: self.channel,
            },
            hc: self.hc.into(),
            base_url: self.base_url.into(),
            instance: self.instance.map(Arc::from),
            header_arrays: self.header_arrays,
            cert_listener: self.cert_listener.map(Arc::from),
            standby: self.standby.map(Arc::from),
        })
    }
}

/// A notice for channel `channel` of the receiving node; a body message follows the text.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Deliver {
    pub(super) channel: u64,
    pub(super) text: String,
    /// How long the receiver may wait for room in the channel's queue.
    pub(super) wait_ms: u64,
    pub(super) with_body: bool,
}

/// The answer to [`Deliver`].
pub(super) const QUEUED: &[u8] = b"queued";
pub(super) const GONE_REPLY: &[u8] = b"gone";
pub(super) const FULL_REPLY: &[u8] = b"full";

/// An inline response for a request waiting on the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Respond {
    pub(super) request_id: String,
    pub(super) from_node: String,
    pub(super) from_channel: u64,
    pub(super) head: relay_core::control::Response,
    pub(super) with_body: bool,
}

/// A channel, by key (`relay.gone`, `replaced`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Channel {
    pub(super) node: String,
    pub(super) channel: u64,
}

/// A revocation broadcast.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Revoke {
    pub(super) listener_id: String,
    pub(super) from: String,
}

/// `u32` length of the JSON, the JSON, then the tail.
pub(super) fn encode<T: Serialize>(head: &T, tail: Option<&[u8]>) -> Bytes {
    let json = serde_json::to_vec(head).expect("wire types serialise");
    let tail = tail.unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + json.len() + tail.len());
    out.put_u32(json.len() as u32);
    out.put_slice(&json);
    out.put_slice(tail);
    out.freeze()
}

/// The JSON head and the tail of a message made by [`encode`].
pub(super) fn decode<T: for<'de> Deserialize<'de>>(payload: &Bytes) -> Option<(T, Bytes)> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let json = payload.get(4..4 + len)?;
    let head = serde_json::from_slice(json).ok()?;
    Some((head, payload.slice(4 + len..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_tails_round_trip_and_garbage_is_refused() {
        let d = Deliver {
            channel: 7,
            text: "{}".into(),
            wait_ms: 5,
            with_body: true,
        };
        let bytes = encode(&d, Some(b"body\x00bytes"));
        let (back, tail): (Deliver, Bytes) = decode(&bytes).unwrap();
        assert_eq!((back.channel, back.with_body), (7, true));
        assert_eq!(&tail[..], b"body\x00bytes");
        for bad in [
            &b""[..],
            b"\x00\x00\x00",
            b"\x00\x00\x01\x00{}",
            b"\x00\x00\x00\x02{]",
        ] {
            assert!(decode::<Deliver>(&Bytes::copy_from_slice(bad)).is_none());
        }
    }
}
