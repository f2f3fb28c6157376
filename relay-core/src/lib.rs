//! Sans-IO core of the Hybrid Connections protocol.
//!
//! Nothing in this crate touches a socket, a clock or a runtime: callers pass bytes and an
//! injected `now`, and get back parsed values or bytes to send. That keeps every rule testable
//! with plain unit tests and lets the broker, listener and sender share one definition.
//!
//! | module | responsibility |
//! |---|---|
//! | [`control`] | the JSON control messages (`accept`, `request`, `response`, `renewToken`) |
//! | [`address`] | the URL and query grammar: `/$hc/{hc}[/suffix]`, `sb-hc-*` parameters, name matching |
//! | [`standby`] | pre-opened rendezvous sockets: our listener's extension for fast connects; the exchange's rules as a state machine |
//! | [`keepalive`] | a control channel's timers as a state machine: pings, silence, credential expiry |
//! | [`sas`] | Shared Access Signature tokens: create, parse, verify, rights |
//! | [`auth`] | where a token is taken from on a request, and what is stripped |
//! | [`connection_string`] | Azure-style connection strings |
//! | [`frame`] | RFC 6455 frame headers, masking and the upgrade handshake key |
//! | [`http_rules`] | header rules for relayed HTTP: hop-by-hop stripping, `Via` |
//! | [`limits`] | protocol limits shared by every role |
//! | [`pop`] | the proof-of-possession login format for listeners behind an L7 proxy |
//! | [`tracking`] | tracking ids carried in status texts and close reasons |
//! | [`web`] | browser access: the session cookie, `Cookie` rules, host names per hybrid connection |

pub mod address;
pub mod auth;
pub mod connection_string;
pub mod control;
pub mod frame;
pub mod http_rules;
pub mod keepalive;
pub mod limits;
pub mod pop;
pub mod sas;
pub mod standby;
pub mod tracking;
pub mod web;

pub use address::{Action, HcPath, RelayQuery};
pub use control::ListenerCommand;
pub use sas::{Rights, SasToken, SharedAccessKey};
