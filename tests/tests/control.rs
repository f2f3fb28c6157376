//! Control channel behaviour: handshake errors, renewal, expiry, keep-alive, limits,
//! throttling and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use relay_core::control::{ListenerCommand, RenewToken};
use relay_io::{Message, WsError};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, token_for, ws_connect};

fn listen_url(broker: &TestBroker, hc: &str) -> String {
    format!("{}/$hc/{hc}?sb-hc-action=listen", broker.ws())
}

async fn close_code(listener: &mut RawListener) -> (u16, String) {
    loop {
        match listener.message().await {
            Some(Message::Close(Some((code, reason)))) => return (code, reason),
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn handshake_errors_carry_status_and_tracking_id() {
    let broker = TestBroker::start("").await;
    let refused = |r: Result<relay_io::client::Connected, WsError>| match r {
        Err(WsError::Refused { status, reason }) => {
            assert!(reason.contains("TrackingId:"), "{reason}");
            status
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(ws_connect(&listen_url(&broker, "hyco"), None, &[], &[]).await),
        401
    );
    let wrong = token_for(
        &format!("http://{}/hyco", broker.addr),
        KEY_NAME,
        "nope",
        60,
    );
    assert_eq!(
        refused(ws_connect(&listen_url(&broker, "hyco"), Some(&wrong), &[], &[]).await),
        401
    );
    assert_eq!(
        refused(
            ws_connect(
                &listen_url(&broker, "missing"),
                Some(&broker.token("missing")),
                &[],
                &[]
            )
            .await
        ),
        404
    );
    let listen_only = token_for(
        &format!("http://{}/hyco", broker.addr),
        "listen-only",
        "lk",
        60,
    );
    let connect = format!("{}/$hc/hyco?sb-hc-action=connect", broker.ws());
    assert_eq!(
        refused(ws_connect(&connect, Some(&listen_only), &[], &[]).await),
        403
    );
    let no_action = format!("{}/$hc/hyco", broker.ws());
    assert_eq!(
        refused(ws_connect(&no_action, Some(&broker.token("hyco")), &[], &[]).await),
        400
    );
    // No listener for a WebSocket sender: 404, which .NET senders treat as transient.
    assert_eq!(
        refused(ws_connect(&connect, Some(&broker.token("hyco")), &[], &[]).await),
        404
    );

    // Headers over 32 kB are refused before anything else.
    let huge = "x".repeat(40 * 1024);
    let err = ws_connect(
        &listen_url(&broker, "hyco"),
        Some(&broker.token("hyco")),
        &[],
        &[("X-Huge", &huge)],
    )
    .await;
    assert!(
        matches!(err, Err(WsError::Refused { status: 431, .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn renewal_keeps_the_channel_and_a_bad_one_closes_it_with_1008() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    let renew = ListenerCommand::RenewToken(RenewToken {
        token: broker.token("hyco"),
    });
    listener.conn.writer.text(&renew.encode()).await.unwrap();
    listener
        .conn
        .writer
        .send(true, relay_core::frame::OpCode::Ping, b"still?")
        .await
        .unwrap();
    listener.conn.writer.flush().await.unwrap();
    assert_eq!(
        listener.message().await,
        Some(Message::Pong(b"still?".to_vec()))
    );

    let bad = ListenerCommand::RenewToken(RenewToken {
        token: token_for("http://x/hyco", KEY_NAME, "wrong", 60),
    });
    listener.conn.writer.text(&bad.encode()).await.unwrap();
    let (code, reason) = close_code(&mut listener).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("TrackingId:"));
    broker.wait_listeners("hyco", 0).await;
}

#[tokio::test]
async fn an_expired_token_closes_the_channel_after_the_grace() {
    let broker = TestBroker::start("[limits]\ntoken_grace_secs = 1").await;
    let url = listen_url(&broker, "hyco");
    let short = token_for(&format!("http://{}/hyco", broker.addr), KEY_NAME, KEY, 1);
    let conn = ws_connect(&url, Some(&short), &[], &[]).await.unwrap();
    let mut listener = RawListener { conn };
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut listener).await.0, 1008);
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn broker_pings_and_oversize_or_unsolicited_traffic() {
    let broker = TestBroker::start("[limits]\nping_interval_secs = 0.2").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    match listener.message().await {
        Some(Message::Ping(_)) => {}
        other => panic!("expected a broker ping, got {other:?}"),
    }
    let huge = format!(
        r#"{{"renewToken":{{"token":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    listener.conn.writer.text(&huge).await.unwrap();
    assert_eq!(close_code(&mut listener).await.0, 1009);

    let mut listener = RawListener::open(&broker, "hyco").await;
    for _ in 0..150 {
        listener
            .conn
            .writer
            .text(r#"{"accept":{"address":"x","id":"y"}}"#)
            .await
            .unwrap();
    }
    assert_eq!(close_code(&mut listener).await.0, 1008);
    assert!(
        broker
            .broker
            .counters()
            .unsolicited
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100
    );
}

#[tokio::test]
async fn a_bad_key_storm_does_not_starve_a_good_listener() {
    let broker = TestBroker::start("[limits]\nauth_failures_per_minute = 5").await;
    let url = listen_url(&broker, "hyco");
    let bad = token_for(
        &format!("http://{}/hyco", broker.addr),
        KEY_NAME,
        "wrong",
        60,
    );
    let storm = tokio::spawn({
        let url = url.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                if let Err(WsError::Refused { status, .. }) =
                    ws_connect(&url, Some(&bad), &[], &[]).await
                {
                    statuses.push(status);
                }
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let good = ws_connect(&url, Some(&broker.token("hyco")), &[], &[]).await;
    assert!(
        good.is_ok(),
        "the good listener gets through during the storm"
    );
    let statuses = storm.await.unwrap();
    assert!(
        statuses.contains(&401) && statuses.contains(&429),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_control_channels_with_1001() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "hyco").await;
    broker.stop.cancel();
    assert_eq!(close_code(&mut listener).await.0, 1001);
    tokio::time::timeout(Duration::from_secs(15), broker.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn listener_connects_and_disconnects_are_audited_durably() {
    let dir = std::env::temp_dir().join(format!("relay-audit-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let extra = format!("[store]\npath = \"{}\"", dir.join("relay.db").display());
    let broker = TestBroker::start(&extra).await;
    let listener = RawListener::open(&broker, "hyco").await;
    drop(listener);
    broker.wait_listeners("hyco", 0).await;
    let store = std::sync::Arc::clone(broker.broker.store());
    let mut kinds = Vec::new();
    for _ in 0..200 {
        kinds = store
            .audit(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>();
        if kinds.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kinds, ["listener.connect", "listener.disconnect"]);
    broker.stop.cancel();
    broker.task.await.unwrap().unwrap();
    // Reopened from the file, as after a restart.
    let reopened = relay_broker::SqliteStore::open(&dir.join("relay.db"), &[], &[]).unwrap();
    assert_eq!(
        relay_broker::AuditStore::audit(&reopened, 0, 10)
            .unwrap()
            .len(),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}
