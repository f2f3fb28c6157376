//! `relay-listener`: the listener agent.
//!
//! `relay-listener run --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --forward 127.0.0.1:5432` relays every accepted connection to the target.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_cli::{ConnectionArgs, LogFormat, init_logging, shutdown_signal};
use relay_core::connection_string::Credential;
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Listen on a hybrid connection and forward each connection to a TCP target.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
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
    init_logging(cli.log_format, "info");
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let target = args.connection.target()?;
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
