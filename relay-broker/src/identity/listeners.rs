//! Certificate-authenticated listeners: what a verified client certificate may do. The data
//! plane asks through [`StoreAuthority`]; revocations go out on the bus.
//!
//! The TLS handshake already proved the chain to the listener CA, the validity period and
//! the clientAuth EKU. Here the broker checks what only it knows: the listener is registered
//! and not revoked, the certificate is one it issued to that listener, the registering person
//! is still enabled and still holds `listener.register` on the hybrid connection. Every
//! check runs on every connect, so a change of rights takes effect at the next one; a
//! revocation or a disabled person also closes what is open now (the revocation bus).

use std::sync::Arc;

use super::ca::CertificateAuthority;
use super::error::IdentityError;
use super::policy::{may_register, pattern_covers};
use crate::seams::authority::{Authority, PeerCertificate, Refusal};
use crate::store::{ListenerRecord, Store};

/// Checks that the listener named by `cert` may listen on `hc` now.
pub(crate) fn authorize_listen(
    store: &dyn Store,
    cert: &PeerCertificate,
    hc: &str,
    now_ms: u64,
) -> Result<ListenerRecord, IdentityError> {
    let record = check_certificate(store, cert, now_ms)?;
    let granted = record
        .hybrid_connections
        .iter()
        .any(|g| pattern_covers(g, hc));
    if !granted {
        return Err(IdentityError::Forbidden(format!(
            "listener {} was not registered for '{hc}'",
            record.id
        )));
    }
    person_may_register(store, &record, &[hc.to_owned()])?;
    Ok(record)
}

/// Checks that the listener named by `cert` may renew: registered, not revoked, its
/// certificate valid, and its person still allowed on every hybrid connection it holds.
pub(crate) fn authorize_renewal(
    store: &dyn Store,
    cert: &PeerCertificate,
    now_ms: u64,
) -> Result<ListenerRecord, IdentityError> {
    let record = check_certificate(store, cert, now_ms)?;
    person_may_register(store, &record, &record.hybrid_connections)?;
    Ok(record)
}

/// The listener record behind a certificate, refusing revoked listeners and certificates the
/// broker did not issue to it.
pub(crate) fn check_certificate(
    store: &dyn Store,
    cert: &PeerCertificate,
    now_ms: u64,
) -> Result<ListenerRecord, IdentityError> {
    let record = store
        .listener(&cert.listener_id)?
        .ok_or(IdentityError::BadCredentials(
            "the client certificate names no registered listener",
        ))?;
    if record.revoked_at_ms.is_some() {
        return Err(IdentityError::Forbidden(format!(
            "listener {} was revoked; register it again",
            record.id
        )));
    }
    let issued = store.certificate(&cert.serial)?;
    if issued.is_none_or(|c| c.listener_id != record.id) {
        return Err(IdentityError::Forbidden(format!(
            "certificate {} was not issued to listener {}",
            cert.serial, record.id
        )));
    }
    if cert.not_after.saturating_mul(1000) <= now_ms {
        return Err(IdentityError::Forbidden(format!(
            "certificate {} has expired",
            cert.serial
        )));
    }
    Ok(record)
}

fn person_may_register(
    store: &dyn Store,
    record: &ListenerRecord,
    hcs: &[String],
) -> Result<(), IdentityError> {
    let (person, _) = store.person(&record.person)?.ok_or_else(|| {
        IdentityError::Forbidden(format!("person '{}' no longer exists", record.person))
    })?;
    may_register(&person, hcs)
}

/// The ids of every listener `person` registered (what disabling them closes).
pub(crate) fn registered_by(
    store: &dyn Store,
    person: &str,
) -> Result<Vec<String>, crate::store::StoreError> {
    Ok(store
        .listeners()?
        .into_iter()
        .filter(|l| l.person.eq_ignore_ascii_case(person))
        .map(|l| l.id)
        .collect())
}

/// Identity's answers to the data plane, from the CA and the store.
pub struct StoreAuthority {
    ca: Arc<CertificateAuthority>,
    store: Arc<dyn Store>,
}

impl StoreAuthority {
    /// Answers for certificates `ca` issued, from the records in `store`.
    #[must_use]
    pub fn new(ca: Arc<CertificateAuthority>, store: Arc<dyn Store>) -> Self {
        Self { ca, store }
    }
}

impl Authority for StoreAuthority {
    fn identify(&self, leaf_der: &[u8]) -> Option<PeerCertificate> {
        self.ca.identify(leaf_der)
    }

    fn may_listen(&self, cert: &PeerCertificate, hc: &str, now_ms: u64) -> Result<(), Refusal> {
        authorize_listen(&*self.store, cert, hc, now_ms)
            .map(drop)
            .map_err(Refusal::from)
    }
}
