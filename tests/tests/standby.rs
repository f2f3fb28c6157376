//! Standby sockets (our listener's pre-opened rendezvous): senders are paired over them,
//! a silent one falls back to the control channel, and keys and bounds are enforced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use relay_core::control::ListenerCommand;
use relay_core::standby::{STANDBY_HEADER, STANDBY_KEY_HEADER};
use relay_io::{Message, WsError};
use relay_tests::{RawListener, TestBroker, http_request, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `relay_standby_parked` gauge.
async fn parked(broker: &TestBroker) -> u64 {
    let (_, _, body) =
        http_request("GET", &format!("{}/metrics", broker.http()), &[], vec![]).await;
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("relay_standby_parked "))
        .and_then(|v| v.trim().parse().ok())
        .expect("gauge present")
}

async fn wait_parked(broker: &TestBroker, n: u64) {
    for _ in 0..200 {
        if parked(broker).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} standby sockets never parked");
}

fn header<'a>(conn: &'a relay_io::client::Connected, name: &str) -> Option<&'a str> {
    conn.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Writes `payload`, half-closes, and reads everything back.
async fn send_and_read_back(conn: &mut relay_sender::Connection, payload: &[u8]) -> Vec<u8> {
    conn.stream.write_all(payload).await.unwrap();
    conn.stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// A library listener on `hyco` (reconnecting quickly) that rejects `/closed` with 404,
/// and otherwise sends `banner` and echoes.
fn echo_listener(
    broker: &TestBroker,
    banner: &'static [u8],
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let token = Arc::new(relay_listener::SasKeySource::new(
        relay_tests::KEY_NAME,
        relay_tests::KEY,
    ));
    let mut config = relay_listener::ListenerConfig::new(broker.ws(), "hyco", token);
    config.backoff = relay_listener::backoff::Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(200),
    );
    let listener = relay_listener::Listener::new(config);
    let handler = Arc::new(move |conn: relay_listener::IncomingConnection| async move {
        if conn.path == "/closed" {
            let _ = conn.reject(404, "no such door").await;
            return;
        }
        let stream = conn.accept().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        w.write_all(banner).await.unwrap();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { listener.run(handler, stop).await })
    };
    (stop, run)
}

