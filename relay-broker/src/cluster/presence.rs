//! Heartbeats: every node publishes its beat on `relay.presence.<node>` every [`BEAT`] and
//! at once when its listener set changes; every node takes in the others', asks for a set it
//! missed, drops a node silent for [`DEAD_AFTER`], and watches its own beat come back. A
//! node that stops hearing itself has lost NATS: after [`FENCE_AFTER`] it fences itself.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::directory::{BEAT, ClusterDirectory};
use super::wire::{self, Beat, Snapshot};
use crate::seams::interconnect::Inbox;
use crate::seams::node::NodeId;

/// Silence of this node's own beat after which it fences itself.
pub const FENCE_AFTER: Duration = Duration::from_millis(750);
/// Silence of this node's own beat after which it leaves its NATS server for another: a
/// hung server keeps the TCP connection open, and the client's own pings would take about
/// three intervals to notice, past [`FENCE_AFTER`].
const SWITCH_AFTER: Duration = Duration::from_millis(400);
/// At most one such switch in this long (a reconnect costs the requests in flight).
const SWITCH_EVERY: Duration = Duration::from_secs(2);
/// Every this many beats carry the whole set, changed or not (a lost set heals).
const FULL_EVERY: u64 = 8;
/// A change waits this long for more before it is published, so a burst is one beat.
const COALESCE: Duration = Duration::from_millis(10);
/// How long a node hears its beats before it is ready, joining or back from a fence: every
/// other node beats in that time, and the sets it did not carry are asked for and in (an
/// ask waits two beats). Ready at once, a fresh node would answer 404 for listeners it has
/// not heard of yet.
const WARM_UP: Duration = Duration::from_millis(750);
/// How long a leaving node tries to say so.
const LEAVE_WITHIN: Duration = Duration::from_millis(500);
/// How often silence and fencing are checked.
const WATCH: Duration = Duration::from_millis(50);

/// Whether this node is in its cluster.
#[derive(Debug, Default)]
pub(super) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// When this node last heard its own beat.
    echo: Option<Instant>,
    /// Since when it has heard its beats without a silence of [`FENCE_AFTER`].
    since: Option<Instant>,
    fenced: bool,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn echo(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        if s.echo.is_none_or(|at| now.duration_since(at) > FENCE_AFTER) {
            s.since = Some(now);
        }
        s.echo = Some(now);
    }

    /// `Ok` while this node hears its own beats and has heard them for [`WARM_UP`].
    pub(super) fn ready(&self) -> Result<(), String> {
        let s = self.lock();
        match (s.echo, s.since) {
            (Some(at), _) if at.elapsed() > FENCE_AFTER => Err(format!(
                "NATS has not carried this node's heartbeat for {} ms",
                at.elapsed().as_millis()
            )),
            (Some(_), Some(since)) if since.elapsed() >= WARM_UP => Ok(()),
            (Some(_), _) => Err("joining the cluster: learning the other nodes' listeners".into()),
            (None, _) => {
                Err("not yet in the cluster: NATS has not carried this node's heartbeat".into())
            }
        }
    }

    /// Whether this node has not heard its own beat for `silence`, having heard it before.
    fn silent_for(&self, silence: Duration) -> bool {
        self.lock().echo.is_some_and(|at| at.elapsed() > silence)
    }

    /// The new fencing state when it changed: fenced once a node that was in stops hearing
    /// itself, unfenced when it hears itself again.
    fn transition(&self) -> Option<bool> {
        let mut s = self.lock();
        let silent = s.echo.is_some_and(|at| at.elapsed() > FENCE_AFTER);
        (silent != s.fenced).then(|| {
            s.fenced = silent;
            silent
        })
    }
}

/// What the presence tasks share.
pub(super) struct Presence {
    pub(super) client: async_nats::Client,
    pub(super) directory: Arc<ClusterDirectory>,
    pub(super) me: NodeId,
    pub(super) epoch: u64,
    pub(super) peer: std::net::SocketAddr,
    pub(super) health: Arc<Health>,
    /// Cancelled when the broker is gone: the tasks end.
    pub(super) stop: tokio_util::sync::CancellationToken,
}

impl Presence {
    /// Starts the beat, the listening to beats, the answering of set requests, and the
    /// watch; they end with the NATS client or the node.
    pub(super) fn spawn(self: Arc<Self>, inbox: Weak<dyn Inbox>) {
        tokio::spawn(Arc::clone(&self).beat());
        tokio::spawn(Arc::clone(&self).hear());
        tokio::spawn(Arc::clone(&self).answer());
        tokio::spawn(self.watch(inbox));
    }

