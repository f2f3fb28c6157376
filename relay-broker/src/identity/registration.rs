//! Listener registration, `POST /$register/v1/listeners`: a person (password, personal API
//! token or enrollment token) asks for a certificate for a key the listener made itself. The
//! broker checks the person and their right on every hybrid connection, checks the CSR,
//! issues a certificate from its CA, records the listener with its key fingerprint against
//! the person, and audits it. No SAS token is involved; failures are throttled like SAS
//! failures.
//!
//! Renewal, `POST /$register/v1/renew`, is authenticated by the listener's current client
//! certificate alone and needs a new key; it is refused once the listener was revoked or
//! its person lost the right.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use argon2::PasswordVerifier as _;
use argon2::password_hash::PasswordHash;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::Identity;
use super::ca::CaError;
use super::ca::PeerCertificate;
use super::error::IdentityError;
use super::policy::{checked_hcs, may_register};
use super::secrets::sha256_hex;
use crate::limiter::AuthLimiter;
use crate::metrics::count;
use crate::seams::Transport;
use crate::store::AuditKind;
use crate::store::{AuditEvent, CertificateRecord, IdentityWrite, ListenerRecord};

/// Path of the registration call.
pub(crate) const PATH: &str = "/$register/v1/listeners";
/// Path of the renewal call.
pub(crate) const RENEW_PATH: &str = "/$register/v1/renew";
/// Hybrid connections a certificate listener creates and removes under its patterns.
pub(crate) const HC_PATH: &str = "/$register/v1/hybrid-connections/{*name}";

/// The registration request.
#[derive(Deserialize)]
pub(crate) struct Register {
    /// PEM CSR for the listener's own key.
    csr: String,
    /// Hybrid connections to listen on (ignored with an enrollment token, which fixes them).
    #[serde(default)]
    hybrid_connections: Vec<String>,
    /// Listener name.
    name: Option<String>,
    /// Interactive form: the person and their password.
    person: Option<String>,
    password: Option<String>,
    /// Interactive form without a password: the person's API token.
    person_token: Option<String>,
    /// Unattended form: a token the person minted.
    enrollment_token: Option<String>,
}

/// The renewal request.
#[derive(Deserialize)]
pub(crate) struct Renew {
    /// PEM CSR for a new key.
    csr: String,
}

/// What a registered listener keeps.
#[derive(Serialize)]
pub(crate) struct Registered {
    listener_id: String,
    /// The listener's certificate, PEM.
    certificate: String,
    /// Issuing CA then root, PEM: the chain the listener presents after its certificate.
    chain: String,
    hybrid_connections: Vec<String>,
    not_after_ms: u64,
}

pub(crate) async fn register(
    State(state): State<Arc<Identity>>,
    transport: Option<axum::Extension<Transport>>,
    Json(body): Json<Register>,
) -> Result<Json<Registered>, IdentityError> {
    let Some(ca) = state.ca.clone() else {
        return Err(IdentityError::NotFound(
            "registration (configure [ca] on the broker)".into(),
        ));
    };
    let ip = transport.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |t| t.0.peer.ip());
    let credential = AuthLimiter::fingerprint(
        body.enrollment_token
            .as_deref()
            .or(body.person_token.as_deref())
            .or(body.person.as_deref()),
    );
    if state.limiter.is_throttled(ip, credential) {
        state.limiter.hold().await;
        return Err(IdentityError::Throttled);
    }
    let shared2 = Arc::clone(&state);
    let outcome = tokio::task::spawn_blocking(move || register_blocking(&shared2, &ca, &body))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    if let Err(e) = &outcome {
        if e.status() == http::StatusCode::UNAUTHORIZED {
            state.limiter.record_failure(ip, credential);
            count(&state.counters.auth_failures);
        }
        let detail = e.to_string();
        state
            .audit
            .record(AuditKind::RegistrationRejected, "", &detail);
    }
    Ok(Json(outcome?))
}

