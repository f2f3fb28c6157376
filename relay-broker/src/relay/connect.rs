//! `sb-hc-action=connect`, and a browser's WebSocket on a hybrid connection's own path: the
//! sender's credentials, the `accept` notice, and its way to the listener (a parked standby
//! socket, or a rendezvous address over the control channel).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, Response};
use relay_core::address;
use relay_core::control::{Accept, Headers, ListenerCommand, RemoteEndpoint};
use relay_core::sas::Rights;
use relay_core::standby::EARLY_HEADER;
use relay_io::server as handshake;

use super::Relay;
use super::auth::authorize;
use super::local::Target;
use super::pairing::{spawn_pair, via_control_channel};
use super::rendezvous::Arrival;
use super::resolve::Resolved;
use super::socket::{RelayHalves, switching};
use crate::RelayError;

/// `sb-hc-action=connect`: a sender wants a WebSocket to a listener. One sequence (70
/// lines): the sender's upgrade and its relay permit are held across the pick, the notice,
/// the one retry on another listener, and the pairing.
pub(super) async fn connect(
    shared: &Arc<Relay>,
    mut req: Request,
    r: Resolved,
) -> Result<Response<Body>, RelayError> {
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    let view = crate::relay::web::View::of(req.headers(), &r);
    let consumed_authorization =
        sender_access(shared, req.headers(), req.method(), &r, &view).await?;
    let mut target = shared
        .find(&r.hc.name, RelayError::ListenerNotConnected)
        .await?;
    let permit = relay_permit(shared)?;
    // Our own senders may take an early 101 (no sub-protocol to wait for the listener's
    // choice of); see `relay_core::standby`.
    let early = req.headers().contains_key(EARLY_HEADER)
        && handshake::offered_protocols(req.headers()).is_empty();
    let sender_upgrade = hyper::upgrade::on(&mut req);
    let mut retried = false;
    let arrival = loop {
        let mut accept = accept_notice(
            shared,
            req.headers(),
            &r,
            &target,
            &view,
            consumed_authorization,
        );
        let paired = via_standby(shared, &target, &accept, early).await?;
        if paired.is_some() && target.listener.key.node != shared.node {
            crate::metrics::count(&shared.counters.cluster_standby_connects);
        }
        match paired {
            Some(Paired::Answered(arrival)) => break arrival,
            Some(Paired::Early(standby)) => {
                crate::metrics::count(&shared.counters.standby_early);
                crate::relay::standby::early::spawn(
                    shared,
                    sender_upgrade,
                    standby,
                    (target, accept),
                    permit,
                );
                return Ok(switching(&accept_key, None));
            }
            None => match via_control_channel(shared, &target, &mut accept).await {
                Ok(arrival) => break arrival,
                // Nothing reached a listener's application: the notice found no node for a
                // listener on another one (it died, and the heartbeats have not said so
                // yet), or the listener's channel ended before it took the rendezvous, whose
                // address died with it (a broker node shutting down). One other pick is
                // safe; the failed one is picked last now.
                Err(e)
                    if !retried
                        && (shared.unreachable(&target)
                            || matches!(e, RelayError::ListenerFailed(_))) =>
                {
                    retried = true;
                    if target.local.is_none() {
                        shared
                            .suspects
                            .insert(target.listener.key.clone(), std::time::Instant::now());
                    }
                    let failed = target.listener.key.clone();
                    target = shared.find_other(&r.hc.name, &failed, e).await?;
                }
                Err(e) => return Err(e),
            },
        }
    };
    let (socket, protocol) = arrival.accepted()?;
    spawn_pair(
        shared,
        sender_upgrade,
        socket,
        &r.tracking,
        shared.revoked(&target),
        permit,
    );
    Ok(switching(&accept_key, protocol.as_deref()))
}

/// A place among the relayed connections, held by the relay task until both sides close:
/// the bound of `[limits].max_relays`.
fn relay_permit(shared: &Relay) -> Result<tokio::sync::OwnedSemaphorePermit, RelayError> {
    Arc::clone(&shared.relays).try_acquire_owned().map_err(|_| {
        crate::metrics::count(&shared.counters.relays_refused);
        RelayError::Busy("relayed connections")
    })
}

