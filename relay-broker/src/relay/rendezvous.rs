//! Pending rendezvous: single-use capability addresses waiting for a listener, and HTTP
//! requests waiting for their response.
//!
//! Both maps are bounded. Entries are removed by the waiting side's guard when it finishes,
//! times out or is cancelled, and in bulk when their listener's control channel ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use bytes::Bytes;
use dashmap::DashMap;
use hyper::upgrade::OnUpgrade;
use relay_core::control;
use tokio::sync::{mpsc, oneshot};

use crate::seams::node::{ListenerKey, NodeId};

/// The listener's side of a relayed connection.
pub(crate) enum ListenerSocket {
    /// A rendezvous upgrade, still completing.
    Upgrade(OnUpgrade),
    /// A standby socket, open and past its reply.
    Open(Box<crate::relay::socket::RelayHalves>),
}

impl ListenerSocket {
    /// The socket's frame reader and writer, once its upgrade (if any) completed.
    pub(crate) async fn open(self, buffer: usize) -> Option<crate::relay::socket::RelayHalves> {
        match self {
            Self::Upgrade(upgrade) => upgrade
                .await
                .ok()
                .map(|u| crate::relay::socket::relay_io_halves(u, buffer)),
            Self::Open(halves) => Some(*halves),
        }
    }
}

/// The status a listener's refusal carries to the sender: its own when it is a 4xx or 5xx,
/// else 400.
pub(crate) fn refusal_status(code: Option<u16>) -> http::StatusCode {
    code.and_then(|c| http::StatusCode::from_u16(c).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(http::StatusCode::BAD_REQUEST)
}

impl std::fmt::Debug for ListenerSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Upgrade(_) => "Upgrade",
            Self::Open(_) => "Open",
        })
    }
}

/// What a listener did with a sender's `accept`.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// It connected: its socket and the sub-protocol it chose.
    Accepted {
        socket: ListenerSocket,
        protocol: Option<String>,
    },
    /// It rejected the sender with a status and description.
    Rejected {
        status: http::StatusCode,
        description: String,
    },
}

impl Arrival {
    /// The listener's socket and sub-protocol, or its refusal as the sender's answer.
    pub(crate) fn accepted(self) -> Result<(ListenerSocket, Option<String>), crate::RelayError> {
        match self {
            Arrival::Accepted { socket, protocol } => Ok((socket, protocol)),
            Arrival::Rejected {
                status,
                description,
            } => Err(crate::RelayError::Rejected {
                status,
                description,
            }),
        }
    }
}

/// A capability address waiting to be used.
#[derive(Debug)]
pub(crate) enum Pending {
    /// `sb-hc-action=accept` for a sender's WebSocket.
    Accept {
        listener_id: ListenerKey,
        tx: oneshot::Sender<Arrival>,
    },
    /// `sb-hc-action=request` for an HTTP request.
    Request {
        listener_id: ListenerKey,
        request_id: String,
    },
}

impl Pending {
    fn listener_id(&self) -> &ListenerKey {
        match self {
            Self::Accept { listener_id, .. } | Self::Request { listener_id, .. } => listener_id,
        }
    }
}

/// A request the broker still has to deliver over a rendezvous (the address-only form).
#[derive(Debug)]
pub(crate) struct OutgoingRequest {
    /// The full `request` JSON.
    pub(crate) json: String,
    /// The body, streamed as one binary message; `None` when there is none.
    pub(crate) body: Option<Body>,
}

/// The body of a listener's response.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    Empty,
    Full(Bytes),
    /// Chunks as they arrive on a rendezvous socket; the channel bounds buffering.
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

/// A listener's response, ready for the sender.
#[derive(Debug)]
pub(crate) struct ListenerResponse {
    pub(crate) head: control::Response,
    pub(crate) body: ResponseBody,
}

/// An HTTP request waiting for its response.
#[derive(Debug)]
pub(crate) struct RequestSlot {
    pub(crate) listener_id: ListenerKey,
    pub(crate) respond: oneshot::Sender<ListenerResponse>,
    /// A mutex only to make the slot `Sync`: a request body is `Send` but not `Sync`.
    pub(crate) outgoing: std::sync::Mutex<Option<OutgoingRequest>>,
}

/// The pending maps.
#[derive(Debug)]
pub(crate) struct Rendezvous {
    addresses: DashMap<String, Pending>,
    requests: DashMap<String, RequestSlot>,
    /// Entries in both maps, counted by reservation: the bound holds under any concurrency.
    held: AtomicUsize,
    max: usize,
    /// Capabilities start with the node that holds them (a cluster routes by it).
    node: NodeId,
}

/// The bound on pending entries is reached.
#[derive(Debug)]
pub(crate) struct Full;

impl Rendezvous {
    pub(crate) fn new(max: usize, node: NodeId) -> Self {
        Self {
            addresses: DashMap::new(),
            requests: DashMap::new(),
            held: AtomicUsize::new(0),
            max,
            node,
        }
    }