fn register_blocking(
    state: &Identity,
    ca: &super::ca::CertificateAuthority,
    body: &Register,
) -> Result<Registered, IdentityError> {
    let store = &state.store;
    let Registrant {
        person: person_name,
        hcs,
        name,
    } = registrant(&**store, body)?;
    // Rights are re-checked at use, not only when a token was minted.
    let (person, _) = store
        .person(&person_name)?
        .ok_or_else(|| IdentityError::Forbidden("person no longer exists".into()))?;
    may_register(&person, &hcs)?;
    let listener_id = uuid::Uuid::new_v4().to_string();
    let lifetime = state.ca_lifetime;
    let issued = issue(ca, &body.csr, &listener_id, lifetime)?;
    let not_after_ms = ms(issued.not_after);
    let record = ListenerRecord {
        id: listener_id.clone(),
        name: name.unwrap_or_else(|| listener_id.clone()),
        person: person.name.clone(),
        hybrid_connections: hcs.clone(),
        key_fingerprint: issued.key_fingerprint.clone(),
        serial: issued.serial.clone(),
        not_after_ms,
        revoked_at_ms: None,
    };
    let detail = format!("listener {listener_id} for {}", hcs.join(","));
    let issue_detail = format!("serial {} key {}", issued.serial, issued.key_fingerprint);
    let events = [
        AuditEvent::now(AuditKind::ListenerRegister, &person.name, &detail),
        AuditEvent::now(AuditKind::CertificateIssue, &listener_id, &issue_detail),
    ];
    // The listener, its certificate and their audit events commit together.
    store
        .write_audited(IdentityWrite::AddListener(&record), &events)
        .map_err(key_conflict)?;
    Ok(Registered {
        listener_id,
        certificate: issued.pem,
        chain: ca.chain_pem(),
        hybrid_connections: hcs,
        not_after_ms,
    })
}

/// Who registers, for which hybrid connections, under which name.
struct Registrant {
    person: String,
    hcs: Vec<String>,
    name: Option<String>,
}

/// The registrant, by one of the three credentials: a single-use enrollment token (which
/// it burns), a person's API token, or a person's password.
fn registrant(
    store: &dyn crate::store::Store,
    body: &Register,
) -> Result<Registrant, IdentityError> {
    let now_ms = crate::store::now_ms();
    let (person, hcs, name) = match (&body.enrollment_token, &body.person, &body.password) {
        (None, _, None) if body.person_token.is_some() => {
            let token = body.person_token.as_deref().unwrap_or_default();
            let person = super::principal::person_by_token(store, token)?;
            (
                person.name,
                checked_hcs(&body.hybrid_connections)?,
                body.name.clone(),
            )
        }
        (Some(token), _, _) => {
            let token = store
                .burn_enrollment_token(&sha256_hex(token), now_ms)?
                .ok_or({
                    IdentityError::BadCredentials(
                        "the enrollment token is unknown, used or expired",
                    )
                })?;
            (
                token.person,
                token.hybrid_connections,
                token.name.or_else(|| body.name.clone()),
            )
        }
        (None, Some(person), Some(password)) => {
            let found = store.person(person)?;
            // The same answer for an unknown person and a wrong password.
            let verified = found.as_ref().is_some_and(|(_, hash)| {
                PasswordHash::new(hash).is_ok_and(|h| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
            });
            if !verified {
                return Err(IdentityError::BadCredentials(
                    "the person or password is wrong",
                ));
            }
            (
                person.clone(),
                checked_hcs(&body.hybrid_connections)?,
                body.name.clone(),
            )
        }
        _ => {
            return Err(IdentityError::BadRequest(
                "give enrollment_token, person_token, or person and password".into(),
            ));
        }
    };
    Ok(Registrant { person, hcs, name })
}

fn issue(
    ca: &super::ca::CertificateAuthority,
    csr: &str,
    listener_id: &str,
    lifetime: std::time::Duration,
) -> Result<super::ca::IssuedCertificate, IdentityError> {
    ca.issue(csr, listener_id, lifetime, time::OffsetDateTime::now_utc())
        .map_err(|e| match e {
            CaError::InvalidCsr(_) | CaError::KeyNotAllowed(_) => {
                IdentityError::BadRequest(e.to_string())
            }
            other => IdentityError::Internal(other.to_string()),
        })
}

/// A key already bound to a certificate is refused: one key, one listener, one certificate.
fn key_conflict(e: crate::store::StoreError) -> IdentityError {
    match e {
        crate::store::StoreError::Conflict(_) => IdentityError::Conflict(
            "key_reuse: this key already has a certificate; make a new key".into(),
        ),
        other => IdentityError::Internal(other.to_string()),
    }
}

fn ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp().max(0) as u64) * 1000
}

/// `POST /$register/v1/renew`: a new certificate for a new key, authenticated by the
/// current certificate. The old certificate stays valid until it expires, so a session
/// using it is not cut; the listener uses the new one from its next connection.
pub(crate) async fn renew(
    State(state): State<Arc<Identity>>,
    cert: Option<axum::Extension<Arc<PeerCertificate>>>,
    Json(body): Json<Renew>,
) -> Result<Json<Registered>, IdentityError> {
    let Some(ca) = state.ca.clone() else {
        return Err(IdentityError::NotFound(
            "renewal (configure [ca] on the broker)".into(),
        ));
    };
    let Some(axum::Extension(cert)) = cert else {
        return Err(IdentityError::BadCredentials(
            "renewal needs the listener's current client certificate (mTLS)",
        ));
    };
    let shared2 = Arc::clone(&state);
    let cert2 = Arc::clone(&cert);
    let outcome = tokio::task::spawn_blocking(move || renew_blocking(&shared2, &ca, &cert2, &body))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    if let Err(e) = &outcome {
        let detail = format!("serial {}: {e}", cert.serial);
        state
            .audit
            .record(AuditKind::RenewalRejected, &cert.listener_id, &detail);
    }
    Ok(Json(outcome?))
}

