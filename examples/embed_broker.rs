//! Embeds the broker in a host axum application under `/relay`, then serves an axum app
//! through it with the listener library and calls it over relayed HTTP.
//!
//! `cargo run -p relay-examples --example embed_broker`

use std::sync::Arc;

use axum::routing::get;
use relay_broker::{Broker, BrokerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    // Nested brokers need `public_url` so rendezvous addresses point back through the prefix.
    let config = BrokerConfig::parse(
        &format!(
            r#"
[server]
public_url = "ws://{addr}/relay"
[[hybrid_connections]]
name = "inventory"
[[authorization_rules]]
name = "root"
key = "embedded-demo-key"
rights = ["Manage"]
"#
        ),
        "embedded example",
    )?;
    let broker = Broker::builder(&config).build()?;
    let host = axum::Router::new()
        .route(
            "/",
            get(|| async { "the host application's own routes still work" }),
        )
        .nest_service("/relay", broker.router());
    tokio::spawn(async move { axum::serve(tcp, host).await });

    // An on-premise service behind the relay.
    let app = axum::Router::new()
        .fallback(|uri: http::Uri| async move { format!("inventory service saw {uri}") });
    let token = Arc::new(relay_listener::SasKeySource::new(
        "root",
        "embedded-demo-key",
    ));
    let listener = relay_listener::Listener::new(relay_listener::ListenerConfig::new(
        format!("ws://{addr}/relay"),
        "inventory",
        token,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move {
            listener
                .run(Arc::new(relay_listener::ServiceHandler(app)), stop)
                .await;
        })
    };
    while broker.listener_count("inventory") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A cloud-side caller: plain HTTP with a SAS token, through the nested broker.
    let token = relay_sender::sas_token(
        &format!("ws://{addr}/relay"),
        "inventory",
        "root",
        "embedded-demo-key",
        300,
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /relay/inventory/items?id=7 HTTP/1.1\r\nHost: {addr}\r\nServiceBusAuthorization: {token}\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await?;
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut response).await?;
    println!("{}", response.lines().next().unwrap_or_default());
    println!("{}", response.lines().last().unwrap_or_default());
    anyhow::ensure!(
        response.starts_with("HTTP/1.1 200"),
        "relayed request failed: {response}"
    );
    stop.cancel();
    run.await?;
    Ok(())
}
