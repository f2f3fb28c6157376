//! A web UI behind a listener, as a browser uses it: repeated headers, HEAD, the page's own
//! WebSocket, the session cookie after one login, host names per hybrid connection,
//! `X-Forwarded-*`, and responses that stream as they are produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use relay_core::control::{self, ListenerCommand};
use relay_listener::{Handler, IncomingConnection, RelayBody, ServiceHandler};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request, ws_connect};

/// Size of the file the app serves, as in the nginx trial.
const BIG: usize = 2_118_348;

/// The app: every path echoes method, target and headers (each value apart) as JSON, except
/// `/cookies` (two `Set-Cookie`), `/big.bin` (with an explicit HEAD) and `/sse` (one event,
/// a pause of 3 s, another event).
async fn app(req: Request) -> axum::response::Response {
    let builder = axum::response::Response::builder();
    match req.uri().path().rsplit('/').next().unwrap_or("") {
        "cookies" => builder
            .header("set-cookie", "edge_session=s1; Path=/")
            .header("set-cookie", "edge_theme=dark; Path=/settings; HttpOnly")
            .body("two cookies".into())
            .unwrap(),
        "big.bin" if req.method() == http::Method::HEAD => builder
            .header("content-length", BIG.to_string())
            .header("content-type", "application/octet-stream")
            .body(axum::body::Body::empty())
            .unwrap(),
        "big.bin" => builder
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; BIG].into())
            .unwrap(),
        "abort-now" => {
            let failing = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("the app crashed"))
            });
            builder
                .body(axum::body::Body::from_stream(failing))
                .unwrap()
        }
        "abort-later" => {
            let failing = futures_util::stream::unfold(0u8, |n| async move {
                match n {
                    0 => Some((Ok(Bytes::from(vec![9u8; 100_000])), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Err(std::io::Error::other("the app crashed")), 2))
                    }
                    _ => None,
                }
            });
            builder
                .body(axum::body::Body::from_stream(failing))
                .unwrap()
        }
        "sse" => {
            let events = futures_util::stream::unfold(0u8, |n| async move {
                match n {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from("data: one\n\n")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        Some((Ok(Bytes::from("data: two\n\n")), 2))
                    }
                    _ => None,
                }
            });
            builder
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from_stream(events))
                .unwrap()
        }
        _ => {
            let mut headers = serde_json::Map::new();
            for name in req.headers().keys() {
                let values: Vec<_> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| serde_json::Value::from(v.to_str().unwrap_or("")))
                    .collect();
                headers.insert(name.to_string(), values.into());
            }
            let echo = serde_json::json!({
                "method": req.method().as_str(),
                "target": req.uri().to_string(),
                "headers": headers,
            });
            builder
                .header("content-type", "application/json")
                .body(echo.to_string().into())
                .unwrap()
        }
    }
}

/// Our listener library serving [`app`] for HTTP and echoing WebSocket bytes.
struct Site(ServiceHandler<axum::Router>);

impl Handler for Site {
    async fn on_connection(&self, conn: IncomingConnection) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let path = conn.path.clone();
        let Ok(mut stream) = conn.accept().await else {
            return;
        };
        let _ = stream.write_all(format!("path {path}\n").as_bytes()).await;
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }

    fn on_request(
        &self,
        req: http::Request<RelayBody>,
    ) -> impl Future<Output = http::Response<RelayBody>> + Send {
        self.0.on_request(req)
    }
}

async fn serve_site(broker: &TestBroker, hc: &str) -> tokio_util::sync::CancellationToken {
    let router = axum::Router::new().fallback(axum::routing::any(app));
    let token = Arc::new(relay_listener::SasKeySource::new(KEY_NAME, KEY));
    let listener =
        relay_listener::Listener::new(relay_listener::ListenerConfig::new(broker.ws(), hc, token));
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        listener
            .run(Arc::new(Site(ServiceHandler(router))), s)
            .await;
    });
    broker.wait_listeners(hc, 1).await;
    stop
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

