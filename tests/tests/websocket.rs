//! End-to-end WebSocket relay tests over real sockets on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_core::control::ListenerCommand;
use relay_core::frame::OpCode;
use relay_io::{Message, WsError};
use relay_tests::{RawListener, TestBroker, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn accept_of(cmd: ListenerCommand) -> relay_core::control::Accept {
    match cmd {
        ListenerCommand::Accept(a) => a,
        other => panic!("expected accept, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_carries_the_sender_and_relays_frames_half_close_and_close_codes() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    let url = format!(
        "{}/$hc/hyco/sub?x=1&sb-hc-action=connect&sb-hc-id=t-1",
        broker.ws()
    );
    let token = broker.token("hyco");
    let sender = tokio::spawn(async move {
        ws_connect(
            &url,
            Some(&token),
            &["chat.v2", "chat.v1"],
            &[("X-Custom", "abc")],
        )
        .await
    });

    let accept = accept_of(listener.command().await);
    assert_eq!(accept.id, "t-1");
    assert!(accept.connect_headers.get("Sec-WebSocket-Key").is_some());
    assert_eq!(accept.connect_headers.get("x-custom"), Some("abc"));
    assert!(
        accept
            .connect_headers
            .get("ServiceBusAuthorization")
            .is_none()
    );
    assert!(
        accept.address.contains("/hyco/sub?x=1&") && accept.address.contains("sb-hc-action=accept")
    );
    assert!(!accept.address.contains("sb-hc-token"));
    assert!(accept.remote_endpoint.is_some());

    let mut side_l = ws_connect(&accept.address, None, &["chat.v2"], &[])
        .await
        .unwrap();
    let mut side_s = sender.await.unwrap().unwrap();
    assert_eq!(side_s.protocol.as_deref(), Some("chat.v2"));
    assert_eq!(side_l.protocol.as_deref(), Some("chat.v2"));

    // A 5 MB message in a single frame passes through, streamed.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    side_s
        .writer
        .send(true, OpCode::Binary, &big)
        .await
        .unwrap();
    side_s.writer.flush().await.unwrap();
    assert_eq!(
        side_l.reader.message(8 << 20).await.unwrap(),
        Some(Message::Binary(big))
    );
    let relayed = broker
        .broker
        .counters()
        .bytes_to_listener
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        relayed >= 5_000_000,
        "metrics count relayed bytes: {relayed}"
    );
    side_l.writer.text("hi").await.unwrap();
    assert_eq!(
        side_s.reader.message(1024).await.unwrap(),
        Some(Message::Text("hi".into()))
    );

    // Half-close: the sender's Close arrives verbatim, and the listener can still talk.
    side_s.writer.close(4000, "bye").await.unwrap();
    assert_eq!(
        side_l.reader.message(1024).await.unwrap(),
        Some(Message::Close(Some((4000, "bye".into()))))
    );
    side_l.writer.text("after close").await.unwrap();
    assert_eq!(
        side_s.reader.message(1024).await.unwrap(),
        Some(Message::Text("after close".into()))
    );
    side_l.writer.close(1000, "done").await.unwrap();
    assert_eq!(
        side_s.reader.message(1024).await.unwrap(),
        Some(Message::Close(Some((1000, "done".into()))))
    );

    // The address worked once.
    let again = ws_connect(&accept.address, None, &[], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(again, WsError::Refused { status: 403, ref reason } if reason.contains("TrackingId:")),
        "{again:?}"
    );
}

#[tokio::test]
async fn reject_gives_the_listener_410_and_the_sender_its_status() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    let token = broker.token("hyco");
    let sender = tokio::spawn(async move { ws_connect(&url, Some(&token), &[], &[]).await });
    let accept = accept_of(listener.command().await);
    let reject = format!(
        "{}&sb-hc-statusCode=403&sb-hc-statusDescription=nope",
        accept.address
    );
    assert!(matches!(
        ws_connect(&reject, None, &[], &[]).await,
        Err(WsError::Refused { status: 410, .. })
    ));
    let err = sender.await.unwrap().unwrap_err();
    assert!(
        matches!(err, WsError::Refused { status: 403, ref reason } if reason.contains("nope")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unused_address_expires() {
    let broker = TestBroker::start("[limits]\naccept_timeout_secs = 0.3").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    let token = broker.token("hyco");
    let sender = tokio::spawn(async move { ws_connect(&url, Some(&token), &[], &[]).await });
    let accept = accept_of(listener.command().await);
    let err = sender.await.unwrap().unwrap_err();
    assert!(
        matches!(err, WsError::Refused { status: 504, .. }),
        "{err:?}"
    );
    assert!(matches!(
        ws_connect(&accept.address, None, &[], &[]).await,
        Err(WsError::Refused { status: 403, .. })
    ));
    assert_eq!(broker.broker.pending_rendezvous(), 0);
}

#[tokio::test]
async fn twenty_five_listeners_then_quota_and_load_is_spread() {
    let broker = TestBroker::start("").await;
    let url = format!("{}/$hc/hyco?sb-hc-action=listen", broker.ws());
    let mut listeners = Vec::new();
    for _ in 0..25 {
        listeners.push(
            ws_connect(&url, Some(&broker.token("hyco")), &[], &[])
                .await
                .unwrap(),
        );
    }
    let err = ws_connect(&url, Some(&broker.token("hyco")), &[], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, WsError::Refused { status: 403, ref reason } if reason.contains("MaximumListenersPerEndpoint"))
    );
    drop(listeners.split_off(3));
    broker.wait_listeners("hyco", 3).await;

    // 30 senders over 3 listeners: each listener rejects what it gets and counts it.
    let mut counts = Vec::new();
    let mut handles = Vec::new();
    for conn in listeners {
        let mut raw = RawListener { conn };
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            while let Some(Message::Text(t)) = raw.message().await {
                if let Ok(ListenerCommand::Accept(a)) =
                    ListenerCommand::decode(t.as_bytes(), 1 << 16)
                {
                    n += 1;
                    let reject = format!(
                        "{}&sb-hc-statusCode=409&sb-hc-statusDescription=busy",
                        a.address
                    );
                    let _ = ws_connect(&reject, None, &[], &[]).await;
                    if n == 10 {
                        break;
                    }
                }
            }
            n
        }));
    }
    let connect = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    for _ in 0..30 {
        let err = ws_connect(&connect, Some(&broker.token("hyco")), &[], &[])
            .await
            .unwrap_err();
        assert!(matches!(err, WsError::Refused { status: 409, .. }));
    }
    for h in handles {
        counts.push(h.await.unwrap());
    }
    assert_eq!(counts, [10, 10, 10], "round-robin spreads senders evenly");
}

