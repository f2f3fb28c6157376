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
    // 2: persons and their rights.
    "CREATE TABLE persons (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE person_rights (
        person TEXT NOT NULL COLLATE NOCASE REFERENCES persons (name) ON DELETE CASCADE,
        right_name TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (person, right_name, pattern)
    );",
    // 3: enrollment tokens (hashes only) and registered listeners.
    "CREATE TABLE enrollment_tokens (
        hash TEXT PRIMARY KEY,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        name TEXT,
        expires_at_ms INTEGER NOT NULL,
        used_at_ms INTEGER
    );
    CREATE TABLE listeners (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        person TEXT NOT NULL,
        hybrid_connections TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL
    );",
    // 4: every certificate issued (a key binds to one only), and personal API tokens.
    "CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        listener_id TEXT NOT NULL REFERENCES listeners (id),
        key_fingerprint TEXT NOT NULL UNIQUE,
        not_after_ms INTEGER NOT NULL,
        issued_at_ms INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO certificates
        SELECT serial, id, key_fingerprint, not_after_ms, created_at_ms FROM listeners;
    CREATE TABLE person_tokens (
        hash TEXT PRIMARY KEY,
        person TEXT NOT NULL COLLATE NOCASE REFERENCES persons (name) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL
    );",
];

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
        self.snapshot.insert(hc.clone());
        self.snapshot.changed(NamespaceChange::Created(hc));
        Ok(())
    }

    fn remove_hybrid_connection(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        self.snapshot.check_remove(name)?;
        let removed = remove_hybrid_connection_on(&conn, name)?;
        self.snapshot.remove(name);
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
        match write {
            IdentityWrite::CreateHybridConnection(hc) => {
                self.snapshot.insert(hc.clone());
                self.snapshot.changed(NamespaceChange::Created(hc.clone()));
            }
            IdentityWrite::RemoveHybridConnection(name) if changed => {
                self.snapshot.remove(name);
                self.snapshot
                    .changed(NamespaceChange::Removed(name.to_owned()));
            }
            _ => {}
        }
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

const LISTENER_COLUMNS: &str = "SELECT id, name, person, hybrid_connections, key_fingerprint, serial, not_after_ms, revoked_at_ms FROM listeners";

fn add_person_on(conn: &Connection, name: &str, password_hash: &str) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO persons (name, password_hash, created_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![name, password_hash, crate::store::now_ms() as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(name.into()));
    }
    Ok(())
}

fn set_person_disabled_on(
    conn: &Connection,
    name: &str,
    disabled: bool,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE persons SET disabled = ?2 WHERE name = ?1",
        params![name, disabled],
    )? > 0)
}

fn grant_on(conn: &Connection, name: &str, grant: &Grant) -> Result<bool, StoreError> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM persons WHERE name = ?1",
            params![name],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO person_rights (person, right_name, pattern) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![name, grant.right, grant.pattern],
    )?;
    Ok(true)
}

fn revoke_grant_on(conn: &Connection, name: &str, grant: &Grant) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM person_rights WHERE person = ?1 AND right_name = ?2 AND pattern = ?3",
        params![name, grant.right, grant.pattern],
    )? > 0)
}

fn add_enrollment_token_on(conn: &Connection, token: &EnrollmentToken) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO enrollment_tokens (hash, person, hybrid_connections, name, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token.hash, token.person, token.hybrid_connections.join("\n"), token.name, token.expires_at_ms as i64],
    )?;
    Ok(())
}

fn add_listener_on(conn: &Connection, l: &ListenerRecord) -> Result<(), StoreError> {
    let now = crate::store::now_ms() as i64;
    conn.execute(
        "INSERT INTO listeners (id, name, person, hybrid_connections, key_fingerprint, serial, not_after_ms, revoked_at_ms, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            l.id,
            l.name,
            l.person,
            l.hybrid_connections.join("\n"),
            l.key_fingerprint,
            l.serial,
            l.not_after_ms as i64,
            l.revoked_at_ms.map(|v| v as i64),
            now
        ],
    )?;
    insert_certificate(conn, &l.certificate())?;
    Ok(())
}

fn renew_listener_on(conn: &Connection, cert: &CertificateRecord) -> Result<bool, StoreError> {
    let updated = conn.execute(
        "UPDATE listeners SET serial = ?2, key_fingerprint = ?3, not_after_ms = ?4 WHERE id = ?1",
        params![
            cert.listener_id,
            cert.serial,
            cert.key_fingerprint,
            cert.not_after_ms as i64
        ],
    )?;
    if updated == 0 {
        return Ok(false);
    }
    insert_certificate(conn, cert)?;
    Ok(true)
}

