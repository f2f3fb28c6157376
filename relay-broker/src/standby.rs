//! Standby sockets: rendezvous WebSockets our own listeners open before any sender arrives
//! (the protocol is in [`relay_core::standby`]).
//!
//! Each control channel that asked for standbys owns a [`Pool`], found by its key. Each
//! parked socket is one task that owns it: it waits for a [`Job`], for the listener to go
//! away, for its age bound, or for the pool to close with the control channel. A sender's
//! `connect` hands its `accept` text to the newest parked socket; the task writes it, reads
//! the listener's [`StandbyReply`] and hands the socket back for relaying. If the socket
//! fails before the listener answered, the sender falls back to the control channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use hyper::upgrade::OnUpgrade;
use relay_core::frame::close_code;
use relay_core::standby::{MAX_REPLY_BYTES, RECEIPT_DEADLINE, StandbyReply};
use relay_io::Message;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Shared;
use crate::rendezvous::{Arrival, ListenerSocket};
use crate::routes::relay_io_halves;

/// Read buffer of a parked socket; it grows to the relay buffer once it carries data.
const PARKED_BUFFER: usize = 1024;

/// The pools of every control channel with standbys, by key.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    by_key: DashMap<String, Arc<Pool>>,
}

impl Pools {
    /// A new pool of up to `max` sockets for a control channel.
    pub(crate) fn open(&self, hc: &str, max: usize, closed: CancellationToken) -> Arc<Pool> {
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let pool = Arc::new(Pool {
            key: key.clone(),
            hc: hc.to_owned(),
            max,
            parked: std::sync::Mutex::new(Vec::with_capacity(max)),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            closed,
        });
        self.by_key.insert(key, Arc::clone(&pool));
        pool
    }

    /// The pool behind a key, if its control channel still lives.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Pool>> {
        self.by_key.get(key).map(|p| Arc::clone(&p))
    }

    /// Sockets parked over all pools (for metrics).
    pub(crate) fn parked(&self) -> usize {
        self.by_key.iter().map(|p| p.lock().len()).sum()
    }

    /// Closes a pool with its control channel: its parked sockets are closed.
    pub(crate) fn close(&self, pool: &Pool) {
        self.by_key.remove(&pool.key);
        pool.closed.cancel();
    }
}

/// A sender's `accept` for a parked socket, and where its outcome goes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) accept: String,
    /// Hand the socket over once the `accept` is written (early pairing), instead of
    /// waiting for the listener's answer here.
    pub(crate) early: bool,
    pub(crate) outcome: oneshot::Sender<Outcome>,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The listener answered on the socket.
    Answered(Arrival),
    /// Early pairing: the `accept` is written; the receipt and answer are still to come.
    Dispatched(Box<crate::routes::RelayHalves>),
    /// The socket failed before the listener answered: use the control channel.
    Failed,
}

/// The standby sockets of one control channel (opaque outside the broker).
#[derive(Debug)]
pub struct Pool {
    key: String,
    hc: String,
    max: usize,
    /// Parked sockets by id, oldest first; each entry is the way to give it a job.
    parked: std::sync::Mutex<Vec<(u64, oneshot::Sender<Job>)>>,
    /// Sockets upgrading, parked or answering: bounded by `max`.
    open: AtomicUsize,
    next: AtomicU64,
    closed: CancellationToken,
}

