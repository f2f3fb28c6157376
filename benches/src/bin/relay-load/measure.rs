//! Stream measurements: throughput through the sink, connect-to-first-byte latency and
//! small-message round trips through the echo.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pushes `bytes` through one connection to the sink; returns when the sink confirmed them.
async fn push(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let buf = vec![0x42u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.context("sink count")?;
    ensure!(
        u64::from_be_bytes(count) == bytes,
        "sink got {} of {bytes} bytes",
        u64::from_be_bytes(count)
    );
    Ok(())
}

/// MB/s for `bytes` split over `streams` concurrent connections.
pub(crate) async fn throughput(addr: SocketAddr, bytes: u64, streams: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        tasks.spawn(push(addr, bytes / streams));
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((bytes / streams * streams) as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Connect, send one byte, receive it: `n` fresh connections, sequential.
pub(crate) async fn connect_latency(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
            .await
            .context("first byte in time")??;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// New connections per second that `concurrency` clients get through `addr` in `window`,
/// each a connect and a one-byte echo; with how many failed.
pub(crate) async fn connect_rate(
    addr: SocketAddr,
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<(f64, usize)> {
    let deadline = Instant::now() + window;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(async move {
            let (mut done, mut failed) = (0usize, 0usize);
            while Instant::now() < deadline {
                let one = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => done += 1,
                    _ => failed += 1,
                }
            }
            (done, failed)
        });
    }
    let (mut done, mut failed) = (0, 0);
    while let Some(r) = workers.join_next().await {
        let (d, f) = r?;
        done += d;
        failed += f;
    }
    Ok((done as f64 / window.as_secs_f64(), failed))
}

/// 64-byte round trips on one connection.
pub(crate) async fn round_trips(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    // Warm the path first.
    for _ in 0..10 {
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Waits until an echo round trip works through `addr` (tunnels come up asynchronously).
pub(crate) async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), connect_latency(addr, 1)).await
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{addr} never echoed")
}

/// The `p`-th percentile (0..=100) of samples, in microseconds.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    let idx = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
    samples[idx].as_secs_f64() * 1e6
}
