//! The listener's side of a capability address: `accept` (or reject) a sender, open the
//! HTTP rendezvous of a `request`, park a standby socket.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use http::{Response, StatusCode};
use relay_core::address::{RENDEZVOUS_PARAM, RelayQuery};
use relay_core::standby::STANDBY_KEY_HEADER;
use relay_io::server as handshake;

use super::pool::StandbyKey;
use super::rendezvous::{Arrival, ListenerSocket, Pending};
use super::resolve::Resolved;
use super::socket::switching;
use super::{Relay, http_relay};
use crate::RelayError;

/// `sb-hc-action=standby`: one of our listeners parks a pre-opened rendezvous socket. The
/// key is the credential: signed for this hybrid connection by a node of the cluster. A
/// socket for a channel on another node parks here too (this node adopts its pool) once
/// presence shows that channel live; until then it is spliced to the channel's node.
pub(super) async fn standby(
    shared: &Arc<Relay>,
    mut req: Request,
    r: &Resolved,
) -> Result<Response<Body>, RelayError> {
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    let key = req
        .headers()
        .get(STANDBY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|key| shared.standby.verify(key, &r.hc.name))
        .ok_or(RelayError::RendezvousExpired)?;
    let place = if key.node == shared.node {
        shared
            .standby
            .get(&key)
            .ok_or(RelayError::RendezvousExpired)?
            .reserve()
    } else if adoptable(shared, &key, &r.hc.name) {
        let shutdown = &shared.shutdown;
        let place = shared
            .standby
            .adopt(&key, &r.hc.name, || shutdown.child_token());
        if place.is_some() {
            crate::metrics::count(&shared.counters.cluster_standby_adopted);
        }
        place
    } else {
        return forward(shared, &key.node, req).await;
    };
    let place = place.ok_or(RelayError::Busy("standby sockets for this listener"))?;
    let upgrade = hyper::upgrade::on(&mut req);
    crate::relay::standby::spawn(shared, place, upgrade);
    Ok(switching(&accept_key, None))
}

/// Whether this node may park a standby of a channel on another node: presence shows that
/// channel live with this pool, and this node is not cut off (its view would be stale).
fn adoptable(shared: &Relay, key: &StandbyKey, hc: &str) -> bool {
    !shared.fenced.load(std::sync::atomic::Ordering::Acquire)
        && shared
            .directory
            .listeners(hc)
            .iter()
            .any(|l| l.key.node == key.node && l.standby.as_deref() == Some(key.pool.as_str()))
}

/// `sb-hc-action=accept` on a capability address: the listener accepts or rejects a sender.
pub(super) fn accept(
    shared: &Arc<Relay>,
    mut req: Request,
    query: &RelayQuery,
) -> Result<Response<Body>, RelayError> {
    let cap = capability(req.uri().query())?;
    let reject = query.status_code.as_deref().map(|code| {
        (
            crate::relay::rendezvous::refusal_status(code.parse().ok()),
            query
                .status_description
                .clone()
                .unwrap_or_else(|| "Rejected by the listener".into()),
        )
    });
    let accept_key = match reject {
        Some(_) => None,
        None => Some(
            handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?,
        ),
    };
    let Some(Pending::Accept { tx, .. }) = shared.rendezvous.take_address(&cap) else {
        return Err(RelayError::RendezvousExpired);
    };
    if let Some((status, description)) = reject {
        let _ = tx.send(Arrival::Rejected {
            status,
            description,
        });
        return Ok(gone());
    }
    let protocol = handshake::offered_protocols(req.headers())
        .into_iter()
        .next();
    let upgrade = hyper::upgrade::on(&mut req);
    tx.send(Arrival::Accepted {
        socket: ListenerSocket::Upgrade(upgrade),
        protocol: protocol.clone(),
    })
    .map_err(|_| RelayError::RendezvousExpired)?;
    Ok(switching(
        &accept_key.unwrap_or_default(),
        protocol.as_deref(),
    ))
}

/// `sb-hc-action=request` on a capability address: the HTTP rendezvous.
pub(super) fn request_rendezvous(
    shared: &Arc<Relay>,
    mut req: Request,
    _query: &RelayQuery,
) -> Result<Response<Body>, RelayError> {
    let cap = capability(req.uri().query())?;
    let accept_key =
        handshake::accept_for(req.headers()).map_err(|e| RelayError::BadRequest(e.into()))?;
    let Some(Pending::Request {
        listener_id,
        request_id,
    }) = shared.rendezvous.take_address(&cap)
    else {
        return Err(RelayError::RendezvousExpired);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    http_relay::spawn_rendezvous(shared, upgrade, listener_id, request_id);
    Ok(switching(&accept_key, None))
}

/// A listener's rendezvous socket for a capability another node holds (the load balancer
/// sent it here): spliced to that node, which answers it as its own.
pub(super) async fn forward(
    shared: &Arc<Relay>,
    node: &crate::seams::node::NodeId,
    req: Request,
) -> Result<Response<Body>, RelayError> {
    match shared.interconnect.forward(node, req).await {
        Some(resp) => {
            crate::metrics::count(&shared.counters.cluster_splices);
            Ok(resp)
        }
        None => {
            crate::metrics::count(&shared.counters.cluster_splice_failures);
            Err(RelayError::RendezvousExpired)
        }
    }
}

/// The node that a listener's rendezvous socket belongs to: the one named by its
/// capability (`<node>.<random>`). A standby socket is not forwarded here: any node may
/// park it ([`standby`]).
pub(super) fn owner(
    action: relay_core::address::Action,
    req: &Request,
) -> Option<crate::seams::node::NodeId> {
    use relay_core::address::Action;
    let key = match action {
        Action::Accept | Action::Request => capability(req.uri().query()).ok()?,
        Action::Listen | Action::Connect | Action::Standby => return None,
    };
    crate::seams::node::NodeId::new(key.split_once('.')?.0).ok()
}

fn capability(query: Option<&str>) -> Result<String, RelayError> {
    form_pairs(query.unwrap_or_default())
        .find(|(k, _)| k == RENDEZVOUS_PARAM)
        .map(|(_, v)| v)
        .ok_or(RelayError::RendezvousExpired)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
}

/// `410 Gone`: the protocol's answer to a successful reject.
fn gone() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::GONE;
    resp
}
