//! The interconnect over NATS: a notice for a channel on another node is a request on that
//! node's own subject (`relay.node.<node>.deliver`), answered `queued`, `gone` or `full`;
//! an inline response is published to the waiting node; a rendezvous socket for another
//! node's capability is spliced to it over the peer port.
//!
//! Plain per-node subscriptions, never queue groups: the spec measured queue groups losing
//! about half the requests while one server hung.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::directory::ClusterDirectory;
use super::peer::{self, PeerKey};
use super::presence::Health;
use super::wire::{self, Channel, Deliver, Respond};
use crate::seams::interconnect::{
    Delivery, Forwarded, Inbox, InlineResponse, Interconnect, Notice, Undelivered,
};
use crate::seams::node::{ListenerKey, NodeId};

/// Time on top of the receiver's wait for the reply to come back.
const REPLY_MARGIN: Duration = Duration::from_millis(500);
/// Longest the receiving node waits for room in a channel's queue: a hung node then costs a
/// sender [`MAX_QUEUE_WAIT`] + [`REPLY_MARGIN`], not the whole accept timeout.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// Longest a notice waits for this node's NATS connection to come back before it retries.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// The cluster's interconnect.
pub(crate) struct NatsInterconnect(pub(super) Arc<Inner>);

/// What its tasks share.
pub(crate) struct Inner {
    pub(super) client: async_nats::Client,
    pub(super) me: NodeId,
    pub(super) directory: Arc<ClusterDirectory>,
    pub(super) key: PeerKey,
    pub(super) health: Arc<Health>,
    pub(super) presence: Arc<super::presence::Presence>,
    pub(super) inbox: OnceLock<Weak<dyn Inbox>>,
}

impl Inner {
    fn inbox(&self) -> Option<Arc<dyn Inbox>> {
        self.inbox.get()?.upgrade()
    }

    fn publish(&self, subject: String, payload: Bytes) {
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::debug!(error = %e, "publish failed");
            }
        });
    }

    /// Serves this node's subjects for `inbox`.
    fn serve(self: &Arc<Self>, inbox: &Weak<dyn Inbox>) {
        let subjects = [
            wire::node_subject(&self.me, "deliver"),
            wire::node_subject(&self.me, "respond"),
            wire::node_subject(&self.me, "replaced"),
            wire::GONE.to_owned(),
        ];
        for subject in subjects {
            let (me, inbox) = (Arc::clone(self), inbox.clone());
            tokio::spawn(async move {
                let Ok(mut messages) = me.client.subscribe(subject.clone()).await else {
                    tracing::error!(subject, "cannot subscribe");
                    return;
                };
                while let Some(msg) = messages.next().await {
                    let Some(inbox) = inbox.upgrade() else { return };
                    me.take(&subject, msg, inbox);
                }
            });
        }
    }

    /// One message on one of this node's subjects.
    fn take(&self, subject: &str, msg: async_nats::Message, inbox: Arc<dyn Inbox>) {
        if subject.ends_with(".deliver") {
            let Some((d, body)) = wire::decode::<Deliver>(&msg.payload) else {
                return;
            };
            let notice = if d.with_body {
                Notice::TextWithBody(d.text, body)
            } else {
                Notice::Text(d.text)
            };
            let deadline = tokio::time::Instant::now() + Duration::from_millis(d.wait_ms);
            let client = self.client.clone();
            tokio::spawn(async move {
                let answer = match inbox.deliver(d.channel, notice, deadline).await {
                    Ok(()) => wire::QUEUED,
                    Err(Undelivered::Gone) => wire::GONE_REPLY,
                    Err(Undelivered::Full) => wire::FULL_REPLY,
                };
                if let Some(reply) = msg.reply {
                    let _ = client.publish(reply, Bytes::from_static(answer)).await;
                }
            });
        } else if subject.ends_with(".respond") {
            let Some((r, body)) = wire::decode::<Respond>(&msg.payload) else {
                return;
            };
            let Ok(node) = NodeId::new(&r.from_node) else {
                return;
            };
            let from = ListenerKey {
                node,
                channel: r.from_channel,
            };
            let response = InlineResponse {
                head: r.head,
                body: r.with_body.then_some(body),
            };
            inbox.respond(&r.request_id, &from, response);
        } else if let Ok(c) = serde_json::from_slice::<Channel>(&msg.payload) {
            if subject.ends_with(".replaced") {
                inbox.replaced(c.channel);
            } else if let Ok(node) = NodeId::new(&c.node)
                && node != self.me
            {
                inbox.listener_gone(&ListenerKey {
                    node,
                    channel: c.channel,
                });
            }
        }
    }
}

