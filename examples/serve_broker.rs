//! Serves the broker on a listener the program bound itself, with a shutdown signal: the
//! shape to use when the broker is one task among others in a larger binary.
//!
//! `cargo run -p relay-examples --example serve_broker` (Ctrl-C stops it gracefully).

use relay_broker::{Broker, BrokerConfig, ServeOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let key = std::env::var("RELAY_ROOT_KEY").unwrap_or_else(|_| "change-me".into());
    let config = BrokerConfig::parse(
        &format!(
            "[[hybrid_connections]]\nname = \"orders\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"{key}\"\nrights = [\"Manage\"]"
        ),
        "serve example",
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Broker::builder(&config)
        .build()?
        .serve(listener, ServeOptions::default(), shutdown)
        .await?;
    Ok(())
}