    /// Takes one place under the bound, or none.
    fn reserve(&self) -> Result<(), Full> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| Full)
    }

    /// Gives back `n` places, for entries that left a map.
    fn release(&self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Registers an address and returns its unguessable capability and a guard that removes
    /// it when dropped.
    pub(crate) fn add_address(self: &Arc<Self>, pending: Pending) -> Result<Guard, Full> {
        self.reserve()?;
        let cap = format!(
            "{}.{}{}",
            self.node,
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.addresses.insert(cap.clone(), pending);
        Ok(Guard {
            map: Arc::clone(self),
            key: cap,
            request: false,
        })
    }

    /// Registers a request slot under `id`.
    pub(crate) fn add_request(
        self: &Arc<Self>,
        id: &str,
        slot: RequestSlot,
    ) -> Result<Guard, Full> {
        self.reserve()?;
        if self.requests.insert(id.to_owned(), slot).is_some() {
            // An id already pending (ids are unique per request; this guards the count).
            self.release(1);
        }
        Ok(Guard {
            map: Arc::clone(self),
            key: id.to_owned(),
            request: true,
        })
    }

    /// Uses an address: it works once.
    pub(crate) fn take_address(&self, cap: &str) -> Option<Pending> {
        let (_, pending) = self.addresses.remove(cap)?;
        self.release(1);
        Some(pending)
    }

    /// Takes the outgoing request (address-only form) of a slot, once.
    pub(crate) fn take_outgoing(&self, request_id: &str) -> Option<OutgoingRequest> {
        let slot = self.requests.get(request_id)?;
        let mut outgoing = slot
            .outgoing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outgoing.take()
    }

    /// Completes a request with the listener's response, if it is still waiting and belongs
    /// to `listener_id`. Returns whether the request was pending.
    pub(crate) fn complete(
        &self,
        request_id: &str,
        listener_id: &ListenerKey,
        response: ListenerResponse,
    ) -> bool {
        match self
            .requests
            .remove_if(request_id, |_, s| &s.listener_id == listener_id)
        {
            Some((_, slot)) => {
                self.release(1);
                slot.respond.send(response).is_ok()
            }
            None => false,
        }
    }

    /// Whether a request is pending for this listener.
    pub(crate) fn is_pending(&self, request_id: &str, listener_id: &ListenerKey) -> bool {
        self.requests
            .get(request_id)
            .is_some_and(|s| &s.listener_id == listener_id)
    }

    /// Drops every entry of a listener whose control channel ended; waiting senders see
    /// their channel close and answer at once instead of at the deadline.
    pub(crate) fn drop_listener(&self, listener_id: &ListenerKey) {
        let mut dropped = 0;
        self.addresses.retain(|_, p| {
            let keep = p.listener_id() != listener_id;
            dropped += usize::from(!keep);
            keep
        });
        self.requests.retain(|_, s| {
            let keep = &s.listener_id != listener_id;
            dropped += usize::from(!keep);
            keep
        });
        self.release(dropped);
    }

    /// Number of pending entries.
    pub(crate) fn len(&self) -> usize {
        self.addresses.len() + self.requests.len()
    }
}

/// Removes its entry when dropped.
#[derive(Debug)]
pub(crate) struct Guard {
    map: Arc<Rendezvous>,
    key: String,
    request: bool,
}

impl Guard {
    /// The capability (for addresses) or request id.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let removed = if self.request {
            self.map.requests.remove(&self.key).is_some()
        } else {
            self.map.addresses.remove(&self.key).is_some()
        };
        self.map.release(usize::from(removed));
    }
}

impl Rendezvous {
    /// Fails a pending request: its sender gets 502 at once.
    pub(crate) fn fail(&self, request_id: &str, listener_id: &ListenerKey) {
        let removed = self
            .requests
            .remove_if(request_id, |_, s| &s.listener_id == listener_id);
        self.release(usize::from(removed.is_some()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(channel: u64) -> ListenerKey {
        ListenerKey {
            node: NodeId::new("a").unwrap(),
            channel,
        }
    }

    fn accept(channel: u64) -> Pending {
        Pending::Accept {
            listener_id: key(channel),
            tx: oneshot::channel().0,
        }
    }

    #[test]
    fn the_bound_holds_under_contention_and_every_way_out_gives_its_place_back() {
        let map = Arc::new(Rendezvous::new(64, NodeId::new("a").unwrap()));
        let guards: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let map = Arc::clone(&map);
                    s.spawn(move || {
                        (0..32)
                            .filter_map(|_| map.add_address(accept(1)).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert_eq!(guards.len(), 64, "256 tries, 64 places");
        assert_eq!(map.len(), 64);
        assert!(
            guards[0].key().starts_with("a."),
            "capabilities name their node"
        );
        assert!(map.take_address(guards[0].key()).is_some());
        map.drop_listener(&key(1));
        assert_eq!(map.len(), 0);
        drop(guards);
        // Every place is free again: guards of entries already gone give back nothing.
        let again: Vec<_> = (0..64)
            .filter_map(|_| map.add_address(accept(2)).ok())
            .collect();
        assert_eq!(again.len(), 64);
        assert!(map.add_address(accept(2)).is_err());
    }
}
