//! The control channel's task on an in-memory socket, on tokio's paused clock: what it writes
//! when, and what makes it close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_core::frame::{OpCode, close_code};
use relay_core::tracking::TrackingId;
use relay_io::{Message, Role, WsReader, WsWriter};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CONTROL_BUFFER, Channel, Held};
use crate::config::Limits;
use crate::relay::Relay;
use crate::relay::local::LocalChannel;
use crate::relay::sessions::{CLOSE_REVOKED, CertSession, Sessions};
use crate::relay::socket::halves;
use crate::seams::directory::ListenerRef;
use crate::seams::interconnect::Notice;
use crate::seams::node::ListenerKey;

const PING: Duration = Duration::from_secs(10);

/// The listener's end of the channel, and the handles a test pokes.
struct Listener {
    reader: WsReader<ReadHalf<DuplexStream>>,
    writer: WsWriter<WriteHalf<DuplexStream>>,
    queue: mpsc::Sender<Notice>,
    close: CancellationToken,
    replaced: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Opens a channel whose credential ends `expires_in` seconds from now, with a
    /// certificate session when `cert` is given.
    fn open(expires_in: u64, cert: Option<CertSession>) -> Self {
        let limits = Limits {
            ping_interval: PING,
            token_grace: Duration::ZERO,
            ..Limits::default()
        };
        let relay = Arc::new(Relay::for_tests(limits));
        let (queue, rx) = mpsc::channel(4);
        let local = Arc::new(LocalChannel {
            tx: queue.clone(),
            close: CancellationToken::new(),
            replaced: CancellationToken::new(),
            revoked: cert.as_ref().map(|c| c.revoked.clone()),
        });
        let (close, replaced) = (local.close.clone(), local.replaced.clone());
        let held = Held {
            listener: ListenerRef {
                key: ListenerKey {
                    node: relay.node.clone(),
                    channel: 1,
                },
                hc: "orders".into(),
                base_url: "ws://127.0.0.1:1".into(),
                instance: None,
                header_arrays: true,
                cert_listener: cert.as_ref().map(|c| Arc::clone(&c.listener_id)),
                standby: None,
            },
            local,
        };
        let (server, client) = tokio::io::duplex(64 * 1024);
        let (s_reader, s_writer) = halves(Box::new(server), CONTROL_BUFFER);
        let expires = tokio::time::Instant::now().into_std() + Duration::from_secs(expires_in);
        let task = tokio::spawn(async move {
            let channel = Channel::new(&relay, &held, TrackingId::new(), expires, cert);
            channel.run(s_reader, s_writer, rx).await;
        });
        let (r, w) = tokio::io::split(client);
        Self {
            reader: WsReader::new(r, Role::Client, 64 * 1024),
            writer: WsWriter::new(w, Role::Client),
            queue,
            close,
            replaced,
            task,
        }
    }

    async fn next(&mut self) -> Message {
        self.reader
            .message(1 << 20)
            .await
            .expect("a well-formed frame")
            .expect("the channel is still open")
    }

