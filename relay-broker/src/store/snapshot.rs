//! The in-memory view of hybrid connections and rules both stores serve reads from, and
//! the change feed that follows it.

use std::collections::HashMap;
use std::sync::Arc;

use relay_core::sas::SharedAccessKey;

use super::{CHANGE_FEED, IdentityWrite, NamespaceChange, StoreError};
use crate::config::HybridConnection;

/// The snapshot behind a lock, with the read and bookkeeping both stores share.
#[derive(Debug)]
pub(super) struct SnapshotCell(
    std::sync::RwLock<Snapshot>,
    tokio::sync::broadcast::Sender<NamespaceChange>,
);

impl SnapshotCell {
    pub(super) fn new(snapshot: Snapshot) -> Self {
        Self(
            std::sync::RwLock::new(snapshot),
            tokio::sync::broadcast::channel(CHANGE_FEED).0,
        )
    }

    /// Tells the feed's receivers; none listening is fine.
    pub(super) fn changed(&self, change: NamespaceChange) {
        let _ = self.1.send(change);
    }

    pub(super) fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange> {
        self.1.subscribe()
    }

    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn get(&self, name: &str) -> Option<HybridConnection> {
        self.read().get(name)
    }

    pub(super) fn sorted(&self) -> Vec<HybridConnection> {
        self.read().sorted()
    }

    pub(super) fn rules(&self) -> Arc<[SharedAccessKey]> {
        Arc::clone(&self.read().rules)
    }

    /// Inserts `hc` unless one of its name is there; whether it was new.
    pub(super) fn insert_new(&self, hc: HybridConnection) -> bool {
        let mut snapshot = self.write();
        let key = hc.name.to_ascii_lowercase();
        if snapshot.hcs.contains_key(&key) {
            return false;
        }
        snapshot.hcs.insert(key, hc);
        true
    }

    /// After a durable store committed `write`: the view and the change feed follow, each
    /// change told once (a store whose other nodes' writes are polled may have seen it
    /// first).
    pub(super) fn follow(&self, write: &IdentityWrite<'_>, changed: bool) {
        match *write {
            IdentityWrite::CreateHybridConnection(hc) if self.insert_new(hc.clone()) => {
                self.changed(NamespaceChange::Created(hc.clone()));
            }
            IdentityWrite::RemoveHybridConnection(name) if changed && self.remove(name) => {
                self.changed(NamespaceChange::Removed(name.to_owned()));
            }
            _ => {}
        }
    }

    /// Makes the run-time entries those `stored` (another node's writes), telling the feed
    /// what came and went. Entries the configuration file defines are left alone.
    pub(super) fn reconcile(&self, stored: Vec<HybridConnection>) {
        let mut changes = Vec::new();
        {
            let mut snapshot = self.write();
            let stored: HashMap<String, HybridConnection> = stored
                .into_iter()
                .map(|h| (h.name.to_ascii_lowercase(), h))
                .filter(|(key, _)| !snapshot.from_config.contains(key))
                .collect();
            let gone: Vec<String> = snapshot
                .hcs
                .keys()
                .filter(|k| !snapshot.from_config.contains(*k) && !stored.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(hc) = snapshot.hcs.remove(&key) {
                    changes.push(NamespaceChange::Removed(hc.name));
                }
            }
            for (key, hc) in stored {
                if let std::collections::hash_map::Entry::Vacant(slot) = snapshot.hcs.entry(key) {
                    slot.insert(hc.clone());
                    changes.push(NamespaceChange::Created(hc));
                }
            }
        }
        for change in changes {
            self.changed(change);
        }
    }

    /// Refuses removing what the configuration file defines.
    pub(super) fn check_remove(&self, name: &str) -> Result<(), StoreError> {
        if self.read().from_config.contains(&name.to_ascii_lowercase()) {
            return Err(StoreError::FromConfig(name.into()));
        }
        Ok(())
    }

    pub(super) fn remove(&self, name: &str) -> bool {
        self.write()
            .hcs
            .remove(&name.to_ascii_lowercase())
            .is_some()
    }
}

/// The in-memory view both implementations serve reads from.
#[derive(Debug, Default, Clone)]
pub(super) struct Snapshot {
    /// By lower-cased name.
    pub(super) hcs: HashMap<String, HybridConnection>,
    /// Lower-cased names that come from the configuration file.
    pub(super) from_config: std::collections::HashSet<String>,
    pub(super) rules: Arc<[SharedAccessKey]>,
}

impl Snapshot {
    pub(super) fn from_config(hcs: &[HybridConnection], rules: &[SharedAccessKey]) -> Self {
        Self {
            hcs: hcs
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.clone()))
                .collect(),
            from_config: hcs.iter().map(|h| h.name.to_ascii_lowercase()).collect(),
            rules: rules.to_vec().into(),
        }
    }

    /// Adds the hybrid connections a durable store kept; the configuration file's win.
    pub(super) fn merge_stored(&mut self, stored: Vec<HybridConnection>) {
        for hc in stored {
            let key = hc.name.to_ascii_lowercase();
            if self.from_config.contains(&key) {
                tracing::warn!(hc = %hc.name, "a stored hybrid connection is shadowed by the configuration file");
                continue;
            }
            self.hcs.insert(key, hc);
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<HybridConnection> {
        self.hcs.get(&name.to_ascii_lowercase()).cloned()
    }

    pub(super) fn sorted(&self) -> Vec<HybridConnection> {
        let mut all: Vec<_> = self.hcs.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Checks a creation against the snapshot.
    pub(super) fn check_create(&self, hc: &HybridConnection) -> Result<(), StoreError> {
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
