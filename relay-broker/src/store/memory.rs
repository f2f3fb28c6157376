//! An in-memory store: the configuration plus run-time entities, and a bounded audit ring.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use relay_core::sas::SharedAccessKey;

use super::{
    AuditEvent, EnrollmentToken, Grant, ListenerRecord, Person, Snapshot, SnapshotCell, Store,
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
    listeners: RwLock<Vec<ListenerRecord>>,
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
        }
    }
}

impl Store for MemoryStore {
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
        snapshot.hcs.insert(hc.name.to_ascii_lowercase(), hc);
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        self.snapshot.check_remove(name)?;
        Ok(self.snapshot.remove(name))
    }

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
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener.clone());
        Ok(())
    }

    fn listeners(&self) -> Result<Vec<ListenerRecord>, StoreError> {
        Ok(self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }
}
