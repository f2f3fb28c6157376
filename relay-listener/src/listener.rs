//! The control channel: connect, keep alive, renew the token, dispatch `accept` and
//! `request` notices, and reconnect forever with jittered backoff when anything fails.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use relay_core::control::{self, ListenerCommand};
use relay_core::frame::{OpCode, close_code};
use relay_core::limits::MAX_INLINE_BODY_MESSAGE_BYTES;
use relay_io::client::{ConnectOptions, MaybeTls};
use relay_io::{Message, WsReader, WsWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::channel::{Out, incoming};
use crate::handler::{Answer, Handler};
use crate::identity::CertificateIdentity;
use crate::token::{TokenSource, unix_now};
use crate::work::Work;
use crate::{ListenerError, http, standby};

mod loops;

/// How a listener proves itself on its control channel.
#[derive(Clone)]
pub enum Credential {
    /// A SAS token in `ServiceBusAuthorization`, renewed with `renewToken` (Azure's way).
    Token(Arc<dyn TokenSource>),
    /// A client certificate issued at registration, presented in the TLS handshake. After a
    /// renewal the listener reconnects with the new certificate.
    Certificate(Arc<CertificateIdentity>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token"),
            Self::Certificate(identity) => write!(f, "Certificate({})", identity.listener_id()),
        }
    }
}

/// How to reach the broker.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Broker base URL: `ws://host:port`, `wss://host:port` (or `sb://`, `http(s)://`).
    pub endpoint: String,
    /// The hybrid connection to listen on.
    pub hc: String,
    /// How the listener proves itself.
    pub credential: Credential,
    /// TLS client configuration for `wss://` (a private CA goes here).
    pub tls: Option<Arc<relay_io::rustls::ClientConfig>>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Ping interval; a link silent for three intervals is declared dead.
    pub keepalive: Duration,
    /// Bound on each connect attempt.
    pub connect_timeout: Duration,
    /// Proxies to reach the broker through; `None` connects directly.
    pub proxy: Option<Arc<relay_io::proxy::ProxyRules>>,
    /// A name for this agent that survives restarts: the broker lets a new control channel
    /// with the same name and credential replace the old one at once.
    pub instance: Option<String>,
    /// Standby sockets to keep open in advance when the broker offers them (our broker's
    /// extension; others ignore it), so a sender is paired without dialling back; 0 = none.
    pub standby: usize,
    /// Connections and requests this listener runs at once; past it senders get 503 at
    /// once (the agent's own `max_connections` is usually the lower bound).
    pub max_in_flight: usize,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("endpoint", &self.endpoint)
            .field("hc", &self.hc)
            .finish_non_exhaustive()
    }
}

impl ListenerConfig {
    /// A configuration with default keep-alive (10 s), backoff (0.5 s to 30 s) and timeouts.
    pub fn new(
        endpoint: impl Into<String>,
        hc: impl Into<String>,
        token: Arc<dyn TokenSource>,
    ) -> Self {
        Self {
            endpoint: relay_core::connection_string::ws_base(&endpoint.into()),
            hc: hc.into().trim_matches('/').to_owned(),
            credential: Credential::Token(token),
            tls: None,
            backoff: Backoff::default(),
            keepalive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            proxy: None,
            instance: None,
            standby: crate::standby::DEFAULT_STANDBY,
            max_in_flight: crate::work::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// A certificate-authenticated listener (needs a `wss://` endpoint). `extra_ca` is a
    /// private root for the broker's server certificate.
    pub fn with_certificate(
        endpoint: impl Into<String>,
        hc: impl Into<String>,
        identity: Arc<CertificateIdentity>,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Self, ListenerError> {
        let tls = identity.client_config(extra_ca)?;
        let mut config = Self::new(endpoint, hc, Arc::new(crate::StaticToken(String::new())));
        config.credential = Credential::Certificate(identity);
        config.tls = Some(tls);
        Ok(config)
    }

    fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            tls: self.tls.clone(),
            timeout: self.connect_timeout,
            proxy: self.proxy.clone(),
            ..ConnectOptions::default()
        }
    }

    /// The token audience: `http(s)://host:port/hc`, as the Node clients build it.
    fn audience(&self) -> String {
        format!(
            "{}/{}",
            relay_core::connection_string::http_base(&self.endpoint),
            self.hc
        )
    }
}

/// Where a listener stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Trying to connect.
    Connecting {
        /// Failed attempts so far.
        attempt: u32,
        /// Why the last attempt or session failed.
        last_error: Option<String>,
        /// When the next attempt starts.
        next_retry: Option<SystemTime>,
    },
    /// The control channel is up.
    Connected,
    /// The broker revoked this listener (or disabled its person); it keeps retrying, in case
    /// the person is enabled again.
    Revoked {
        /// The broker's words.
        last_error: String,
        /// When the next attempt starts.
        next_retry: SystemTime,
    },
    /// `run` returned.
    Stopped,
}

