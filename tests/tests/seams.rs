//! The seams a cluster implements, proven with two brokers in one process: they share an
//! in-memory directory, interconnect and revocation bus (and the store and CA, as cluster
//! nodes share PostgreSQL), and a listener on one serves senders of the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_tests::certs::Env;
use relay_tests::{Edge, KEY, KEY_NAME, token_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn a_listener_on_one_broker_serves_senders_of_the_other_and_revocation_reaches_it() {
    let (env, b) = Env::pair("seams-pair").await;
    let dir = env.register("site-9", &["hyco"]).await;
    let identity = env.identity(&dir);

    // The listener's control channel is on broker b.
    let config = relay_listener::ListenerConfig::with_certificate(
        format!("wss://{}", b.addr),
        "hyco",
        Arc::clone(&identity),
        Some(&env.server_ca()),
    )
    .unwrap();
    let listener = relay_listener::Listener::new(config);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { listener.run(Arc::new(Edge), stop).await }
    });
    // The directory is shared: node a counts the listener that node b holds.
    env.wait_listeners("hyco", 1, Duration::from_secs(10)).await;
    assert_eq!(b.broker.listener_count("hyco"), 1);

    // A WebSocket sender on node a: the accept notice crosses to b, the listener dials a.
    let mut conn = env.sender(&env.wss(), "hyco").await;
    conn.stream.write_all(b"across two brokers").await.unwrap();
    let mut echoed = [0u8; 18];
    conn.stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"across two brokers");

    // HTTP on node a: the request notice crosses to b, and the inline answer comes back
    // from b's control channel to a through the interconnect.
    let url = env.url("/hyco/status");
    let token = token_for(
        &format!("http://{}/hyco", env.broker.addr),
        KEY_NAME,
        KEY,
        60,
    );
    let headers = [("ServiceBusAuthorization", token.as_str())];
    let (status, body) = relay_io::http1::call(&url, "GET", &headers, b"", Some(&env.anonymous()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"edge saw /hyco/status");
    // A response too large to go inline takes the rendezvous, also to node a.
    let url = env.url("/hyco/big");
    let (status, body) = relay_io::http1::call(&url, "GET", &headers, b"", Some(&env.anonymous()))
        .await
        .unwrap();
    assert_eq!((status, body.len()), (200, 300 * 1024));

    // Revoked on node a: the listener's channel on node b closes within a second, and so
    // does the connection node a relays for it.
    let path = format!("/listeners/{}/revoke", identity.listener_id());
    let (code, reply) = env.admin("POST", &path, serde_json::Value::Null).await;
    assert_eq!(code, 200, "{reply}");
    let revoked_at = Instant::now();
    let started = Instant::now();
    while b.broker.listener_count("hyco") != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node b still holds the revoked listener"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), conn.stream.read_to_end(&mut rest))
        .await
        .expect("the relayed connection on node a is cut within 1 s")
        .ok();
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    stop.cancel();
    task.await.unwrap();
    b.shutdown().await;
}
