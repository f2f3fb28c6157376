//! Every write of the PostgreSQL store as a function of a transaction, so that one can run
//! alone or together with its audit events; `apply` maps an [`IdentityWrite`] to them.

use tokio_postgres::Transaction;

use super::client::is_unique_violation;
use crate::config::HybridConnection;
use crate::store::{
    AuditEvent, CertificateRecord, EnrollmentToken, Grant, IdentityWrite, ListenerRecord,
    StoreError,
};

fn now() -> i64 {
    crate::store::now_ms() as i64
}

pub(super) async fn add_person_on(
    tx: &Transaction<'_>,
    name: &str,
    password_hash: &str,
) -> Result<(), StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO persons (name, password_hash, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&name, &password_hash, &now()],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::Conflict(name.into()));
    }
    Ok(())
}

pub(super) async fn set_person_disabled_on(
    tx: &Transaction<'_>,
    name: &str,
    disabled: bool,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE persons SET disabled = $2 WHERE name = $1",
            &[&name, &disabled],
        )
        .await?
        > 0)
}

pub(super) async fn grant_on(
    tx: &Transaction<'_>,
    name: &str,
    grant: &Grant,
) -> Result<bool, StoreError> {
    // The stored spelling of the name, so that the right references the person's row.
    let Some(row) = tx
        .query_opt("SELECT name FROM persons WHERE name = $1", &[&name])
        .await?
    else {
        return Ok(false);
    };
    let person: String = row.get(0);
    tx.execute(
        "INSERT INTO person_rights (person, right_name, pattern) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&person, &grant.right, &grant.pattern],
    )
    .await?;
    Ok(true)
}

pub(super) async fn revoke_grant_on(
    tx: &Transaction<'_>,
    name: &str,
    grant: &Grant,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "DELETE FROM person_rights WHERE person = $1 AND right_name = $2 AND pattern = $3",
            &[&name, &grant.right, &grant.pattern],
        )
        .await?
        > 0)
}

pub(super) async fn add_enrollment_token_on(
    tx: &Transaction<'_>,
    token: &EnrollmentToken,
) -> Result<(), StoreError> {
    let result = tx
        .execute(
            "INSERT INTO enrollment_tokens (hash, person, hybrid_connections, name, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
            &[
                &token.hash,
                &token.person,
                &token.hybrid_connections.join("\n"),
                &token.name,
                &(token.expires_at_ms as i64),
            ],
        )
        .await;
    unique(result, || "enrollment token".into())
}

pub(super) async fn add_listener_on(
    tx: &Transaction<'_>,
    l: &ListenerRecord,
) -> Result<(), StoreError> {
    let result = tx
        .execute(
            "INSERT INTO listeners (id, name, person, hybrid_connections, key_fingerprint, serial, not_after_ms, revoked_at_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &l.id,
                &l.name,
                &l.person,
                &l.hybrid_connections.join("\n"),
                &l.key_fingerprint,
                &l.serial,
                &(l.not_after_ms as i64),
                &l.revoked_at_ms.map(|v| v as i64),
                &now(),
            ],
        )
        .await;
    unique(result, || format!("listener {}", l.id))?;
    insert_certificate(tx, &l.certificate()).await
}

/// Inserts a certificate; a key already bound to one is a `Conflict`.
async fn insert_certificate(
    tx: &Transaction<'_>,
    cert: &CertificateRecord,
) -> Result<(), StoreError> {
    let result = tx
        .execute(
            "INSERT INTO certificates (serial, listener_id, key_fingerprint, not_after_ms, issued_at_ms) VALUES ($1, $2, $3, $4, $5)",
            &[
                &cert.serial,
                &cert.listener_id,
                &cert.key_fingerprint,
                &(cert.not_after_ms as i64),
                &now(),
            ],
        )
        .await;
    unique(result, || format!("key {}", cert.key_fingerprint))
}

