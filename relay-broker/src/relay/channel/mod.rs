//! One task per listener control channel.
//!
//! The writer half drains the listener's queue (accept and request notices), answers pings,
//! pings the listener every `ping_interval` and closes the channel when two intervals pass in
//! silence (a half-open TCP connection), when the token expires without renewal (1008), or on
//! shutdown (1001). The reader half handles `renewToken` and inline `response` messages, and
//! counts and finally refuses whatever it did not ask for.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use relay_core::control::{ListenerCommand, Response};
use relay_core::frame::{OpCode, close_code};
use relay_core::limits::MAX_INLINE_BODY_MESSAGE_BYTES;
use relay_core::tracking::TrackingId;
use relay_io::{Message, WsError, WsReader, WsWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::RelayError;
use crate::relay::Relay;
use crate::relay::auth::check_renewal;
use crate::relay::local::LocalChannel;
use crate::relay::pool::Pool as StandbyPool;
use crate::relay::rendezvous::{ListenerResponse, ResponseBody};
use crate::relay::resolve::Resolved;
use crate::relay::sessions::{CLOSE_REVOKED, CertSession};

mod read;
#[cfg(test)]
mod tests;
use crate::relay::socket::relay_io_halves;
use crate::seams::directory::{ListenerRef, Refused};
use crate::seams::interconnect::Notice;
use crate::seams::node::ListenerKey;
use crate::store::AuditKind;
use relay_core::keepalive::{ChannelTimers, Due};

/// Read buffer of a control channel: control messages are small, and idle channels many.
const CONTROL_BUFFER: usize = 4 * 1024;
/// Unsolicited messages tolerated before the channel is closed.
const MAX_UNSOLICITED: u32 = 100;
/// How long the reader may wait for the listener's Close after the broker sent one.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Tokio's clock (paused in tests), as the timers take it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// One control channel as its own task holds it: the reference every node may see, and
/// the node-local handles.
struct Held {
    listener: ListenerRef,
    local: Arc<LocalChannel>,
}

/// A control channel about to open.
pub(crate) struct Opening {
    /// Base of its rendezvous addresses.
    pub(crate) base_url: String,
    /// When its token or certificate expires, on tokio's monotonic clock (see ARCHITECTURE.md,
    /// "Time").
    pub(crate) expires: std::time::Instant,
    pub(crate) cert: Option<CertSession>,
    /// `<principal>|<relay-listener-instance>`, when the agent named itself.
    pub(crate) instance: Option<String>,
    /// Standby sockets granted to it, when it asked for some.
    pub(crate) standby: Option<usize>,
    /// Whether it reads repeated headers as arrays.
    pub(crate) header_arrays: bool,
}

/// Registers a listener and starts its control channel once the upgrade completes. Returns
/// its standby pool, whose key and size go in the `101`. In the order the channel's life
/// needs it: handles, directory, task.
pub(crate) fn start(
    shared: &Arc<Relay>,
    upgrade: OnUpgrade,
    r: &Resolved,
    opening: Opening,
) -> Result<Option<Arc<StandbyPool>>, RelayError> {
    let (tx, rx) = mpsc::channel(shared.limits.control_queue);
    let close = shared.shutdown.child_token();
    let pool = opening.standby.map(|n| {
        shared
            .standby
            .open(&shared.node, &r.hc.name, n, close.child_token())
    });
    let cert = opening.cert;
    let handle = Held {
        local: Arc::new(LocalChannel {
            tx,
            close,
            replaced: tokio_util::sync::CancellationToken::new(),
            revoked: cert.as_ref().map(|c| c.revoked.clone()),
        }),
        listener: ListenerRef {
            key: ListenerKey {
                node: shared.node.clone(),
                channel: shared.next_listener_id(),
            },
            hc: r.hc.name.clone().into(),
            base_url: opening.base_url.into(),
            instance: opening.instance.map(Into::into),
            header_arrays: opening.header_arrays,
            cert_listener: cert.as_ref().map(|c| Arc::clone(&c.listener_id)),
            standby: pool.as_ref().map(|p| Arc::from(p.id.as_str())),
        },
    };
    // In the local table before the directory: a sender that picks it must find it.
    shared
        .channels
        .insert(handle.listener.key.channel, Arc::clone(&handle.local));
    let registered = shared
        .directory
        .register(handle.listener.clone(), shared.limits.max_listeners_per_hc);
    match registered {
        Ok(replaced) => shared.close_replaced(&replaced),
        Err(refused) => {
            shared.channels.remove(handle.listener.key.channel);
            if let Some(pool) = &pool {
                shared.standby.close(pool);
            }
            return Err(refusal(shared, &handle.listener, refused));
        }
    }
    let identity = cert
        .as_ref()
        .map_or_else(String::new, |c| c.listener_id.to_string());
    let span = tracing::info_span!("listener", hc = %handle.listener.hc, listener = %handle.listener.key, identity, tracking = %r.tracking);
    let life = Life {
        handle,
        pool: pool.clone(),
        tracking: r.tracking.clone(),
        expires: opening.expires,
        cert,
    };
    let shared = Arc::clone(shared);
    shared
        .tasks
        .clone()
        .spawn(life.run(shared, upgrade, rx).instrument(span));
    Ok(pool)
}

/// Why the directory refused a listener, in the protocol's terms.
fn refusal(shared: &Relay, listener: &ListenerRef, refused: Refused) -> RelayError {
    match refused {
        Refused::InstanceFlapping => {
            let instance = listener.instance.as_deref().unwrap_or_default();
            tracing::warn!(hc = %listener.hc, instance, "two live agents share one instance id and keep replacing each other; refusing the newcomer");
            RelayError::Conflict(format!(
                "another live agent on '{}' has this instance id ({instance}); give each agent its own state directory (a cloned machine or a copied instance-id file shares it)",
                listener.hc
            ))
        }
        _ => RelayError::Forbidden(format!(
            "QuotaExceeded: MaximumListenersPerEndpoint ({}) reached for '{}'",
            shared.limits.max_listeners_per_hc, listener.hc
        )),
    }
}

/// A registered control channel, from its upgrade to its end.
struct Life {
    handle: Held,
    pool: Option<Arc<StandbyPool>>,
    tracking: TrackingId,
    expires: std::time::Instant,
    cert: Option<CertSession>,
}

impl Life {
    /// Runs the channel once the upgrade completes, then takes it out of every table, also
    /// when the upgrade failed.
    async fn run(self, shared: Arc<Relay>, upgrade: OnUpgrade, rx: mpsc::Receiver<Notice>) {
        let who = match &self.cert {
            Some(c) => format!("{} listener {}", self.handle.listener.hc, c.listener_id),
            None => self.handle.listener.hc.to_string(),
        };
        let upgraded = upgrade.await;
        let connected = upgraded.is_ok();
        if let Ok(upgraded) = upgraded {
            tracing::info!("listener connected");
            crate::metrics::count(&shared.counters.listener_connects);
            audit(&shared, AuditKind::ListenerConnect, &who, &self.tracking);
            let (reader, writer) = relay_io_halves(upgraded, CONTROL_BUFFER);
            let channel = Channel::new(
                &shared,
                &self.handle,
                self.tracking.clone(),
                self.expires,
                self.cert,
            );
            channel.run(reader, writer, rx).await;
            crate::metrics::count(&shared.counters.listener_disconnects);
        }
        shared.channel_ended(&self.handle.listener);
        if let Some(pool) = &self.pool {
            shared.standby.close(pool);
        }
        tracing::info!("listener disconnected");
        if connected {
            audit(&shared, AuditKind::ListenerDisconnect, &who, &self.tracking);
        }
    }
}

/// Records a channel's audit event. One writer appends them in order, so a channel's
/// connect is always written before its disconnect.
fn audit(shared: &Relay, kind: AuditKind, subject: &str, tracking: &TrackingId) {
    shared
        .audit
        .record(kind, subject, &format!("TrackingId:{tracking}"));
}

/// Sent from the reader to the writer.
enum Internal {
    Pong(Vec<u8>),
    Close(u16, String),
}

/// The close reason when this node fenced itself off its cluster.
const CUT_OFF: &str =
    "This broker node is cut off from its cluster; reconnect through another node";

struct Channel<'a> {
    shared: &'a Relay,
    handle: &'a Held,
    tracking: TrackingId,
    /// Pings, silence and the credential's expiry (relay_core's rules), on tokio's clock;
    /// the reader records signs of life and renewals, the writer acts on what is due.
    timers: Mutex<ChannelTimers>,
    /// Set for certificate listeners: the expiry is then the certificate's notAfter, with
    /// no grace, and revocation closes the channel.
    cert: Option<CertSession>,
}

