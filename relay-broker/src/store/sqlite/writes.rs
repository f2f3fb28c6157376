//! Every write of the SQLite store as a function of a connection, so that one can run
//! alone or inside the savepoint of an audited write; `apply` maps an [`IdentityWrite`] to
//! them.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::rows::insert_certificate;
use crate::config::HybridConnection;
use crate::store::{
    AuditEvent, CertificateRecord, EnrollmentToken, Grant, IdentityWrite, ListenerRecord,
    StoreError,
};

pub(super) fn add_person_on(
    conn: &Connection,
    name: &str,
    password_hash: &str,
) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT INTO persons (name, password_hash, created_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![name, password_hash, crate::store::now_ms() as i64],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(name.into()));
    }
    Ok(())
}

pub(super) fn set_person_disabled_on(
    conn: &Connection,
    name: &str,
    disabled: bool,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE persons SET disabled = ?2 WHERE name = ?1",
        params![name, disabled],
    )? > 0)
}

pub(super) fn grant_on(conn: &Connection, name: &str, grant: &Grant) -> Result<bool, StoreError> {
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

pub(super) fn revoke_grant_on(
    conn: &Connection,
    name: &str,
    grant: &Grant,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM person_rights WHERE person = ?1 AND right_name = ?2 AND pattern = ?3",
        params![name, grant.right, grant.pattern],
    )? > 0)
}

pub(super) fn add_enrollment_token_on(
    conn: &Connection,
    token: &EnrollmentToken,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO enrollment_tokens (hash, person, hybrid_connections, name, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token.hash, token.person, token.hybrid_connections.join("\n"), token.name, token.expires_at_ms as i64],
    )?;
    Ok(())
}

pub(super) fn add_listener_on(conn: &Connection, l: &ListenerRecord) -> Result<(), StoreError> {
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

pub(super) fn renew_listener_on(
    conn: &Connection,
    cert: &CertificateRecord,
) -> Result<bool, StoreError> {
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

pub(super) fn revoke_listener_on(
    conn: &Connection,
    id: &str,
    at_ms: u64,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE listeners SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
        params![id, at_ms as i64],
    )? > 0)
}

pub(super) fn add_person_token_on(
    conn: &Connection,
    hash: &str,
    person: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO person_tokens (hash, person, created_at_ms) VALUES (?1, ?2, ?3)",
        params![hash, person, crate::store::now_ms() as i64],
    )?;
    Ok(())
}

/// Runs `f` inside a savepoint: all of it or nothing, inside or outside a transaction.
pub(super) fn atomically<T>(
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

pub(super) fn append_audit_on(conn: &Connection, event: &AuditEvent) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_events (at_ms, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)",
        params![event.at_ms as i64, event.kind, event.subject, event.detail],
    )?;
    Ok(())
}

/// Applies one identity write; whether it changed something.
pub(super) fn apply(conn: &Connection, write: &IdentityWrite<'_>) -> Result<bool, StoreError> {
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

pub(super) fn create_hybrid_connection_on(
    conn: &Connection,
    hc: &HybridConnection,
) -> Result<(), StoreError> {
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

pub(super) fn remove_hybrid_connection_on(
    conn: &Connection,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM hybrid_connections WHERE name = ?1",
        params![name],
    )? > 0)
}