#[tokio::test]
async fn garbage_frames_pings_and_abrupt_ends() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "hyco").await;

    // The broker answers pings itself and drops unsolicited pongs.
    let (mut s, mut l) = pair(&broker, &mut listener).await;
    s.writer.send(true, OpCode::Ping, b"p1").await.unwrap();
    s.writer
        .send(true, OpCode::Pong, b"unsolicited")
        .await
        .unwrap();
    s.writer.text("data").await.unwrap();
    assert_eq!(
        s.reader.message(64).await.unwrap(),
        Some(Message::Pong(b"p1".to_vec()))
    );
    assert_eq!(
        l.reader.message(64).await.unwrap(),
        Some(Message::Text("data".into()))
    );

    // A frame with reserved bits set: 1002 to its sender, 1001 to the other side.
    s.writer.write_raw(&[0xf2, 0x80, 0, 0, 0, 0]).await.unwrap();
    s.writer.flush().await.unwrap();
    assert!(matches!(
        s.reader.message(64).await.unwrap(),
        Some(Message::Close(Some((1002, _))))
    ));
    assert!(matches!(
        l.reader.message(64).await.unwrap(),
        Some(Message::Close(Some((1001, _))))
    ));

    // A sender that vanishes gets its listener a 1001.
    let (s, mut l) = pair(&broker, &mut listener).await;
    drop(s);
    assert!(matches!(
        l.reader.message(64).await.unwrap(),
        Some(Message::Close(Some((1001, _))))
    ));
}