impl<'a> Channel<'a> {
    fn fenced(&self) -> bool {
        self.shared
            .fenced
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn new(
        shared: &'a Relay,
        handle: &'a Held,
        tracking: TrackingId,
        expires: std::time::Instant,
        cert: Option<CertSession>,
    ) -> Self {
        let grace = match cert {
            Some(_) => Duration::ZERO,
            None => shared.limits.token_grace,
        };
        let left = expires.saturating_duration_since(now());
        let timers = ChannelTimers::new(now(), shared.limits.ping_interval, grace, left);
        Self {
            shared,
            handle,
            tracking,
            timers: Mutex::new(timers),
            cert,
        }
    }

    async fn run<R, W>(
        &self,
        reader: WsReader<R>,
        writer: WsWriter<W>,
        queue: mpsc::Receiver<Notice>,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (internal_tx, internal_rx) = mpsc::channel(8);
        let wrote_close = tokio_util::sync::CancellationToken::new();
        let read = async {
            tokio::select! {
                () = self.read_loop(reader, &internal_tx) => {}
                () = async { wrote_close.cancelled().await; tokio::time::sleep(CLOSE_WAIT).await } => {}
            }
            drop(internal_tx);
        };
        let write = async {
            self.write_loop(writer, queue, internal_rx).await;
            // Closing: no new senders are routed here while the Close handshake finishes.
            self.shared
                .directory
                .unregister(&self.handle.listener.hc, &self.handle.listener.key);
            wrote_close.cancel();
        };
        tokio::join!(read, write);
    }

    fn text(&self, why: &str) -> String {
        format!("{why}. TrackingId:{}", self.tracking)
    }

    fn touch(&self) {
        self.timers().heard(now());
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, ChannelTimers> {
        // Plain data, updated whole: a panic elsewhere cannot leave it half-written.
        self.timers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes what is due until the channel closes: each turn picks one [`Step`] (in
    /// priority order: the reader's requests, revocation, shutdown, replacement, queued
    /// notices, timers), then writes it.
    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        mut writer: WsWriter<W>,
        mut queue: mpsc::Receiver<Notice>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        let revoked = async {
            match &self.cert {
                Some(c) => c.revoked.clone().cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        let result: Result<(), WsError> = async {
            loop {
                let due_at = Instant::from_std(self.timers().deadline());
                let step = tokio::select! {
                    biased;
                    msg = internal.recv() => match msg {
                        Some(Internal::Pong(payload)) => Step::Control(OpCode::Pong, payload),
                        Some(Internal::Close(code, reason)) => Step::Close(code, reason),
                        None => return Ok(()),
                    },
                    // A fence ends every certificate session too, and is no revocation:
                    // the listener is told to go elsewhere (1001), not that it is revoked.
                    () = &mut revoked => if self.fenced() {
                        Step::Close(close_code::GOING_AWAY, self.text(CUT_OFF))
                    } else {
                        tracing::info!("listener revoked; closing its control channel");
                        Step::Close(CLOSE_REVOKED, self.text("Listener revoked"))
                    },
                    () = self.handle.local.close.cancelled() => {
                        // Closed for the whole node: it is stopping, or fenced off its cluster.
                        let why = if self.fenced() { CUT_OFF } else { "The broker is shutting down" };
                        Step::Close(close_code::GOING_AWAY, self.text(why))
                    }
                    () = self.handle.local.replaced.cancelled() => {
                        let why = self.text("Replaced by a newer connection of the same listener instance");
                        Step::Close(relay_core::control::CLOSE_REPLACED, why)
                    }
                    Some(out) = queue.recv() => Step::Notice(out),
                    () = tokio::time::sleep_until(due_at) => self.on_time(),
                };
                if step.write(&mut writer).await? {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "control channel write failed");
        }
    }

    /// What the timers ask for now: a ping, or the end of a silent or expired channel.
    fn on_time(&self) -> Step {
        match self.timers().on_time(now()) {
            Due::Nothing => Step::Nothing,
            Due::Ping => Step::Control(OpCode::Ping, Vec::new()),
            Due::Silent => {
                tracing::info!(
                    "listener silent for two ping intervals; dropping half-open channel"
                );
                Step::Close(close_code::GOING_AWAY, self.text("Keep-alive timeout"))
            }
            Due::Expired => {
                let what = if self.cert.is_some() {
                    "Certificate expired"
                } else {
                    "Token expired"
                };
                tracing::info!(what, "credential expired");
                Step::Close(close_code::POLICY_VIOLATION, self.text(what))
            }
        }
    }
}

/// One turn of the control channel's writer.
enum Step {
    Nothing,
    /// A ping or pong.
    Control(OpCode, Vec<u8>),
    Notice(Notice),
    /// The last frame: the channel ends after it.
    Close(u16, String),
}

impl Step {
    /// Writes this step; true when it was the last (a Close).
    async fn write<W: AsyncWrite + Unpin>(self, writer: &mut WsWriter<W>) -> Result<bool, WsError> {
        match self {
            Step::Nothing => {}
            Step::Control(opcode, payload) => {
                writer.send(true, opcode, &payload).await?;
                writer.flush().await?;
            }
            Step::Notice(Notice::Text(text)) => writer.text(&text).await?,
            Step::Notice(Notice::TextWithBody(text, body)) => {
                writer.send(true, OpCode::Text, text.as_bytes()).await?;
                writer.send(true, OpCode::Binary, &body).await?;
                writer.flush().await?;
            }
            Step::Close(code, reason) => {
                writer.close(code, &reason).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}
