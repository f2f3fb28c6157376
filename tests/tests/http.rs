//! End-to-end relayed HTTP: inline and rendezvous paths, deadlines, auth and header rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::routing::any;
use bytes::Bytes;
use relay_core::control::{self, ListenerCommand};
use relay_io::Message;
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request};

/// Starts our listener library serving an axum app on `hyco`.
async fn serve_app(broker: &TestBroker) -> tokio_util::sync::CancellationToken {
    async fn echo(req: axum::extract::Request) -> axum::response::Response {
        use http_body_util::BodyExt as _;
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let big = parts.uri.path().ends_with("/big");
        let text = format!(
            "{} {} {} auth={:?} custom={:?} via={:?}",
            parts.method,
            parts.uri,
            body.len(),
            parts.headers.get("authorization"),
            parts.headers.get("x-custom"),
            parts.headers.get("via")
        );
        let payload = if big {
            Bytes::from(vec![b'z'; 300_000])
        } else {
            Bytes::from(text)
        };
        axum::response::Response::builder()
            .header("content-type", "text/plain")
            .body(payload.into())
            .unwrap()
    }
    let app = axum::Router::new().fallback(any(echo));
    let token = Arc::new(relay_listener::SasKeySource::new(KEY_NAME, KEY));
    let listener = relay_listener::Listener::new(relay_listener::ListenerConfig::new(
        broker.ws(),
        "hyco",
        token,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        listener
            .run(Arc::new(relay_listener::ServiceHandler(app)), s)
            .await;
    });
    broker.wait_listeners("hyco", 1).await;
    stop
}

