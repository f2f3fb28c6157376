//! Relayed HTTP requests per second at a fixed concurrency, against the same trivial app
//! served directly.

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
pub(crate) async fn relayed_base(endpoint: &str, key: &str) -> anyhow::Result<(String, String)> {
    let token = Arc::new(relay_listener::SasKeySource::new("root", key));
    let listener =
        relay_listener::Listener::new(relay_listener::ListenerConfig::new(endpoint, "http", token));
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
    let http = endpoint.replacen("ws://", "http://", 1);
    let audience = format!("{http}/http");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = relay_core::sas::create_token(&audience, "root", key, now + 3600);
    Ok((format!("{http}/http"), token))
}

/// Runs `concurrency` keep-alive clients for `duration`; returns (requests/s, latencies).
pub(crate) async fn load(
    base: &str,
    token: Option<&str>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("{base}/x").parse().context("uri")?;
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, uri, token) = (client.clone(), uri.clone(), token.map(str::to_owned));
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let mut req = http::Request::get(uri.clone());
                if let Some(t) = &token {
                    req = req.header("ServiceBusAuthorization", t.as_str());
                }
                let started = Instant::now();
                let resp = client.request(req.body(Empty::new())?).await?;
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
