//! `relay-broker`: runs the Hybrid Connections broker.
//!
//! With `--config` it follows the file; without, it starts on an embedded default (loopback,
//! plain ws/http, one demo hybrid connection and a generated key printed once).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

mod admin_cli;
use relay_broker::config::{BrokerConfig, HybridConnection};
use relay_broker::{Broker, ServeOptions};
use relay_cli::{LogFormat, init_logging, shutdown_signal};
use relay_core::sas::{Rights, SharedAccessKey};

#[derive(Parser, Debug)]
#[command(
    name = "relay-broker",
    version,
    about = "Self-hosted Azure Relay Hybrid Connections broker"
)]
struct Cli {
    /// TOML configuration file; without it an embedded demo default is used.
    #[arg(long, env = "RELAY_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// host:port to bind, overriding [server].bind (port 0 picks a free one).
    #[arg(long)]
    bind: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Administer a running broker instead of running one.
    #[command(subcommand)]
    command: Option<admin_cli::AdminCommand>,
}

/// How long a cluster node waits to join before it opens its public port anyway.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return admin_cli::run(command).await;
    }
    init_logging(cli.log_format, "info,hyper=warn");
    let (mut config, demo_key) = match &cli.config {
        Some(path) => (BrokerConfig::load(path)?, None),
        None => embedded_default()?,
    };
    if let Some(bind) = &cli.bind {
        config.bind = bind
            .parse()
            .with_context(|| format!("--bind '{bind}' is not host:port"))?;
    }
    // Durable state first: a broken store or CA fails before the port is announced.
    let mut builder = Broker::builder(&config);
    if let Some(cluster) = &config.cluster {
        let joined = relay_broker::cluster::Cluster::connect(cluster)
            .await
            .context("joining the cluster")?;
        tracing::info!(node = %cluster.node_id, nats = ?cluster.nats, "cluster node");
        builder = builder.cluster(joined);
    }
    let broker = builder
        .build()
        .context("opening the store and certificate authority")?;
    let tls = match &config.tls {
        Some(files) => Some(
            broker
                .server_tls(&files.cert, &files.key)
                .context("loading [server] tls_cert/tls_key")?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    if config.cluster.is_some() && !broker.joined(JOIN_WAIT).await {
        tracing::warn!(
            "not in the cluster {}s after starting: opening the port anyway, /readyz says why",
            JOIN_WAIT.as_secs()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding {}", config.bind))?;
    let addr = listener.local_addr()?;
    if let Some(key) = demo_key {
        print_demo(scheme, addr, &key);
    }
    println!("listening on {addr}");
    // On a worker, not on the main thread's `block_on`: a connection task spawned from a
    // worker starts on that worker at once, while one spawned from outside the pool costs a
    // cross-thread wake-up (a context switch) for every accepted connection.
    tokio::spawn(async move {
        broker
            .serve(listener, ServeOptions { tls }, shutdown_signal())
            .await
    })
    .await??;
    Ok(())
}

fn embedded_default() -> anyhow::Result<(BrokerConfig, Option<String>)> {
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut config = BrokerConfig::parse("", "embedded default")?;
    config.hybrid_connections = vec![HybridConnection {
        name: "demo".into(),
        requires_client_authorization: true,
    }];
    config.rules = vec![SharedAccessKey {
        name: "RootManageSharedAccessKey".into(),
        key: key.clone(),
        secondary_key: None,
        rights: Rights::MANAGE,
        hybrid_connection: None,
    }];
    Ok((config, Some(key)))
}

fn print_demo(scheme: &str, addr: std::net::SocketAddr, key: &str) {
    println!("embedded default: hybrid connection 'demo', rule 'RootManageSharedAccessKey'");
    println!("key (shown once): {key}");
    println!("try:");
    println!(
        "  relay-listener run --endpoint {scheme}://{addr} --hc demo --sas-key-name RootManageSharedAccessKey --sas-key {key} --forward 127.0.0.1:8080"
    );
    println!(
        "  relay-sender forward --endpoint {scheme}://{addr} --hc demo --sas-key-name RootManageSharedAccessKey --sas-key {key} --local 127.0.0.1:18080"
    );
}
