//! Aborts stay aborts, through the real binaries: a client → `relay-sender forward` →
//! `relay-broker` → `relay-listener run --forward` → backend chain, with a download and an
//! upload cut by each cause (agent killed, broker killed, client reset, backend reset, a
//! Close 1011, a connection dropped without a Close), asserting how the far end saw it: a
//! reset, never a clean end of stream. Clean ends, half-close included, stay clean.
//!
//! A process killed with SIGKILL has its own sockets closed by the kernel, with a FIN: the
//! relay cannot change what the killed agent's backend or the killed sender's client see.
//! What it guarantees is the other side of the chain, which these tests check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use relay_core::frame::OpCode;
use relay_tests::external::{Process, relay_broker};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request, temp_dir, token_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How a TCP peer saw its connection end.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A FIN after this many bytes: what a complete stream looks like.
    Clean(usize),
    /// A reset (or another error) after this many bytes.
    Reset(usize),
}

/// Reads until the stream ends; bounded.
async fn read_to_end(stream: &mut TcpStream) -> End {
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
async fn read_n(stream: &mut TcpStream, n: usize) {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut buf))
        .await
        .expect("data in time")
        .expect("data");
}

fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

const CHUNK: usize = 256 * 1024;

/// Backend connections, handed to the test as they are accepted.
async fn backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
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

