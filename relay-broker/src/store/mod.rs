//! The store seam: hybrid connections, authorization rules and the audit trail.
//!
//! Reads are on the request path, so every implementation serves them from memory; writes
//! are rare (administration, audit) and durable before they return. Entities declared in the
//! configuration file are applied at start and always win; entities created at run time
//! live in the store.
//!
//! | implementation | where |
//! |---|---|
//! | [`MemoryStore`] | in memory: the embedded default and tests |
//! | [`SqliteStore`] | an embedded SQLite file with versioned migrations (`[store].path`) |
//!
//! Both pass the same conformance battery ([`conformance`], public under the `test-util`
//! feature for other backends), one test per concern (`store/battery.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use relay_core::sas::SharedAccessKey;

use crate::config::HybridConnection;

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Database(String),
    /// The database cannot take the write now (locked by another process, disk full, an
    /// I/O error); the call changed nothing and may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The entity already exists.
    #[error("'{0}' already exists")]
    Conflict(String),
    /// The entity comes from the configuration file and can only change there.
    #[error("'{0}' is defined in the configuration file")]
    FromConfig(String),
}

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

/// What the data plane reads on every request: hybrid connections and rules, served from
/// memory, with a feed of changes so that other nodes (and caches) follow a change made on
/// one.
pub trait Namespace: Send + Sync + 'static {
    /// The hybrid connection with this name (case-insensitive), if it exists.
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection>;
    /// Every hybrid connection, sorted by name.
    fn hybrid_connections(&self) -> Vec<HybridConnection>;
    /// Every SAS rule of the namespace.
    fn rules(&self) -> Arc<[SharedAccessKey]>;
    /// Creates a hybrid connection at run time; durable when this returns.
    fn create_hybrid_connection(&self, hc: HybridConnection) -> Result<(), StoreError>;
    /// Removes a run-time hybrid connection; `Ok(false)` when it did not exist.
    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError>;
    /// Every change to the hybrid connections from now on. A receiver that falls more than
    /// [`CHANGE_FEED`] changes behind gets `Lagged` and should read the whole list again.
    fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange>;
}

/// The append-only audit trail.
pub trait AuditStore: Send + Sync + 'static {
    /// Appends an audit event; durable when this returns.
    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Audit events at or after `since_ms`, oldest first, at most `limit`.
    fn audit(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;
}

