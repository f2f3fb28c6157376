//! Proof-of-possession login, for certificate listeners behind an L7 proxy that ends TLS
//! (enabled by `[ca].proof_of_possession`).
//!
//! `POST /$register/v1/pop/challenge` hands out a single-use nonce (60 s). The listener
//! answers at `POST /$register/v1/pop/session` with a compact JWS signed by its key
//! (`relay_core::pop`). The broker checks the `x5c` chain with the very verifier the TLS
//! handshake uses (issuing CA only, validity, clientAuth), the signature with the leaf's key,
//! the claims (audience, at most 60 s), burns the nonce, and checks the store as for any
//! certificate (registered, not revoked, issued to that listener). It answers with a
//! single-use session ticket (60 s). [`attach_session`] turns that ticket, presented in
//! `relay-pop-session` on the next request, into the same `PeerCertificate` a TLS handshake
//! would have produced; from there listen, renewal and dynamic hybrid connections run the
//! exact checks of mTLS. Every refusal is a 401 and is audited as `pop.rejected`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use dashmap::DashMap;
use http::HeaderMap;
use relay_core::pop::{self, Algorithm, PopError};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use super::Identity;
use super::ca::{CertificateAuthority, PeerCertificate};
use super::error::IdentityError;
use crate::limiter::AuthLimiter;
use crate::metrics::count;
use crate::seams::Transport;
use crate::store::AuditKind;

/// Path of the nonce request.
pub(crate) const CHALLENGE_PATH: &str = "/$register/v1/pop/challenge";
/// Path of the login.
pub(crate) const SESSION_PATH: &str = "/$register/v1/pop/session";
/// Life of a nonce, and of a session ticket.
const TTL: Duration = Duration::from_secs(60);
/// Nonces (and tickets) outstanding at once; past it new ones get 503.
const MAX_PENDING: usize = 10_000;

/// Outstanding nonces and tickets, and the certificate check.
pub(crate) struct PopLogins {
    verifier: Arc<dyn ClientCertVerifier>,
    nonces: Expiring<()>,
    tickets: Expiring<Arc<PeerCertificate>>,
}

impl std::fmt::Debug for PopLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PopLogins")
            .field("nonces", &self.nonces.0.len())
            .field("tickets", &self.tickets.0.len())
            .finish_non_exhaustive()
    }
}

impl PopLogins {
    /// Logins checked against the CA's issuing certificate, as the TLS handshake is.
    pub(crate) fn new(ca: &CertificateAuthority) -> Result<Self, crate::OpenError> {
        let issuing = ca.issuing_der()?;
        let verifier = relay_io::tls::client_cert_verifier(&[issuing])
            .map_err(|e| crate::OpenError::Tls(e.to_string()))?;
        Ok(Self {
            verifier,
            nonces: Expiring::default(),
            tickets: Expiring::default(),
        })
    }
}

/// A bounded map of single-use secrets that expire.
struct Expiring<T>(DashMap<String, (Instant, T)>);

impl<T> Default for Expiring<T> {
    fn default() -> Self {
        Self(DashMap::new())
    }
}

impl<T> Expiring<T> {
    fn insert(&self, value: T, now: Instant) -> Result<String, IdentityError> {
        if self.0.len() >= MAX_PENDING {
            self.0.retain(|_, (expires, _)| *expires > now);
            if self.0.len() >= MAX_PENDING {
                return Err(IdentityError::Busy(
                    "too many pending proof-of-possession logins",
                ));
            }
        }
        let secret = super::secrets::new_secret();
        self.0.insert(secret.clone(), (now + TTL, value));
        Ok(secret)
    }

    /// Removes the secret: valid or not, it cannot be used twice.
    fn take(&self, secret: &str, now: Instant) -> Option<T> {
        self.0
            .remove(secret)
            .and_then(|(_, (expires, value))| (expires > now).then_some(value))
    }
}

/// A fresh nonce.
#[derive(Serialize)]
pub(crate) struct Challenge {
    nonce: String,
    expires_in_secs: u64,
}

/// The login request.
#[derive(Deserialize)]
pub(crate) struct Login {
    /// The compact JWS.
    proof: String,
}

/// A session ticket for the next request.
#[derive(Serialize)]
pub(crate) struct Session {
    session: String,
    listener_id: String,
    expires_in_secs: u64,
}

fn enabled(state: &Identity) -> Result<&PopLogins, IdentityError> {
    state.pop.as_deref().ok_or_else(|| {
        IdentityError::NotFound(
            "proof-of-possession login (set [ca].proof_of_possession = true on the broker)".into(),
        )
    })
}

/// `POST /$register/v1/pop/challenge`.
pub(crate) async fn challenge(
    State(state): State<Arc<Identity>>,
) -> Result<Json<Challenge>, IdentityError> {
    let logins = enabled(&state)?;
    let nonce = logins.nonces.insert((), Instant::now())?;
    Ok(Json(Challenge {
        nonce,
        expires_in_secs: TTL.as_secs(),
    }))
}

