//! Broker metrics: relaxed atomics bumped on the hot paths (cheap enough to stay on while
//! benchmarking), rendered in the Prometheus text format on `/metrics`. Listener counts are
//! read from presence at scrape time rather than tracked twice.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the relayed-HTTP latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Gauges read from the broker's state when scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// Rendezvous addresses and HTTP requests waiting for a listener.
    pub pending_rendezvous: usize,
    /// Standby sockets parked by listeners.
    pub standby_parked: usize,
    /// Tasks the broker tracks (control channels, relays, rendezvous), for leak checks.
    pub tasks: usize,
    /// Certificate listeners with something open (what a revocation would close).
    pub cert_sessions: usize,
    /// Audit events dropped because the writer's queue was full.
    pub audit_dropped: u64,
}

/// Adds one to a counter.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counters and gauges kept by the broker.
#[derive(Debug, Default)]
pub struct Counters {
    /// Listener frames that answered nothing the broker sent.
    pub unsolicited: AtomicU64,
    /// Authentication attempts refused (including throttled ones).
    pub auth_failures: AtomicU64,
    /// Rendezvous addresses that expired unused.
    pub rendezvous_timeouts: AtomicU64,
    /// Listener control channels opened.
    pub listener_connects: AtomicU64,
    /// Listener control channels closed.
    pub listener_disconnects: AtomicU64,
    /// Sender WebSockets paired with a listener.
    pub sender_connects: AtomicU64,
    /// Senders paired over a listener's standby socket.
    pub standby_accepts: AtomicU64,
    /// Senders given an early `101` while their listener decided on a standby socket.
    pub standby_early: AtomicU64,
    /// Senders that found a standby socket dead and went through the control channel.
    pub standby_fallbacks: AtomicU64,
    /// Browser sessions opened by a navigation with a token.
    pub browser_logins: AtomicU64,
    /// Requests and WebSocket upgrades let in by a browser session cookie.
    pub browser_session_requests: AtomicU64,
    /// Session cookies refused because the fetch came from another origin.
    pub browser_cross_origin: AtomicU64,
    /// Relayed WebSocket connections open now.
    pub active_connections: AtomicI64,
    /// Client connections closed at once because `[limits].max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Senders refused with 503 because `[limits].max_relays` connections were relayed.
    pub relays_refused: AtomicU64,
    /// Notices (`accept`, `request`) sent to a listener's channel on another node.
    pub cluster_notices: AtomicU64,
    /// Notices to another node that found no channel or no node, and went to another listener.
    pub cluster_notice_failures: AtomicU64,
    /// Rendezvous sockets for another node's capability, spliced to it over the peer port.
    pub cluster_splices: AtomicU64,
    /// Rendezvous sockets that could not be spliced (node gone, peer port unreachable).
    pub cluster_splice_failures: AtomicU64,
    /// Times this node fenced itself off (lost the cluster).
    pub cluster_fenced: AtomicU64,
    /// Standby sockets of a channel on another node parked here (the pool adopted).
    pub cluster_standby_adopted: AtomicU64,
    /// Connects to a listener on another node served by a standby parked here: no notice,
    /// no splice, no other node on the way.
    pub cluster_standby_connects: AtomicU64,
    /// Payload bytes relayed from senders to listeners (WebSocket and HTTP bodies).
    pub bytes_to_listener: AtomicU64,
    /// Payload bytes relayed from listeners to senders.
    pub bytes_to_sender: AtomicU64,
    /// Relayed HTTP requests answered, by status class (index 1..=5 for 1xx..5xx).
    pub http_responses: [AtomicU64; 6],
    /// Relayed HTTP latency histogram: cumulative counts per bucket, then +Inf.
    http_latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of relayed HTTP latencies, in microseconds.
    http_latency_sum_us: AtomicU64,
}

