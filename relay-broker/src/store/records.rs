//! What the store keeps: audit events and the identity plane's records.

/// What an audit event records: the closed list of kinds this broker writes. The store keeps
/// the name (`kind` of [`AuditEvent`]), so a trail read back may also hold kinds written by
/// another version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditKind {
    /// `listener.connect`
    ListenerConnect,
    /// `listener.disconnect`
    ListenerDisconnect,
    /// `listener.rejected`
    ListenerRejected,
    /// `listener.register`
    ListenerRegister,
    /// `listener.revoke`
    ListenerRevoke,
    /// `certificate.issue`
    CertificateIssue,
    /// `certificate.renew`
    CertificateRenew,
    /// `registration.rejected`
    RegistrationRejected,
    /// `renewal.rejected`
    RenewalRejected,
    /// `pop.rejected`
    PopRejected,
    /// `person.add`
    PersonAdd,
    /// `person.disable`
    PersonDisable,
    /// `person.grant`
    PersonGrant,
    /// `person.revoke`
    PersonRevoke,
    /// `person.token`
    PersonToken,
    /// `enrollment.mint`
    EnrollmentMint,
    /// `hybrid_connection.create`
    HybridConnectionCreate,
    /// `hybrid_connection.remove`
    HybridConnectionRemove,
}

impl AuditKind {
    /// Every kind, for documentation and checks.
    pub const ALL: [Self; 18] = [
        Self::ListenerConnect,
        Self::ListenerDisconnect,
        Self::ListenerRejected,
        Self::ListenerRegister,
        Self::ListenerRevoke,
        Self::CertificateIssue,
        Self::CertificateRenew,
        Self::RegistrationRejected,
        Self::RenewalRejected,
        Self::PopRejected,
        Self::PersonAdd,
        Self::PersonDisable,
        Self::PersonGrant,
        Self::PersonRevoke,
        Self::PersonToken,
        Self::EnrollmentMint,
        Self::HybridConnectionCreate,
        Self::HybridConnectionRemove,
    ];

    /// The kind's name in the trail.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ListenerConnect => "listener.connect",
            Self::ListenerDisconnect => "listener.disconnect",
            Self::ListenerRejected => "listener.rejected",
            Self::ListenerRegister => "listener.register",
            Self::ListenerRevoke => "listener.revoke",
            Self::CertificateIssue => "certificate.issue",
            Self::CertificateRenew => "certificate.renew",
            Self::RegistrationRejected => "registration.rejected",
            Self::RenewalRejected => "renewal.rejected",
            Self::PopRejected => "pop.rejected",
            Self::PersonAdd => "person.add",
            Self::PersonDisable => "person.disable",
            Self::PersonGrant => "person.grant",
            Self::PersonRevoke => "person.revoke",
            Self::PersonToken => "person.token",
            Self::EnrollmentMint => "enrollment.mint",
            Self::HybridConnectionCreate => "hybrid_connection.create",
            Self::HybridConnectionRemove => "hybrid_connection.remove",
        }
    }
}

/// One append-only audit record. Never carries secrets, keys or whole CSRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened, e.g. `listener.connect`.
    pub kind: String,
    /// Who or what it happened to, e.g. the hybrid connection or listener id.
    pub subject: String,
    /// Free-form detail (tracking id, reason).
    pub detail: String,
}

impl AuditEvent {
    /// An event stamped now.
    #[must_use]
    pub fn now(kind: AuditKind, subject: &str, detail: &str) -> Self {
        Self {
            at_ms: now_ms(),
            kind: kind.as_str().into(),
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of every stored timestamp.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A person who may register and manage listeners.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Person {
    /// Unique name (case-insensitive).
    pub name: String,
    /// A disabled person can do nothing, and everything registered through them stops.
    pub disabled: bool,
    /// Rights, each on a hybrid-connection name pattern.
    pub rights: Vec<Grant>,
}

/// One right on a hybrid-connection name pattern (`orders*`, `site-7/*`, `*`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Grant {
    /// `listener.register`, `listener.manage` or `audit.read`.
    pub right: String,
    /// Name pattern; a trailing `*` matches any suffix.
    pub pattern: String,
}

/// A single-use enrollment token, stored by its SHA-256 only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// The person who minted it; registration happens on their behalf.
    pub person: String,
    /// Hybrid connections the registered listener may use.
    pub hybrid_connections: Vec<String>,
    /// Listener name to record, if chosen when minting.
    pub name: Option<String>,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A registered listener: its key fingerprint mapped to the person who registered it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ListenerRecord {
    /// Listener id (also the certificate's CN).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The registering person.
    pub person: String,
    /// Hybrid connections granted at registration.
    pub hybrid_connections: Vec<String>,
    /// SHA-256 of the subject public key, hex.
    pub key_fingerprint: String,
    /// Serial of the current certificate, hex.
    pub serial: String,
    /// Expiry of the current certificate, ms since the Unix epoch.
    pub not_after_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
}

/// A certificate issued to a registered listener.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertificateRecord {
    /// Serial, hex.
    pub serial: String,
    /// The listener it was issued to.
    pub listener_id: String,
    /// SHA-256 of the subject public key, hex. A key is bound to one certificate only, so
    /// renewal must bring a new key and no two listeners share one.
    pub key_fingerprint: String,
    /// Expiry, ms since the Unix epoch.
    pub not_after_ms: u64,
}

impl ListenerRecord {
    /// The record of its current certificate.
    #[must_use]
    pub fn certificate(&self) -> CertificateRecord {
        CertificateRecord {
            serial: self.serial.clone(),
            listener_id: self.id.clone(),
            key_fingerprint: self.key_fingerprint.clone(),
            not_after_ms: self.not_after_ms,
        }
    }
}
