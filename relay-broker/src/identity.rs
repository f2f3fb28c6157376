//! Certificate-authenticated listeners: what a verified client certificate may do, and the
//! live sessions that revocation closes.
//!
//! The TLS handshake already proved the chain to the listener CA, the validity period and
//! the clientAuth EKU. Here the broker checks what only it knows: the listener is registered
//! and not revoked, the certificate is one it issued to that listener, the registering person
//! is still enabled and still holds `listener.register` on the hybrid connection. Every
//! check runs on every connect, so a change of rights takes effect at the next one; a
//! revocation or a disabled person also closes what is open now ([`Sessions`]).

use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::RelayError;
use crate::admin::{may_register, pattern_covers};
use crate::ca::PeerCertificate;
use crate::store::{ListenerRecord, Store};

/// Close code for a control channel whose listener was revoked (application range).
pub(crate) const CLOSE_REVOKED: u16 = 4401;

/// One cancellation token per registered listener with something open: its control channels
/// and relayed connections watch it.
#[derive(Debug, Default)]
pub(crate) struct Sessions(DashMap<String, CancellationToken>);

impl Sessions {
    /// The token that closes everything `listener_id` has open.
    pub(crate) fn token(&self, listener_id: &str) -> CancellationToken {
        self.0.entry(listener_id.to_owned()).or_default().clone()
    }

    /// Closes everything `listener_id` has open; later connects get a fresh token and face
    /// the store's checks again.
    pub(crate) fn close(&self, listener_id: &str) {
        if let Some((_, token)) = self.0.remove(listener_id) {
            token.cancel();
        }
    }
}

/// Checks that the listener named by `cert` may listen on `hc` now.
pub(crate) fn authorize_listen(
    store: &dyn Store,
    cert: &PeerCertificate,
    hc: &str,
    now_ms: u64,
) -> Result<ListenerRecord, RelayError> {
    let record = check_certificate(store, cert, now_ms)?;
    let granted = record
        .hybrid_connections
        .iter()
        .any(|g| pattern_covers(g, hc));
    if !granted {
        return Err(RelayError::Forbidden(format!(
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
) -> Result<ListenerRecord, RelayError> {
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
) -> Result<ListenerRecord, RelayError> {
    let record = store
        .listener(&cert.listener_id)?
        .ok_or(RelayError::BadCredentials(
            "the client certificate names no registered listener",
        ))?;
    if record.revoked_at_ms.is_some() {
        return Err(RelayError::Forbidden(format!(
            "listener {} was revoked; register it again",
            record.id
        )));
    }
    let issued = store.certificate(&cert.serial)?;
    if issued.is_none_or(|c| c.listener_id != record.id) {
        return Err(RelayError::Forbidden(format!(
            "certificate {} was not issued to listener {}",
            cert.serial, record.id
        )));
    }
    if cert.not_after.saturating_mul(1000) <= now_ms {
        return Err(RelayError::Forbidden(format!(
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
) -> Result<(), RelayError> {
    let (person, _) = store.person(&record.person)?.ok_or_else(|| {
        RelayError::Forbidden(format!("person '{}' no longer exists", record.person))
    })?;
    may_register(&person, hcs)
}

/// Closes the sessions of every listener `person` registered; returns how many.
pub(crate) fn close_person(
    store: &dyn Store,
    sessions: &Sessions,
    person: &str,
) -> Result<usize, crate::store::StoreError> {
    let listeners = store.listeners()?;
    let mine: Vec<_> = listeners
        .iter()
        .filter(|l| l.person.eq_ignore_ascii_case(person))
        .collect();
    for listener in &mine {
        sessions.close(&listener.id);
    }
    Ok(mine.len())
}

/// A control channel's certificate facts: when it must close, and what closes it early.
#[derive(Clone, Debug)]
pub(crate) struct CertSession {
    /// The listener id, for audit.
    pub(crate) listener_id: Arc<str>,
    /// Cancelled on revocation or when the person is disabled.
    pub(crate) revoked: CancellationToken,
}
