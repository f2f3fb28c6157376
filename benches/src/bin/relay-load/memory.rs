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
