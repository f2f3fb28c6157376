//! Relayed HTTP requests per second at a fixed concurrency, against the same trivial app
//! served directly. Each client is one keep-alive HTTP/1.1 connection (TLS for https).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};

/// A trivial app: 200 and a short body.
fn app() -> axum::Router {
    axum::Router::new().fallback(|| async { "ok" })
}

/// Serves the app directly; returns its base URL.
pub(crate) async fn direct_base() -> anyhow::Result<String> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", tcp.local_addr()?);
    tokio::spawn(async move { axum::serve(tcp, app()).await });
    Ok(base)
}

/// Serves the app through our listener library on hybrid connection `http`; returns the
/// base URL of relayed requests.
pub(crate) async fn relayed_base(
    endpoint: &str,
    key: &str,
    tls: Option<Arc<relay_io::rustls::ClientConfig>>,
) -> anyhow::Result<(String, String)> {
    let token = Arc::new(relay_listener::SasKeySource::new("root", key));
    let mut config = relay_listener::ListenerConfig::new(endpoint, "http", token);
    config.tls = tls;
    let listener = relay_listener::Listener::new(config);
    let mut status = listener.status();
    tokio::spawn(async move {
        listener
            .run(
                Arc::new(relay_listener::ServiceHandler(app())),
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
    });
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| *s == relay_listener::Status::Connected),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    anyhow::ensure!(
        connected,
        "HTTP listener did not connect: {:?}",
        *status.borrow()
    );
    let http = endpoint
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    let audience = format!("{http}/http");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = relay_core::sas::create_token(&audience, "root", key, now + 3600);
    Ok((format!("{http}/http"), token))
}

/// Runs `concurrency` keep-alive clients for `duration`; returns (requests/s, latencies).
/// `tls` verifies an https base.
pub(crate) async fn load(
    base: &str,
    token: Option<&str>,
    concurrency: usize,
    duration: Duration,
    tls: Option<Arc<relay_io::rustls::ClientConfig>>,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let target = relay_io::client::Target::parse(base)?;
    let uri: http::Uri = format!("{}/x", target.path_and_query.trim_end_matches('/'))
        .parse()
        .context("uri")?;
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (target, uri, token, tls) = (
            target.clone(),
            uri.clone(),
            token.map(str::to_owned),
            tls.clone(),
        );
        tasks.spawn(async move {
            let io = relay_io::client::dial(&target, tls.as_ref(), None).await?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
            tokio::spawn(conn);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let mut req =
                    http::Request::get(uri.clone()).header("Host", target.authority.as_str());
                if let Some(t) = &token {
                    req = req.header("ServiceBusAuthorization", t.as_str());
                }
                let started = Instant::now();
                send.ready().await?;
                let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                resp.into_body().collect().await?;
                samples.push(started.elapsed());
            }
            anyhow::Ok(samples)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}