#[tokio::test]
async fn library_listener_and_sender_echo_with_half_close() {
    let broker = TestBroker::start("").await;
    let token = Arc::new(relay_listener::SasKeySource::new(
        relay_tests::KEY_NAME,
        relay_tests::KEY,
    ));
    let listener = relay_listener::Listener::new(relay_listener::ListenerConfig::new(
        broker.ws(),
        "a/b",
        token,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = Arc::new(|conn: relay_listener::IncomingConnection| async move {
        assert_eq!(conn.path, "/deep/path");
        assert_eq!(conn.query, "q=1");
        let stream = conn.accept().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { listener.run(handler, stop).await })
    };
    broker.wait_listeners("a/b", 1).await;

    let options = relay_sender::ConnectOptions {
        token: Some(relay_sender::sas_token(
            &broker.ws(),
            "a/b",
            relay_tests::KEY_NAME,
            relay_tests::KEY,
            60,
        )),
        path: "/deep/path".into(),
        query: "q=1".into(),
        ..Default::default()
    };
    let mut conn = relay_sender::connect(&broker.ws(), "a/b", &options)
        .await
        .unwrap();
    let payload = vec![7u8; 300_000];
    conn.stream.write_all(&payload).await.unwrap();
    conn.stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        conn.stream.read_to_end(&mut echoed),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(echoed, payload);
    stop.cancel();
    run.await.unwrap();
}

async fn pair(
    broker: &TestBroker,
    listener: &mut RawListener,
) -> (relay_io::client::Connected, relay_io::client::Connected) {
    let url = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    let token = broker.token("hyco");
    let sender =
        tokio::spawn(async move { ws_connect(&url, Some(&token), &[], &[]).await.unwrap() });
    let accept = accept_of(listener.command().await);
    let l = ws_connect(&accept.address, None, &[], &[]).await.unwrap();
    (sender.await.unwrap(), l)
}

#[tokio::test]
async fn shutdown_drains_in_flight_connections_and_refuses_new_ones() {
    let broker = TestBroker::start("[limits]\nshutdown_drain_secs = 10").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    let (mut s, mut l) = pair(&broker, &mut listener).await;
    broker.stop.cancel();
    assert!(matches!(
        listener.message().await,
        Some(Message::Close(Some((1001, _))))
    ));
    // The relayed connection keeps working during the drain.
    s.writer.text("still here").await.unwrap();
    assert_eq!(
        l.reader.message(64).await.unwrap(),
        Some(Message::Text("still here".into()))
    );
    s.writer.close(1000, "bye").await.unwrap();
    assert!(matches!(
        l.reader.message(64).await.unwrap(),
        Some(Message::Close(Some((1000, _))))
    ));
    l.writer.close(1000, "bye").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), broker.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Echo listener (library) on `hc`, reached through `endpoint`.
async fn echo_listener(
    endpoint: &str,
    hc: &str,
    tls: Option<Arc<relay_io::rustls::ClientConfig>>,
) -> tokio_util::sync::CancellationToken {
    let token = Arc::new(relay_listener::SasKeySource::new(
        relay_tests::KEY_NAME,
        relay_tests::KEY,
    ));
    let mut config = relay_listener::ListenerConfig::new(endpoint, hc, token);
    config.tls = tls;
    let listener = relay_listener::Listener::new(config);
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = Arc::new(|conn: relay_listener::IncomingConnection| async move {
        let Ok(stream) = conn.accept().await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let s = stop.clone();
    tokio::spawn(async move { listener.run(handler, s).await });
    stop
}

async fn echo_through(
    endpoint: &str,
    hc: &str,
    tls: Option<Arc<relay_io::rustls::ClientConfig>>,
) -> Vec<u8> {
    let options = relay_sender::ConnectOptions {
        token: Some(relay_sender::sas_token(
            endpoint,
            hc,
            relay_tests::KEY_NAME,
            relay_tests::KEY,
            60,
        )),
        tls,
        ..Default::default()
    };
    let mut conn = relay_sender::connect(endpoint, hc, &options).await.unwrap();
    conn.stream.write_all(b"ping over the relay").await.unwrap();
    conn.stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

#[tokio::test]
async fn azure_connection_string_reaches_a_local_plain_broker() {
    let broker = TestBroker::start("").await;
    let cs = format!(
        "Endpoint=sb://{}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath=hyco",
        broker.addr,
        relay_tests::KEY_NAME,
        relay_tests::KEY
    );
    let target = relay_core::connection_string::Target::resolve(
        &relay_core::connection_string::TargetArgs {
            connection_string: Some(&cs),
            ..Default::default()
        },
    )
    .unwrap();
    let _stop = echo_listener(&target.endpoint, &target.hc, None).await;
    broker.wait_listeners("hyco", 1).await;
    assert_eq!(
        echo_through(&target.endpoint, "hyco", None).await,
        b"ping over the relay"
    );
}

#[tokio::test]
async fn tls_end_to_end_with_a_private_ca() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("relay-tls-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let server = relay_io::tls::server_config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let broker = TestBroker::start_with("", relay_broker::ServeOptions { tls: Some(server) }).await;
    let client = relay_io::tls::client_config(Some(&dir.join("cert.pem"))).unwrap();
    let endpoint = format!("wss://{}", broker.addr);
    let _stop = echo_listener(&endpoint, "hyco", Some(Arc::clone(&client))).await;
    broker.wait_listeners("hyco", 1).await;
    assert_eq!(
        echo_through(&endpoint, "hyco", Some(Arc::clone(&client))).await,
        b"ping over the relay"
    );
    // sb:// means TLS: it is used when the broker speaks it.
    assert_eq!(
        echo_through(&format!("sb://{}", broker.addr), "hyco", Some(client)).await,
        b"ping over the relay"
    );
    // Without the private CA the handshake is refused.
    let untrusted =
        relay_sender::connect(&endpoint, "hyco", &relay_sender::ConnectOptions::default()).await;
    assert!(matches!(
        untrusted,
        Err(relay_sender::SenderError::Ws(relay_io::WsError::Tls(_)))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
