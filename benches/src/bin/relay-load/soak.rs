//! Soak: mixed traffic against one relay (broker, agents, senders) for a long time, with the
//! broker's RSS, file descriptors, tracked tasks and pending rendezvous sampled. Writes a CSV
//! (`benches/soak_plot.py` draws it) and judges growth: after a warm-up, the trend of each
//! figure (its Theil–Sen slope times the span) must stay within an allowance.
//!
//! The traffic, all at once: fresh connections with a 64 B echo, 8 MB streams, relayed HTTP
//! from 4 keep-alive clients, a listener that comes and goes (control channel and standby
//! sockets), and a control channel renewing its token twice a second.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::procs::rss_bytes;
use crate::targets::{KEY, Target};

/// One sample of the broker.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    rss: u64,
    fds: u64,
    tasks: u64,
    pending: u64,
}

/// How much a figure may rise over the steady part of the run before it counts as growth:
/// pools, maps and allocator arenas settle in steps, a leak keeps going.
const ALLOWANCE: Sample = Sample {
    secs: 0.0,
    rss: 2 << 20,
    fds: 8,
    tasks: 8,
    pending: 8,
};

/// Work done, so that a flat broker is known to have been busy.
#[derive(Debug, Default)]
struct Done {
    connects: AtomicU64,
    stream_mb: AtomicU64,
    http_secs: AtomicU64,
    listener_cycles: AtomicU64,
    renewals: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Runs the soak; returns whether the broker stayed flat.
pub(crate) async fn run(
    relay: &Target,
    secs: u64,
    interval: Duration,
    csv: &Path,
) -> anyhow::Result<bool> {
    let endpoint = relay.endpoint.clone().unwrap_or_default();
    let pid = relay.procs[0].pid();
    let stop = CancellationToken::new();
    let done = Arc::new(Done::default());
    let mut traffic = tokio::task::JoinSet::new();
    // `RELAY_SOAK_ONLY=connects` (or streams, http, churn, renewals) runs one kind alone,
    // to find which one a growth comes from.
    let only = std::env::var("RELAY_SOAK_ONLY").ok();
    let on = |kind: &str| only.as_deref().is_none_or(|o| o == kind);
    if on("connects") {
        for _ in 0..2 {
            traffic.spawn(connects(relay.echo, stop.clone(), Arc::clone(&done)));
        }
    }
    if on("streams") {
        traffic.spawn(streams(relay.sink, stop.clone(), Arc::clone(&done)));
    }
    if on("http") {
        traffic.spawn(http(endpoint.clone(), stop.clone(), Arc::clone(&done)));
    }
    if on("churn") {
        traffic.spawn(churn(endpoint.clone(), stop.clone(), Arc::clone(&done)));
    }
    if on("renewals") {
        traffic.spawn(renewals(endpoint.clone(), stop.clone(), Arc::clone(&done)));
    }

    let http_base = endpoint.replacen("ws://", "http://", 1);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut out = String::from("secs,rss_bytes,fds,tasks,pending\n");
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(interval).await;
        let (tasks, pending) = gauges(&http_base).await.unwrap_or((0, 0));
        let s = Sample {
            secs: started.elapsed().as_secs_f64(),
            rss: rss_bytes(pid),
            fds: fds(pid),
            tasks,
            pending,
        };
        out.push_str(&format!(
            "{:.1},{},{},{},{}\n",
            s.secs, s.rss, s.fds, s.tasks, s.pending
        ));
        samples.push(s);
    }
    stop.cancel();
    while traffic.join_next().await.is_some() {}
    std::fs::write(csv, out)?;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "Traffic: {} connects with a 64 B echo, {} MB streamed, {} s of relayed HTTP (4 clients), {} listener connect/disconnect cycles, {} token renewals.\n",
        get(&done.connects),
        get(&done.stream_mb),
        get(&done.http_secs),
        get(&done.listener_cycles),
        get(&done.renewals)
    );
    Ok(report(&samples))
}