/// A reserved place in a pool, released when dropped.
#[derive(Debug)]
pub(crate) struct Place(Arc<Pool>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// The key that standby upgrades present.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The hybrid connection of the control channel.
    pub(crate) fn hc(&self) -> &str {
        &self.hc
    }

    /// How many sockets the listener may keep.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Reserves a place for one more socket; `None` when the pool is full or closed.
    pub(crate) fn reserve(self: &Arc<Self>) -> Option<Place> {
        if self.closed.is_cancelled() {
            return None;
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }

    /// Hands `accept` to the newest parked socket; `None` when none is parked.
    pub(crate) fn dispatch(
        &self,
        accept: String,
        early: bool,
    ) -> Option<oneshot::Receiver<Outcome>> {
        let (outcome, rx) = oneshot::channel();
        let mut job = Job {
            accept,
            early,
            outcome,
        };
        loop {
            let (_, parked) = self.lock().pop()?;
            // A socket whose task has just ended hands the job back: try the next.
            match parked.send(job) {
                Ok(()) => return Some(rx),
                Err(refused) => job = refused,
            }
        }
    }

    fn park(&self) -> (u64, oneshot::Receiver<Job>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().push((id, tx));
        (id, rx)
    }

    /// Drops every parked socket: their tasks close them and the listener opens new ones.
    pub(crate) fn retire_parked(&self) {
        self.lock().clear();
    }

    fn unpark(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, oneshot::Sender<Job>)>> {
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Parks an upgraded standby socket until a sender needs it, then relays the listener's
/// answer. `standby_max_age` bounds how long an idle socket is trusted.
pub(crate) fn spawn(shared: &Arc<Shared>, place: Place, upgrade: OnUpgrade) {
    let shared = Arc::clone(shared);
    let span = tracing::debug_span!("standby", hc = %place.0.hc);
    shared.tasks.clone().spawn(
        async move {
            let Ok(upgraded) = upgrade.await else { return };
            let (mut reader, mut writer) = relay_io_halves(upgraded, PARKED_BUFFER);
            let pool = Arc::clone(&place.0);
            let (id, job) = pool.park();
            // Jitter spreads the replacements of sockets parked together.
            let age = shared.limits.standby_max_age.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.0));
            let job = tokio::select! {
                job = job => job,
                // The listener sends nothing on a parked socket: any frame, Close included,
                // or the end of the stream retires it.
                _ = reader.header() => { pool.unpark(id); return }
                () = tokio::time::sleep(age) => {
                    pool.unpark(id);
                    let _ = writer.close(close_code::NORMAL, "standby retired").await;
                    return;
                }
                () = pool.closed.cancelled() => {
                    pool.unpark(id);
                    let _ = writer.close(close_code::GOING_AWAY, "control channel closed").await;
                    return;
                }
            };
            let Ok(Job {
                accept,
                early,
                mut outcome,
            }) = job
            else {
                // Retired with the rest of the pool after a dead one was found.
                let _ = writer.close(close_code::NORMAL, "standby retired").await;
                return;
            };
            // No longer parked: the listener may open its replacement at once.
            drop(place);
            if writer.text(&accept).await.is_err() {
                let _ = outcome.send(Outcome::Failed);
                return;
            }
            if early {
                let _ = outcome.send(Outcome::Dispatched(Box::new((reader, writer))));
                return;
            }
            let receipt = tokio::time::timeout(RECEIPT_DEADLINE, reader.message(MAX_REPLY_BYTES));
            let received = matches!(
                receipt.await.map(|m| m.ok().flatten()),
                Ok(Some(Message::Text(ref t)))
                    if StandbyReply::decode(t.as_bytes()).is_ok_and(|r| r == StandbyReply::Received {})
            );
            if !received {
                // Silent or broken: its siblings likely went through the same middlebox.
                tracing::debug!("standby did not confirm receipt; using the control channel");
                pool.retire_parked();
                let _ = outcome.send(Outcome::Failed);
                return;
            }
            // Bounded by the sender's own wait, which drops `outcome` at its deadline.
            let reply = tokio::select! {
                reply = reader.message(MAX_REPLY_BYTES) => reply,
                () = outcome.closed() => return,
            };
            let text = match reply {
                Ok(Some(Message::Text(text))) => text,
                Ok(Some(Message::Close(_)) | None) | Err(_) => {
                    let _ = outcome.send(listener_failed("closed its standby socket without an answer"));
                    return;
                }
                Ok(Some(other)) => {
                    tracing::debug!(?other, "unexpected frame before the standby reply");
                    Shared::count(&shared.counters.unsolicited);
                    let _ = outcome.send(listener_failed("sent no answer on its standby socket"));
                    let _ = writer.close(close_code::PROTOCOL_ERROR, "expected a reply").await;
                    return;
                }
            };
            match StandbyReply::decode(text.as_bytes()) {
                Ok(StandbyReply::Accepted { protocol }) => {
                    reader.set_capacity(shared.limits.relay_buffer_bytes);
                    let socket = ListenerSocket::Open(Box::new((reader, writer)));
                    let arrival = Arrival::Accepted { socket, protocol };
                    let _ = outcome.send(Outcome::Answered(arrival));
                }
                Ok(StandbyReply::Rejected {
                    status_code,
                    status_description,
                }) => {
                    let _ = outcome.send(Outcome::Answered(Arrival::Rejected {
                        status: crate::rendezvous::refusal_status(Some(status_code)),
                        description: status_description,
                    }));
                    let _ = writer.close(close_code::NORMAL, "rejected").await;
                }
                Ok(StandbyReply::Received {}) | Err(_) => {
                    tracing::debug!("malformed standby reply");
                    let _ = outcome.send(listener_failed("a malformed answer on its standby socket"));
                    let _ = writer.close(close_code::PROTOCOL_ERROR, "malformed reply").await;
                }
            }
        }
        .instrument(span),
    );
}

/// The listener took the job and then failed it: the sender gets 502, since the listener
/// may already have acted on the `accept` and a second try could act twice.
fn listener_failed(what: &str) -> Outcome {
    Outcome::Answered(Arrival::Rejected {
        status: http::StatusCode::BAD_GATEWAY,
        description: format!("The listener {what}"),
    })
}