/// Waits, until `deadline`, for the client to be connected again after it had been or may
/// have been cut off; whether it is.
async fn reconnected(client: &async_nats::Client, deadline: tokio::time::Instant) -> bool {
    // The state lags the broken socket: give it a moment to notice first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        if tokio::time::Instant::now() + Duration::from_millis(20) > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Interconnect for NatsInterconnect {
    fn join(&self, node: NodeId, inbox: Weak<dyn Inbox>) {
        debug_assert_eq!(node, self.0.me, "one node per cluster interconnect");
        if self.0.inbox.set(inbox.clone()).is_err() {
            tracing::error!("a cluster interconnect serves one broker");
            return;
        }
        self.0.serve(&inbox);
        Arc::clone(&self.0.presence).spawn(inbox);
    }

    fn deliver(
        &self,
        to: &ListenerKey,
        notice: Notice,
        deadline: tokio::time::Instant,
    ) -> Delivery {
        if to.node == self.0.me {
            return match self.0.inbox() {
                Some(inbox) => inbox.deliver(to.channel, notice, deadline),
                None => Box::pin(async { Err(Undelivered::Gone) }),
            };
        }
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(MAX_QUEUE_WAIT);
        let (text, body) = match notice {
            Notice::Text(text) => (text, None),
            Notice::TextWithBody(text, body) => (text, Some(body)),
        };
        let head = Deliver {
            channel: to.channel,
            text,
            wait_ms: wait.as_millis() as u64,
            with_body: body.is_some(),
        };
        let payload = wire::encode(&head, body.as_deref());
        let subject = wire::node_subject(&to.node, "deliver");
        let client = self.0.client.clone();
        let directory = Arc::clone(&self.0.directory);
        let node = to.node.clone();
        Box::pin(async move {
            let request = |payload| {
                async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(wait + REPLY_MARGIN))
            };
            let mut result = client
                .send_request(subject.clone(), request(payload.clone()))
                .await;
            // This node's NATS connection broke under the request (its server died or
            // hung): once it is back on another server, one more try. The listener cannot
            // have acted on a notice that got no `queued`: the capability it names dies
            // with this attempt unless the retry succeeds. Not when the other node fell
            // silent meanwhile (hung, or cut off): it would not answer the retry either,
            // and the caller picks another listener.
            if let Err(e) = &result
                && e.kind() != async_nats::RequestErrorKind::NoResponders
                && directory.peer_of(&node).is_some()
                && reconnected(&client, tokio::time::Instant::now() + RECONNECT_WAIT).await
            {
                result = client.send_request(subject, request(payload)).await;
            }
            match result {
                Ok(reply) if &reply.payload[..] == wire::QUEUED => Ok(()),
                Ok(reply) if &reply.payload[..] == wire::FULL_REPLY => Err(Undelivered::Full),
                Ok(_) => Err(Undelivered::Gone),
                // No responders (the node is gone) or still no answer: nothing the sender
                // can wait for, and the caller may try another listener.
                Err(e) => {
                    tracing::debug!(error = %e, "notice to another node failed");
                    Err(Undelivered::Gone)
                }
            }
        })
    }

    fn respond(
        &self,
        to: &NodeId,
        request_id: &str,
        from: &ListenerKey,
        response: InlineResponse,
    ) -> bool {
        let head = Respond {
            request_id: request_id.to_owned(),
            from_node: from.node.to_string(),
            from_channel: from.channel,
            head: response.head,
            with_body: response.body.is_some(),
        };
        let payload = wire::encode(&head, response.body.as_deref());
        // Whether it was pending is the waiting node's to judge; this one only carries it.
        self.0.publish(wire::node_subject(to, "respond"), payload);
        true
    }

    fn listener_gone(&self, key: &ListenerKey) {
        if let Some(inbox) = self.0.inbox() {
            inbox.listener_gone(key);
        }
        let c = Channel {
            node: key.node.to_string(),
            channel: key.channel,
        };
        let payload = serde_json::to_vec(&c).expect("keys serialise");
        self.0.publish(wire::GONE.to_owned(), payload.into());
    }

    fn replaced(&self, key: &ListenerKey) {
        if key.node == self.0.me {
            if let Some(inbox) = self.0.inbox() {
                inbox.replaced(key.channel);
            }
            return;
        }
        let c = Channel {
            node: key.node.to_string(),
            channel: key.channel,
        };
        let payload = serde_json::to_vec(&c).expect("keys serialise");
        self.0
            .publish(wire::node_subject(&key.node, "replaced"), payload.into());
    }

    fn forward(&self, to: &NodeId, req: axum::extract::Request) -> Forwarded {
        let (key, me) = (self.0.key.clone(), self.0.me.clone());
        let (directory, to) = (Arc::clone(&self.0.directory), to.clone());
        Box::pin(async move {
            // A node that has just started has not heard every beat yet: give the owner
            // up to one silence bound to show up before the socket is refused.
            let deadline = tokio::time::Instant::now() + super::directory::DEAD_AFTER;
            let peer = loop {
                if let Some(peer) = directory.peer_of(&to) {
                    break peer;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(node = %to, "a rendezvous socket for a node this one does not know");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            peer::splice(peer, &key, &me, req).await
        })
    }

    fn ready(&self) -> Result<(), String> {
        self.0.health.ready()
    }

    fn leave(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.0.presence.leave())
    }
}
