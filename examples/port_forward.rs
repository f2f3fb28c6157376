//! Port forwarding with the libraries: a listener forwards relayed connections to a local TCP
//! echo service, and a sender opens a relayed stream to it, half-closes, and reads the echo.
//!
//! `cargo run -p relay-examples --example port_forward`

use std::sync::Arc;

use relay_broker::{Broker, BrokerConfig, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = BrokerConfig::parse(
        "[[hybrid_connections]]\nname = \"db\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"k\"\nrights = [\"Manage\"]",
        "example",
    )?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("ws://{}", tcp.local_addr()?);
    let broker = Broker::builder(&config).build()?;
    let served = broker.clone();
    tokio::spawn(async move {
        served
            .serve(tcp, ServeOptions::default(), std::future::pending())
            .await
    });

    // The "database": echoes, then closes its side when the client finished sending.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let token = Arc::new(relay_listener::SasKeySource::new("root", "k"));
    let listener = relay_listener::Listener::new(relay_listener::ListenerConfig::new(
        endpoint.clone(),
        "db",
        token,
    ));
    let forward = Arc::new(relay_listener::forward::TcpForward::new(target));
    tokio::spawn(async move {
        listener
            .run(forward, tokio_util::sync::CancellationToken::new())
            .await;
    });
    while broker.listener_count("db") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let options = relay_sender::ConnectOptions {
        token: Some(relay_sender::sas_token(&endpoint, "db", "root", "k", 300)),
        ..Default::default()
    };
    let mut conn = relay_sender::connect(&endpoint, "db", &options).await?;
    conn.stream.write_all(b"SELECT 1;").await?;
    conn.stream.shutdown().await?;
    let mut reply = Vec::new();
    conn.stream.read_to_end(&mut reply).await?;
    println!("relayed echo: {}", String::from_utf8_lossy(&reply));
    anyhow::ensure!(reply == b"SELECT 1;", "unexpected reply");
    Ok(())
}