#[tokio::test]
async fn a_library_listener_pairs_senders_over_its_standbys() {
    let broker = TestBroker::start("").await;
    // Speaks first (a banner), so bytes the listener sends right after accepting must
    // survive the broker's switch from the reply to relaying; then echoes.
    let (stop, run) = echo_listener(&broker, b"hello\n");
    broker.wait_listeners("hyco", 1).await;
    wait_parked(&broker, 3).await;

    for round in 0..5u8 {
        let mut conn = relay_sender::connect(&broker.ws(), "hyco", &broker.sender_options(""))
            .await
            .unwrap();
        let payload = vec![round; 200_000];
        let got = send_and_read_back(&mut conn, &payload).await;
        assert_eq!(&got[..6], b"hello\n");
        assert_eq!(&got[6..], &payload[..]);
        // The listener replaces the standby it used.
        wait_parked(&broker, 3).await;
    }
    let err = relay_sender::connect(&broker.ws(), "hyco", &broker.sender_options("/closed"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("404") && text.contains("no such door"),
        "{text}"
    );

    let counters = broker.broker.counters();
    assert_eq!(counters.standby_accepts.load(Ordering::Relaxed), 6);
    assert_eq!(counters.standby_fallbacks.load(Ordering::Relaxed), 0);
    assert_eq!(counters.sender_connects.load(Ordering::Relaxed), 5);
    stop.cancel();
    run.await.unwrap();
    wait_parked(&broker, 0).await;
}

#[tokio::test]
async fn a_silent_standby_falls_back_to_the_control_channel() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open_with(&broker, "hyco", &[(STANDBY_HEADER, "1")]).await;
    broker.wait_listeners("hyco", 1).await;
    assert_eq!(header(&listener.conn, STANDBY_HEADER), Some("1"));
    let key = header(&listener.conn, STANDBY_KEY_HEADER)
        .unwrap()
        .to_owned();
    let standby_url = format!("{}/$hc/hyco?sb-hc-action=standby", broker.ws());
    let mut standby = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, &key)])
        .await
        .unwrap();
    wait_parked(&broker, 1).await;

    let url = format!("{}/$hc/hyco/x?q=1&sb-hc-action=connect", broker.ws());
    let token = broker.token("hyco");
    let sender = tokio::spawn(async move { ws_connect(&url, Some(&token), &[], &[]).await });
    // The job arrives on the standby, in the usual `accept` form without a capability...
    let Some(Message::Text(job)) = standby.reader.message(1 << 20).await.unwrap() else {
        panic!("expected the accept on the standby");
    };
    let ListenerCommand::Accept(on_standby) =
        ListenerCommand::decode(job.as_bytes(), 1 << 20).unwrap()
    else {
        panic!("expected accept");
    };
    assert!(on_standby.address.contains("/hyco/x?q=1&"));
    assert!(!on_standby.address.contains("sb-hc-rendezvous"));
    // ...and this listener never confirms it: the broker takes the standby for dead and
    // hands the same sender over the control channel.
    let ListenerCommand::Accept(accept) = listener.command().await else {
        panic!("expected accept on the control channel");
    };
    assert_eq!(accept.id, on_standby.id);
    assert!(accept.address.contains("sb-hc-rendezvous"));
    let _side = ws_connect(&accept.address, None, &[], &[]).await.unwrap();
    sender.await.unwrap().unwrap();
    let counters = broker.broker.counters();
    assert_eq!(counters.standby_fallbacks.load(Ordering::Relaxed), 1);
    assert_eq!(counters.standby_accepts.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn standby_keys_and_bounds_are_enforced() {
    let broker = TestBroker::start("[limits]\nstandby_per_listener = 1").await;
    let standby_url = format!("{}/$hc/hyco?sb-hc-action=standby", broker.ws());
    // Asked for 5, granted the broker's bound.
    let mut listener = RawListener::open_with(&broker, "hyco", &[(STANDBY_HEADER, "5")]).await;
    assert_eq!(header(&listener.conn, STANDBY_HEADER), Some("1"));
    let key = header(&listener.conn, STANDBY_KEY_HEADER)
        .unwrap()
        .to_owned();

    let refused = |e: WsError| match e {
        WsError::Refused { status, .. } => status,
        other => panic!("expected a refusal, got {other}"),
    };
    let no_key = ws_connect(&standby_url, None, &[], &[]).await.unwrap_err();
    assert_eq!(refused(no_key), 403);
    let wrong = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, "guess")]).await;
    assert_eq!(refused(wrong.unwrap_err()), 403);
    let other_hc = format!("{}/$hc/open?sb-hc-action=standby", broker.ws());
    let elsewhere = ws_connect(&other_hc, None, &[], &[(STANDBY_KEY_HEADER, &key)]).await;
    assert_eq!(refused(elsewhere.unwrap_err()), 403);

    let mut first = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, &key)])
        .await
        .unwrap();
    let second = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, &key)]).await;
    assert_eq!(refused(second.unwrap_err()), 503);
    wait_parked(&broker, 1).await;

    // The control channel ends: its standby is closed and its key dies.
    listener.conn.writer.close(1000, "bye").await.unwrap();
    let _ = listener.message().await;
    let closed = tokio::time::timeout(Duration::from_secs(10), first.reader.message(1024))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(closed, Some(Message::Close(Some((1001, _))))),
        "{closed:?}"
    );
    wait_parked(&broker, 0).await;
    let after = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, &key)]).await;
    assert_eq!(refused(after.unwrap_err()), 403);

    // A listener that asks for none, and a broker that offers none, get no grant.
    let plain = RawListener::open(&broker, "open").await;
    assert_eq!(header(&plain.conn, STANDBY_KEY_HEADER), None);
    let off = TestBroker::start("[limits]\nstandby_per_listener = 0").await;
    let asked = RawListener::open_with(&off, "hyco", &[(STANDBY_HEADER, "2")]).await;
    assert_eq!(header(&asked.conn, STANDBY_KEY_HEADER), None);
}

