//! The versioned administration API, `/$admin/v1/...` (the `$` keeps it apart from hybrid
//! connection names), so changes made by `relay-broker person ...` take effect on the
//! running broker at once. Callers are an administrator (a namespace-wide SAS token with
//! the Manage right) or a person with a personal API token (`Authorization: Bearer rpt_...`)
//! acting within their rights.
//!
//! | call | who | effect |
//! |---|---|---|
//! | `POST /persons {name, password}` | admin | adds a person (password hashed with argon2id) |
//! | `GET /persons` | admin | lists persons and their rights |
//! | `POST /persons/{name}/disable` | admin | disables a person and closes their listeners |
//! | `POST /persons/{name}/grants {right, pattern}` / `DELETE` | admin | grants or revokes a right |
//! | `POST /persons/{name}/tokens` | admin | mints a personal API token, shown once |
//! | `GET /audit?since_ms=N&limit=N` | admin, `audit.read` | audit events, oldest first |
//! | `POST /enrollment-tokens {person, hybrid_connections, name?, ttl_secs?}` | admin, the person | mints a single-use token |
//! | `GET /listeners` | admin, `listener.manage` | registered listeners (a person sees those in their patterns) |
//! | `POST /listeners/{id}/revoke` | admin, `listener.manage`, the registering person | revokes; closes its channels at once |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::Identity;
use super::error::IdentityError;
use super::policy::Right;
use super::policy::{checked_hcs, may_register};
use super::principal::{PERSON_TOKEN_PREFIX, Principal, caller, forbidden, require_manage};
use super::secrets::hash_password;
use crate::store::AuditKind;
use crate::store::{AuditEvent, Grant, IdentityWrite, ListenerRecord, Person, StoreError};

/// Path prefix of the administration API.
pub const PREFIX: &str = "/$admin/v1";

/// Longest person name and password accepted.
const MAX_NAME: usize = 128;
const MAX_PASSWORD: usize = 1024;

mod persons;

use persons::{add_person, disable_person, grant, list_persons, revoke};

pub(crate) fn router() -> Router<Arc<Identity>> {
    Router::new()
        .route("/persons", get(list_persons).post(add_person))
        .route("/persons/{name}/disable", post(disable_person))
        .route("/persons/{name}/grants", post(grant).delete(revoke))
        .route("/persons/{name}/tokens", post(mint_person_token))
        .route("/audit", get(audit))
        .route("/enrollment-tokens", post(mint_enrollment_token))
        .route("/listeners", get(list_listeners))
        .route("/listeners/{id}/revoke", post(revoke_listener))
        .route(
            "/hybrid-connections/{*name}",
            axum::routing::put(put_hybrid_connection).delete(delete_hybrid_connection),
        )
}

#[derive(Deserialize, Default)]
struct NewHybridConnection {
    requires_client_authorization: Option<bool>,
}

