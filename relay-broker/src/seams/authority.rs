//! The data plane's one question to identity. The relay never reads persons, grants or
//! certificate records itself: it asks an [`Authority`], which the identity plane
//! implements over the store, and turns a [`Refusal`] into the protocol's own status.

/// The listener a verified client certificate names. The TLS handshake already proved the
/// chain to the listener CA, the validity period and the clientAuth EKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Listener id.
    pub listener_id: String,
    /// Serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: u64,
}

/// Why a certificate may not listen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The certificate names no listener this broker knows (401).
    #[error("{0}")]
    Unknown(&'static str),
    /// Known, but revoked, expired, not issued to it, or without the right (403).
    #[error("{0}")]
    Forbidden(String),
    /// The records cannot be read now; nothing was decided (503).
    #[error("{0}")]
    Unavailable(String),
    /// The records are broken (500).
    #[error("{0}")]
    Internal(String),
}

/// Answers for certificate-authenticated listeners.
pub trait Authority: Send + Sync + 'static {
    /// The listener a client certificate (DER) names, when this broker's CA issued it.
    fn identify(&self, leaf_der: &[u8]) -> Option<PeerCertificate>;

    /// Whether `cert` may listen on `hc` now: registered, not revoked, issued by us to that
    /// listener, unexpired, and its person still enabled and allowed on `hc`. It may block
    /// (a durable store reads from disk): call it off the runtime threads.
    fn may_listen(&self, cert: &PeerCertificate, hc: &str, now_ms: u64) -> Result<(), Refusal>;
}
