//! The listener library's own bound on connections and requests in flight: past it a
//! WebSocket sender is refused with 503 and an HTTP request answered 503 at once, and a
//! place frees when a connection ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_listener::{Handler, IncomingConnection, RelayBody, full_body};
use relay_tests::{TestBroker, http_request};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Echoes connections until the sender closes; answers HTTP with 200.
struct Echo;

impl Handler for Echo {
    async fn on_connection(&self, conn: IncomingConnection) {
        let stream = conn.accept().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }

    async fn on_request(&self, _req: http::Request<RelayBody>) -> http::Response<RelayBody> {
        http::Response::new(full_body("served"))
    }
}

#[tokio::test]
async fn past_its_bound_a_listener_refuses_with_503_and_frees_places_as_work_ends() {
    let broker = TestBroker::start("").await;
    let token = Arc::new(relay_listener::SasKeySource::new(
        relay_tests::KEY_NAME,
        relay_tests::KEY,
    ));
    let mut config = relay_listener::ListenerConfig::new(broker.ws(), "hyco", token);
    config.max_in_flight = 1;
    let listener = Arc::new(relay_listener::Listener::new(config));
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn({
        let (listener, stop) = (Arc::clone(&listener), stop.clone());
        async move { listener.run(Arc::new(Echo), stop).await }
    });
    broker.wait_listeners("hyco", 1).await;

    // One connection holds the only place.
    let mut first = relay_sender::connect(&broker.ws(), "hyco", &broker.sender_options(""))
        .await
        .unwrap();
    first.stream.write_all(b"held").await.unwrap();
    let mut echoed = [0u8; 4];
    first.stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(listener.in_flight(), 1);

    // A second sender is refused with the listener's 503, not left waiting.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        relay_sender::connect(&broker.ws(), "hyco", &broker.sender_options("")),
    )
    .await
    .expect("refused at once");
    let Err(err) = refused else {
        panic!("a second sender got through a bound of one");
    };
    let err = err.to_string();
    assert!(err.contains("503"), "{err}");

    // So is an HTTP request, inline.
    let url = format!("{}/hyco/x", broker.http());
    let auth = broker.token("hyco");
    let (status, headers, body) =
        http_request("GET", &url, &[("ServiceBusAuthorization", &auth)], vec![]).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("bound of 1"));
    assert!(headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));

    // When the connection ends, its place is free again.
    first.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.stream.read_to_end(&mut rest).await.unwrap();
    for _ in 0..200 {
        if listener.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) =
        http_request("GET", &url, &[("ServiceBusAuthorization", &auth)], vec![]).await;
    assert_eq!((status, body.as_slice()), (200, b"served".as_slice()));

    stop.cancel();
    run.await.unwrap();
}
