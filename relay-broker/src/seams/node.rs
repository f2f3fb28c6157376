//! Node identity: every listener id, request id, rendezvous capability and minted tracking
//! id names the node it belongs to, so that in a cluster any node can tell where to send
//! what arrives for it.

use std::fmt;
use std::sync::Arc;

/// A broker node's id: 1 to 32 of `a-z`, `0-9` and `-` (it appears in URLs and ids).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

pub use crate::config::MAX_NODE_ID_LEN;

impl NodeId {
    /// A validated node id.
    ///
    /// # Errors
    /// When `id` is empty, too long, or has a character outside `a-z0-9-`.
    pub fn new(id: &str) -> Result<Self, String> {
        if crate::config::is_node_id(id) {
            Ok(Self(id.into()))
        } else {
            Err(format!(
                "node id '{id}': 1 to {MAX_NODE_ID_LEN} of a-z, 0-9 and '-'"
            ))
        }
    }

    /// A random id for a node nobody named (a single broker).
    #[must_use]
    pub fn random() -> Self {
        Self(format!("n{:08x}", rand::random::<u32>()).into())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `id` with this node's suffix: `{id}_{node}`. Node ids have no `_`, so
    /// [`NodeId::of_suffixed`] finds it again.
    #[must_use]
    pub fn suffix(&self, id: &str) -> String {
        format!("{id}_{}", self.0)
    }

    /// The node named at the end of an id made by [`NodeId::suffix`].
    #[must_use]
    pub fn of_suffixed(id: &str) -> Option<Self> {
        let (_, node) = id.rsplit_once('_')?;
        Self::new(node).ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One control channel in the whole cluster: the node holding it and its number there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The node holding the control channel.
    pub node: NodeId,
    /// The channel's number on that node.
    pub channel: u64,
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked_and_found_again_in_the_ids_they_suffix() {
        assert!(NodeId::new("broker-1").is_ok());
        for bad in ["", "Broker", "a_b", "a.b", &"x".repeat(33)] {
            assert!(NodeId::new(bad).is_err(), "{bad}");
        }
        let node = NodeId::random();
        let id = node.suffix("5a0c-77");
        assert_eq!(NodeId::of_suffixed(&id), Some(node));
        assert_eq!(NodeId::of_suffixed("no-suffix"), None);
    }
}
