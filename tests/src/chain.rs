//! The whole relay chain on the real binaries, for the abort and chaos suites: a client →
//! `relay-sender forward` → `relay-broker` → `relay-listener run --forward` → backend, with
//! the backend's connections handed to the test, and helpers that tell a clean end (FIN)
//! from a reset.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::external::{Process, relay_broker};
use crate::{KEY, KEY_NAME, http_request, temp_dir, token_for};

/// How a TCP peer saw its connection end.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A FIN after this many bytes: what a complete stream looks like.
    Clean(usize),
    /// A reset (or another error) after this many bytes.
    Reset(usize),
}

/// Reads until the stream ends; bounded.
pub async fn read_to_end(stream: &mut TcpStream) -> End {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Err(_) => panic!("the stream neither ended nor was reset within 20 s"),
            Ok(Ok(0)) => return End::Clean(total),
            Ok(Ok(n)) => total += n,
            Ok(Err(_)) => return End::Reset(total),
        }
    }
}

/// Reads exactly `n` bytes (the stream is flowing).
pub async fn read_n(stream: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("data");
}

pub fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

pub const CHUNK: usize = 256 * 1024;

/// Backend connections, handed to the test as they are accepted.
pub async fn backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if tx.send(tcp).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

pub fn spawn(bin: &str, args: &[&str]) -> Process {
    let child = Command::new(crate::bin(bin))
        .args(args)
        .env("RELAY_SAS_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binaries are built");
    Process(child)
}

pub async fn wait_listener(http: &str) {
    let token = token_for(&format!("{http}/hyco"), KEY_NAME, KEY, 600);
    let url = format!("{http}/hyco?api-version=2016-07");
    let headers = [
        ("X-PROCESS-AT", "ServiceBus"),
        ("Authorization", token.as_str()),
    ];
    for _ in 0..500 {
        let (_, _, body) = http_request("GET", &url, &headers, vec![]).await;
        if String::from_utf8_lossy(&body).contains("<ListenerCount>1<") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent never listened");
}

/// `relay-listener run --forward target` on `hyco` of the broker at `endpoint`, with `extra`
/// arguments.
pub fn agent(endpoint: &str, target: SocketAddr, extra: &[&str]) -> Process {
    let target = target.to_string();
    let mut args = vec![
        "run",
        "--endpoint",
        endpoint,
        "--hc",
        "hyco",
        "--sas-key-name",
        KEY_NAME,
        "--forward",
        &target,
    ];
    args.extend_from_slice(extra);
    spawn("relay-listener", &args)
}

/// `relay-sender forward` to `endpoint`; returns it and its local address.
pub async fn sender(endpoint: &str) -> (Process, SocketAddr) {
    let mut process = spawn(
        "relay-sender",
        &[
            "forward",
            "--endpoint",
            endpoint,
            "--hc",
            "hyco",
            "--sas-key-name",
            KEY_NAME,
            "--local",
            "127.0.0.1:0",
        ],
    );
    let stdout = process.0.stdout.take().unwrap();
    let local = tokio::task::spawn_blocking(move || {
        let line = BufReader::new(stdout).lines().next().unwrap().unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    })
    .await
    .unwrap();
    (process, local)
}

/// The whole chain on the real binaries.
pub struct Chain {
    pub broker: Process,
    pub agent: Process,
    pub sender: Process,
    pub local: SocketAddr,
    pub backend: mpsc::Receiver<TcpStream>,
    /// The broker's address.
    pub addr: String,
    /// The backend's address (the agent's `--forward`).
    pub target: SocketAddr,
    /// Its configuration file, for a restart on the same port.
    pub config: std::path::PathBuf,
}

impl Chain {
    pub async fn start(name: &str) -> Self {
        crate::build_binaries_once();
        let dir = temp_dir(&format!("aborts-{name}"));
        let config = dir.join("broker.toml");
        // A fixed port, so that a restarted broker is found where the tools look.
        let port = crate::external::free_port();
        let text = crate::config("").replace("127.0.0.1:0", &port.to_string());
        std::fs::write(&config, text).unwrap();
        let (broker, addr) = Self::broker(&config).await;
        let (target, backend) = backend().await;
        let endpoint = format!("ws://{addr}");
        let agent = agent(&endpoint, target, &[]);
        wait_listener(&format!("http://{addr}")).await;
        let (sender, local) = sender(&endpoint).await;
        Self {
            broker,
            agent,
            sender,
            local,
            backend,
            addr,
            target,
            config,
        }
    }

    /// Starts (or restarts) the broker binary on its configuration.
    pub async fn broker(config: &std::path::Path) -> (Process, String) {
        let config = config.to_owned();
        tokio::task::spawn_blocking(move || relay_broker(&config))
            .await
            .unwrap()
    }

    /// A client connection and the backend connection it reached.
    pub async fn connect(&mut self) -> (TcpStream, TcpStream) {
        let mut client = TcpStream::connect(self.local).await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut server = tokio::time::timeout(Duration::from_secs(20), self.backend.recv())
            .await
            .expect("the backend is reached in time")
            .unwrap();
        read_n(&mut server, 2).await;
        (client, server)
    }
}