fn spawn(bin: &str, args: &[&str]) -> Process {
    let child = Command::new(relay_tests::bin(bin))
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

async fn wait_listener(http: &str) {
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

/// `relay-sender forward` to `endpoint`; returns it and its local address.
async fn sender(endpoint: &str) -> (Process, SocketAddr) {
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
struct Chain {
    broker: Process,
    agent: Process,
    _sender: Process,
    local: SocketAddr,
    backend: mpsc::Receiver<TcpStream>,
}

impl Chain {
    async fn start(name: &str) -> Self {
        relay_tests::build_binaries_once();
        let dir = temp_dir(&format!("aborts-{name}"));
        let config = dir.join("broker.toml");
        std::fs::write(&config, relay_tests::config("")).unwrap();
        let (broker, addr) = tokio::task::spawn_blocking(move || relay_broker(&config))
            .await
            .unwrap();
        let (target, backend) = backend().await;
        let endpoint = format!("ws://{addr}");
        let agent = spawn(
            "relay-listener",
            &[
                "run",
                "--endpoint",
                &endpoint,
                "--hc",
                "hyco",
                "--sas-key-name",
                KEY_NAME,
                "--forward",
                &target.to_string(),
            ],
        );
        wait_listener(&format!("http://{addr}")).await;
        let (sender, local) = sender(&endpoint).await;
        Self {
            broker,
            agent,
            _sender: sender,
            local,
            backend,
        }
    }

    /// A client connection and the backend connection it reached.
    async fn connect(&mut self) -> (TcpStream, TcpStream) {
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

/// Backend → client, `CHUNK` bytes seen by the client before the cut.
async fn mid_download(chain: &mut Chain) -> (TcpStream, TcpStream) {
    let (mut client, mut server) = chain.connect().await;
    server.write_all(&vec![1u8; CHUNK]).await.unwrap();
    read_n(&mut client, CHUNK).await;
    (client, server)
}

/// Client → backend, `CHUNK` bytes seen by the backend before the cut.
async fn mid_upload(chain: &mut Chain) -> (TcpStream, TcpStream) {
    let (mut client, mut server) = chain.connect().await;
    client.write_all(&vec![2u8; CHUNK]).await.unwrap();
    read_n(&mut server, CHUNK).await;
    (client, server)
}

#[tokio::test]
async fn clean_ends_stay_clean_both_ways_with_half_close() {
    let mut chain = Chain::start("clean").await;
    let (mut client, mut server) = chain.connect().await;
    // Upload, then the client's FIN; the download keeps flowing after it.
    client.write_all(&vec![3u8; CHUNK]).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut server).await, End::Clean(CHUNK));
    server.write_all(&vec![4u8; CHUNK]).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, End::Clean(CHUNK));
}

#[tokio::test]
async fn a_killed_agent_resets_the_client() {
    let mut chain = Chain::start("agent-killed").await;
    let (mut download, _s1) = mid_download(&mut chain).await;
    let (mut upload, _s2) = mid_upload(&mut chain).await;
    chain.agent.0.kill().unwrap();
    assert!(matches!(read_to_end(&mut download).await, End::Reset(_)));
    assert!(matches!(read_to_end(&mut upload).await, End::Reset(_)));
}

#[tokio::test]
async fn a_killed_broker_resets_both_ends() {
    let mut chain = Chain::start("broker-killed").await;
    let (mut d_client, mut d_server) = mid_download(&mut chain).await;
    let (mut u_client, mut u_server) = mid_upload(&mut chain).await;
    chain.broker.0.kill().unwrap();
    for end in [&mut d_client, &mut d_server, &mut u_client, &mut u_server] {
        assert!(matches!(read_to_end(end).await, End::Reset(_)));
    }
}

#[tokio::test]
async fn a_client_reset_resets_the_backend() {
    let mut chain = Chain::start("client-reset").await;
    let (client, mut server) = mid_upload(&mut chain).await;
    reset(client);
    assert_eq!(read_to_end(&mut server).await, End::Reset(0));
    let (client, mut server) = mid_download(&mut chain).await;
    reset(client);
    assert!(matches!(read_to_end(&mut server).await, End::Reset(_)));
}

#[tokio::test]
async fn a_backend_reset_resets_the_client() {
    let mut chain = Chain::start("backend-reset").await;
    let (mut client, server) = mid_download(&mut chain).await;
    reset(server);
    assert_eq!(read_to_end(&mut client).await, End::Reset(0));
    let (mut client, server) = mid_upload(&mut chain).await;
    reset(server);
    assert!(matches!(read_to_end(&mut client).await, End::Reset(_)));
}

/// Our agent behind an in-process broker, for raw senders.
async fn agent_behind(broker: &TestBroker) -> (Process, mpsc::Receiver<TcpStream>) {
    relay_tests::build_binaries_once();
    let (target, backend) = backend().await;
    let agent = spawn(
        "relay-listener",
        &[
            "run",
            "--endpoint",
            &broker.ws(),
            "--hc",
            "hyco",
            "--sas-key-name",
            KEY_NAME,
            "--forward",
            &target.to_string(),
        ],
    );
    broker.wait_listeners("hyco", 1).await;
    (agent, backend)
}

#[tokio::test]
async fn a_sender_close_1011_or_a_dropped_sender_resets_the_backend() {
    let broker = TestBroker::start("").await;
    let (_agent, mut backend) = agent_behind(&broker).await;
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    for cut in ["close 1011", "dropped"] {
        let mut conn = relay_tests::ws_connect(&url, Some(&broker.token("hyco")), &[], &[])
            .await
            .unwrap();
        conn.writer
            .send(true, OpCode::Binary, &vec![5u8; CHUNK])
            .await
            .unwrap();
        conn.writer.flush().await.unwrap();
        let mut server = backend.recv().await.unwrap();
        read_n(&mut server, CHUNK).await;
        if cut == "close 1011" {
            conn.writer.close(1011, "upstream failed").await.unwrap();
        } else {
            drop(conn);
        }
        assert_eq!(read_to_end(&mut server).await, End::Reset(0), "{cut}");
    }
    // A Close 1000 is the end of the upload, and the backend sees a FIN.
    let mut conn = relay_tests::ws_connect(&url, Some(&broker.token("hyco")), &[], &[])
        .await
        .unwrap();
    conn.writer
        .send(true, OpCode::Binary, b"all")
        .await
        .unwrap();
    conn.writer.close(1000, "").await.unwrap();
    let mut server = backend.recv().await.unwrap();
    assert_eq!(read_to_end(&mut server).await, End::Clean(3));
}

#[tokio::test]
async fn a_listener_close_1011_or_a_dropped_listener_resets_the_client() {
    relay_tests::build_binaries_once();
    let broker = TestBroker::start("").await;
    let (_sender, local) = sender(&broker.ws()).await;
    for cut in ["close 1011", "dropped"] {
        let mut listener = RawListener::open(&broker, "hyco").await;
        let mut client = TcpStream::connect(local).await.unwrap();
        let relay_core::ListenerCommand::Accept(accept) = listener.command().await else {
            panic!("expected an accept")
        };
        let mut conn = relay_tests::ws_connect(&accept.address, None, &[], &[])
            .await
            .unwrap();
        conn.writer
            .send(true, OpCode::Binary, &vec![6u8; CHUNK])
            .await
            .unwrap();
        conn.writer.flush().await.unwrap();
        read_n(&mut client, CHUNK).await;
        if cut == "close 1011" {
            conn.writer.close(1011, "device failed").await.unwrap();
        } else {
            drop(conn);
        }
        assert_eq!(read_to_end(&mut client).await, End::Reset(0), "{cut}");
        drop(listener);
        broker.wait_listeners("hyco", 0).await;
    }
}
