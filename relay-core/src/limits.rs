//! Protocol limits shared by broker, listener and sender.
//!
//! Values come from the Azure Relay protocol guide; every one is a default that the broker's
//! configuration may tighten.

/// Largest HTTP request (headers plus body) the broker sends inline on the control channel,
/// and the largest response body a listener sends inline. Larger ones use a rendezvous.
pub const INLINE_BODY_LIMIT: usize = 64 * 1024;

/// Largest request header block accepted from a sender (and largest `connectHeaders`).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Largest JSON control message accepted from a listener. The .NET listener reads control
/// messages into a 64 kB buffer, so anything larger would break real clients anyway.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest inline binary body message accepted on a control channel (a response body).
/// A little over [`INLINE_BODY_LIMIT`] because clients flush at, not before, the threshold.
pub const MAX_INLINE_BODY_MESSAGE_BYTES: usize = INLINE_BODY_LIMIT + 1024;

/// Concurrent listeners per hybrid connection in Azure.
pub const DEFAULT_MAX_LISTENERS_PER_HC: usize = 25;