fn values<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn repeated_headers_survive_both_ways_through_our_listener() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let token = broker.token("hyco");
    let auth = ("ServiceBusAuthorization", token.as_str());
    let base = broker.http();

    let (status, headers, _) =
        http_request("GET", &format!("{base}/hyco/cookies"), &[auth], vec![]).await;
    assert_eq!(status, 200);
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(
        cookies,
        [
            "edge_session=s1; Path=/",
            "edge_theme=dark; Path=/settings; HttpOnly"
        ],
        "one header line per cookie"
    );

    let (_, _, body) = http_request(
        "GET",
        &format!("{base}/hyco/echo"),
        &[auth, ("X-Multi", "a"), ("X-Multi", "b")],
        vec![],
    )
    .await;
    assert_eq!(values(&json(&body), "x-multi"), ["a", "b"]);
}

#[tokio::test]
async fn a_standard_listener_gets_repeated_request_headers_folded() {
    let broker = TestBroker::start("").await;
    let mut listener = RawListener::open(&broker, "open").await;
    let url = format!("{}/open/x", broker.http());
    let request = tokio::spawn(async move {
        http_request(
            "GET",
            &url,
            &[
                ("X-Multi", "a"),
                ("X-Multi", "b"),
                ("Cookie", "c=1"),
                ("Cookie", "d=2"),
            ],
            vec![],
        )
        .await
    });
    let ListenerCommand::Request(req) = listener.command().await else {
        panic!("expected a request")
    };
    let headers = req.request_headers.unwrap();
    assert_eq!(headers.get("x-multi"), Some("a, b"));
    assert_eq!(headers.get("cookie"), Some("c=1; d=2"));
    assert_eq!(
        headers
            .0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-multi"))
            .count(),
        1
    );
    let host = headers.get("x-forwarded-host").unwrap().to_owned();
    assert_eq!(host, broker.addr.to_string());
    assert_eq!(headers.get("x-forwarded-proto"), Some("http"));
    assert_eq!(headers.get("x-forwarded-prefix"), Some("/open"));
    // A standard listener's array answer (ours sends one too) becomes one line per value.
    let response = ListenerCommand::Response(control::Response {
        request_id: req.id,
        status_code: 200,
        status_description: None,
        response_headers: control::Headers(vec![
            ("set-cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
        ]),
        body: false,
    });
    listener.conn.writer.text(&response.encode()).await.unwrap();
    listener.conn.writer.flush().await.unwrap();
    let (status, headers, _) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
}

#[tokio::test]
async fn head_answers_carry_the_length_of_the_get() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let token = broker.token("hyco");
    let url = format!("{}/hyco/big.bin", broker.http());
    let auth = [("ServiceBusAuthorization", token.as_str())];
    let (status, headers, body) = http_request("HEAD", &url, &auth, vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], BIG.to_string());
    assert!(body.is_empty());
    let (status, _, body) = http_request("GET", &url, &auth, vec![]).await;
    assert_eq!((status, body.len()), (200, BIG));
}

#[tokio::test]
async fn a_page_opens_its_websocket_on_its_own_path() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let url = format!("{}/hyco/live/ws?room=1", broker.ws());
    let err = ws_connect(&url, None, &[], &[]).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut conn = ws_connect(&url, Some(&broker.token("hyco")), &[], &[])
        .await
        .expect("upgrade on the HTTP path");
    conn.writer
        .send(true, relay_core::frame::OpCode::Binary, b"ping")
        .await
        .unwrap();
    conn.writer.flush().await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ping") {
        match conn.reader.message(1 << 16).await.unwrap() {
            Some(relay_io::Message::Binary(b)) => got.extend_from_slice(&b),
            Some(relay_io::Message::Text(t)) => got.extend_from_slice(t.as_bytes()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), "path /live/ws\nping");
}