/// A sampled figure: its name, how to read it off a sample, its allowance and its display
/// unit.
type Gauge = (&'static str, fn(&Sample) -> u64, u64, u64);

/// Prints the figures and the verdict.
fn report(samples: &[Sample]) -> bool {
    // The first fifth warms allocator arenas, pools and maps.
    let steady = &samples[samples.len() / 5..];
    let third = (steady.len() / 3).max(1);
    let (first, last) = (&steady[..third], &steady[steady.len() - third..]);
    let span = match (steady.first(), steady.last()) {
        (Some(a), Some(b)) => b.secs - a.secs,
        _ => 0.0,
    };
    println!(
        "| broker, sampled | first third max | last third median | max | trend over {:.0} s | verdict |",
        span
    );
    println!("|---|---|---|---|---|---|");
    let mut flat = true;
    let rows: [Gauge; 4] = [
        ("RSS (KiB)", |s| s.rss, ALLOWANCE.rss, 1024),
        ("file descriptors", |s| s.fds, ALLOWANCE.fds, 1),
        ("tracked tasks", |s| s.tasks, ALLOWANCE.tasks, 1),
        ("pending rendezvous", |s| s.pending, ALLOWANCE.pending, 1),
    ];
    for (name, get, allowance, unit) in rows {
        let early = first.iter().map(get).max().unwrap_or(0);
        let mut late: Vec<u64> = last.iter().map(get).collect();
        late.sort_unstable();
        let median = late.get(late.len() / 2).copied().unwrap_or(0);
        let max = samples.iter().map(get).max().unwrap_or(0);
        let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.secs, get(s) as f64)).collect();
        let trend = theil_sen(&points) * span;
        let ok = trend <= allowance as f64;
        flat &= ok;
        println!(
            "| {name} | {} | {} | {} | {:+.1} | {} |",
            early / unit,
            median / unit,
            max / unit,
            trend / unit as f64,
            if ok { "flat" } else { "GROWING" }
        );
    }
    flat
}

