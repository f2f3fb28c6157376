//! Chaos: streams of random sizes (0 B to 4 MiB), each carrying its length and SHA-256,
//! uploaded and downloaded through the real binaries while the broker and the listener agent
//! are killed (SIGKILL) and restarted at random moments. Every stream must either complete
//! byte-exact or fail visibly (a reset, an error); none may end cleanly with wrong or
//! missing bytes, and none may hang. After each broker restart the agent must be listening
//! again within 2 s; the figures go to stderr and `target/chaos-report.txt` (BENCHMARKS.md).
//!
//! Upload: the client sends `U`, the length (u64), the digest and the payload, then a FIN;
//! the backend checks them and answers `OK` only when all is right. Download: the client sends
//! `D` and a length; the backend sends the digest and the payload, then a FIN; the client
//! checks them at its clean end of stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use relay_tests::chain::{Chain, wait_listener};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Broker restarts (each measured), and agent restarts between them.
const BROKER_RESTARTS: usize = 20;
const AGENT_RESTARTS: usize = 6;
/// Streams in flight at once.
const WORKERS: usize = 4;
/// Bound on one stream; longer is a hang.
const STREAM_BOUND: Duration = Duration::from_secs(30);
/// How soon after the broker is up the agent must be listening again.
const BACK_WITHIN: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    completed: AtomicUsize,
    failed: AtomicUsize,
    /// Wrong or missing bytes reported as complete, or a hang: must stay 0.
    violations: AtomicUsize,
}

fn size(rng: &mut impl rand::Rng) -> usize {
    // Many small streams, some large: 0 B to 4 MiB.
    match rng.gen_range(0..10) {
        0 => 0,
        1..=5 => rng.gen_range(1..64 * 1024),
        _ => rng.gen_range(64 * 1024..4 << 20),
    }
}

/// The backend: checks uploads, serves downloads; counts clean ends with wrong bytes.
async fn serve_backend(mut conns: tokio::sync::mpsc::Receiver<TcpStream>, tally: Arc<Tally>) {
    while let Some(mut tcp) = conns.recv().await {
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if tcp.read_exact(&mut kind).await.is_err() {
                return;
            }
            let mut len = [0u8; 8];
            if tcp.read_exact(&mut len).await.is_err() {
                return;
            }
            let len = u64::from_be_bytes(len) as usize;
            if kind[0] == b'D' {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let digest = Sha256::digest(&payload);
                if tcp.write_all(&digest).await.is_ok() && tcp.write_all(&payload).await.is_ok() {
                    let _ = tcp.shutdown().await;
                }
                return;
            }
            let mut digest = [0u8; 32];
            if tcp.read_exact(&mut digest).await.is_err() {
                return;
            }
            let mut payload = Vec::new();
            // A clean end of stream here claims the upload is complete.
            if tcp.read_to_end(&mut payload).await.is_err() {
                return; // a reset: failed visibly
            }
            if payload.len() != len || Sha256::digest(&payload)[..] != digest {
                eprintln!(
                    "VIOLATION: an upload ended cleanly with {} of {len} bytes",
                    payload.len()
                );
                tally.violations.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let _ = tcp.write_all(b"OK").await;
            let _ = tcp.shutdown().await;
        });
    }
}

/// One stream from the client; `Ok(true)` when complete and verified.
async fn stream(local: std::net::SocketAddr, upload: bool, len: usize) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(local).await?;
    if upload {
        let payload: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
        tcp.write_all(b"U").await?;
        tcp.write_all(&(len as u64).to_be_bytes()).await?;
        tcp.write_all(&Sha256::digest(&payload)).await?;
        tcp.write_all(&payload).await?;
        tcp.shutdown().await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        return Ok(answer == b"OK");
    }
    tcp.write_all(b"D").await?;
    tcp.write_all(&(len as u64).to_be_bytes()).await?;
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await?;
    // A clean end of stream: it must be all of it.
    if got.len() < 32 || got.len() - 32 != len || Sha256::digest(&got[32..])[..] != got[..32] {
        return Err(std::io::Error::other(format!(
            "VIOLATION: a download ended cleanly with {} bytes for {len}",
            got.len()
        )));
    }
    Ok(true)
}

async fn worker(local: std::net::SocketAddr, seed: u64, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let (upload, len) = (rng.gen_bool(0.5), size(&mut rng));
        match tokio::time::timeout(STREAM_BOUND, stream(local, upload, len)).await {
            Err(_) => {
                eprintln!("VIOLATION: a stream of {len} bytes hung");
                tally.violations.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) if e.to_string().starts_with("VIOLATION") => {
                eprintln!("{e}");
                tally.violations.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(true)) => {
                tally.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_killed_brokers_and_agents_whole_or_visibly_failed() {
    let mut chain = Chain::start("chaos").await;
    let tally = Arc::new(Tally::default());
    let backend_rx = std::mem::replace(&mut chain.backend, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(serve_backend(backend_rx, Arc::clone(&tally)));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            tokio::spawn(worker(
                chain.local,
                7 + i as u64,
                Arc::clone(&tally),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let http = format!("http://{}", chain.addr);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut back = Vec::with_capacity(BROKER_RESTARTS);
    let started = Instant::now();
    for round in 0..BROKER_RESTARTS + AGENT_RESTARTS {
        // Let traffic flow for a random while, then strike.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..700))).await;
        if round % 4 == 3 && round / 4 < AGENT_RESTARTS {
            chain.agent.0.kill().unwrap();
            let _ = chain.agent.0.wait();
            chain.agent = restart_agent(&chain);
            wait_listener(&http).await;
            continue;
        }
        chain.broker.0.kill().unwrap();
        let _ = chain.broker.0.wait();
        let (broker, _) = Chain::broker(&chain.config).await;
        let up = Instant::now();
        chain.broker = broker;
        wait_listener(&http).await;
        back.push(up.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(STREAM_BOUND * 2, w)
            .await
            .expect("workers end")
            .unwrap();
    }

    back.sort();
    let report = format!(
        "chaos: {} broker restarts and {} agent restarts in {:.0} s; streams completed {}, failed visibly {}, violations {}; agent back after the broker was up: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
        back.len(),
        AGENT_RESTARTS,
        started.elapsed().as_secs_f64(),
        tally.completed.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.violations.load(Ordering::Relaxed),
        percentile(&back, 50.0).as_secs_f64() * 1000.0,
        percentile(&back, 99.0).as_secs_f64() * 1000.0,
        back.last().unwrap().as_secs_f64() * 1000.0,
    );
    eprint!("{report}");
    let _ = std::fs::write(
        relay_tests::workspace().join("target/chaos-report.txt"),
        &report,
    );
    assert_eq!(tally.violations.load(Ordering::Relaxed), 0, "{report}");
    assert!(tally.completed.load(Ordering::Relaxed) > 0, "{report}");
    assert!(back.len() >= 20);
    assert!(*back.last().unwrap() < BACK_WITHIN, "{report}");
}

fn restart_agent(chain: &Chain) -> relay_tests::external::Process {
    relay_tests::chain::agent(&format!("ws://{}", chain.addr), chain.target, &[])
}
