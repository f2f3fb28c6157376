//! An in-memory store: the configuration plus run-time entities, and a bounded audit ring.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use relay_core::sas::SharedAccessKey;

use super::{
    AuditEvent, AuditStore, CertificateRecord, EnrollmentToken, Grant, IdentityStore,
    IdentityWrite, ListenerRecord, Namespace, NamespaceChange, Person, Snapshot, SnapshotCell,
    StoreError,
};
use crate::config::HybridConnection;

/// Audit events kept in memory; the oldest are dropped beyond this.
const AUDIT_CAPACITY: usize = 10_000;

/// A store that forgets everything on restart.
#[derive(Debug)]
pub struct MemoryStore {
    snapshot: SnapshotCell,
    audit: RwLock<VecDeque<AuditEvent>>,
    /// By lower-cased name: the person and their password hash.
    persons: RwLock<std::collections::BTreeMap<String, (Person, String)>>,
    enrollment: RwLock<std::collections::HashMap<String, EnrollmentToken>>,
    listeners: RwLock<Listeners>,
    /// Personal API token hash → person.
    person_tokens: RwLock<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Default)]
struct Listeners {
    records: Vec<ListenerRecord>,
    /// By serial.
    certificates: std::collections::HashMap<String, CertificateRecord>,
}

impl Listeners {
    fn insert_certificate(&mut self, cert: &CertificateRecord) -> Result<(), StoreError> {
        let reused = self.certificates.contains_key(&cert.serial)
            || self
                .certificates
                .values()
                .any(|c| c.key_fingerprint == cert.key_fingerprint);
        if reused {
            return Err(StoreError::Conflict(format!(
                "key {}",
                cert.key_fingerprint
            )));
        }
        self.certificates.insert(cert.serial.clone(), cert.clone());
        Ok(())
    }
}

impl MemoryStore {
    /// Starts from the configuration file's entities.
    #[must_use]
    pub fn new(hcs: &[HybridConnection], rules: &[SharedAccessKey]) -> Self {
        Self {
            snapshot: SnapshotCell::new(Snapshot::from_config(hcs, rules)),
            audit: RwLock::new(VecDeque::new()),
            persons: RwLock::default(),
            enrollment: RwLock::default(),
            listeners: RwLock::default(),
            person_tokens: RwLock::default(),
        }
    }
}

impl Namespace for MemoryStore {
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection> {
        self.snapshot.get(name)
    }

    fn hybrid_connections(&self) -> Vec<HybridConnection> {
        self.snapshot.sorted()
    }

    fn rules(&self) -> Arc<[SharedAccessKey]> {
        self.snapshot.rules()
    }

    fn create_hybrid_connection(&self, hc: HybridConnection) -> Result<(), StoreError> {
        let mut snapshot = self.snapshot.write();
        snapshot.check_create(&hc)?;
        snapshot
            .hcs
            .insert(hc.name.to_ascii_lowercase(), hc.clone());
        drop(snapshot);
        self.snapshot.changed(NamespaceChange::Created(hc));
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        self.snapshot.check_remove(name)?;
        let removed = self.snapshot.remove(name);
        if removed {
            self.snapshot
                .changed(NamespaceChange::Removed(name.to_owned()));
        }
        Ok(removed)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange> {
        self.snapshot.changes()
    }
}

impl AuditStore for MemoryStore {
    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut audit = self.audit.write().unwrap_or_else(PoisonError::into_inner);
        if audit.len() == AUDIT_CAPACITY {
            audit.pop_front();
        }
        audit.push_back(event.clone());
        Ok(())
    }

    fn audit(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let audit = self.audit.read().unwrap_or_else(PoisonError::into_inner);
        Ok(audit
            .iter()
            .filter(|e| e.at_ms >= since_ms)
            .take(limit)
            .cloned()
            .collect())
    }
}

impl IdentityStore for MemoryStore {
    fn write_audited(
        &self,
        write: IdentityWrite<'_>,
        events: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        // Nothing here outlives the process, so "together" means: no event for a write
        // that failed or changed nothing.
        let changed = match write {
            IdentityWrite::AddPerson {
                name,
                password_hash,
            } => self.add_person(name, password_hash).map(|()| true)?,
            IdentityWrite::SetPersonDisabled { name, disabled } => {
                self.set_person_disabled(name, disabled)?
            }
            IdentityWrite::Grant { name, grant } => self.grant(name, grant)?,
            IdentityWrite::RevokeGrant { name, grant } => self.revoke_grant(name, grant)?,
            IdentityWrite::AddEnrollmentToken(token) => {
                self.add_enrollment_token(token).map(|()| true)?
            }
            IdentityWrite::AddListener(listener) => self.add_listener(listener).map(|()| true)?,
            IdentityWrite::RenewListener(cert) => self.renew_listener(cert)?,
            IdentityWrite::RevokeListener { id, at_ms } => self.revoke_listener(id, at_ms)?,
            IdentityWrite::AddPersonToken { hash, person } => {
                self.add_person_token(hash, person).map(|()| true)?
            }
            IdentityWrite::CreateHybridConnection(hc) => {
                self.create_hybrid_connection(hc.clone()).map(|()| true)?
            }
            IdentityWrite::RemoveHybridConnection(name) => self.remove_hybrid_connection(name)?,
        };
        if changed {
            for event in events {
                self.append_audit(event)?;
            }
        }
        Ok(changed)
    }