fn revoke_listener_on(conn: &Connection, id: &str, at_ms: u64) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE listeners SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
        params![id, at_ms as i64],
    )? > 0)
}

fn add_person_token_on(conn: &Connection, hash: &str, person: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO person_tokens (hash, person, created_at_ms) VALUES (?1, ?2, ?3)",
        params![hash, person, crate::store::now_ms() as i64],
    )?;
    Ok(())
}

/// Runs `f` inside a savepoint: all of it or nothing, inside or outside a transaction.
fn atomically<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT relay_write")?;
    match f(conn) {
        Ok(value) => {
            conn.execute_batch("RELEASE relay_write")?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO relay_write; RELEASE relay_write");
            Err(e)
        }
    }
}

fn append_audit_on(conn: &Connection, event: &AuditEvent) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_events (at_ms, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)",
        params![event.at_ms as i64, event.kind, event.subject, event.detail],
    )?;
    Ok(())
}

/// Applies one identity write; whether it changed something.
fn apply(conn: &Connection, write: &IdentityWrite<'_>) -> Result<bool, StoreError> {
    match *write {
        IdentityWrite::AddPerson {
            name,
            password_hash,
        } => add_person_on(conn, name, password_hash).map(|()| true),
        IdentityWrite::SetPersonDisabled { name, disabled } => {
            set_person_disabled_on(conn, name, disabled)
        }
        IdentityWrite::Grant { name, grant } => grant_on(conn, name, grant),
        IdentityWrite::RevokeGrant { name, grant } => revoke_grant_on(conn, name, grant),
        IdentityWrite::AddEnrollmentToken(token) => {
            add_enrollment_token_on(conn, token).map(|()| true)
        }
        IdentityWrite::AddListener(listener) => add_listener_on(conn, listener).map(|()| true),
        IdentityWrite::RenewListener(cert) => renew_listener_on(conn, cert),
        IdentityWrite::RevokeListener { id, at_ms } => revoke_listener_on(conn, id, at_ms),
        IdentityWrite::AddPersonToken { hash, person } => {
            add_person_token_on(conn, hash, person).map(|()| true)
        }
        IdentityWrite::CreateHybridConnection(hc) => {
            create_hybrid_connection_on(conn, hc).map(|()| true)
        }
        IdentityWrite::RemoveHybridConnection(name) => remove_hybrid_connection_on(conn, name),
    }
}

fn create_hybrid_connection_on(conn: &Connection, hc: &HybridConnection) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO hybrid_connections (name, requires_client_authorization, created_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO NOTHING",
        params![hc.name, hc.requires_client_authorization, crate::store::now_ms() as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(hc.name.clone()));
    }
    Ok(())
}

fn remove_hybrid_connection_on(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM hybrid_connections WHERE name = ?1",
        params![name],
    )? > 0)
}

fn listener_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListenerRecord> {
    Ok(ListenerRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        person: r.get(2)?,
        hybrid_connections: r
            .get::<_, String>(3)?
            .split('\n')
            .map(str::to_owned)
            .collect(),
        key_fingerprint: r.get(4)?,
        serial: r.get(5)?,
        not_after_ms: r.get::<_, i64>(6)? as u64,
        revoked_at_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
    })
}

/// Inserts a certificate; a key already bound to one is a `Conflict`.
fn insert_certificate(conn: &Connection, cert: &CertificateRecord) -> Result<(), StoreError> {
    let result = conn.execute(
        "INSERT INTO certificates (serial, listener_id, key_fingerprint, not_after_ms, issued_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![cert.serial, cert.listener_id, cert.key_fingerprint, cert.not_after_ms as i64, crate::store::now_ms() as i64],
    );
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(format!(
                "key {}",
                cert.key_fingerprint
            )))
        }
        Err(e) => Err(e.into()),
    }
}

fn grants(conn: &Connection, person: &str) -> Result<Vec<Grant>, StoreError> {
    let mut stmt = conn.prepare("SELECT right_name, pattern FROM person_rights WHERE person = ?1 ORDER BY right_name, pattern")?;
    let rows = stmt.query_map(params![person], |r| {
        Ok(Grant {
            right: r.get(0)?,
            pattern: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