    /// Publishes this node's beat (queued on the client; `flush` to wait for the wire).
    async fn publish(
        &self,
        version: u64,
        listeners: Option<Vec<wire::WireListener>>,
        leaving: bool,
    ) -> Result<(), async_nats::PublishError> {
        let beat = Beat {
            node: self.me.to_string(),
            epoch: self.epoch,
            version,
            peer: self.peer,
            listeners,
            leaving,
        };
        let payload = serde_json::to_vec(&beat).expect("beats serialise");
        let subject = format!("{}.{}", wire::PRESENCE, self.me);
        self.client.publish(subject, payload.into()).await
    }

    async fn beat(self: Arc<Self>) {
        let mut sent = None;
        for n in 0u64.. {
            tokio::select! {
                () = tokio::time::sleep(BEAT) => {}
                () = self.directory.changed() => tokio::time::sleep(COALESCE).await,
                () = self.stop.cancelled() => return,
            }
            let (version, listeners) = self.directory.own();
            let full = sent != Some(version) || n % FULL_EVERY == 0;
            let listeners = full.then_some(listeners);
            if self.publish(version, listeners, false).await.is_ok() {
                sent = Some(version);
            }
        }
    }

    /// The last beat, on shutdown: the beats stop, and the others drop this node and its
    /// listeners now instead of after [`DEAD_AFTER`](super::DEAD_AFTER) of silence.
    pub(super) async fn leave(&self) {
        self.stop.cancel();
        let sent = tokio::time::timeout(LEAVE_WITHIN, async {
            self.publish(u64::MAX, Some(Vec::new()), true).await.ok()?;
            self.client.flush().await.ok()
        })
        .await;
        if !matches!(sent, Ok(Some(()))) {
            tracing::warn!(
                "could not tell the cluster this node is leaving; it drops the node when its beats stop"
            );
        }
    }

    async fn hear(self: Arc<Self>) {
        let Ok(mut beats) = self.client.subscribe(format!("{}.*", wire::PRESENCE)).await else {
            tracing::error!("cannot subscribe to presence");
            return;
        };
        while let Some(msg) = self.next(&mut beats).await {
            let Ok(beat) = serde_json::from_slice::<Beat>(&msg.payload) else {
                continue;
            };
            if beat.node == self.me.as_str() {
                if beat.epoch == self.epoch {
                    self.health.echo();
                }
                continue;
            }
            let node = beat.node.clone();
            if self.directory.heard(beat) {
                tokio::spawn(Arc::clone(&self).ask(node));
            }
        }
    }

    /// Asks a node for the set its beat did not carry.
    async fn ask(self: Arc<Self>, node: String) {
        let Ok(id) = NodeId::new(&node) else { return };
        let subject = wire::node_subject(&id, "presence");
        let request = async_nats::Request::new().timeout(Some(BEAT * 2));
        if let Ok(reply) = self.client.send_request(subject, request).await
            && let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&reply.payload)
        {
            self.directory.snapshot(&id, snapshot);
        }
    }

    async fn answer(self: Arc<Self>) {
        let subject = wire::node_subject(&self.me, "presence");
        let Ok(mut asks) = self.client.subscribe(subject).await else {
            return;
        };
        while let Some(msg) = self.next(&mut asks).await {
            let Some(reply) = msg.reply else { continue };
            let (version, listeners) = self.directory.own();
            let snapshot = Snapshot {
                epoch: self.epoch,
                version,
                listeners,
            };
            let payload = serde_json::to_vec(&snapshot).expect("sets serialise");
            let _ = self.client.publish(reply, payload.into()).await;
        }
    }

    /// The next message, or `None` once the broker is gone.
    async fn next(&self, subscriber: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
        tokio::select! {
            msg = subscriber.next() => msg,
            () = self.stop.cancelled() => None,
        }
    }

    async fn watch(self: Arc<Self>, inbox: Weak<dyn Inbox>) {
        let mut tick = tokio::time::interval(WATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut switched: Option<Instant> = None;
        loop {
            tick.tick().await;
            let Some(inbox) = inbox.upgrade() else {
                self.stop.cancel();
                return;
            };
            for key in self.directory.sweep() {
                inbox.listener_gone(&key);
            }
            if self.health.silent_for(SWITCH_AFTER)
                && switched.is_none_or(|at| at.elapsed() > SWITCH_EVERY)
            {
                // Most often another server answers before the fence is due.
                switched = Some(Instant::now());
                tracing::warn!("own heartbeat silent: reconnecting to another NATS server");
                let client = self.client.clone();
                tokio::spawn(async move { client.force_reconnect().await });
            }
            if let Some(fenced) = self.health.transition() {
                inbox.fence(fenced);
            }
        }
    }
}