    fn add_person(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let mut persons = self.persons.write().unwrap_or_else(PoisonError::into_inner);
        let key = name.to_ascii_lowercase();
        if persons.contains_key(&key) {
            return Err(StoreError::Conflict(name.into()));
        }
        let person = Person {
            name: name.into(),
            disabled: false,
            rights: Vec::new(),
        };
        persons.insert(key, (person, password_hash.into()));
        Ok(())
    }

    fn person(&self, name: &str) -> Result<Option<(Person, String)>, StoreError> {
        Ok(self
            .persons
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name.to_ascii_lowercase())
            .cloned())
    }

    fn persons(&self) -> Result<Vec<Person>, StoreError> {
        Ok(self
            .persons
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn set_person_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let mut persons = self.persons.write().unwrap_or_else(PoisonError::into_inner);
        Ok(persons
            .get_mut(&name.to_ascii_lowercase())
            .map(|(p, _)| p.disabled = disabled)
            .is_some())
    }

    fn grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        let mut persons = self.persons.write().unwrap_or_else(PoisonError::into_inner);
        let Some((person, _)) = persons.get_mut(&name.to_ascii_lowercase()) else {
            return Ok(false);
        };
        if !person.rights.contains(grant) {
            person.rights.push(grant.clone());
            person.rights.sort();
        }
        Ok(true)
    }

    fn revoke_grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        let mut persons = self.persons.write().unwrap_or_else(PoisonError::into_inner);
        let Some((person, _)) = persons.get_mut(&name.to_ascii_lowercase()) else {
            return Ok(false);
        };
        let before = person.rights.len();
        person.rights.retain(|g| g != grant);
        Ok(person.rights.len() != before)
    }

    fn add_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        let mut tokens = self
            .enrollment
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, t| t.expires_at_ms > token.expires_at_ms.saturating_sub(86_400_000));
        tokens.insert(token.hash.clone(), token.clone());
        Ok(())
    }

    fn burn_enrollment_token(
        &self,
        hash: &str,
        now_ms: u64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        let mut tokens = self
            .enrollment
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(tokens.remove(hash).filter(|t| t.expires_at_ms > now_ms))
    }

    fn add_listener(&self, listener: &ListenerRecord) -> Result<(), StoreError> {
        let mut listeners = self.registry();
        listeners.insert_certificate(&listener.certificate())?;
        listeners.records.push(listener.clone());
        Ok(())
    }

    fn listeners(&self) -> Result<Vec<ListenerRecord>, StoreError> {
        Ok(self.registry().records.clone())
    }

    fn listener(&self, id: &str) -> Result<Option<ListenerRecord>, StoreError> {
        Ok(self.registry().records.iter().find(|l| l.id == id).cloned())
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        Ok(self.registry().certificates.get(serial).cloned())
    }

    fn renew_listener(&self, cert: &CertificateRecord) -> Result<bool, StoreError> {
        let mut listeners = self.registry();
        let Some(index) = listeners
            .records
            .iter()
            .position(|l| l.id == cert.listener_id)
        else {
            return Ok(false);
        };
        listeners.insert_certificate(cert)?;
        let record = &mut listeners.records[index];
        record.serial.clone_from(&cert.serial);
        record.key_fingerprint.clone_from(&cert.key_fingerprint);
        record.not_after_ms = cert.not_after_ms;
        Ok(true)
    }

    fn revoke_listener(&self, id: &str, at_ms: u64) -> Result<bool, StoreError> {
        let mut listeners = self.registry();
        let found = listeners
            .records
            .iter_mut()
            .find(|l| l.id == id && l.revoked_at_ms.is_none());
        Ok(found.map(|l| l.revoked_at_ms = Some(at_ms)).is_some())
    }

    fn add_person_token(&self, hash: &str, person: &str) -> Result<(), StoreError> {
        self.person_tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash.into(), person.into());
        Ok(())
    }

    fn person_for_token(&self, hash: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .person_tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .cloned())
    }
}

impl MemoryStore {
    fn registry(&self) -> std::sync::RwLockWriteGuard<'_, Listeners> {
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
