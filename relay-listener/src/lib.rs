//! The listener side of Hybrid Connections: a library for on-premise services, and the
//! `relay-listener` agent built on it.
//!
//! A [`Listener`] holds the control channel to the broker (reconnecting forever with jittered
//! backoff, renewing its token, keeping the link alive) and hands each sender to a
//! [`Handler`]: WebSocket senders as [`IncomingConnection`]s that become byte streams, HTTP
//! requests as `http::Request`s.
//!
//! | module | responsibility |
//! |---|---|
//! | [`listener`] | the control channel loop and [`ListenerConfig`] |
//! | [`handler`] | the [`Handler`] trait, accepted streams, tower service adapter |
//! | `http` | relayed HTTP: inline or rendezvous responses |
//! | `channel` | the control channel writer's queue and the connection an `accept` becomes |
//! | `standby` | standby sockets: pre-opened rendezvous connections the broker hands senders to |
//! | [`identity`] | a registered listener's key and certificate, registration and renewal |
//! | [`keystore`] | the private key at rest: 0600 file, DPAPI on Windows |
//! | [`forward`] | handlers forwarding to a TCP target, or to named ports |
//! | [`reverse_proxy`] | a handler reverse-proxying HTTP and WebSocket to a local web app |
//! | [`limits`] | connections in flight, bandwidth, and the drain on shutdown |
//! | [`agent`] | the agent: many endpoints from a TOML file, status endpoint, graceful stop |
//! | [`token`] | token sources (SAS key, ready token) |
//! | [`backoff`] | reconnect delays |
//! | [`register`] | registration with an enrollment token, and recovery of an interrupted one |
//! | `pop` | proof-of-possession login, for brokers behind a proxy that ends TLS |
//! | `error` | [`ListenerError`] |
//! | `work` | the bound on connections and requests in flight, and their tasks |

pub mod agent;
pub mod backoff;
pub mod forward;
pub mod handler;
pub mod identity;
pub mod keystore;
pub mod limits;
pub mod listener;
pub mod register;
pub mod reverse_proxy;
mod standby;
pub mod token;

mod channel;
mod error;
mod http;
mod pop;
mod rendezvous;
mod work;

pub use work::DEFAULT_MAX_IN_FLIGHT;

pub use error::ListenerError;
pub use handler::{Handler, IncomingConnection, RelayBody, RelayStream, ServiceHandler, full_body};
pub use identity::{CertificateIdentity, IdentityError};
pub use listener::{Credential, Listener, ListenerConfig, Status};
pub use token::{SasKeySource, StaticToken, Token, TokenSource};