/// Opens a session the way a browser does: a navigation with the token in the query.
async fn login(broker: &TestBroker, path: &str) -> String {
    let token = broker.token("hyco");
    let url = relay_core::address::append_query(
        &format!("{}/hyco/{path}?x=1", broker.http()),
        "sb-hc-token",
        &token,
    );
    let (status, headers, body) =
        http_request("GET", &url, &[("Sec-Fetch-Mode", "navigate")], vec![]).await;
    let page = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("url=/hyco/{path}?x=1\"")),
        "the page continues to the address without the token: {page}"
    );
    assert!(!page.contains("SharedAccessSignature"), "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("Path=/hyco;")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn one_login_opens_a_browser_session_that_never_reaches_the_app() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let session = login(&broker, "index.html").await;
    let url = format!("{}/hyco/echo", broker.http());
    let cookie = format!("app=1; {session}");
    let (status, _, body) = http_request(
        "GET",
        &url,
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-origin")],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo = json(&body);
    assert_eq!(
        values(&echo, "cookie"),
        ["app=1"],
        "the relay cookie is stripped"
    );
    assert!(!body.windows(7).any(|w| w == b"sb-hc-t"));

    let origin = format!("http://{}", broker.addr);
    let same = [("Cookie", cookie.as_str()), ("Origin", origin.as_str())];
    assert_eq!(
        http_request("POST", &url, &same, b"x".to_vec()).await.0,
        200
    );
    for refused in [
        [
            ("Cookie", cookie.as_str()),
            ("Origin", "http://evil.example"),
        ],
        [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "same-site")],
        [
            ("Cookie", cookie.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ] {
        assert_eq!(http_request("POST", &url, &refused, vec![]).await.0, 403);
    }
    assert_eq!(http_request("GET", &url, &[], vec![]).await.0, 401);
    // The same cookie with a later end: the MAC no longer matches.
    let mut parts: Vec<String> = session.split('.').map(str::to_owned).collect();
    parts[2] = (parts[2].parse::<u64>().unwrap() + 3600).to_string();
    let tampered = parts.join(".");
    let (status, _, body) =
        http_request("GET", &url, &[("Cookie", tampered.as_str())], vec![]).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    // A session for one hybrid connection is no key to another.
    let other = format!("{}/a/b/echo", broker.http());
    assert_eq!(
        http_request("GET", &other, &[("Cookie", cookie.as_str())], vec![])
            .await
            .0,
        401
    );
    // The page's WebSocket rides on the session too, from its own origin only.
    let ws = format!("{}/hyco/live", broker.ws());
    let with_origin = [("Cookie", cookie.as_str()), ("Origin", origin.as_str())];
    assert!(ws_connect(&ws, None, &[], &with_origin).await.is_ok());
    let foreign = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://evil.example"),
    ];
    let err = ws_connect(&ws, None, &[], &foreign).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let (_, _, metrics) =
        http_request("GET", &format!("{}/metrics", broker.http()), &[], vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "relay_browser_logins_total 1",
        "relay_browser_session_requests_total 3",
        "relay_browser_cross_origin_total 4",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_token_outside_a_navigation_is_relayed_as_before() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let url = relay_core::address::append_query(
        &format!("{}/hyco/echo", broker.http()),
        "sb-hc-token",
        &broker.token("hyco"),
    );
    let (status, headers, body) = http_request("GET", &url, &[], vec![]).await;
    assert_eq!(status, 200);
    assert!(headers.get("set-cookie").is_none());
    assert_eq!(json(&body)["target"], "/hyco/echo");
}

#[tokio::test]
async fn host_names_reach_their_hybrid_connection_with_the_path_untouched() {
    let config = relay_tests::config_with_server(
        "host_base = '*.relay.test'",
        "[[server.hosts]]\nname = 'ui'\nhybrid_connection = 'hyco'\n",
    );
    let config = relay_broker::BrokerConfig::parse(&config, "test").unwrap();
    let broker = TestBroker::serve_broker(
        relay_broker::Broker::builder(&config).build().unwrap(),
        Default::default(),
    )
    .await;
    let _site = serve_site(&broker, "hyco").await;
    let token = broker.token("hyco");
    let base = broker.http();
    let get = |path: &'static str, host: &'static str| {
        let (url, token) = (format!("{base}{path}"), token.clone());
        async move {
            http_request(
                "GET",
                &url,
                &[("Host", host), ("ServiceBusAuthorization", &token)],
                vec![],
            )
            .await
        }
    };
    let (status, _, body) = get("/about.html?a=1", "ui.relay.test:8443").await;
    assert_eq!(status, 200);
    let echo = json(&body);
    assert_eq!(
        echo["target"], "/hyco/about.html?a=1",
        "the protocol's target"
    );
    assert_eq!(values(&echo, "x-forwarded-host"), ["ui.relay.test:8443"]);
    assert_eq!(values(&echo, "x-forwarded-prefix"), ["/"]);
    // Every path of the host is the app's, the broker's own included.
    let (status, _, body) = get("/healthz", "UI.relay.test").await;
    assert_eq!(
        (status, json(&body)["target"].as_str()),
        (200, Some("/hyco/healthz"))
    );
    // By the rule, `--` stands for `/`: a/b has no listener.
    let ab = broker.token("a/b");
    let ab = [
        ("Host", "a--b.relay.test"),
        ("ServiceBusAuthorization", ab.as_str()),
    ];
    assert_eq!(
        http_request("GET", &format!("{base}/"), &ab, vec![])
            .await
            .0,
        502
    );
    assert_eq!(get("/", "nope.relay.test").await.0, 404);
    let (status, _, body) = get("/healthz", "relay.test").await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));

    // A login on the host gives a host-only cookie for the whole host.
    let url = relay_core::address::append_query(&format!("{base}/x"), "sb-hc-token", &token);
    let nav = [("Host", "ui.relay.test"), ("Sec-Fetch-Mode", "navigate")];
    let (status, headers, body) = http_request("GET", &url, &nav, vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("url=/x\""));
    // The step after the login never leaves the origin.
    let url = relay_core::address::append_query(
        &format!("{base}//evil.example/x"),
        "sb-hc-token",
        &token,
    );
    let (_, _, page) = http_request("GET", &url, &nav, vec![]).await;
    assert!(
        String::from_utf8_lossy(&page).contains("url=/evil.example/x\""),
        "{}",
        String::from_utf8_lossy(&page)
    );
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("relay-session=") && cookie.contains("Path=/;"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain"), "host-only: {cookie}");
    let session = cookie.split(';').next().unwrap();
    let with = [("Host", "ui.relay.test"), ("Cookie", session)];
    let (status, _, body) = http_request("GET", &format!("{base}/echo"), &with, vec![]).await;
    assert_eq!(status, 200);
    assert!(values(&json(&body), "cookie").is_empty());
}

#[tokio::test]
async fn an_aborted_response_never_reads_as_complete() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let token = broker.token("hyco");
    let auth = [("ServiceBusAuthorization", token.as_str())];
    let started = Instant::now();
    let (status, _, body) = http_request(
        "GET",
        &format!("{}/hyco/abort-now", broker.http()),
        &auth,
        vec![],
    )
    .await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not the 60 s deadline"
    );

    // Once the head and part of the body are out, the cut reaches the sender as an error.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(format!("{}/hyco/abort-later", broker.http()))
        .header("ServiceBusAuthorization", token)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("the body ends in time");
    assert!(collected.is_err(), "an aborted body must not end cleanly");
}

#[tokio::test]
async fn a_response_that_pauses_reaches_the_sender_as_it_is_produced() {
    let broker = TestBroker::start("").await;
    let _site = serve_site(&broker, "hyco").await;
    let token = broker.token("hyco");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(format!("{}/hyco/sse", broker.http()))
        .header("ServiceBusAuthorization", token)
        .body(http_body_util::Empty::new())
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(&first[..], b"data: one\n\n");
    // The app pauses 3 s after its first event: a relay that gathers the body first would
    // take that long. The bound is loose for a loaded machine; the figure is in the note.
    assert!(
        elapsed < Duration::from_millis(1500),
        "first event after {elapsed:?}"
    );
}