impl Counters {
    /// Records one answered relayed HTTP request.
    pub fn observe_http(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).min(5);
        self.http_responses[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.http_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.http_latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition (long because it is the table of every
    /// metric, in exposition order); `listeners` is (hybrid connection, count),
    /// the gauges are read at scrape time.
    #[must_use]
    pub fn render(&self, listeners: &[(String, usize)], gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            &mut out,
            "relay_listeners",
            "gauge",
            "Listeners connected, per hybrid connection.",
        );
        for (hc, n) in listeners {
            let _ = writeln!(
                out,
                "relay_listeners{{hybrid_connection=\"{}\"}} {n}",
                escape(hc)
            );
        }
        let simple: [(&str, &str, &str, u64); 29] = [
            (
                "relay_listener_connects_total",
                "counter",
                "Listener control channels opened.",
                get(&self.listener_connects),
            ),
            (
                "relay_listener_disconnects_total",
                "counter",
                "Listener control channels closed.",
                get(&self.listener_disconnects),
            ),
            (
                "relay_sender_connects_total",
                "counter",
                "Sender WebSockets paired with a listener.",
                get(&self.sender_connects),
            ),
            (
                "relay_bytes_to_listener_total",
                "counter",
                "Payload bytes relayed towards listeners.",
                get(&self.bytes_to_listener),
            ),
            (
                "relay_bytes_to_sender_total",
                "counter",
                "Payload bytes relayed towards senders.",
                get(&self.bytes_to_sender),
            ),
            (
                "relay_auth_failures_total",
                "counter",
                "Authentication attempts refused.",
                get(&self.auth_failures),
            ),
            (
                "relay_rendezvous_timeouts_total",
                "counter",
                "Rendezvous addresses that expired unused.",
                get(&self.rendezvous_timeouts),
            ),
            (
                "relay_unsolicited_messages_total",
                "counter",
                "Listener messages that answered nothing.",
                get(&self.unsolicited),
            ),
            (
                "relay_pending_rendezvous",
                "gauge",
                "Rendezvous addresses and requests waiting.",
                gauges.pending_rendezvous as u64,
            ),
            (
                "relay_standby_parked",
                "gauge",
                "Standby sockets of listeners waiting for a sender.",
                gauges.standby_parked as u64,
            ),
            (
                "relay_tasks",
                "gauge",
                "Tasks the broker tracks: control channels, relays, rendezvous.",
                gauges.tasks as u64,
            ),
            (
                "relay_standby_accepts_total",
                "counter",
                "Senders paired over a listener's standby socket.",
                get(&self.standby_accepts),
            ),
            (
                "relay_standby_early_total",
                "counter",
                "Senders given an early 101 while their listener decided on a standby socket.",
                get(&self.standby_early),
            ),
            (
                "relay_standby_fallbacks_total",
                "counter",
                "Senders that found a standby socket dead and used the control channel.",
                get(&self.standby_fallbacks),
            ),
            (
                "relay_browser_logins_total",
                "counter",
                "Browser sessions opened by a navigation with a token.",
                get(&self.browser_logins),
            ),
            (
                "relay_browser_session_requests_total",
                "counter",
                "Requests and WebSocket upgrades let in by a browser session cookie.",
                get(&self.browser_session_requests),
            ),
            (
                "relay_browser_cross_origin_total",
                "counter",
                "Browser session cookies refused on a fetch from another origin.",
                get(&self.browser_cross_origin),
            ),
            (
                "relay_active_connections",
                "gauge",
                "Relayed WebSocket connections open now.",
                self.active_connections.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "relay_connections_refused_total",
                "counter",
                "Client connections closed at once: max_connections were open.",
                get(&self.connections_refused),
            ),
            (
                "relay_relays_refused_total",
                "counter",
                "Senders refused with 503: max_relays connections were relayed.",
                get(&self.relays_refused),
            ),
            (
                "relay_cluster_notices_total",
                "counter",
                "Notices sent to a listener's control channel on another node.",
                get(&self.cluster_notices),
            ),
            (
                "relay_cluster_notice_failures_total",
                "counter",
                "Notices to another node that found no channel there (another listener was tried).",
                get(&self.cluster_notice_failures),
            ),
            (
                "relay_cluster_splices_total",
                "counter",
                "Rendezvous sockets spliced to the node holding their capability.",
                get(&self.cluster_splices),
            ),
            (
                "relay_cluster_splice_failures_total",
                "counter",
                "Rendezvous sockets for another node that could not be spliced to it.",
                get(&self.cluster_splice_failures),
            ),
            (
                "relay_cluster_fenced_total",
                "counter",
                "Times this node fenced itself off after losing the cluster.",
                get(&self.cluster_fenced),
            ),
            (
                "relay_cluster_standby_adopted_total",
                "counter",
                "Standby sockets of a listener on another node parked on this one.",
                get(&self.cluster_standby_adopted),
            ),
            (
                "relay_cluster_standby_connects_total",
                "counter",
                "Connects to a listener on another node served by a standby parked here.",
                get(&self.cluster_standby_connects),
            ),
            (
                "relay_cert_sessions",
                "gauge",
                "Certificate listeners with a control channel or relay open.",
                gauges.cert_sessions as u64,
            ),
            (
                "relay_audit_dropped_total",
                "counter",
                "Audit events dropped because the writer's queue was full.",
                gauges.audit_dropped,
            ),
        ];
        for (name, kind, help, value) in simple {
            metric(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        metric(
            &mut out,
            "relay_http_responses_total",
            "counter",
            "Relayed HTTP requests answered, by status class.",
        );
        for (class, counter) in self.http_responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "relay_http_responses_total{{class=\"{class}xx\"}} {}",
                get(counter)
            );
        }
        metric(
            &mut out,
            "relay_http_request_duration_seconds",
            "histogram",
            "Relayed HTTP request latency.",
        );
        let mut cumulative = 0;
        for (i, counter) in self.http_latency.iter().enumerate() {
            cumulative += get(counter);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or("+Inf".to_owned(), ToString::to_string);
            let _ = writeln!(
                out,
                "relay_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "relay_http_request_duration_seconds_sum {}",
            get(&self.http_latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "relay_http_request_duration_seconds_count {cumulative}"
        );
        out
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_and_labels() {
        let c = Counters::default();
        c.observe_http(200, Duration::from_millis(3));
        c.observe_http(504, Duration::from_secs(60));
        let gauges = Gauges {
            pending_rendezvous: 1,
            standby_parked: 3,
            tasks: 5,
            cert_sessions: 0,
            audit_dropped: 0,
        };
        let text = c.render(&[("a\"b".into(), 2)], gauges);
        assert!(text.contains("relay_standby_parked 3"));
        assert!(text.contains("relay_tasks 5"));
        assert!(text.contains("relay_listeners{hybrid_connection=\"a\\\"b\"} 2"));
        assert!(text.contains("relay_http_responses_total{class=\"2xx\"} 1"));
        assert!(text.contains("relay_http_responses_total{class=\"5xx\"} 1"));
        assert!(text.contains("relay_http_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("relay_http_request_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("relay_pending_rendezvous 1"));
    }
}