/// `POST /$register/v1/pop/session`.
pub(crate) async fn session(
    State(state): State<Arc<Identity>>,
    transport: Option<axum::Extension<Transport>>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> Result<Json<Session>, IdentityError> {
    let logins = enabled(&state)?;
    let ip = transport.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |t| t.0.peer.ip());
    let credential = AuthLimiter::fingerprint(None);
    if state.limiter.is_throttled(ip, credential) {
        state.limiter.hold().await;
        return Err(IdentityError::Throttled);
    }
    let outcome = login(&state, logins, &headers, &body.proof).await;
    let cert = match outcome {
        Ok(cert) => cert,
        Err(e) => {
            state.limiter.record_failure(ip, credential);
            count(&state.counters.auth_failures);
            state
                .audit
                .record(AuditKind::PopRejected, "", &e.to_string());
            return Err(e);
        }
    };
    let listener_id = cert.listener_id.clone();
    let session = logins.tickets.insert(Arc::new(cert), Instant::now())?;
    Ok(Json(Session {
        session,
        listener_id,
        expires_in_secs: TTL.as_secs(),
    }))
}

fn refused(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::ProofRejected(e.to_string())
}

async fn login(
    state: &Arc<Identity>,
    logins: &PopLogins,
    headers: &HeaderMap,
    jws: &str,
) -> Result<PeerCertificate, IdentityError> {
    let Some(ca) = &state.ca else {
        return Err(IdentityError::NotFound(
            "registration (configure [ca])".into(),
        ));
    };
    let proof = pop::parse(jws).map_err(refused)?;
    let now = UnixTime::now();
    proof
        .claims
        .check(&own_authority(state, headers)?, now.as_secs())
        .map_err(refused)?;
    let chain: Vec<CertificateDer<'_>> = proof
        .x5c
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| refused("x5c is empty"))?;
    logins
        .verifier
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| refused(format!("certificate refused: {e}")))?;
    verify_signature(leaf, &proof).map_err(refused)?;
    let cert = ca
        .identify(leaf)
        .ok_or_else(|| refused("the certificate names no listener"))?;
    if logins
        .nonces
        .take(&proof.claims.nonce, Instant::now())
        .is_none()
    {
        return Err(refused("the nonce is unknown, used or expired"));
    }
    // Registered, not revoked, issued to it, not expired: the checks every mTLS connect gets.
    let store = Arc::clone(&state.store);
    let checked = cert.clone();
    tokio::task::spawn_blocking(move || {
        super::listeners::check_certificate(&*store, &checked, crate::store::now_ms())
    })
    .await
    .map_err(|e| IdentityError::Internal(e.to_string()))?
    .map_err(|e| refused(format!("listener {}: {e}", cert.listener_id)))?;
    Ok(cert)
}

/// The `host[:port]` a proof must name: that of `public_url`, else the request's Host
/// (which the proxy in front forwards).
fn own_authority(state: &Identity, headers: &HeaderMap) -> Result<String, IdentityError> {
    let host = match &state.public_url {
        Some(url) => pop::authority(url).map(str::to_owned),
        None => headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    };
    host.ok_or_else(|| IdentityError::BadRequest("a Host header is required".into()))
}

/// Checks the JWS signature with the leaf's public key, refusing an `alg` that does not fit
/// the key.
fn verify_signature(leaf: &CertificateDer<'_>, proof: &pop::Proof) -> Result<(), PopError> {
    use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let bad = PopError::Malformed("signature does not verify with the certificate's key");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|_| bad.clone())?;
    let spki = &cert.tbs_certificate.subject_pki;
    let key_oid = &spki.algorithm.algorithm;
    let algorithm: &dyn ring::signature::VerificationAlgorithm = match proof.alg {
        Algorithm::Es256 if *key_oid == OID_KEY_TYPE_EC_PUBLIC_KEY => {
            &ring::signature::ECDSA_P256_SHA256_FIXED
        }
        Algorithm::EdDsa if *key_oid == OID_SIG_ED25519 => &ring::signature::ED25519,
        _ => {
            return Err(PopError::Algorithm(
                "does not match the certificate's key".into(),
            ));
        }
    };
    ring::signature::UnparsedPublicKey::new(algorithm, &spki.subject_public_key.data)
        .verify(proof.signing_input.as_bytes(), &proof.signature)
        .map_err(|_| bad)
}

/// Middleware: a session ticket in `relay-pop-session` stands for the listener's client
/// certificate on this one request. A certificate from the TLS handshake wins; an unknown,
/// used or expired ticket is a 401, not a silent fall-back to SAS.
pub(crate) async fn attach_session(
    State(state): State<Arc<Identity>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(ticket) = req.headers().get(pop::SESSION_HEADER) else {
        return next.run(req).await;
    };
    if req.extensions().get::<Arc<PeerCertificate>>().is_some() {
        return next.run(req).await;
    }
    let cert = state.pop.as_deref().and_then(|logins| {
        let ticket = ticket.to_str().ok()?;
        logins.tickets.take(ticket, Instant::now())
    });
    match cert {
        Some(cert) => {
            req.extensions_mut().insert(cert);
            next.run(req).await
        }
        None => IdentityError::ProofRejected(
            "the proof-of-possession session is unknown, used or expired; log in again".into(),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_single_use_expire_and_are_bounded() {
        let map = Expiring::<u8>::default();
        let now = Instant::now();
        let a = map.insert(1, now).unwrap();
        assert_eq!(map.take(&a, now), Some(1));
        assert_eq!(map.take(&a, now), None, "single use");
        let b = map.insert(2, now).unwrap();
        assert_eq!(map.take(&b, now + TTL), None, "expired");
        assert!(map.0.is_empty(), "an expired secret is removed too");
        for _ in 0..MAX_PENDING {
            map.insert(0, now).unwrap();
        }
        assert!(matches!(map.insert(0, now), Err(IdentityError::Busy(_))));
        // Once they expire, room is made again.
        assert!(map.insert(0, now + TTL).is_ok());
        assert_eq!(map.0.len(), 1);
    }
}
