//! The store seam: where hybrid connections and authorization rules come from.
//!
//! Today the configuration file is the store. The registration issue adds a durable SQLite
//! implementation and the cluster issue a networked one; both plug in behind [`Store`].

use std::collections::HashMap;
use std::sync::Arc;

use relay_core::sas::SharedAccessKey;

use crate::config::HybridConnection;

/// Read access to namespace entities and rules.
pub trait Store: Send + Sync + 'static {
    /// The hybrid connection with this name (case-insensitive), if it exists.
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection>;
    /// Every SAS rule of the namespace.
    fn rules(&self) -> Arc<[SharedAccessKey]>;
}

/// A store holding exactly what the configuration file declared.
#[derive(Debug)]
pub struct ConfigStore {
    hcs: HashMap<String, HybridConnection>,
    rules: Arc<[SharedAccessKey]>,
}

impl ConfigStore {
    /// Builds the store from validated configuration.
    #[must_use]
    pub fn new(hcs: &[HybridConnection], rules: &[SharedAccessKey]) -> Self {
        Self {
            hcs: hcs
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.clone()))
                .collect(),
            rules: rules.to_vec().into(),
        }
    }
}

impl Store for ConfigStore {
    fn hybrid_connection(&self, name: &str) -> Option<HybridConnection> {
        self.hcs.get(&name.to_ascii_lowercase()).cloned()
    }

    fn rules(&self) -> Arc<[SharedAccessKey]> {
        Arc::clone(&self.rules)
    }
}
