//! Rows to records and back: the listener columns, certificates, grants.

use rusqlite::{Connection, params};

use crate::store::{CertificateRecord, Grant, ListenerRecord, StoreError};

pub(super) const LISTENER_COLUMNS: &str = "SELECT id, name, person, hybrid_connections, key_fingerprint, serial, not_after_ms, revoked_at_ms FROM listeners";

pub(super) fn listener_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListenerRecord> {
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
pub(super) fn insert_certificate(
    conn: &Connection,
    cert: &CertificateRecord,
) -> Result<(), StoreError> {
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

pub(super) fn grants(conn: &Connection, person: &str) -> Result<Vec<Grant>, StoreError> {
    let mut stmt = conn.prepare("SELECT right_name, pattern FROM person_rights WHERE person = ?1 ORDER BY right_name, pattern")?;
    let rows = stmt.query_map(params![person], |r| {
        Ok(Grant {
            right: r.get(0)?,
            pattern: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
