//! The durable store: an embedded SQLite file.
//!
//! WAL journal with `synchronous = FULL`, so a write that returned survives a crash or kill
//! at any point. Versioned migrations run at open, each in its own transaction; a database
//! written by a newer broker is refused rather than misread. The audit table is append-only,
//! enforced by triggers. Reads come from an in-memory snapshot refreshed after each write.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use relay_core::sas::SharedAccessKey;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    AuditEvent, AuditStore, CertificateRecord, EnrollmentToken, Grant, IdentityStore,
    IdentityWrite, ListenerRecord, Namespace, NamespaceChange, Person, Snapshot, SnapshotCell,
    StoreError,
};
use crate::config::HybridConnection;

mod migrations;
mod rows;
mod writes;

use migrations::MIGRATIONS;
use rows::{LISTENER_COLUMNS, grants, listener_row};
use writes::*;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        // A transaction that fails like these is rolled back whole: nothing half-written.
        match e.sqlite_error_code() {
            Some(
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::SystemIoFailure
                | C::CannotOpen
                | C::ReadOnly,
            ) => Self::Unavailable(e.to_string()),
            _ => Self::Database(e.to_string()),
        }
    }
}

/// A store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    snapshot: SnapshotCell,
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
            relay_io::secure_fs::create_private_dir(dir)
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
        snapshot.merge_stored(stored);
        Ok(Self {
            conn: Mutex::new(conn),
            snapshot: SnapshotCell::new(snapshot),
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

impl Namespace for SqliteStore {
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
        // Holding the connection serialises writers, so check and insert cannot interleave.
        let conn = self.conn();
        self.snapshot.read().check_create(&hc)?;
        create_hybrid_connection_on(&conn, &hc)?;
        self.snapshot
            .follow(&IdentityWrite::CreateHybridConnection(&hc), true);
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        self.snapshot.check_remove(name)?;
        let removed = remove_hybrid_connection_on(&conn, name)?;
        self.snapshot
            .follow(&IdentityWrite::RemoveHybridConnection(name), removed);
        Ok(removed)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<NamespaceChange> {
        self.snapshot.changes()
    }
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        append_audit_on(&self.conn(), event)
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

impl IdentityStore for SqliteStore {
    fn write_audited(
        &self,
        write: IdentityWrite<'_>,
        events: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        // Holding the connection serialises writers: the snapshot's checks and the write
        // cannot interleave with another.
        let conn = self.conn();
        match write {
            IdentityWrite::CreateHybridConnection(hc) => self.snapshot.read().check_create(hc)?,
            IdentityWrite::RemoveHybridConnection(name) => self.snapshot.check_remove(name)?,
            _ => {}
        }
        let changed = atomically(&conn, |conn| {
            let changed = apply(conn, &write)?;
            if changed {
                for event in events {
                    append_audit_on(conn, event)?;
                }
            }
            Ok(changed)
        })?;
        // Committed: the in-memory view and the change feed follow.
        self.snapshot.follow(&write, changed);
        Ok(changed)
    }

    fn add_person(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        add_person_on(&self.conn(), name, password_hash)
    }

    fn person(&self, name: &str) -> Result<Option<(Person, String)>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT name, disabled, password_hash FROM persons WHERE name = ?1",
                params![name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()?;
        let Some((name, disabled, hash)) = row else {
            return Ok(None);
        };
        let rights = grants(&conn, &name)?;
        Ok(Some((
            Person {
                name,
                disabled,
                rights,
            },
            hash,
        )))
    }

    fn persons(&self) -> Result<Vec<Person>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, disabled FROM persons ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, disabled) = row?;
            let rights = grants(&conn, &name)?;
            out.push(Person {
                name,
                disabled,
                rights,
            });
        }
        Ok(out)
    }

    fn set_person_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        set_person_disabled_on(&self.conn(), name, disabled)
    }

    fn grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        grant_on(&self.conn(), name, grant)
    }

    fn revoke_grant(&self, name: &str, grant: &Grant) -> Result<bool, StoreError> {
        revoke_grant_on(&self.conn(), name, grant)
    }

    fn add_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        add_enrollment_token_on(&self.conn(), token)
    }

    fn burn_enrollment_token(
        &self,
        hash: &str,
        now_ms: u64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        // One statement marks it used and returns it, so two redeemers cannot both win.
        let row = self
            .conn()
            .query_row(
                "UPDATE enrollment_tokens SET used_at_ms = ?2 WHERE hash = ?1 AND used_at_ms IS NULL AND expires_at_ms > ?2
                 RETURNING person, hybrid_connections, name, expires_at_ms",
                params![hash, now_ms as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?)),
            )
            .optional()?;
        Ok(row.map(|(person, hcs, name, expires)| EnrollmentToken {
            hash: hash.into(),
            person,
            hybrid_connections: hcs.split('\n').map(str::to_owned).collect(),
            name,
            expires_at_ms: expires as u64,
        }))
    }

    fn add_listener(&self, l: &ListenerRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        atomically(&conn, |conn| add_listener_on(conn, l))
    }

    fn listeners(&self) -> Result<Vec<ListenerRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{LISTENER_COLUMNS} ORDER BY created_at_ms, id"))?;
        let rows = stmt.query_map([], listener_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn listener(&self, id: &str) -> Result<Option<ListenerRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("{LISTENER_COLUMNS} WHERE id = ?1"),
                params![id],
                listener_row,
            )
            .optional()?)
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT serial, listener_id, key_fingerprint, not_after_ms FROM certificates WHERE serial = ?1",
                params![serial],
                |r| {
                    Ok(CertificateRecord {
                        serial: r.get(0)?,
                        listener_id: r.get(1)?,
                        key_fingerprint: r.get(2)?,
                        not_after_ms: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()?)
    }

    fn renew_listener(&self, cert: &CertificateRecord) -> Result<bool, StoreError> {
        let conn = self.conn();
        atomically(&conn, |conn| renew_listener_on(conn, cert))
    }

    fn revoke_listener(&self, id: &str, at_ms: u64) -> Result<bool, StoreError> {
        revoke_listener_on(&self.conn(), id, at_ms)
    }

    fn add_person_token(&self, hash: &str, person: &str) -> Result<(), StoreError> {
        add_person_token_on(&self.conn(), hash, person)
    }

    fn person_for_token(&self, hash: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT person FROM person_tokens WHERE hash = ?1",
                params![hash],
                |r| r.get(0),
            )
            .optional()?)
    }
}
