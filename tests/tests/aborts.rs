//! Aborts stay aborts, through the real binaries: a client → `relay-sender forward` →
//! `relay-broker` → `relay-listener run --forward` → backend chain, with a download and an
//! upload cut by each cause (agent killed, broker killed, client reset, backend reset, a
//! Close 1011, a connection dropped without a Close), asserting how the far end saw it: a
//! reset, never a clean end of stream. Clean ends, half-close included, stay clean.
//!
//! A process killed with SIGKILL has its own sockets closed by the kernel; the tools set
//! SO_LINGER 0 on their local connections until a stream has ended in order, so even then the
//! kernel's close is a reset, not a FIN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_core::frame::OpCode;
use relay_tests::chain::{CHUNK, Chain, End, agent, backend, read_n, read_to_end, reset, sender};
use relay_tests::external::Process;
use relay_tests::{RawListener, TestBroker};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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
    let (mut download, mut s1) = mid_download(&mut chain).await;
    let (mut upload, mut s2) = mid_upload(&mut chain).await;
    chain.agent.0.kill().unwrap();
    assert!(matches!(read_to_end(&mut download).await, End::Reset(_)));
    assert!(matches!(read_to_end(&mut upload).await, End::Reset(_)));
    // The killed agent's own sockets to the target: SO_LINGER 0 from the start makes the
    // kernel's close a reset too, not the FIN that would read as a complete upload.
    assert!(matches!(read_to_end(&mut s1).await, End::Reset(_)));
    assert!(matches!(read_to_end(&mut s2).await, End::Reset(_)));
}

#[tokio::test]
async fn a_killed_sender_resets_its_client_and_the_backend() {
    let mut chain = Chain::start("sender-killed").await;
    let (mut d_client, mut d_server) = mid_download(&mut chain).await;
    let (mut u_client, mut u_server) = mid_upload(&mut chain).await;
    chain.sender.0.kill().unwrap();
    for end in [&mut d_client, &mut d_server, &mut u_client, &mut u_server] {
        assert!(matches!(read_to_end(end).await, End::Reset(_)));
    }
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
    let agent = agent(&broker.ws(), target, &[]);
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
