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

use argon2::password_hash::{PasswordHasher as _, SaltString};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::HeaderMap;
use relay_core::sas::{self, Rights, Target};
use relay_core::tracking::TrackingId;
use serde::{Deserialize, Serialize};

use crate::auth::unix_now;
use crate::store::{AuditEvent, Grant, ListenerRecord, Person, StoreError};
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
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<crate::config::HybridConnection>> {
    require_manage(&shared, &headers)?;
    let name = crate::config::checked_hc_name(&name).map_err(RelayError::BadRequest)?;
    let options: NewHybridConnection = if body.is_empty() {
        NewHybridConnection::default()
    } else {
        serde_json::from_slice::<Option<NewHybridConnection>>(&body)
            .map_err(|e| RelayError::BadRequest(format!("body: {e}")))?
            .unwrap_or_default()
    };
    let hc = crate::config::HybridConnection {
        name,
        requires_client_authorization: options.requires_client_authorization.unwrap_or(true),
    };
    let store = Arc::clone(&shared.store);
    let created = hc.clone();
    blocking(move || {
        store.create_hybrid_connection(hc.clone())?;
        store.append_audit(&AuditEvent::now(
            "hybrid_connection.create",
            &hc.name,
            "by admin",
        ))
    })
    .await?;
    Ok(Json(created))
}

async fn delete_hybrid_connection(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<bool>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
    let removed = blocking(move || {
        let removed = store.remove_hybrid_connection(&name)?;
        if removed {
            store.append_audit(&AuditEvent::now(
                "hybrid_connection.remove",
                &name,
                "by admin",
            ))?;
        }
        Ok(removed)
    })
    .await?;
    if !removed {
        return Err(RelayError::NotFound("hybrid connection".into()).into());
    }
    Ok(Json(true))
}

/// Who is calling.
enum Caller {
    /// A namespace Manage credential: everything.
    Admin,
    /// A person with a personal API token: their rights only.
    Person(Person),
}

impl Caller {
    /// Whether the caller holds `right` on `hc` (an admin holds every right).
    fn holds(&self, right: &str, hc: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => p
                .rights
                .iter()
                .any(|g| g.right == right && pattern_covers(&g.pattern, hc)),
        }
    }

    /// Whether the caller holds `right` on any pattern at all.
    fn holds_any(&self, right: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => p.rights.iter().any(|g| g.right == right),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Admin => "admin",
            Self::Person(p) => &p.name,
        }
    }

    fn may_manage(&self, listener: &ListenerRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => {
                p.name.eq_ignore_ascii_case(&listener.person)
                    || listener
                        .hybrid_connections
                        .iter()
                        .all(|hc| self.holds("listener.manage", hc))
            }
        }
    }
}

/// Prefix of personal API tokens, so they are recognisable in logs and secret scanners.
const PERSON_TOKEN_PREFIX: &str = "rpt_";