fn renew_blocking(
    state: &Identity,
    ca: &super::ca::CertificateAuthority,
    cert: &PeerCertificate,
    body: &Renew,
) -> Result<Registered, IdentityError> {
    let store = &state.store;
    let record = super::listeners::authorize_renewal(&**store, cert, crate::store::now_ms())?;
    let issued = issue(ca, &body.csr, &record.id, state.ca_lifetime)?;
    if issued.key_fingerprint == record.key_fingerprint {
        return Err(IdentityError::BadRequest(
            "rekey_required: renewal needs a new key".into(),
        ));
    }
    let renewed = CertificateRecord {
        serial: issued.serial.clone(),
        listener_id: record.id.clone(),
        key_fingerprint: issued.key_fingerprint.clone(),
        not_after_ms: ms(issued.not_after),
    };
    let detail = format!(
        "serial {} key {} replaces serial {}",
        issued.serial, issued.key_fingerprint, cert.serial
    );
    let event = AuditEvent::now(AuditKind::CertificateRenew, &record.id, &detail);
    if !store
        .write_audited(IdentityWrite::RenewListener(&renewed), &[event])
        .map_err(key_conflict)?
    {
        return Err(IdentityError::Forbidden(
            "the listener no longer exists".into(),
        ));
    }
    Ok(Registered {
        listener_id: record.id,
        certificate: issued.pem,
        chain: ca.chain_pem(),
        hybrid_connections: record.hybrid_connections,
        not_after_ms: renewed.not_after_ms,
    })
}

/// Outcome of a dynamic create or remove.
#[derive(Serialize)]
pub(crate) struct DynamicHc {
    name: String,
    created: bool,
}

/// `PUT /$register/v1/hybrid-connections/{name}`: a certificate listener creates a hybrid
/// connection under a name pattern its registration allows (`edge-7/*`): the IoT case of
/// sub-devices registered by the edge. Its person must still hold `listener.register` on it.
pub(crate) async fn create_hybrid_connection(
    State(state): State<Arc<Identity>>,
    cert: Option<axum::Extension<Arc<PeerCertificate>>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<DynamicHc>, IdentityError> {
    dynamic_hc(&state, cert, &name, true).await
}

/// `DELETE /$register/v1/hybrid-connections/{name}`: removes one created at run time.
pub(crate) async fn remove_hybrid_connection(
    State(state): State<Arc<Identity>>,
    cert: Option<axum::Extension<Arc<PeerCertificate>>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<DynamicHc>, IdentityError> {
    dynamic_hc(&state, cert, &name, false).await
}

async fn dynamic_hc(
    state: &Arc<Identity>,
    cert: Option<axum::Extension<Arc<PeerCertificate>>>,
    name: &str,
    create: bool,
) -> Result<Json<DynamicHc>, IdentityError> {
    let Some(axum::Extension(cert)) = cert else {
        return Err(IdentityError::BadCredentials(
            "hybrid connections are managed here with a listener client certificate (mTLS)",
        ));
    };
    let name = crate::config::checked_hc_name(name).map_err(IdentityError::BadRequest)?;
    let store = Arc::clone(&state.store);
    let cert2 = Arc::clone(&cert);
    let outcome = tokio::task::spawn_blocking(move || {
        let record =
            super::listeners::authorize_listen(&*store, &cert2, &name, crate::store::now_ms())?;
        let by = format!("by listener {}", record.id);
        let hc = crate::config::HybridConnection {
            name: name.clone(),
            requires_client_authorization: true,
        };
        let (write, kind) = if create {
            let write = IdentityWrite::CreateHybridConnection(&hc);
            (write, AuditKind::HybridConnectionCreate)
        } else {
            let write = IdentityWrite::RemoveHybridConnection(&name);
            (write, AuditKind::HybridConnectionRemove)
        };
        let changed = store.write_audited(write, &[AuditEvent::now(kind, &name, &by)])?;
        Ok::<_, IdentityError>(DynamicHc {
            name,
            created: create && changed,
        })
    })
    .await
    .map_err(|e| IdentityError::Internal(e.to_string()))?;
    Ok(Json(outcome?))
}
