//! An in-memory store: the configuration plus run-time entities, and a bounded audit ring.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use relay_core::sas::SharedAccessKey;

use super::{AuditEvent, Snapshot, Store, StoreError};
use crate::config::HybridConnection;

/// Audit events kept in memory; the oldest are dropped beyond this.
const AUDIT_CAPACITY: usize = 10_000;

/// A store that forgets everything on restart.
#[derive(Debug)]
pub struct MemoryStore {
    snapshot: RwLock<Snapshot>,
    audit: RwLock<VecDeque<AuditEvent>>,
}

impl MemoryStore {
    /// Starts from the configuration file's entities.
    #[must_use]
    pub fn new(hcs: &[HybridConnection], rules: &[SharedAccessKey]) -> Self {
        Self {
            snapshot: RwLock::new(Snapshot::from_config(hcs, rules)),
            audit: RwLock::new(VecDeque::new()),
        }
    }
}

impl Store for MemoryStore {
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
    }

    fn hybrid_connections(&self) -> Vec<HybridConnection> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .sorted()
    }

    fn rules(&self) -> Arc<[SharedAccessKey]> {
        Arc::clone(
            &self
                .snapshot
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .rules,
        )
    }

    fn create_hybrid_connection(&self, hc: HybridConnection) -> Result<(), StoreError> {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        snapshot.check_create(&hc)?;
        snapshot.hcs.insert(hc.name.to_ascii_lowercase(), hc);
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let key = name.to_ascii_lowercase();
        if snapshot.from_config.contains(&key) {
            return Err(StoreError::FromConfig(name.into()));
        }
        Ok(snapshot.hcs.remove(&key).is_some())
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
}