#[tokio::test]
async fn the_sender_dialler_replaces_a_connection_the_broker_dropped() {
    let broker = TestBroker::start("").await;
    let addr = broker.addr;
    let (stop, run) = echo_listener(&broker, b"");
    broker.wait_listeners("hyco", 1).await;
    let dialer = relay_sender::WarmDialer::start(&broker.ws(), None, None).unwrap();
    let echo = |dialer: Arc<relay_sender::WarmDialer>, ws: String| async move {
        let options = relay_sender::ConnectOptions {
            token: Some(relay_sender::sas_token(
                &ws,
                "hyco",
                relay_tests::KEY_NAME,
                relay_tests::KEY,
                60,
            )),
            ..Default::default()
        };
        let mut conn = dialer.connect("hyco", &options).await.unwrap();
        let got = send_and_read_back(&mut conn, b"ping").await;
        assert_eq!(got, b"ping");
    };
    echo(Arc::clone(&dialer), broker.ws()).await;
    // Let the dialler open its next connection, then restart the broker under it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.shutdown().await;
    let broker = TestBroker::start_on(addr, "").await;
    broker.wait_listeners("hyco", 1).await;
    // The connection waiting in the dialler is dead; the connect dials afresh instead.
    echo(Arc::clone(&dialer), broker.ws()).await;
    echo(dialer, broker.ws()).await;
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test]
async fn early_pairing_sends_the_first_bytes_with_the_accept() {
    let broker = TestBroker::start("").await;
    let (stop, run) = echo_listener(&broker, b"");
    broker.wait_listeners("hyco", 1).await;
    wait_parked(&broker, 3).await;
    for round in 0..3u8 {
        let mut options = broker.sender_options("");
        options.early_pairing = true;
        let mut conn = relay_sender::connect(&broker.ws(), "hyco", &options)
            .await
            .unwrap();
        let payload = vec![round; 300_000];
        let got = send_and_read_back(&mut conn, &payload).await;
        assert_eq!(got, payload);
        wait_parked(&broker, 3).await;
    }
    // A refusal comes as a Close carrying the status.
    let url = format!("{}/$hc/hyco/closed?sb-hc-action=connect", broker.ws());
    let early = [(relay_core::standby::EARLY_HEADER, "1")];
    let mut refused = ws_connect(&url, Some(&broker.token("hyco")), &[], &early)
        .await
        .unwrap();
    let closed = refused.reader.message(1024).await.unwrap();
    assert_eq!(
        closed,
        Some(Message::Close(Some((
            relay_core::standby::CLOSE_REJECTED,
            "404 no such door".into()
        ))))
    );
    // A sender that closes before the listener answered (a health check) gets its Close
    // answered, and the listener sees the end of stream.
    wait_parked(&broker, 3).await;
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    let mut quick = ws_connect(&url, Some(&broker.token("hyco")), &[], &early)
        .await
        .unwrap();
    quick.writer.close(1000, "").await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), quick.reader.message(1024))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(answer, Some(Message::Close(_))), "{answer:?}");

    let counters = broker.broker.counters();
    assert_eq!(counters.standby_early.load(Ordering::Relaxed), 5);
    assert_eq!(counters.standby_fallbacks.load(Ordering::Relaxed), 0);
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test]
async fn an_early_paired_sender_loses_nothing_when_its_standby_is_dead() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open_with(&broker, "hyco", &[(STANDBY_HEADER, "1")]).await;
    broker.wait_listeners("hyco", 1).await;
    let key = header(&listener.conn, STANDBY_KEY_HEADER)
        .unwrap()
        .to_owned();
    let standby_url = format!("{}/$hc/hyco?sb-hc-action=standby", broker.ws());
    let mut standby = ws_connect(&standby_url, None, &[], &[(STANDBY_KEY_HEADER, &key)])
        .await
        .unwrap();
    wait_parked(&broker, 1).await;

    // The sender has its 101 before the listener did anything.
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    let early = [(relay_core::standby::EARLY_HEADER, "1")];
    let mut sender = ws_connect(&url, Some(&broker.token("hyco")), &[], &early)
        .await
        .unwrap();
    sender
        .writer
        .send(true, relay_core::frame::OpCode::Binary, b"hello")
        .await
        .unwrap();
    sender.writer.flush().await.unwrap();
    // The standby gets the accept and the sender's first bytes behind it, and stays silent.
    let Some(Message::Text(job)) = standby.reader.message(1 << 20).await.unwrap() else {
        panic!("expected the accept");
    };
    assert!(job.starts_with(r#"{"accept""#));
    assert_eq!(
        standby.reader.message(1 << 20).await.unwrap(),
        Some(Message::Binary(b"hello".to_vec()))
    );
    // The broker gives up on it and uses the control channel; the bytes are replayed there.
    let ListenerCommand::Accept(accept) = listener.command().await else {
        panic!("expected accept on the control channel");
    };
    let mut side = ws_connect(&accept.address, None, &[], &[]).await.unwrap();
    assert_eq!(
        side.reader.message(1 << 20).await.unwrap(),
        Some(Message::Binary(b"hello".to_vec()))
    );
    side.writer
        .send(true, relay_core::frame::OpCode::Binary, b"world")
        .await
        .unwrap();
    side.writer.flush().await.unwrap();
    assert_eq!(
        sender.reader.message(1 << 20).await.unwrap(),
        Some(Message::Binary(b"world".to_vec()))
    );
    let counters = broker.broker.counters();
    assert_eq!(counters.standby_early.load(Ordering::Relaxed), 1);
    assert_eq!(counters.standby_fallbacks.load(Ordering::Relaxed), 1);
}