/// Creates a hybrid connection at run time (durable with a SQLite store).
async fn put_hybrid_connection(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<crate::config::HybridConnection>> {
    require_manage(&state, &headers)?;
    let name = crate::config::checked_hc_name(&name).map_err(IdentityError::BadRequest)?;
    let options: NewHybridConnection = if body.is_empty() {
        NewHybridConnection::default()
    } else {
        serde_json::from_slice::<Option<NewHybridConnection>>(&body)
            .map_err(|e| IdentityError::BadRequest(format!("body: {e}")))?
            .unwrap_or_default()
    };
    let hc = crate::config::HybridConnection {
        name,
        requires_client_authorization: options.requires_client_authorization.unwrap_or(true),
    };
    let store = Arc::clone(&state.store);
    let created = hc.clone();
    blocking(move || {
        let event = AuditEvent::now(AuditKind::HybridConnectionCreate, &hc.name, "by admin");
        store
            .write_audited(IdentityWrite::CreateHybridConnection(&hc), &[event])
            .map(drop)
    })
    .await?;
    Ok(Json(created))
}

async fn delete_hybrid_connection(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<bool>> {
    require_manage(&state, &headers)?;
    let store = Arc::clone(&state.store);
    let removed = blocking(move || {
        let event = AuditEvent::now(AuditKind::HybridConnectionRemove, &name, "by admin");
        store.write_audited(IdentityWrite::RemoveHybridConnection(&name), &[event])
    })
    .await?;
    if !removed {
        return Err(IdentityError::NotFound("hybrid connection".into()));
    }
    Ok(Json(true))
}

async fn list_listeners(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ListenerRecord>>> {
    let caller = caller(&state, &headers).await?;
    if !caller.holds_any(Right::ListenerManage) {
        return Err(forbidden(&caller, Right::ListenerManage));
    }
    let store = Arc::clone(&state.store);
    let mut listeners = blocking(move || store.listeners()).await?;
    listeners.retain(|l| caller.may_manage(l));
    Ok(Json(listeners))
}

/// Revokes a listener: its certificates are refused from now on, and its control channels
/// and relayed connections close at once.
async fn revoke_listener(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ListenerRecord>> {
    let caller = caller(&state, &headers).await?;
    let store = Arc::clone(&state.store);
    let actor = caller.name().to_owned();
    let (id2, store2) = (id.clone(), Arc::clone(&store));
    let Some(listener) = blocking(move || store2.listener(&id2)).await? else {
        return Err(IdentityError::NotFound(format!("listener '{id}'")));
    };
    if !caller.may_manage(&listener) {
        return Err(forbidden(&caller, Right::ListenerManage));
    }
    let revoked = blocking(move || {
        let event = AuditEvent::now(
            AuditKind::ListenerRevoke,
            &id,
            &format!("by {actor}; serial {}", listener.serial),
        );
        let revoke = IdentityWrite::RevokeListener {
            id: &id,
            at_ms: crate::store::now_ms(),
        };
        store.write_audited(revoke, &[event])?;
        store.listener(&id)
    })
    .await?
    .ok_or_else(|| IdentityError::Internal("listener vanished".into()))?;
    // Close after the store refuses it, so a reconnect cannot slip in between.
    state.revocations.publish(&revoked.id);
    Ok(Json(revoked))
}

#[derive(Serialize)]
struct MintedPersonToken {
    token: String,
}

/// Mints a personal API token; only its SHA-256 is stored, the token is shown once.
async fn mint_person_token(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<MintedPersonToken>> {
    require_manage(&state, &headers)?;
    let store = Arc::clone(&state.store);
    let token = blocking(move || {
        let Some((person, _)) = store.person(&name)? else {
            return Ok(None);
        };
        let token = format!("{PERSON_TOKEN_PREFIX}{}", super::secrets::new_secret());
        let hash = super::secrets::sha256_hex(&token);
        let write = IdentityWrite::AddPersonToken {
            hash: &hash,
            person: &person.name,
        };
        store.write_audited(
            write,
            &[AuditEvent::now(AuditKind::PersonToken, &person.name, "")],
        )?;
        Ok(Some(token))
    })
    .await?
    .ok_or_else(|| IdentityError::NotFound("person".into()))?;
    Ok(Json(MintedPersonToken { token }))
}

#[derive(Deserialize)]
struct MintToken {
    person: String,
    hybrid_connections: Vec<String>,
    name: Option<String>,
    ttl_secs: Option<u64>,
}

#[derive(Serialize)]
struct MintedToken {
    token: String,
    expires_at_ms: u64,
}

/// Mints a single-use enrollment token for unattended installs (10 minutes by default, a day
/// at most). Only its SHA-256 is stored; the token is shown once.
async fn mint_enrollment_token(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Json(body): Json<MintToken>,
) -> Result<Json<MintedToken>> {
    let caller = caller(&state, &headers).await?;
    // A person mints for themselves; their right is checked below like anyone's.
    if let Principal::Person(p) = &caller {
        if !p.name.eq_ignore_ascii_case(&body.person) {
            return Err(IdentityError::Forbidden(format!(
                "{} may mint enrollment tokens only for themselves",
                p.name
            )));
        }
    }
    let hcs = checked_hcs(&body.hybrid_connections)?;
    let ttl = body.ttl_secs.unwrap_or(600);
    if !(1..=86_400).contains(&ttl) {
        return Err(IdentityError::BadRequest("ttl_secs: 1 to 86400".into()));
    }
    let store = Arc::clone(&state.store);
    let minted = blocking(move || {
        let Some((person, _)) = store.person(&body.person)? else {
            return Ok(Err(IdentityError::NotFound("person".into())));
        };
        if let Err(e) = may_register(&person, &hcs) {
            return Ok(Err(e));
        }
        let token = super::secrets::new_secret();
        let expires_at_ms = crate::store::now_ms() + ttl * 1000;
        let record = crate::store::EnrollmentToken {
            hash: super::secrets::sha256_hex(&token),
            person: person.name.clone(),
            hybrid_connections: hcs.clone(),
            name: body.name,
            expires_at_ms,
        };
        let event = AuditEvent::now(AuditKind::EnrollmentMint, &person.name, &hcs.join(","));
        store.write_audited(IdentityWrite::AddEnrollmentToken(&record), &[event])?;
        Ok(Ok(MintedToken {
            token,
            expires_at_ms,
        }))
    })
    .await??;
    Ok(Json(minted))
}

type Result<T> = std::result::Result<T, IdentityError>;

/// Runs a store call off the runtime threads (a durable store syncs to disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?
        .map_err(IdentityError::from)
}

#[derive(Deserialize)]
struct AuditQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct AuditRow {
    at_ms: u64,
    kind: String,
    subject: String,
    detail: String,
}

async fn audit(
    State(state): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>> {
    let caller = caller(&state, &headers).await?;
    if !caller.holds_any(Right::AuditRead) {
        return Err(forbidden(&caller, Right::AuditRead));
    }
    // Events queued before this call are part of the trail it reads (the writer is one
    // queue behind the requests that recorded them).
    state.audit.flush().await;
    let store = Arc::clone(&state.store);
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let events = blocking(move || store.audit(q.since_ms.unwrap_or(0), limit)).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| AuditRow {
                at_ms: e.at_ms,
                kind: e.kind,
                subject: e.subject,
                detail: e.detail,
            })
            .collect(),
    ))
}