/// Checks what the sender presented: a browser's token or session on `/{hc}/...`, else the
/// protocol's token with Send. Whether the `Authorization` header was the credential (it is
/// then not forwarded).
async fn sender_access(
    shared: &Arc<Relay>,
    headers: &HeaderMap,
    method: &http::Method,
    r: &Resolved,
    view: &crate::relay::web::View,
) -> Result<bool, RelayError> {
    if r.prefix.is_some() {
        let access = crate::relay::web::authorize_browser(shared, headers, method, r, view).await?;
        return Ok(access.consumed_authorization());
    }
    let audience = r.audience_path();
    let claim = r.claim(
        headers,
        &audience,
        Rights::SEND,
        r.hc.requires_client_authorization,
    );
    Ok(authorize(shared, claim)
        .await?
        .presented
        .consumed_authorization())
}

/// The `accept` notice for `target`: its address on the node that waits (the listener's
/// own, as it reached it, or this one, as the sender reached it), the sender's headers and
/// where it came from.
fn accept_notice(
    shared: &Relay,
    headers: &HeaderMap,
    r: &Resolved,
    target: &Target,
    view: &crate::relay::web::View,
    consumed_authorization: bool,
) -> Accept {
    let mut connect_headers =
        crate::relay::web::for_listener(forwarded_headers(headers, consumed_authorization), view);
    if !target.listener.header_arrays {
        connect_headers = connect_headers.folded();
    }
    let base = crate::relay::web::rendezvous_base(shared, target, headers, r.transport);
    let mut address = format!(
        "{base}/$hc/{}{}?",
        address::encode_name(&r.hc.name),
        r.suffix
    );
    if !r.query.app_query.is_empty() {
        address.push_str(&r.query.app_query);
        address.push('&');
    }
    address.push_str(&format!("sb-hc-action=accept&sb-hc-id={}", r.tracking));
    Accept {
        address,
        id: r.tracking.to_string(),
        connect_headers,
        remote_endpoint: r.transport.map(|t| RemoteEndpoint {
            address: t.peer.ip().to_string(),
            port: t.peer.port(),
        }),
    }
}

/// A sender handed to a standby socket.
enum Paired {
    /// The listener answered.
    Answered(Arrival),
    /// Early pairing: the `accept` is on the socket, the answer still to come.
    Early(Box<RelayHalves>),
}

/// Hands the sender to one of the listener's parked standby sockets. `None` when none is
/// parked or the one taken failed before the listener answered.
async fn via_standby(
    shared: &Relay,
    target: &Target,
    accept: &Accept,
    early: bool,
) -> Result<Option<Paired>, RelayError> {
    let Some(pool) = target.standby() else {
        return Ok(None);
    };
    let json = ListenerCommand::Accept(accept.clone()).encode();
    let Some(outcome) = pool.dispatch(json, early) else {
        return Ok(None);
    };
    match tokio::time::timeout(shared.limits.accept_timeout, outcome).await {
        Ok(Ok(crate::relay::pool::Outcome::Answered(arrival))) => {
            crate::metrics::count(&shared.counters.standby_accepts);
            Ok(Some(Paired::Answered(arrival)))
        }
        Ok(Ok(crate::relay::pool::Outcome::Dispatched(standby))) => {
            Ok(Some(Paired::Early(standby)))
        }
        Ok(Ok(crate::relay::pool::Outcome::Failed) | Err(_)) => {
            crate::metrics::count(&shared.counters.standby_fallbacks);
            Ok(None)
        }
        Err(_) => {
            crate::metrics::count(&shared.counters.rendezvous_timeouts);
            Err(RelayError::GatewayTimeout)
        }
    }
}

/// Every header of the sender except relay credentials, in canonical case.
fn forwarded_headers(headers: &HeaderMap, drop_authorization: bool) -> Headers {
    let list = headers
        .iter()
        .filter(|(name, _)| !relay_core::http_rules::is_relay_credential(name))
        .filter(|(name, _)| !(drop_authorization && *name == http::header::AUTHORIZATION))
        .filter_map(|(name, value)| {
            Some((
                relay_core::http_rules::canonical_case(name.as_str()),
                value.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    Headers(list)
}
