//! The traits both planes and a later cluster backend plug into. No IO of their own: each
//! has an in-process implementation here, and a cluster implements the same trait over NATS
//! or PostgreSQL without the data plane changing.
//!
//! | seam | what crosses it |
//! |---|---|
//! | [`authority`] | the data plane's one question to identity: who is this certificate, may it listen here |
//! | [`revocation`] | "close listener X", published once and applied by every node to its own sessions |
//! | [`audit`] | audit events, through one bounded writer |
//! | [`directory`] | which listeners serve a hybrid connection, as serialisable references |
//! | [`interconnect`] | notices to the node holding a channel, inline responses back |
//! | [`node`] | node ids, and the cluster-wide key of a control channel |
//! | [`Transport`] | how a request reached the broker, for both planes |

pub mod audit;
pub mod authority;
pub mod directory;
pub mod interconnect;
pub mod node;
pub mod revocation;

use std::net::SocketAddr;

/// How a request reached the broker; inserted by [`Broker::serve`](crate::Broker::serve). A
/// host app that nests the router may insert it too, otherwise addresses default to `ws://`
/// and no remote endpoint is reported.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection used TLS.
    pub tls: bool,
}