/// A write of the identity plane (its records, and the hybrid connections it creates),
/// committed together with its audit events by [`IdentityStore::write_audited`].
#[derive(Clone, Copy, Debug)]
pub enum IdentityWrite<'a> {
    /// [`IdentityStore::add_person`].
    AddPerson {
        /// The person's name.
        name: &'a str,
        /// The PHC string of their password.
        password_hash: &'a str,
    },
    /// [`IdentityStore::set_person_disabled`].
    SetPersonDisabled {
        /// The person's name.
        name: &'a str,
        /// Disabled or enabled.
        disabled: bool,
    },
    /// [`IdentityStore::grant`].
    Grant {
        /// The person's name.
        name: &'a str,
        /// The grant.
        grant: &'a Grant,
    },
    /// [`IdentityStore::revoke_grant`].
    RevokeGrant {
        /// The person's name.
        name: &'a str,
        /// The grant.
        grant: &'a Grant,
    },
    /// [`IdentityStore::add_enrollment_token`].
    AddEnrollmentToken(&'a EnrollmentToken),
    /// [`IdentityStore::add_listener`].
    AddListener(&'a ListenerRecord),
    /// [`IdentityStore::renew_listener`].
    RenewListener(&'a CertificateRecord),
    /// [`IdentityStore::revoke_listener`].
    RevokeListener {
        /// The listener id.
        id: &'a str,
        /// When, ms since the Unix epoch.
        at_ms: u64,
    },
    /// [`Namespace::create_hybrid_connection`], by an administrator or a listener.
    CreateHybridConnection(&'a HybridConnection),
    /// [`Namespace::remove_hybrid_connection`].
    RemoveHybridConnection(&'a str),
    /// [`IdentityStore::add_person_token`].
    AddPersonToken {
        /// SHA-256 of the token, hex.
        hash: &'a str,
        /// Its person.
        person: &'a str,
    },
}

/// The identity plane's records: persons, grants, tokens, listeners and certificates.
pub trait IdentityStore: Send + Sync + 'static {
    /// Applies `write` and appends `events` in one transaction: the change and its audit
    /// trail are durable together, or neither is. Events are appended only when the write
    /// changed something; returns whether it did (`true` for the adding writes).
    fn write_audited(
        &self,
        write: IdentityWrite<'_>,
        events: &[AuditEvent],
    ) -> Result<bool, StoreError>;
    /// Adds a person with a password hash (PHC string; never a password).
    fn add_person(&self, name: &str, password_hash: &str) -> Result<(), StoreError>;
    /// A person and their password hash.
    fn person(&self, name: &str) -> Result<Option<(Person, String)>, StoreError>;
    /// Every person, sorted by name.
    fn persons(&self) -> Result<Vec<Person>, StoreError>;
    /// Disables or re-enables a person; `Ok(false)` when there is no such person.
    fn set_person_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError>;
    /// Adds a grant; `Ok(false)` when there is no such person (granting twice is a no-op).
    fn grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError>;
    /// Removes a grant; `Ok(false)` when it did not exist.
    fn revoke_grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError>;
    /// Stores a new enrollment token.
    fn add_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError>;
    /// Uses a token atomically: returns it once if it exists and has not expired at
    /// `now_ms`, and never again.
    fn burn_enrollment_token(
        &self,
        hash: &str,
        now_ms: u64,
    ) -> Result<Option<EnrollmentToken>, StoreError>;
    /// Records a registered listener and its first certificate. `Conflict` when the key is
    /// already bound to a certificate.
    fn add_listener(&self, listener: &ListenerRecord) -> Result<(), StoreError>;
    /// Every registered listener, oldest first.
    fn listeners(&self) -> Result<Vec<ListenerRecord>, StoreError>;
    /// One registered listener.
    fn listener(&self, id: &str) -> Result<Option<ListenerRecord>, StoreError>;
    /// A certificate by serial, current or superseded.
    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;
    /// Makes `cert` the current certificate of its listener; the superseded one stays valid
    /// until it expires. `Ok(false)` when there is no such listener; `Conflict` when the
    /// key is already bound to a certificate.
    fn renew_listener(&self, cert: &CertificateRecord) -> Result<bool, StoreError>;
    /// Marks a listener revoked at `at_ms`, refusing every certificate it holds.
    /// `Ok(false)` when there is no such listener or it was revoked already.
    fn revoke_listener(&self, id: &str, at_ms: u64) -> Result<bool, StoreError>;
    /// Stores a personal API token by its SHA-256.
    fn add_person_token(&self, hash: &str, person: &str) -> Result<(), StoreError>;
    /// The person a personal API token belongs to.
    fn person_for_token(&self, hash: &str) -> Result<Option<String>, StoreError>;
}

/// A whole store: what a broker opens, and what each plane takes its part of.
pub trait Store: Namespace + IdentityStore + AuditStore {}

impl<T: Namespace + IdentityStore + AuditStore> Store for T {}

/// Changes to the namespace's hybrid connections (the change feed's items).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceChange {
    /// A hybrid connection was created at run time.
    Created(HybridConnection),
    /// A run-time hybrid connection was removed.
    Removed(String),
}

/// Changes buffered per receiver of the change feed.
pub const CHANGE_FEED: usize = 256;

/// The snapshot behind a lock, with the read and bookkeeping both stores share.
#[derive(Debug)]
struct SnapshotCell(
    std::sync::RwLock<Snapshot>,
    tokio::sync::broadcast::Sender<NamespaceChange>,
);

impl SnapshotCell {
    fn new(snapshot: Snapshot) -> Self {
        Self(
            std::sync::RwLock::new(snapshot),
            tokio::sync::broadcast::channel(CHANGE_FEED).0,
        )
    }

    /// Tells the feed's receivers; none listening is fine.
    fn changed(&self, change: NamespaceChange) {
        let _ = self.1.send(change);
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange> {
        self.1.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, name: &str) -> Option<HybridConnection> {
        self.read().get(name)
    }

    fn sorted(&self) -> Vec<HybridConnection> {
        self.read().sorted()
    }

    fn rules(&self) -> Arc<[SharedAccessKey]> {
        Arc::clone(&self.read().rules)
    }

    fn insert(&self, hc: HybridConnection) {
        self.write().hcs.insert(hc.name.to_ascii_lowercase(), hc);
    }

    /// Refuses removing what the configuration file defines.
    fn check_remove(&self, name: &str) -> Result<(), StoreError> {
        if self.read().from_config.contains(&name.to_ascii_lowercase()) {
            return Err(StoreError::FromConfig(name.into()));
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> bool {
        self.write()
            .hcs
            .remove(&name.to_ascii_lowercase())
            .is_some()
    }
}

/// The in-memory view both implementations serve reads from.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    /// By lower-cased name.
    hcs: HashMap<String, HybridConnection>,
    /// Lower-cased names that come from the configuration file.
    from_config: std::collections::HashSet<String>,
    rules: Arc<[SharedAccessKey]>,
}

impl Snapshot {
    fn from_config(hcs: &[HybridConnection], rules: &[SharedAccessKey]) -> Self {
        Self {
            hcs: hcs
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.clone()))
                .collect(),
            from_config: hcs.iter().map(|h| h.name.to_ascii_lowercase()).collect(),
            rules: rules.to_vec().into(),
        }
    }

    fn get(&self, name: &str) -> Option<HybridConnection> {
        self.hcs.get(&name.to_ascii_lowercase()).cloned()
    }

    fn sorted(&self) -> Vec<HybridConnection> {
        let mut all: Vec<_> = self.hcs.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Checks a creation against the snapshot.
    fn check_create(&self, hc: &HybridConnection) -> Result<(), StoreError> {
        let key = hc.name.to_ascii_lowercase();
        if self.from_config.contains(&key) {
            return Err(StoreError::FromConfig(hc.name.clone()));
        }
        if self.hcs.contains_key(&key) {
            return Err(StoreError::Conflict(hc.name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod battery;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
