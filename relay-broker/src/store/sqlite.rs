//! The durable store: an embedded SQLite file.
//!
//! WAL journal with `synchronous = FULL`, so a write that returned survives a crash or kill
//! at any point. Versioned migrations run at open, each in its own transaction; a database
//! written by a newer broker is refused rather than misread. The audit table is append-only,
//! enforced by triggers. Reads come from an in-memory snapshot refreshed after each write.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use relay_core::sas::SharedAccessKey;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{AuditEvent, Snapshot, Store, StoreError};
use crate::config::HybridConnection;

/// Schema migrations; the index + 1 is the version. Never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: run-time hybrid connections and the audit trail.
    "CREATE TABLE hybrid_connections (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        requires_client_authorization INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_events_at ON audit_events (at_ms);
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;",
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// A store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    snapshot: RwLock<Snapshot>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates it, and merges the
    /// configuration file's entities, which win over stored ones of the same name.
    pub fn open(
        path: &Path,
        hcs: &[HybridConnection],
        rules: &[SharedAccessKey],
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::secure_fs::create_private_dir(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            ?;
        migrate(&mut conn)?;
        let mut snapshot = Snapshot::from_config(hcs, rules);
        let stored = {
            let mut stmt =
                conn.prepare("SELECT name, requires_client_authorization FROM hybrid_connections")?;
            let rows = stmt.query_map([], |r| {
                Ok(HybridConnection {
                    name: r.get(0)?,
                    requires_client_authorization: r.get(1)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for hc in stored {
            let key = hc.name.to_ascii_lowercase();
            if snapshot.from_config.contains(&key) {
                tracing::warn!(hc = %hc.name, "a stored hybrid connection is shadowed by the configuration file");
                continue;
            }
            snapshot.hcs.insert(key, hc);
        }
        Ok(Self {
            conn: Mutex::new(conn),
            snapshot: RwLock::new(snapshot),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Brings the schema to the latest version.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: u32 = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| {
            r.get::<_, Option<u32>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0);
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {current}, newer than this broker's {}; upgrade the broker",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![index as u32 + 1],
        )?;
        tx.commit()?;
        tracing::info!(version = index + 1, "store schema migrated");
    }
    Ok(())
}

impl Store for SqliteStore {
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
        let conn = self.conn();
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check_create(&hc)?;
        let inserted = conn
            .execute(
                "INSERT INTO hybrid_connections (name, requires_client_authorization, created_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![hc.name, hc.requires_client_authorization, AuditEvent::now("", "", "").at_ms as i64],
            )
            ?;
        if inserted == 0 {
            return Err(StoreError::Conflict(hc.name));
        }
        self.snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .hcs
            .insert(hc.name.to_ascii_lowercase(), hc);
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let key = name.to_ascii_lowercase();
        if self
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .from_config
            .contains(&key)
        {
            return Err(StoreError::FromConfig(name.into()));
        }
        let removed = conn.execute(
            "DELETE FROM hybrid_connections WHERE name = ?1",
            params![name],
        )? > 0;
        self.snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .hcs
            .remove(&key);
        Ok(removed)
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit_events (at_ms, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)",
            params![event.at_ms as i64, event.kind, event.subject, event.detail],
        )?;
        Ok(())
    }

    fn audit(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT at_ms, kind, subject, detail FROM audit_events WHERE at_ms >= ?1 ORDER BY seq LIMIT ?2")
            ?;
        let rows = stmt.query_map(params![since_ms as i64, limit as i64], |r| {
            Ok(AuditEvent {
                at_ms: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                subject: r.get(2)?,
                detail: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