/// A unique violation as a `Conflict` naming `what`.
fn unique(
    result: Result<u64, tokio_postgres::Error>,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(what())),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn renew_listener_on(
    tx: &Transaction<'_>,
    cert: &CertificateRecord,
) -> Result<bool, StoreError> {
    let updated = tx
        .execute(
            "UPDATE listeners SET serial = $2, key_fingerprint = $3, not_after_ms = $4 WHERE id = $1",
            &[
                &cert.listener_id,
                &cert.serial,
                &cert.key_fingerprint,
                &(cert.not_after_ms as i64),
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    insert_certificate(tx, cert).await?;
    Ok(true)
}

pub(super) async fn revoke_listener_on(
    tx: &Transaction<'_>,
    id: &str,
    at_ms: u64,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            "UPDATE listeners SET revoked_at_ms = $2 WHERE id = $1 AND revoked_at_ms IS NULL",
            &[&id, &(at_ms as i64)],
        )
        .await?
        > 0)
}

pub(super) async fn add_person_token_on(
    tx: &Transaction<'_>,
    hash: &str,
    person: &str,
) -> Result<(), StoreError> {
    let result = tx
        .execute(
            "INSERT INTO person_tokens (hash, person, created_at_ms) VALUES ($1, $2, $3)",
            &[&hash, &person, &now()],
        )
        .await;
    unique(result, || "person token".into())
}

pub(super) async fn append_audit_on(
    tx: &Transaction<'_>,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit_events (at_ms, kind, subject, detail) VALUES ($1, $2, $3, $4)",
        &[
            &(event.at_ms as i64),
            &event.kind,
            &event.subject,
            &event.detail,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn create_hybrid_connection_on(
    tx: &Transaction<'_>,
    hc: &HybridConnection,
) -> Result<(), StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO hybrid_connections (name, requires_client_authorization, created_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&hc.name, &hc.requires_client_authorization, &now()],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::Conflict(hc.name.clone()));
    }
    bump_namespace(tx).await
}

/// Tells the other nodes' pollers that the namespace changed, in the write's transaction.
async fn bump_namespace(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("UPDATE namespace_version SET version = version + 1", &[])
        .await?;
    Ok(())
}

pub(super) async fn remove_hybrid_connection_on(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<bool, StoreError> {
    let removed = tx
        .execute("DELETE FROM hybrid_connections WHERE name = $1", &[&name])
        .await?
        > 0;
    if removed {
        bump_namespace(tx).await?;
    }
    Ok(removed)
}

/// Applies one identity write; whether it changed something.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    write: &IdentityWrite<'_>,
) -> Result<bool, StoreError> {
    match *write {
        IdentityWrite::AddPerson {
            name,
            password_hash,
        } => add_person_on(tx, name, password_hash).await.map(|()| true),
        IdentityWrite::SetPersonDisabled { name, disabled } => {
            set_person_disabled_on(tx, name, disabled).await
        }
        IdentityWrite::Grant { name, grant } => grant_on(tx, name, grant).await,
        IdentityWrite::RevokeGrant { name, grant } => revoke_grant_on(tx, name, grant).await,
        IdentityWrite::AddEnrollmentToken(token) => {
            add_enrollment_token_on(tx, token).await.map(|()| true)
        }
        IdentityWrite::AddListener(listener) => add_listener_on(tx, listener).await.map(|()| true),
        IdentityWrite::RenewListener(cert) => renew_listener_on(tx, cert).await,
        IdentityWrite::RevokeListener { id, at_ms } => revoke_listener_on(tx, id, at_ms).await,
        IdentityWrite::AddPersonToken { hash, person } => {
            add_person_token_on(tx, hash, person).await.map(|()| true)
        }
        IdentityWrite::CreateHybridConnection(hc) => {
            create_hybrid_connection_on(tx, hc).await.map(|()| true)
        }
        IdentityWrite::RemoveHybridConnection(name) => remove_hybrid_connection_on(tx, name).await,
    }
}
