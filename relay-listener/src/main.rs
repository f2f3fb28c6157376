//! `relay-listener`: the listener agent.
//!
//! `relay-listener run --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --forward 127.0.0.1:5432` relays every accepted connection to the target.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_core::connection_string::{Credential, Target, TargetArgs};
use relay_listener::forward::TcpForward;
use relay_listener::{Listener, ListenerConfig, SasKeySource, StaticToken, TokenSource};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "relay-listener",
    version,
    about = "Hybrid Connections listener agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Listen on a hybrid connection and forward each connection to a TCP target.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Broker URL, e.g. ws://127.0.0.1:9400 or wss://relay.example.com.
    #[arg(long, env = "RELAY_ENDPOINT")]
    endpoint: Option<String>,
    /// Hybrid connection name.
    #[arg(long)]
    hc: Option<String>,
    /// SAS rule name.
    #[arg(long, env = "RELAY_SAS_KEY_NAME")]
    sas_key_name: Option<String>,
    /// SAS key (prefer RELAY_SAS_KEY: command lines are visible to other users).
    #[arg(long, env = "RELAY_SAS_KEY", hide_env_values = true)]
    sas_key: Option<String>,
    /// Azure-style connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=...).
    #[arg(long, env = "RELAY_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,
    /// TCP target host:port for every accepted connection.
    #[arg(long)]
    forward: String,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let target = Target::resolve(&TargetArgs {
        endpoint: args.endpoint.as_deref(),
        hc: args.hc.as_deref(),
        key_name: args.sas_key_name.as_deref(),
        key: args.sas_key.as_deref(),
        connection_string: args.connection_string.as_deref(),
    })?;
    let token: Arc<dyn TokenSource> = match target.credential {
        Credential::Key { name, key } => Arc::new(SasKeySource::new(name, key)),
        Credential::Token(token) => Arc::new(StaticToken(token)),
        Credential::None => {
            anyhow::bail!("a listener needs --sas-key-name and --sas-key (or a connection string)")
        }
    };
    let mut config = ListenerConfig::new(target.endpoint, target.hc, token);
    config.tls =
        Some(relay_io::tls::client_config(args.ca_cert.as_deref()).context("loading --ca-cert")?);
    let listener = Listener::new(config);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    listener
        .run(Arc::new(TcpForward::new(args.forward)), shutdown)
        .await;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
