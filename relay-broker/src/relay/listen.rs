//! `sb-hc-action=listen`: a listener's credentials (a client certificate through identity's
//! [`Authority`](crate::seams::authority::Authority), else SAS), its instance, its standby
//! grant, and the start of its control channel.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, HeaderValue, Response};
use relay_core::keepalive::credential_left;
use relay_core::sas::Rights;
use relay_core::standby::{STANDBY_HEADER, STANDBY_KEY_HEADER};
use relay_io::server as handshake;

use super::auth::{Authorized, authorize, unix_now};
use super::resolve::Resolved;
use super::sessions::CertSession;
use super::socket::switching;
use super::{Relay, channel};
use crate::RelayError;
use crate::metrics::count;
use crate::seams::authority::PeerCertificate;
use crate::store::AuditKind;

/// `sb-hc-action=listen`: a listener opens its control channel.
pub(super) async fn listen(
    shared: &Arc<Relay>,
    mut req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    if !r.suffix.trim_matches('/').is_empty() {
        return Err(RelayError::EndpointNotFound);
    }
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    // A verified client certificate is the listener's credential; SAS otherwise.
    let cert = req.extensions().get::<Arc<PeerCertificate>>().cloned();
    let (left, session, principal) = match cert {
        Some(cert) => {
            let session = authorize_certificate(shared, &cert, &r).await?;
            let principal = format!("cert:{}", cert.listener_id);
            let left = credential_left(cert.not_after, unix_now());
            (left, Some(session), principal)
        }
        None => {
            let claim = r.claim(req.headers(), &r.hc.name, Rights::LISTEN, true);
            let Authorized { left, rule, .. } = authorize(shared, claim).await?;
            let principal = format!("sas:{}", rule.unwrap_or_default());
            (left.unwrap_or_default(), None, principal)
        }
    };
    // The credential's life becomes a monotonic deadline here, at the check, not when the
    // channel's task starts after the upgrade.
    let expires = tokio::time::Instant::now().into_std() + left;
    let instance = listener_instance(req.headers())?.map(|i| format!("{principal}|{i}"));
    let base_url = crate::relay::web::base_url(shared, req.headers(), r.transport);
    let standby = req
        .headers()
        .get(STANDBY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| relay_core::standby::requested(v, shared.limits.standby_per_listener));
    let header_arrays = req
        .headers()
        .contains_key(relay_core::control::HEADER_ARRAYS_HEADER);
    let upgrade = hyper::upgrade::on(&mut req);
    let opening = channel::Opening {
        base_url,
        expires,
        cert: session,
        instance,
        standby,
        header_arrays,
    };
    let pool = channel::start(shared, upgrade, &r, opening)?;
    let mut resp = switching(&accept_key, None);
    if let Some(pool) = pool {
        let h = resp.headers_mut();
        h.insert(STANDBY_HEADER, HeaderValue::from(pool.max()));
        if let Ok(key) = HeaderValue::from_str(pool.key()) {
            h.insert(STANDBY_KEY_HEADER, key);
        }
    }
    Ok(resp)
}

/// The agent's `relay-listener-instance` name, bounded.
fn listener_instance(headers: &HeaderMap) -> Result<Option<&str>, RelayError> {
    use relay_core::control::{INSTANCE_HEADER, MAX_INSTANCE_LEN};
    let Some(value) = headers.get(INSTANCE_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= MAX_INSTANCE_LEN => Ok(Some(v)),
        _ => Err(RelayError::BadRequest(format!(
            "{INSTANCE_HEADER}: 1 to {MAX_INSTANCE_LEN} visible ASCII characters"
        ))),
    }
}

/// Asks identity whether a certificate listener may listen here (off the runtime threads:
/// the answer reads the store), auditing refusals, and hands back what closes its session.
async fn authorize_certificate(
    shared: &Arc<Relay>,
    cert: &Arc<PeerCertificate>,
    r: &Resolved,
) -> Result<CertSession, RelayError> {
    // Taken before the check: a revocation landing after it still cancels this hold.
    let revoked = shared.sessions.hold(&cert.listener_id);
    let authority = shared.authority.clone().ok_or(RelayError::BadRequest(
        "this broker has no certificate authority".into(),
    ))?;
    let (c, hc) = (Arc::clone(cert), r.hc.name.clone());
    let checked =
        tokio::task::spawn_blocking(move || authority.may_listen(&c, &hc, crate::store::now_ms()))
            .await
            .map_err(|e| RelayError::Internal(e.to_string()))?;
    match checked {
        Ok(()) => Ok(CertSession {
            revoked,
            listener_id: cert.listener_id.as_str().into(),
        }),
        Err(refusal) => {
            count(&shared.counters.auth_failures);
            let detail = format!("{}: {refusal} TrackingId:{}", r.hc.name, r.tracking);
            shared
                .audit
                .record(AuditKind::ListenerRejected, &cert.listener_id, &detail);
            Err(refusal.into())
        }
    }
}