async fn list_listeners(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ListenerRecord>>> {
    let caller = caller(&shared, &headers).await?;
    if !caller.holds_any("listener.manage") {
        return Err(forbidden(&caller, "listener.manage"));
    }
    let store = Arc::clone(&shared.store);
    let mut listeners = blocking(move || store.listeners()).await?;
    listeners.retain(|l| caller.may_manage(l));
    Ok(Json(listeners))
}

/// Revokes a listener: its certificates are refused from now on, and its control channels
/// and relayed connections close at once.
async fn revoke_listener(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ListenerRecord>> {
    let caller = caller(&shared, &headers).await?;
    let store = Arc::clone(&shared.store);
    let actor = caller.name().to_owned();
    let (id2, store2) = (id.clone(), Arc::clone(&store));
    let Some(listener) = blocking(move || store2.listener(&id2)).await? else {
        return Err(RelayError::NotFound(format!("listener '{id}'")).into());
    };
    if !caller.may_manage(&listener) {
        return Err(forbidden(&caller, "listener.manage"));
    }
    let revoked = blocking(move || {
        if store.revoke_listener(&id, crate::store::now_ms())? {
            store.append_audit(&AuditEvent::now(
                "listener.revoke",
                &id,
                &format!("by {actor}; serial {}", listener.serial),
            ))?;
        }
        store.listener(&id)
    })
    .await?
    .ok_or_else(|| RelayError::Internal("listener vanished".into()))?;
    // Close after the store refuses it, so a reconnect cannot slip in between.
    shared.sessions.close(&revoked.id);
    Ok(Json(revoked))
}

#[derive(Serialize)]
struct MintedPersonToken {
    token: String,
}

/// Mints a personal API token; only its SHA-256 is stored, the token is shown once.
async fn mint_person_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<MintedPersonToken>> {
    require_manage(&shared, &headers)?;
    let store = Arc::clone(&shared.store);
    let token = blocking(move || {
        let Some((person, _)) = store.person(&name)? else {
            return Ok(None);
        };
        let token = format!("{PERSON_TOKEN_PREFIX}{}", crate::registration::new_secret());
        store.add_person_token(&crate::registration::sha256_hex(&token), &person.name)?;
        store.append_audit(&AuditEvent::now("person.token", &person.name, ""))?;
        Ok(Some(token))
    })
    .await?
    .ok_or_else(|| RelayError::NotFound("person".into()))?;
    Ok(Json(MintedPersonToken { token }))
}

/// The enabled person a personal API token belongs to; the same answer for every failure.
pub(crate) fn person_by_token(
    store: &dyn crate::store::Store,
    token: &str,
) -> std::result::Result<Person, RelayError> {
    const WRONG: &str = "the personal API token is unknown or its person is disabled";
    if !token.starts_with(PERSON_TOKEN_PREFIX) {
        return Err(RelayError::BadCredentials(WRONG));
    }
    let name = store
        .person_for_token(&crate::registration::sha256_hex(token))?
        .ok_or(RelayError::BadCredentials(WRONG))?;
    match store.person(&name)? {
        Some((person, _)) if !person.disabled => Ok(person),
        _ => Err(RelayError::BadCredentials(WRONG)),
    }
}

/// The caller: a personal API token (`Bearer rpt_...`) or a namespace Manage SAS token.
async fn caller(shared: &Arc<Shared>, headers: &HeaderMap) -> Result<Caller> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| t.starts_with(PERSON_TOKEN_PREFIX))
        .map(str::to_owned);
    let Some(token) = bearer else {
        require_manage(shared, headers)?;
        return Ok(Caller::Admin);
    };
    let store = Arc::clone(&shared.store);
    let found = tokio::task::spawn_blocking(move || person_by_token(&*store, &token))
        .await
        .map_err(|e| AdminError(RelayError::Internal(e.to_string())))?;
    found.map(Caller::Person).map_err(|e| {
        Shared::count(&shared.counters.auth_failures);
        e.into()
    })
}

fn forbidden(caller: &Caller, right: &str) -> AdminError {
    RelayError::Forbidden(format!("{} lacks {right} for this", caller.name())).into()
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
    let caller = caller(&shared, &headers).await?;
    // A person mints for themselves; their right is checked below like anyone's.
    if let Caller::Person(p) = &caller {
        if !p.name.eq_ignore_ascii_case(&body.person) {
            return Err(RelayError::Forbidden(format!(
                "{} may mint enrollment tokens only for themselves",
                p.name
            ))
            .into());
        }
    }
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
        Self(e.into())
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
    let shared2 = Arc::clone(&shared);
    let found = blocking(move || {
        if !store.set_person_disabled(&name, true)? {
            return Ok(None);
        }
        // Everything the person registered stops now: their listeners fail the person
        // check from here on, and what they have open is closed.
        let closed = crate::identity::close_person(&*store, &shared2.sessions, &name)?;
        store.append_audit(&AuditEvent::now(
            "person.disable",
            &name,
            &format!("closed the sessions of {closed} listeners"),
        ))?;
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
    let caller = caller(&shared, &headers).await?;
    if !caller.holds_any("audit.read") {
        return Err(forbidden(&caller, "audit.read"));
    }
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
