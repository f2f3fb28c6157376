//! `[limits]`: every bound of the broker, with its default and its check. Each key is one
//! entry of a table (`limits`), which is why that function is long: splitting it would
//! scatter the table.

use std::time::Duration;

use serde::Deserialize;

/// Every bound the broker enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Life of a single-use rendezvous address.
    pub accept_timeout: Duration,
    /// A sender gets 504 when no response starts within this, or a response body idles this long.
    pub http_request_timeout: Duration,
    /// Concurrent listeners per hybrid connection.
    pub max_listeners_per_hc: usize,
    /// Interval of broker pings on control channels; two silent intervals close the channel.
    pub ping_interval: Duration,
    /// How long after its token expires a control channel may stay open without renewal.
    pub token_grace: Duration,
    /// Rendezvous entries waiting for a listener, over all hybrid connections.
    pub max_pending_rendezvous: usize,
    /// Largest JSON control message accepted from a listener.
    pub max_control_message_bytes: usize,
    /// Read buffer per relayed socket direction; bounds relay memory per connection.
    pub relay_buffer_bytes: usize,
    /// What that buffer grows to once a transfer keeps filling it (bulk data costs fewer
    /// system calls); interactive and idle connections keep `relay_buffer_bytes`.
    pub relay_buffer_max_bytes: usize,
    /// Queue of control messages to one listener. A sender that finds it full waits, within
    /// its deadline, for room; past that it gets 503 with `Retry-After`.
    pub control_queue: usize,
    /// Client connections (TCP, before any request) the broker holds at once; past it new
    /// ones are closed at once and counted (`relay_connections_refused_total`).
    pub max_connections: usize,
    /// Relayed WebSocket connections at once, over all hybrid connections; past it a sender
    /// gets 503 with `Retry-After` (`relay_relays_refused_total`).
    pub max_relays: usize,
    /// Time allowed for graceful shutdown before connections are cut.
    pub shutdown_drain: Duration,
    /// Failed authentications per client and credential within a minute before throttling.
    pub auth_failures_per_minute: u32,
    /// Standby sockets one of our listeners may keep open in advance, so a sender is paired
    /// without the listener dialling back; 0 turns the extension off.
    pub standby_per_listener: usize,
    /// Idle standby sockets are retired (and replaced by the listener) after about this long.
    pub standby_max_age: Duration,
    /// Life of a browser session cookie after its last use; it never outlives the token that
    /// opened it.
    pub browser_session: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            accept_timeout: Duration::from_secs(30),
            http_request_timeout: Duration::from_secs(60),
            max_listeners_per_hc: relay_core::limits::DEFAULT_MAX_LISTENERS_PER_HC,
            ping_interval: Duration::from_secs(30),
            token_grace: Duration::from_secs(300),
            max_pending_rendezvous: 10_000,
            max_control_message_bytes: relay_core::limits::MAX_CONTROL_MESSAGE_BYTES,
            relay_buffer_bytes: 64 * 1024,
            relay_buffer_max_bytes: 256 * 1024,
            control_queue: 256,
            max_connections: 20_000,
            max_relays: 10_000,
            shutdown_drain: Duration::from_secs(10),
            auth_failures_per_minute: 20,
            standby_per_listener: 4,
            standby_max_age: Duration::from_secs(300),
            browser_session: Duration::from_secs(900),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    accept_timeout_secs: Option<f64>,
    http_request_timeout_secs: Option<f64>,
    max_listeners_per_hc: Option<usize>,
    ping_interval_secs: Option<f64>,
    token_grace_secs: Option<f64>,
    max_pending_rendezvous: Option<usize>,
    max_control_message_bytes: Option<usize>,
    relay_buffer_bytes: Option<usize>,
    relay_buffer_max_bytes: Option<usize>,
    shutdown_drain_secs: Option<f64>,
    auth_failures_per_minute: Option<u32>,
    standby_per_listener: Option<usize>,
    standby_max_age_secs: Option<f64>,
    browser_session_secs: Option<f64>,
    control_queue: Option<usize>,
    max_connections: Option<usize>,
    max_relays: Option<usize>,
}

/// `[limits]`, each key checked against its rule. Long because it is a table: one entry per
/// key, each naming its key in the error, and splitting it would only scatter the table.
pub(super) fn limits(raw: &RawLimits) -> Result<Limits, String> {
    let d = Limits::default();
    let secs = |v: Option<f64>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "{name} = {s}: must be a positive number of seconds"
        )),
    };
    let count = |v: Option<usize>, name: &str, default: usize, min: usize| match v {
        None => Ok(default),
        Some(n) if n >= min => Ok(n),
        Some(n) => Err(format!("{name} = {n}: must be at least {min}")),
    };
    let relay_buffer_bytes = count(
        raw.relay_buffer_bytes,
        "relay_buffer_bytes",
        d.relay_buffer_bytes,
        1024,
    )?;
    Ok(Limits {
        accept_timeout: secs(
            raw.accept_timeout_secs,
            "accept_timeout_secs",
            d.accept_timeout,
        )?,
        http_request_timeout: secs(
            raw.http_request_timeout_secs,
            "http_request_timeout_secs",
            d.http_request_timeout,
        )?,
        max_listeners_per_hc: count(
            raw.max_listeners_per_hc,
            "max_listeners_per_hc",
            d.max_listeners_per_hc,
            1,
        )?,
        ping_interval: secs(
            raw.ping_interval_secs,
            "ping_interval_secs",
            d.ping_interval,
        )?,
        token_grace: if raw.token_grace_secs == Some(0.0) {
            Duration::ZERO
        } else {
            secs(raw.token_grace_secs, "token_grace_secs", d.token_grace)?
        },
        max_pending_rendezvous: count(
            raw.max_pending_rendezvous,
            "max_pending_rendezvous",
            d.max_pending_rendezvous,
            1,
        )?,
        max_control_message_bytes: count(
            raw.max_control_message_bytes,
            "max_control_message_bytes",
            d.max_control_message_bytes,
            1024,
        )?,
        relay_buffer_bytes,
        relay_buffer_max_bytes: count(
            raw.relay_buffer_max_bytes,
            "relay_buffer_max_bytes",
            d.relay_buffer_max_bytes.max(relay_buffer_bytes),
            relay_buffer_bytes,
        )?,
        control_queue: count(raw.control_queue, "control_queue", d.control_queue, 1)?,
        max_connections: count(raw.max_connections, "max_connections", d.max_connections, 1)?,
        max_relays: count(raw.max_relays, "max_relays", d.max_relays, 1)?,
        shutdown_drain: secs(
            raw.shutdown_drain_secs,
            "shutdown_drain_secs",
            d.shutdown_drain,
        )?,
        auth_failures_per_minute: raw
            .auth_failures_per_minute
            .unwrap_or(d.auth_failures_per_minute)
            .max(1),
        standby_per_listener: match raw.standby_per_listener {
            Some(n) if n > relay_core::standby::MAX_STANDBY => {
                return Err(format!(
                    "standby_per_listener = {n}: must be at most {}",
                    relay_core::standby::MAX_STANDBY
                ));
            }
            n => n.unwrap_or(d.standby_per_listener),
        },
        standby_max_age: secs(
            raw.standby_max_age_secs,
            "standby_max_age_secs",
            d.standby_max_age,
        )?,
        browser_session: secs(
            raw.browser_session_secs,
            "browser_session_secs",
            d.browser_session,
        )?,
    })
}