#[tokio::test]
async fn inline_and_rendezvous_requests_through_an_axum_app() {
    let broker = TestBroker::start("").await;
    let _stop = serve_app(&broker).await;
    let token = broker.token("hyco");
    let url = format!("{}/hyco/a/b?q=1&sb-hc-id=z", broker.http());

    let (status, headers, body) = http_request(
        "POST",
        &url,
        &[("ServiceBusAuthorization", &token), ("X-Custom", "abc")],
        vec![b'x'; 1000],
    )
    .await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("POST /hyco/a/b?q=1 1000 auth=None custom=Some(\"abc\")"),
        "{text}"
    );
    assert!(text.contains("via=Some("), "the broker adds Via: {text}");
    assert!(headers.get("via").is_some());
    assert_eq!(headers.get("content-type").unwrap(), "text/plain");

    // Over 64 kB: the request goes by rendezvous, and so does the response.
    let (status, _, body) = http_request(
        "PUT",
        &url,
        &[("ServiceBusAuthorization", &token)],
        vec![b'y'; 200_000],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .starts_with("PUT /hyco/a/b?q=1 200000")
    );
    let big = format!("{}/hyco/big", broker.http());
    let (status, _, body) =
        http_request("GET", &big, &[("ServiceBusAuthorization", &token)], vec![]).await;
    assert_eq!((status, body.len()), (200, 300_000));

    // Twenty in parallel.
    let mut handles = Vec::new();
    for i in 0..20 {
        let url = format!("{}/hyco/p{i}", broker.http());
        let token = token.clone();
        handles.push(tokio::spawn(async move {
            http_request("GET", &url, &[("ServiceBusAuthorization", &token)], vec![]).await
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let (status, _, body) = h.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .starts_with(&format!("GET /hyco/p{i} "))
        );
    }
}

#[tokio::test]
async fn token_locations_and_authorization_passthrough() {
    let broker = TestBroker::start("").await;
    let _stop = serve_app(&broker).await;
    let token = broker.token("hyco");
    let base = format!("{}/hyco/x", broker.http());
    let (status, headers, body) = http_request("GET", &base, &[], vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TrackingId:")
    );

    let encoded: String = url_encode(&token);
    let (status, _, body) = http_request(
        "GET",
        &format!("{base}?sb-hc-token={encoded}"),
        &[("Authorization", "app-secret")],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("GET /hyco/x 0 auth=Some(\"app-secret\")"),
        "Authorization passes when the token came elsewhere: {text}"
    );

    let (status, _, body) = http_request("GET", &base, &[("Authorization", &token)], vec![]).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body).unwrap().contains("auth=None"),
        "a consumed Authorization is stripped"
    );

    let wrong = relay_tests::token_for(
        &format!("http://{}/hyco", broker.addr),
        KEY_NAME,
        "wrong",
        60,
    );
    assert_eq!(
        http_request("GET", &base, &[("ServiceBusAuthorization", &wrong)], vec![])
            .await
            .0,
        401
    );
    let other = broker.token("a/b");
    assert_eq!(
        http_request("GET", &base, &[("ServiceBusAuthorization", &other)], vec![])
            .await
            .0,
        401
    );
    let listen_only = relay_tests::token_for(
        &format!("http://{}/hyco", broker.addr),
        "listen-only",
        "lk",
        60,
    );
    assert_eq!(
        http_request(
            "GET",
            &base,
            &[("ServiceBusAuthorization", &listen_only)],
            vec![]
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http_request("GET", &format!("{}/nope", broker.http()), &[], vec![])
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn no_listener_deadline_and_raw_protocol() {
    let broker = TestBroker::start("[limits]\nhttp_request_timeout_secs = 0.5").await;
    let url = format!("{}/open/p?k=v&sb-hc-token=x", broker.http());
    assert_eq!(http_request("GET", &url, &[], vec![]).await.0, 502);

    let mut listener = RawListener::open(&broker, "open").await;
    let request = tokio::spawn({
        let url = url.clone();
        async move {
            http_request(
                "POST",
                &url,
                &[
                    ("Connection", "keep-alive, X-Hop"),
                    ("X-Hop", "1"),
                    ("Via", "1.0 proxy"),
                ],
                b"abc".to_vec(),
            )
            .await
        }
    });
    let ListenerCommand::Request(req) = listener.command().await else {
        panic!("expected request")
    };
    assert_eq!(
        req.request_target.as_deref(),
        Some("/open/p?k=v"),
        "sb-hc-* is stripped"
    );
    assert_eq!(req.method.as_deref(), Some("POST"));
    assert_eq!(req.body, Some(true));
    let headers = req.request_headers.clone().unwrap();
    assert!(
        headers.get("x-hop").is_none()
            && headers.get("connection").is_none()
            && headers.get("content-length").is_none()
    );
    assert!(headers.get("via").unwrap().starts_with("1.0 proxy, 1.1 "));
    assert_eq!(
        listener.message().await,
        Some(Message::Binary(b"abc".to_vec()))
    );
    // Answer with a string status, inline, with a body.
    let response = ListenerCommand::Response(control::Response {
        request_id: req.id.clone(),
        status_code: 201,
        status_description: Some("Made".into()),
        response_headers: control::Headers(vec![
            ("x-answer".into(), "yes".into()),
            ("transfer-encoding".into(), "chunked".into()),
        ]),
        body: true,
    });
    listener
        .conn
        .writer
        .text(&response.encode().replace("201", "\"201\""))
        .await
        .unwrap();
    listener
        .conn
        .writer
        .send(true, relay_core::frame::OpCode::Binary, b"made")
        .await
        .unwrap();
    listener.conn.writer.flush().await.unwrap();
    let (status, headers, body) = request.await.unwrap();
    assert_eq!((status, body.as_slice()), (201, &b"made"[..]));
    assert_eq!(headers.get("x-answer").unwrap(), "yes");

    // A request nobody answers gets 504 at the deadline, and the stray empty frame and
    // unsolicited response that follow are harmless.
    let late = tokio::spawn(async move { http_request("GET", &url, &[], vec![]).await });
    let ListenerCommand::Request(req) = listener.command().await else {
        panic!("expected request")
    };
    assert_eq!(late.await.unwrap().0, 504);
    let stale = ListenerCommand::Response(control::Response {
        request_id: req.id,
        status_code: 200,
        status_description: None,
        response_headers: control::Headers::default(),
        body: false,
    });
    listener.conn.writer.text(&stale.encode()).await.unwrap();
    listener
        .conn
        .writer
        .send(true, relay_core::frame::OpCode::Binary, b"")
        .await
        .unwrap();
    listener.conn.writer.flush().await.unwrap();
    assert_eq!(broker.broker.listener_count("open"), 1);
    assert_eq!(
        http_request("CONNECT", &format!("{}/open", broker.http()), &[], vec![])
            .await
            .0,
        405
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let broker = TestBroker::start("").await;
    let _stop = serve_app(&broker).await;
    assert_eq!(
        http_request("GET", &format!("{}/healthz", broker.http()), &[], vec![])
            .await
            .0,
        200
    );
    assert_eq!(
        http_request("GET", &format!("{}/readyz", broker.http()), &[], vec![])
            .await
            .0,
        200
    );
    let token = broker.token("hyco");
    let url = format!("{}/hyco/m", broker.http());
    let (status, _, _) = http_request(
        "POST",
        &url,
        &[("ServiceBusAuthorization", &token)],
        vec![1; 10],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(http_request("GET", &url, &[], vec![]).await.0, 401);
    let (status, headers, body) =
        http_request("GET", &format!("{}/metrics", broker.http()), &[], vec![]).await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        text.contains("relay_listeners{hybrid_connection=\"hyco\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("relay_http_responses_total{class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("relay_http_responses_total{class=\"4xx\"} 1"),
        "{text}"
    );
    assert!(text.contains("relay_auth_failures_total 1"), "{text}");
    assert!(text.contains("relay_bytes_to_listener_total 10"), "{text}");
    assert!(
        text.contains("relay_http_request_duration_seconds_count 2"),
        "{text}"
    );
    broker.broker.begin_shutdown();
    assert_eq!(
        http_request("GET", &format!("{}/readyz", broker.http()), &[], vec![])
            .await
            .0,
        503
    );
}

#[tokio::test]
async fn a_burst_larger_than_the_control_queue_waits_for_room_instead_of_failing() {
    // A queue of 8 and 300 requests at once through our listener library: every request
    // waits, within its deadline, for room, and none is told there is no listener.
    let broker = TestBroker::start("[limits]\ncontrol_queue = 8").await;
    let _stop = serve_app(&broker).await;
    let token = broker.token("hyco");
    let url = format!("{}/hyco/burst", broker.http());
    let requests: Vec<_> = (0..300)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                http_request("GET", &url, &[("ServiceBusAuthorization", &token)], vec![])
                    .await
                    .0
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for r in requests {
        *statuses.entry(r.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, 300)].into_iter().collect(), "{statuses:?}");
}

#[tokio::test]
async fn a_listener_whose_queue_stays_full_gets_503_with_retry_after() {
    // A raw listener that never reads its control channel, a queue of 1 and a short
    // deadline: once the socket buffers are full too, requests get 503 with Retry-After,
    // never 502 "no listener".
    let broker = TestBroker::start(
        "[limits]\ncontrol_queue = 1\nhttp_request_timeout_secs = 2\nping_interval_secs = 300",
    )
    .await;
    let _listener = RawListener::open(&broker, "open").await;
    let url = format!("{}/open/x", broker.http());
    let big = "x".repeat(30_000);
    let requests: Vec<_> = (0..400)
        .map(|_| {
            let (url, big) = (url.clone(), big.clone());
            tokio::spawn(async move { http_request("GET", &url, &[("X-Big", &big)], vec![]).await })
        })
        .collect();
    let mut busy = 0;
    for r in requests {
        let (status, headers, _) = r.await.unwrap();
        assert!(
            matches!(status, 503 | 504),
            "{status}: a connected listener is busy, not absent"
        );
        if status == 503 {
            assert_eq!(headers["retry-after"], "1");
            busy += 1;
        }
    }
    assert!(busy > 0, "the queue and the socket buffers filled up");
}
