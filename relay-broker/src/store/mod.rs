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
//! | [`PostgresStore`] | a PostgreSQL database a cluster's nodes share (`[store].url`) |
//!
//! All pass the same conformance battery (`conformance`, public under the `test-util`
//! feature for other backends), one test per concern (`store/battery.rs`).

use std::sync::Arc;

use relay_core::sas::SharedAccessKey;

use crate::config::HybridConnection;

mod memory;
pub(crate) mod postgres;
mod records;
mod snapshot;
mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
#[cfg(any(test, feature = "test-util"))]
pub use postgres::test_server::TestPostgres;
pub use records::{
    AuditEvent, AuditKind, CertificateRecord, EnrollmentToken, Grant, ListenerRecord, Person,
    now_ms,
};
use snapshot::{Snapshot, SnapshotCell};
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
    /// `Err` while the store cannot be reached (a shared database that stopped answering):
    /// the node is then not ready. Cheap, for every `/readyz`: it reports what the store's
    /// own background work last saw, it does not ask the database.
    fn reachable(&self) -> Result<(), StoreError> {
        Ok(())
    }
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
    /// Revocations numbered after `after` (a listener revoked, or one of a disabled
    /// person's), with the newest number; `after = None` gives only the newest number. The
    /// nodes of a cluster poll it as the backstop of the revocation broadcast. A store that
    /// only one node ever opens (memory, SQLite) has nobody to tell: `(0, [])`.
    fn revocations_since(&self, after: Option<u64>) -> Result<(u64, Vec<String>), StoreError> {
        let _ = after;
        Ok((0, Vec::new()))
    }
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

#[cfg(test)]
mod battery;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
