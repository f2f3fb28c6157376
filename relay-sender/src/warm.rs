//! A dialler that keeps one connection to the broker open ahead of need (TCP, TLS, proxy
//! tunnel done), so a new relayed connection costs only its upgrade. Port forwarding opens
//! one relayed connection per local connection; this takes the handshakes off each.

use std::sync::{Arc, Weak};
use std::time::Duration;

use relay_io::WsError;
use relay_io::client::{MaybeTls, Target};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{ConnectOptions, Connection, SenderError, connect_url, ws_options};

/// How long a dialled connection waits for its upgrade. The broker closes connections that
/// send no request within 10 s; this stays well inside that.
const MAX_IDLE: Duration = Duration::from_secs(5);

/// Pause after a connection was taken before the next is dialled, so that dialling does not
/// compete with that connection's first round trips.
const REPLACE_PAUSE: Duration = Duration::from_millis(2);

/// Dials `endpoint` ahead of time; [`WarmDialer::connect`] uses the waiting connection.
pub struct WarmDialer {
    endpoint: String,
    target: Target,
    tls: Option<Arc<relay_io::rustls::ClientConfig>>,
    proxy: Option<Arc<relay_io::proxy::ProxyRules>>,
    ready: std::sync::Mutex<Option<(MaybeTls, Instant)>>,
    taken: Arc<Notify>,
}

impl std::fmt::Debug for WarmDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmDialer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl WarmDialer {
    /// Starts keeping a connection to `endpoint` ready; the background task ends when the
    /// dialler is dropped.
    pub fn start(
        endpoint: &str,
        tls: Option<Arc<relay_io::rustls::ClientConfig>>,
        proxy: Option<Arc<relay_io::proxy::ProxyRules>>,
    ) -> Result<Arc<Self>, SenderError> {
        let endpoint = relay_core::connection_string::ws_base(endpoint);
        let target = Target::parse(&endpoint)?;
        let dialer = Arc::new(Self {
            endpoint,
            target,
            tls,
            proxy,
            ready: std::sync::Mutex::new(None),
            taken: Arc::new(Notify::new()),
        });
        tokio::spawn(refill(Arc::downgrade(&dialer)));
        Ok(dialer)
    }

    /// Opens a relayed connection like [`crate::connect`], over the waiting connection when
    /// there is one that is still open.
    pub async fn connect(
        &self,
        hc: &str,
        options: &ConnectOptions,
    ) -> Result<Connection, SenderError> {
        let url = connect_url(&self.endpoint, hc, options);
        let mut ws = ws_options(options);
        ws.tls = ws.tls.or_else(|| self.tls.clone());
        ws.proxy = ws.proxy.or_else(|| self.proxy.clone());
        if let Some(io) = self.take() {
            let upgraded = relay_io::client::connect_over(io, &url, &ws).await;
            // Dial the next one only now: dialling during this upgrade would compete with it.
            self.taken.notify_one();
            match upgraded {
                Ok(c) => return Ok(c.into()),
                // The broker answered: that answer stands.
                Err(e @ WsError::Refused { .. }) => return Err(e.into()),
                // The connection died while it waited: dial afresh.
                Err(e) => tracing::debug!(error = %e, "waiting connection failed; dialling"),
            }
        }
        Ok(relay_io::client::connect(&url, &ws).await?.into())
    }

    fn take(&self) -> Option<MaybeTls> {
        let (mut io, dialled) = self.lock().take()?;
        let usable = dialled.elapsed() < MAX_IDLE && relay_io::client::is_idle_and_open(&mut io);
        if !usable {
            self.taken.notify_one();
        }
        usable.then_some(io)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(MaybeTls, Instant)>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps one fresh connection waiting: dials, then waits until it is taken or too old.
async fn refill(dialer: Weak<WarmDialer>) {
    let Some(taken) = dialer.upgrade().map(|d| Arc::clone(&d.taken)) else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let Some(d) = dialer.upgrade() else { return };
        let dialled = relay_io::client::dial(&d.target, d.tls.as_ref(), d.proxy.as_deref()).await;
        let wait = match dialled {
            Ok(io) => {
                failures = 0;
                *d.lock() = Some((io, Instant::now()));
                MAX_IDLE
            }
            Err(e) => {
                // The broker is down or unreachable: connects dial themselves meanwhile.
                tracing::debug!(error = %e, "dialling ahead failed");
                failures = failures.saturating_add(1);
                Duration::from_millis(250).saturating_mul(1 << failures.min(7))
            }
        };
        // Only a weak reference is held while waiting, so dropping the dialler (and with it
        // the waiting connection) ends this task at its next turn.
        drop(d);
        if tokio::time::timeout(wait, taken.notified()).await.is_ok() {
            tokio::time::sleep(REPLACE_PAUSE).await;
        }
    }
}