/// A Hybrid Connections listener.
#[derive(Debug)]
pub struct Listener {
    config: ListenerConfig,
    status: watch::Sender<Status>,
    /// What it runs for senders, bounded.
    work: Work,
}

type Reader = WsReader<ReadHalf<MaybeTls>>;
type Writer = WsWriter<WriteHalf<MaybeTls>>;

impl Listener {
    /// A listener; nothing happens until [`Listener::run`].
    #[must_use]
    pub fn new(config: ListenerConfig) -> Self {
        let (status, _) = watch::channel(Status::Connecting {
            attempt: 0,
            last_error: None,
            next_retry: None,
        });
        let work = Work::new(config.max_in_flight);
        Self {
            config,
            status,
            work,
        }
    }

    /// Follows the listener's status.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Listens until `shutdown` is cancelled, reconnecting forever.
    pub async fn run<H: Handler>(&self, handler: Arc<H>, shutdown: CancellationToken) {
        let mut backoff = self.config.backoff.clone();
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            let error = match self.session(&handler, &shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if matches!(error, ListenerError::Rotated) {
                tracing::info!("reconnecting with the renewed certificate");
                continue;
            }
            attempt += 1;
            let delay = match error {
                ListenerError::Closed { code: 1001, .. } => backoff.after_going_away(),
                _ => backoff.next_delay(),
            };
            let hint = self.hint(&error);
            tracing::warn!(hc = %self.config.hc, error = %error, hint, retry_in_ms = delay.as_millis() as u64, "listener disconnected");
            // The status shows what to check too.
            let said = if hint.is_empty() {
                error.to_string()
            } else {
                format!("{error} ({hint})")
            };
            let next_retry = SystemTime::now() + delay;
            self.status.send_replace(if error.is_revoked() {
                Status::Revoked {
                    last_error: said,
                    next_retry,
                }
            } else {
                Status::Connecting {
                    attempt,
                    last_error: Some(said),
                    next_retry: Some(next_retry),
                }
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.status.send_replace(Status::Stopped);
    }

    /// What to check, naming the credential where the broker refused it.
    fn hint(&self, error: &ListenerError) -> String {
        let refused = matches!(
            error,
            ListenerError::Ws(relay_io::WsError::Refused { status: 401, .. })
        );
        match (&self.config.credential, refused) {
            (Credential::Token(source), true) => format!(
                "{} is wrong or expired, or lacks Listen on '{}'",
                source.describe(),
                self.config.hc
            ),
            _ => error.hint().unwrap_or_default().to_owned(),
        }
    }

    /// The control channel's options: its credential (a token whose expiry the writer
    /// renews, or a certificate with its renewals and, behind a TLS-ending proxy, a PoP
    /// ticket), its instance, header arrays and the standby request.
    async fn dial_options(
        &self,
    ) -> Result<(ConnectOptions, Option<u64>, Option<watch::Receiver<u64>>), ListenerError> {
        let config = &self.config;
        let mut options = config.connect_options();
        let (expires_at, renewals) = match &config.credential {
            Credential::Token(source) => {
                let token = source.token(&config.audience());
                options
                    .headers
                    .push(("ServiceBusAuthorization".into(), token.value));
                (token.expires_at, None)
            }
            Credential::Certificate(identity) => {
                if identity.uses_proof_of_possession() {
                    let tls = match options.tls.clone() {
                        Some(tls) => tls,
                        None => relay_io::tls::client_config(None)?,
                    };
                    let ticket = identity
                        .login_via(&config.endpoint, &tls, config.proxy.as_deref())
                        .await?;
                    options
                        .headers
                        .push((relay_core::pop::SESSION_HEADER.into(), ticket));
                }
                let mut renewals = identity.renewals();
                renewals.mark_unchanged();
                (None, Some(renewals))
            }
        };
        if let Some(instance) = &config.instance {
            options.headers.push((
                relay_core::control::INSTANCE_HEADER.into(),
                instance.clone(),
            ));
        }
        // Repeated request headers reach the handler as separate lines.
        options
            .headers
            .push((relay_core::control::HEADER_ARRAYS_HEADER.into(), "1".into()));
        if config.standby > 0 {
            options
                .headers
                .push(standby::request_header(config.standby));
        }
        Ok((options, expires_at, renewals))
    }

    /// One control-channel session. `Ok` only on shutdown.
    async fn session<H: Handler>(
        &self,
        handler: &Arc<H>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ListenerError> {
        let config = &self.config;
        let url = format!(
            "{}/$hc/{}?sb-hc-action=listen&sb-hc-id={}",
            config.endpoint,
            relay_core::address::encode_name(&config.hc),
            uuid_like()
        );
        let (mut options, expires_at, renewals) = self.dial_options().await?;
        options.read_buffer = 16 * 1024;
        let connected = relay_io::client::connect(&url, &options).await?;
        tracing::info!(hc = %config.hc, endpoint = %config.endpoint, "listening");
        let grant = standby::Grant::from_headers(&connected.headers, config.standby);
        backoff.reset();
        self.status.send_replace(Status::Connected);
        let (out_tx, out_rx) = mpsc::channel(64);
        let done = CancellationToken::new();
        let ctx = Arc::new(http::Ctx {
            out: out_tx.clone(),
            options: config.connect_options(),
            hc: config.hc.clone(),
        });
        let reader = self.read_loop(connected.reader, handler, &ctx, &out_tx);
        let writer = self.write_loop(
            connected.writer,
            out_rx,
            expires_at,
            renewals,
            shutdown,
            &done,
        );
        let standbys = async {
            if let Some(grant) = grant {
                self.standbys(handler).keep(grant, done.clone()).await;
            }
            // Losing the standbys never ends the session: the control channel still works.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            result = reader => { done.cancel(); result }
            result = writer => result,
            () = standbys => unreachable!("standbys never finish"),
        }
    }

    /// Connections and requests running for senders now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.work.in_flight()
    }

    fn standbys<H: Handler>(&self, handler: &Arc<H>) -> standby::Standbys<H> {
        let config = &self.config;
        standby::Standbys {
            url: format!(
                "{}/$hc/{}?sb-hc-action=standby",
                config.endpoint,
                relay_core::address::encode_name(&config.hc)
            ),
            options: config.connect_options(),
            handler: Arc::clone(handler),
            hc: config.hc.clone(),
            work: self.work.clone(),
        }
    }
}

/// When to renew: at 80% of the token's remaining life, at most hourly checks for tokens
/// without an expiry (which are never renewed).
fn renewal_deadline(expires_at: Option<u64>) -> Instant {
    match expires_at {
        Some(exp) => {
            let left = exp.saturating_sub(unix_now());
            Instant::now() + Duration::from_secs(left.saturating_mul(4) / 5)
        }
        None => Instant::now() + Duration::from_secs(86_400 * 365),
    }
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}
