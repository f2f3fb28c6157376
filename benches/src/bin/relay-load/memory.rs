//! Broker memory: per idle listener control channel, and while a sender pushes into a
//! listener that has stopped reading.

use std::time::{Duration, Instant};

use relay_core::frame::OpCode;
use relay_io::client::{ConnectOptions, Connected};

use crate::procs::rss_bytes;

fn token(endpoint: &str, hc: &str, key: &str) -> String {
    let http = endpoint
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    relay_core::sas::create_token(&format!("{http}/{hc}"), "root", key, now + 3600)
}

fn options(
    endpoint: &str,
    hc: &str,
    key: &str,
    tls: Option<std::sync::Arc<relay_io::rustls::ClientConfig>>,
) -> ConnectOptions {
    ConnectOptions {
        headers: vec![("ServiceBusAuthorization".into(), token(endpoint, hc, key))],
        tls,
        read_buffer: 512,
        ..ConnectOptions::default()
    }
}

/// Opens `n` idle control channels; returns the broker's RSS growth per channel in bytes.
pub(crate) async fn per_idle_listener(
    broker_pid: u32,
    endpoint: &str,
    key: &str,
    n: usize,
    tls: Option<std::sync::Arc<relay_io::rustls::ClientConfig>>,
) -> anyhow::Result<f64> {
    let opts = options(endpoint, "idle", key, tls);
    let url = format!("{endpoint}/$hc/idle?sb-hc-action=listen");
    // Warm up allocator arenas and maps so the first connections are not over-counted.
    let warm: Vec<Connected> = futures_batch(&url, &opts, 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(broker_pid);
    let conns = futures_batch(&url, &opts, n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(broker_pid);
    drop(conns);
    drop(warm);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Opens `n` idle listeners the way our agent does: a control channel and `standby`
/// pre-opened rendezvous sockets each. Returns the broker's RSS growth per listener, and the
/// sockets: hold them while measuring anything else on that broker, or it reuses their
/// freed memory and reads low.
pub(crate) async fn per_idle_agent_listener(
    broker_pid: u32,
    endpoint: &str,
    key: &str,
    n: usize,
    standby: usize,
    tls: Option<std::sync::Arc<relay_io::rustls::ClientConfig>>,
) -> anyhow::Result<(f64, Vec<Connected>)> {
    use relay_core::standby::{STANDBY_HEADER, STANDBY_KEY_HEADER};
    let mut opts = options(endpoint, "idle", key, tls.clone());
    opts.headers
        .push((STANDBY_HEADER.into(), standby.to_string()));
    let url = format!("{endpoint}/$hc/idle?sb-hc-action=listen");
    let standby_url = format!("{endpoint}/$hc/idle?sb-hc-action=standby");
    let open = |n| {
        let (url, standby_url, opts, tls) = (&url, &standby_url, &opts, tls.clone());
        async move {
            let controls = futures_batch(url, opts, n).await?;
            let mut sockets = Vec::with_capacity(n * standby);
            for control in &controls {
                let key = control
                    .headers
                    .iter()
                    .find(|(k, _)| k == STANDBY_KEY_HEADER)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| anyhow::anyhow!("the broker granted no standby"))?;
                let parked = ConnectOptions {
                    headers: vec![(STANDBY_KEY_HEADER.into(), key)],
                    tls: tls.clone(),
                    read_buffer: 512,
                    ..ConnectOptions::default()
                };
                sockets.extend(futures_batch(standby_url, &parked, standby).await?);
            }
            sockets.extend(controls);
            anyhow::Ok(sockets)
        }
    };
    let warm = open(50).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes(broker_pid);
    let listeners = open(n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(broker_pid);
    drop(warm);
    Ok((after.saturating_sub(before) as f64 / n as f64, listeners))
}

/// What `n` idle listeners (control channels on node `holder`) cost a cluster of two nodes:
/// the RSS growth per listener on the holder and on the other node (which knows them only
/// from presence), and the NATS traffic they add, in bytes per second per listener (what
/// the server took in and sent out, from its `/varz`).
pub(crate) async fn cluster_idle_listener(
    pids: (u32, u32),
    endpoint: &str,
    other: std::net::SocketAddr,
    nats_monitor: std::net::SocketAddr,
    key: &str,
    n: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let opts = options(endpoint, "idle", key, None);
    let url = format!("{endpoint}/$hc/idle?sb-hc-action=listen");
    let warm: Vec<Connected> = futures_batch(&url, &opts, 100).await?;
    seen_by(other, 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (rss_bytes(pids.0), rss_bytes(pids.1));
    let idle_rate = nats_rate(nats_monitor).await?;
    let conns = futures_batch(&url, &opts, n).await?;
    seen_by(other, 100 + n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (rss_bytes(pids.0), rss_bytes(pids.1));
    let busy_rate = nats_rate(nats_monitor).await?;
    drop(conns);
    drop(warm);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    Ok((
        per(after.0, before.0),
        per(after.1, before.1),
        (busy_rate - idle_rate).max(0.0) / n as f64,
    ))
}

/// Waits (at most 20 s) until the broker at `addr` counts `n` listeners on `idle`.
async fn seen_by(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let want = format!("relay_listeners{{hybrid_connection=\"idle\"}} {n}\n");
    while !get(addr, "/metrics").await.contains(&want) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{addr} never counted {n} idle listeners"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// NATS bytes in and out per second over 12 s (sixteen heartbeats, two full presence sets).
async fn nats_rate(monitor: std::net::SocketAddr) -> anyhow::Result<f64> {
    let total = || async {
        let varz = get(monitor, "/varz").await;
        let field = |name: &str| {
            let at = varz.find(&format!("\"{name}\":"))? + name.len() + 3;
            let digits: String = varz[at..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<f64>().ok()
        };
        field("in_bytes")
            .zip(field("out_bytes"))
            .map(|(i, o)| i + o)
            .ok_or_else(|| anyhow::anyhow!("no in_bytes/out_bytes in {monitor}/varz"))
    };
    let window = Duration::from_secs(12);
    let first = total().await?;
    tokio::time::sleep(window).await;
    Ok((total().await? - first) / window.as_secs_f64())
}

/// The body of a plain HTTP/1.0 GET, or "" when it fails.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text
}

async fn futures_batch(
    url: &str,
    opts: &ConnectOptions,
    n: usize,
) -> anyhow::Result<Vec<Connected>> {
    let mut out = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (url, opts) = (url.to_owned(), opts.clone());
        tasks.spawn(async move { relay_io::client::connect(&url, &opts).await });
        if i % 64 == 63 {
            while let Some(r) = tasks.join_next().await {
                out.push(r??);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// A listener accepts a sender on `stall` and never reads; the sender pushes up to
/// `bytes` for at most `window`. Returns (bytes the sender got out, peak broker RSS growth).
pub(crate) async fn stalled_push(
    broker_pid: u32,
    endpoint: &str,
    key: &str,
    bytes: u64,
    window: Duration,
    tls: Option<std::sync::Arc<relay_io::rustls::ClientConfig>>,
) -> anyhow::Result<(u64, u64)> {
    let listen = format!("{endpoint}/$hc/stall?sb-hc-action=listen");
    let mut control =
        relay_io::client::connect(&listen, &options(endpoint, "stall", key, tls.clone())).await?;
    let connect = format!("{endpoint}/$hc/stall?sb-hc-action=connect");
    let sender_opts = options(endpoint, "stall", key, tls.clone());
    let sender =
        tokio::spawn(async move { relay_io::client::connect(&connect, &sender_opts).await });
    let address = loop {
        match control.reader.message(1 << 16).await? {
            Some(relay_io::Message::Text(t)) => {
                match relay_core::ListenerCommand::decode(t.as_bytes(), 1 << 16)? {
                    relay_core::ListenerCommand::Accept(a) => break a.address,
                    _ => continue,
                }
            }
            Some(_) => continue,
            None => anyhow::bail!("control channel closed"),
        }
    };
    // Accept, then never read from this socket again.
    let stalled_opts = ConnectOptions {
        tls,
        ..ConnectOptions::default()
    };
    let _stalled = relay_io::client::connect(&address, &stalled_opts).await?;
    let mut sender = sender.await??;
    let before = rss_bytes(broker_pid);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&sent);
    let push = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        while counter.load(std::sync::atomic::Ordering::Relaxed) < bytes {
            if sender
                .writer
                .send(true, OpCode::Binary, &chunk)
                .await
                .is_err()
            {
                break;
            }
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        sender
    });
    let deadline = Instant::now() + window;
    let mut peak = before;
    while Instant::now() < deadline && !push.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(broker_pid));
    }
    push.abort();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    Ok((sent, peak.saturating_sub(before)))
}