/// The Theil–Sen slope: the median of the slopes between every pair of points. A trend that
/// one spike, or one step (a pool or an arena growing once), cannot fake the way it would a
/// least-squares line or a comparison of the run's ends. Quadratic in the points, so at most
/// 2000 of them (an even subsample) are used.
fn theil_sen(points: &[(f64, f64)]) -> f64 {
    let step = points.len().div_ceil(2000).max(1);
    let points: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, &(x0, y0)) in points.iter().enumerate() {
        for &(x1, y1) in &points[i + 1..] {
            if x1 > x0 {
                slopes.push((y1 - y0) / (x1 - x0));
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_unstable_by(f64::total_cmp);
    slopes[slopes.len() / 2]
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// `relay_tasks` and `relay_pending_rendezvous` from the broker's `/metrics`.
async fn gauges(base: &str) -> anyhow::Result<(u64, u64)> {
    let target = relay_io::client::Target::parse(base)?;
    let io = relay_io::client::dial(&target, None, None).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("Host", target.authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let body = http_body_util::BodyExt::collect(send.send_request(req).await?.into_body())
        .await?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((gauge("relay_tasks "), gauge("relay_pending_rendezvous ")))
}

async fn connects(echo: std::net::SocketAddr, stop: CancellationToken, done: Arc<Done>) {
    let mut buf = [0u8; 64];
    while !stop.is_cancelled() {
        let once = async {
            let mut tcp = tokio::net::TcpStream::connect(echo).await?;
            tcp.write_all(&[7u8; 64]).await?;
            tcp.read_exact(&mut buf).await?;
            anyhow::Ok(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), once).await {
            add(&done.connects, 1);
        }
    }
}

async fn streams(sink: std::net::SocketAddr, stop: CancellationToken, done: Arc<Done>) {
    while !stop.is_cancelled() {
        if crate::measure::throughput(sink, 8_000_000, 1).await.is_ok() {
            add(&done.stream_mb, 8);
        }
    }
}

async fn http(endpoint: String, stop: CancellationToken, done: Arc<Done>) {
    let Ok((base, token)) = crate::http::relayed_base(&endpoint, KEY, None).await else {
        return;
    };
    while !stop.is_cancelled() {
        let round = crate::http::load(&base, Some(&token), 4, Duration::from_secs(5), None);
        if round.await.is_ok() {
            add(&done.http_secs, 5);
        }
    }
}

/// A listener with standby sockets on `idle` that connects, stays 300 ms, and goes.
async fn churn(endpoint: String, stop: CancellationToken, done: Arc<Done>) {
    while !stop.is_cancelled() {
        let token = Arc::new(relay_listener::SasKeySource::new("root", KEY));
        let mut config = relay_listener::ListenerConfig::new(endpoint.as_str(), "idle", token);
        config.standby = 2;
        let listener = Arc::new(relay_listener::Listener::new(config));
        let mut status = listener.status();
        let gone = CancellationToken::new();
        let run = {
            let (listener, gone) = (Arc::clone(&listener), gone.clone());
            tokio::spawn(async move {
                let handler = Arc::new(|_conn: relay_listener::IncomingConnection| async {});
                listener.run(handler, gone).await;
            })
        };
        // The guard `wait_for` returns must not live across an await.
        let connected = matches!(
            tokio::time::timeout(
                Duration::from_secs(10),
                status.wait_for(|s| *s == relay_listener::Status::Connected),
            )
            .await,
            Ok(Ok(_))
        );
        if connected {
            add(&done.listener_cycles, 1);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        gone.cancel();
        let _ = run.await;
    }
}

/// A raw control channel that renews its token twice a second.
async fn renewals(endpoint: String, stop: CancellationToken, done: Arc<Done>) {
    let http = endpoint.replacen("ws://", "http://", 1);
    let token = |ttl: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        relay_core::sas::create_token(&format!("{http}/idle"), "root", KEY, now + ttl)
    };
    while !stop.is_cancelled() {
        let options = relay_io::client::ConnectOptions {
            headers: vec![("ServiceBusAuthorization".into(), token(3600))],
            ..relay_io::client::ConnectOptions::default()
        };
        let url = format!("{endpoint}/$hc/idle?sb-hc-action=listen");
        let Ok(mut conn) = relay_io::client::connect(&url, &options).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        for _ in 0..120 {
            if stop.is_cancelled() {
                break;
            }
            let renew =
                relay_core::control::ListenerCommand::RenewToken(relay_core::control::RenewToken {
                    token: token(3600),
                });
            if conn.writer.text(&renew.encode()).await.is_err() {
                break;
            }
            add(&done.renewals, 1);
            // Answer the broker's pings, so the channel stays healthy.
            let read =
                tokio::time::timeout(Duration::from_millis(500), conn.reader.message(1 << 16));
            if let Ok(Ok(Some(relay_io::Message::Ping(p)))) = read.await {
                let _ = conn
                    .writer
                    .send(true, relay_core::frame::OpCode::Pong, &p)
                    .await;
                let _ = conn.writer.flush().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::theil_sen;

    #[test]
    fn a_steady_rise_is_its_slope() {
        let points: Vec<(f64, f64)> = (0..50)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 7.0))
            .collect();
        assert!((theil_sen(&points) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn one_step_or_one_spike_is_not_a_trend() {
        // Flat, a step of 100 a tenth from the end, and one spike: a line through the ends
        // or a least-squares fit would call this growth.
        let mut points: Vec<(f64, f64)> = (0..100)
            .map(|i| (f64::from(i), if i >= 90 { 100.0 } else { 0.0 }))
            .collect();
        points[40].1 = 10_000.0;
        assert!(theil_sen(&points).abs() < 1e-9);
    }

    #[test]
    fn flat_and_degenerate_inputs_have_no_trend() {
        assert_eq!(theil_sen(&[]), 0.0);
        assert_eq!(theil_sen(&[(1.0, 5.0)]), 0.0);
        assert_eq!(theil_sen(&[(1.0, 5.0), (1.0, 9.0)]), 0.0);
        let flat: Vec<(f64, f64)> = (0..30).map(|i| (f64::from(i), 42.0)).collect();
        assert_eq!(theil_sen(&flat), 0.0);
    }
}
