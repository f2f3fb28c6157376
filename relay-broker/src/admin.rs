//! The versioned administration API, `/$admin/v1/...` (the `$` keeps it apart from hybrid
//! connection names). Every call needs a namespace-wide SAS token with the Manage right, so
//! changes made by `relay-broker person ...` take effect on the running broker at once.
//!
//! | call | effect |
//! |---|---|
//! | `POST /persons {name, password}` | adds a person (password hashed with argon2id) |
//! | `GET /persons` | lists persons and their rights |
//! | `POST /persons/{name}/disable` | disables a person |
//! | `POST /persons/{name}/grants {right, pattern}` / `DELETE` the same | grants or revokes a right |
//! | `GET /audit?since_ms=N&limit=N` | audit events, oldest first |
//! | `POST /enrollment-tokens {person, hybrid_connections, name?, ttl_secs?}` | mints a single-use token |
//! | `GET /listeners` | registered listeners |

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::HeaderMap;
use relay_core::sas::{self, Rights, Target};
use relay_core::tracking::TrackingId;
use serde::{Deserialize, Serialize};

use crate::auth::unix_now;
use crate::store::{AuditEvent, Grant, Person, StoreError};
use crate::{RelayError, Shared};

/// Path prefix of the administration API.
pub const PREFIX: &str = "/$admin/v1";

/// Rights a person can hold.
pub const RIGHTS: [&str; 3] = ["listener.register", "listener.manage", "audit.read"];

/// Longest person name and password accepted.
const MAX_NAME: usize = 128;
const MAX_PASSWORD: usize = 1024;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/persons", get(list_persons).post(add_person))
        .route("/persons/{name}/disable", post(disable_person))
        .route("/persons/{name}/grants", post(grant).delete(revoke))
        .route("/audit", get(audit))
        .route("/enrollment-tokens", post(mint_enrollment_token))
        .route("/listeners", get(list_listeners))
}

async fn list_listeners(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::store::ListenerRecord>>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
    Ok(Json(blocking(move || store.listeners()).await?))
}

/// Whether a grant's pattern covers a hybrid connection: exact (case-insensitive), or a
/// prefix when the pattern ends in `*`.
pub(crate) fn pattern_covers(pattern: &str, hc: &str) -> bool {
    let (pattern, hc) = (pattern.to_ascii_lowercase(), hc.to_ascii_lowercase());
    match pattern.strip_suffix('*') {
        Some(prefix) => hc.starts_with(prefix),
        None => pattern == hc,
    }
}

/// Checks that an active person may register listeners on every one of `hcs`.
pub(crate) fn may_register(person: &Person, hcs: &[String]) -> std::result::Result<(), RelayError> {
    if person.disabled {
        return Err(RelayError::Forbidden(format!(
            "person '{}' is disabled",
            person.name
        )));
    }
    for hc in hcs {
        let covered = person
            .rights
            .iter()
            .any(|g| g.right == "listener.register" && pattern_covers(&g.pattern, hc));
        if !covered {
            return Err(RelayError::Forbidden(format!(
                "person '{}' lacks listener.register on '{hc}'",
                person.name
            )));
        }
    }
    Ok(())
}

/// Validates the hybrid connection list of a registration.
pub(crate) fn checked_hcs(hcs: &[String]) -> std::result::Result<Vec<String>, RelayError> {
    let hcs: Vec<String> = hcs
        .iter()
        .map(|h| h.trim().trim_matches('/').to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    if hcs.is_empty()
        || hcs.len() > 32
        || hcs
            .iter()
            .any(|h| h.len() > relay_core::address::MAX_NAME_LEN)
    {
        return Err(RelayError::BadRequest(
            "hybrid_connections: 1 to 32 names".into(),
        ));
    }
    Ok(hcs)
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
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<MintToken>,
) -> Result<Json<MintedToken>> {
    require_manage(&shared, &headers)?;
    let hcs = checked_hcs(&body.hybrid_connections)?;
    let ttl = body.ttl_secs.unwrap_or(600);
    if !(1..=86_400).contains(&ttl) {
        return Err(RelayError::BadRequest("ttl_secs: 1 to 86400".into()).into());
    }
    let store = Arc::clone(&shared.store);
    let minted = blocking(move || {
        let Some((person, _)) = store.person(&body.person)? else {
            return Ok(Err(RelayError::NotFound("person".into())));
        };
        if let Err(e) = may_register(&person, &hcs) {
            return Ok(Err(e));
        }
        let token = crate::registration::new_secret();
        let expires_at_ms = crate::store::now_ms() + ttl * 1000;
        store.add_enrollment_token(&crate::store::EnrollmentToken {
            hash: crate::registration::sha256_hex(&token),
            person: person.name.clone(),
            hybrid_connections: hcs.clone(),
            name: body.name,
            expires_at_ms,
        })?;
        store.append_audit(&AuditEvent::now(
            "enrollment.mint",
            &person.name,
            &hcs.join(","),
        ))?;
        Ok(Ok(MintedToken {
            token,
            expires_at_ms,
        }))
    })
    .await??;
    Ok(Json(minted))
}

/// A failure answered with the broker's usual status and JSON error body.
pub(crate) struct AdminError(RelayError);

impl axum::response::IntoResponse for AdminError {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response(&TrackingId::new())
    }
}