    /// The Close the broker sends, skipping pings; answers it, and waits for the task.
    async fn closed(mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Message::Ping(_) => {}
                Message::Close(status) => {
                    let _ = self.writer.close(close_code::NORMAL, "").await;
                    self.task.await.unwrap();
                    return status.expect("a close code");
                }
                other => panic!("expected a Close, got {other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_quiet_listener_is_pinged_and_a_silent_one_closed_with_1001() {
    let mut l = Listener::open(3600, None);
    let started = tokio::time::Instant::now();
    assert!(matches!(l.next().await, Message::Ping(_)));
    let first = started.elapsed();
    assert!(
        first >= PING && first < PING * 2,
        "first ping after {first:?}"
    );
    // The listener answers nothing: two intervals of silence end the channel.
    let (code, reason) = l.closed().await;
    assert_eq!(code, close_code::GOING_AWAY);
    assert!(reason.starts_with("Keep-alive timeout"), "{reason}");
    let lasted = started.elapsed();
    assert!(
        lasted >= PING * 2 && lasted <= PING * 3,
        "closed after {lasted:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_listener_that_answers_pings_stays_open() {
    let mut l = Listener::open(3600, None);
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        match l.next().await {
            Message::Ping(payload) => l.writer.send(true, OpCode::Pong, &payload).await.unwrap(),
            other => panic!("expected a ping, got {other:?}"),
        }
        l.writer.flush().await.unwrap();
    }
    assert!(started.elapsed() >= PING * 5, "six intervals passed");
    l.close.cancel();
    let (code, reason) = l.closed().await;
    assert_eq!(code, close_code::GOING_AWAY);
    assert!(
        reason.starts_with("The broker is shutting down"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_listeners_ping_is_answered_with_its_payload() {
    let mut l = Listener::open(3600, None);
    l.writer
        .send(true, OpCode::Ping, b"are you there")
        .await
        .unwrap();
    l.writer.flush().await.unwrap();
    match l.next().await {
        Message::Pong(payload) => assert_eq!(payload, b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn queued_notices_are_written_in_order_with_their_bodies() {
    let mut l = Listener::open(3600, None);
    l.queue
        .send(Notice::Text("{\"accept\":{}}".into()))
        .await
        .unwrap();
    l.queue
        .send(Notice::TextWithBody(
            "{\"request\":{}}".into(),
            b"body".to_vec().into(),
        ))
        .await
        .unwrap();
    assert!(matches!(l.next().await, Message::Text(t) if t == "{\"accept\":{}}"));
    assert!(matches!(l.next().await, Message::Text(t) if t == "{\"request\":{}}"));
    assert!(matches!(l.next().await, Message::Binary(b) if b == b"body"));
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_closes_the_channel_with_1008() {
    let mut l = Listener::open(25, None);
    let started = tokio::time::Instant::now();
    loop {
        match l.next().await {
            Message::Ping(payload) => {
                l.writer.send(true, OpCode::Pong, &payload).await.unwrap();
                l.writer.flush().await.unwrap();
            }
            Message::Close(status) => {
                let (code, reason) = status.unwrap();
                assert_eq!(code, close_code::POLICY_VIOLATION);
                assert!(reason.starts_with("Token expired"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let lasted = started.elapsed();
    // The wall clock's second boundary may take up to one second off the credential.
    assert!(
        lasted >= Duration::from_secs(24) && lasted <= Duration::from_secs(26),
        "closed after {lasted:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_certificate_listener_is_closed_with_4401() {
    let sessions = Sessions::default();
    let cert = CertSession {
        listener_id: "l-1".into(),
        revoked: sessions.hold("l-1"),
    };
    let l = Listener::open(3600, Some(cert));
    sessions.close("l-1");
    let (code, reason) = l.closed().await;
    assert_eq!(code, CLOSE_REVOKED);
    assert!(reason.starts_with("Listener revoked"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_replaced_channel_says_so() {
    let l = Listener::open(3600, None);
    l.replaced.cancel();
    let (code, reason) = l.closed().await;
    assert_eq!(code, relay_core::control::CLOSE_REPLACED);
    assert!(
        reason.contains("Replaced by a newer connection"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn stray_responses_past_the_bound_end_the_channel_with_1008() {
    let mut l = Listener::open(3600, None);
    // Responses to no pending request: counted, tolerated up to the bound.
    let stray = "{\"response\":{\"requestId\":\"nobody\",\"statusCode\":200}}";
    for _ in 0..=super::MAX_UNSOLICITED {
        l.writer.text(stray).await.unwrap();
    }
    let (code, reason) = l.closed().await;
    assert_eq!(code, close_code::POLICY_VIOLATION);
    assert!(
        reason.starts_with("Too many unsolicited messages"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_frames_are_a_protocol_error() {
    let mut l = Listener::open(3600, None);
    // A text frame with invalid UTF-8.
    l.writer
        .send(true, OpCode::Text, &[0xff, 0xfe])
        .await
        .unwrap();
    l.writer.flush().await.unwrap();
    let (code, _) = l.closed().await;
    assert_eq!(code, close_code::PROTOCOL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_listener_that_vanishes_ends_the_task() {
    let l = Listener::open(3600, None);
    drop(l.reader);
    drop(l.writer);
    tokio::time::timeout(PING * 3, l.task)
        .await
        .expect("the task ends once the socket is gone")
        .unwrap();
}