impl From<RelayError> for AdminError {
    fn from(e: RelayError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        Self(match e {
            StoreError::Conflict(name) => RelayError::Conflict(format!("'{name}' already exists")),
            other => RelayError::Internal(other.to_string()),
        })
    }
}

type Result<T> = std::result::Result<T, AdminError>;

/// Checks for a namespace-wide Manage token in `ServiceBusAuthorization` or `Authorization`.
fn require_manage(shared: &Shared, headers: &HeaderMap) -> Result<()> {
    let token = ["servicebusauthorization", "authorization"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .ok_or(RelayError::Unauthorized(sas::SasError::Missing))?;
    let target = Target {
        hybrid_connection: "",
        path: "",
        needs: Rights::MANAGE,
        mount: &shared.mount,
    };
    sas::authorize(&shared.store.rules(), token, target, unix_now()).map_err(|e| {
        Shared::count(&shared.counters.auth_failures);
        match e {
            sas::SasError::MissingRight(_) => {
                RelayError::Unauthorized(sas::SasError::MissingRight("Manage"))
            }
            other => RelayError::Unauthorized(other),
        }
    })?;
    Ok(())
}

/// Runs a store call off the runtime threads (a durable store syncs to disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError(RelayError::Internal(e.to_string())))?
        .map_err(AdminError::from)
}

#[derive(Deserialize)]
struct NewPerson {
    name: String,
    password: String,
}

async fn add_person(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<NewPerson>,
) -> Result<Json<Person>> {
    require_manage(&shared, &headers)?;
    let name = body.name.trim().to_owned();
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(RelayError::BadRequest(
            "name: 1-128 characters of letters, digits, '-', '_', '.', '@'".into(),
        )
        .into());
    }
    if body.password.len() < 12 || body.password.len() > MAX_PASSWORD {
        return Err(RelayError::BadRequest("password: at least 12 characters".into()).into());
    }
    let store = Arc::clone(&shared.store);
    let person = blocking(move || {
        let hash = hash_password(&body.password)?;
        store.add_person(&name, &hash)?;
        store.append_audit(&AuditEvent::now("person.add", &name, ""))?;
        Ok(Person {
            name,
            disabled: false,
            rights: Vec::new(),
        })
    })
    .await?;
    Ok(Json(person))
}

async fn list_persons(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Person>>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
    Ok(Json(blocking(move || store.persons()).await?))
}

async fn disable_person(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Person>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
    let found = blocking(move || {
        if !store.set_person_disabled(&name, true)? {
            return Ok(None);
        }
        store.append_audit(&AuditEvent::now("person.disable", &name, ""))?;
        Ok(store.person(&name)?.map(|(p, _)| p))
    })
    .await?;
    Ok(Json(
        found.ok_or_else(|| RelayError::NotFound("person".into()))?,
    ))
}

#[derive(Deserialize, Serialize)]
struct GrantBody {
    right: String,
    pattern: String,
}

fn checked_grant(body: GrantBody) -> Result<Grant> {
    if !RIGHTS.contains(&body.right.as_str()) {
        return Err(RelayError::BadRequest(format!("right: one of {}", RIGHTS.join(", "))).into());
    }
    let pattern = body.pattern.trim().to_owned();
    let star = pattern.find('*');
    if pattern.is_empty() || pattern.len() > 260 || star.is_some_and(|i| i != pattern.len() - 1) {
        return Err(RelayError::BadRequest(
            "pattern: a hybrid connection name, optionally ending in '*'".into(),
        )
        .into());
    }
    Ok(Grant {
        right: body.right,
        pattern,
    })
}

async fn grant(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<Json<Person>> {
    change_grant(&shared, &headers, name, body, true).await
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<Json<Person>> {
    change_grant(&shared, &headers, name, body, false).await
}

async fn change_grant(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    name: String,
    body: GrantBody,
    add: bool,
) -> Result<Json<Person>> {
    require_manage(shared, headers)?;
    let grant = checked_grant(body)?;
    let store = Arc::clone(&shared.store);
    let person = blocking(move || {
        let changed = if add {
            store.grant(&name, &grant)?
        } else {
            store.revoke_grant(&name, &grant)?
        };
        let person = store.person(&name)?.map(|(p, _)| p);
        if changed {
            let kind = if add { "person.grant" } else { "person.revoke" };
            store.append_audit(&AuditEvent::now(
                kind,
                &name,
                &format!("{} {}", grant.right, grant.pattern),
            ))?;
        }
        Ok(person)
    })
    .await?;
    Ok(Json(
        person.ok_or_else(|| RelayError::NotFound("person".into()))?,
    ))
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
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
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

/// argon2id with the crate's default (OWASP-recommended) parameters, as a PHC string.
fn hash_password(password: &str) -> std::result::Result<String, StoreError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Database(format!("hashing: {e}")))
}
