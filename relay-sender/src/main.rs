//! `relay-sender`: the sender tool.
//!
//! `relay-sender forward --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --local 127.0.0.1:15432` opens one relayed connection per local connection.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_cli::{ConnectionArgs, LogFormat, init_logging};
use relay_core::connection_string::{Credential, Target};
use relay_sender::ConnectOptions;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "relay-sender",
    version,
    about = "Hybrid Connections sender tool"
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
    /// Accept local TCP connections and relay each to a listener.
    Forward(ForwardArgs),
    /// Print a SAS token.
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct ForwardArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Local address to accept on; repeat for several.
    #[arg(long, required = true)]
    local: Vec<String>,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format, "info");
    match cli.command {
        Command::Forward(args) => forward(args).await,
        Command::Token(args) => {
            let target = args.connection.target()?;
            let Credential::Key { name, key } = target.credential else {
                anyhow::bail!("minting a token needs --sas-key-name and --sas-key");
            };
            println!(
                "{}",
                relay_sender::sas_token(&target.endpoint, &target.hc, &name, &key, args.ttl)
            );
            Ok(())
        }
    }
}

async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let target = Arc::new(args.connection.target()?);
    let tls = relay_io::tls::client_config(args.ca_cert.as_deref()).context("loading --ca-cert")?;
    let mut tasks = tokio::task::JoinSet::new();
    for local in &args.local {
        let listener = TcpListener::bind(local)
            .await
            .with_context(|| format!("binding --local {local}"))?;
        println!(
            "forwarding {} -> {}/{}",
            listener.local_addr()?,
            target.endpoint,
            target.hc
        );
        let (target, tls) = (Arc::clone(&target), Arc::clone(&tls));
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let (target, tls) = (Arc::clone(&target), Arc::clone(&tls));
                        tokio::spawn(async move { relay_one(tcp, peer, &target, tls).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    tokio::select! {
        () = relay_cli::shutdown_signal() => {}
        _ = tasks.join_next() => {}
    }
    Ok(())
}

async fn relay_one(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    target: &Target,
    tls: Arc<relay_io::rustls::ClientConfig>,
) {
    let _ = tcp.set_nodelay(true);
    let token = match &target.credential {
        Credential::Key { name, key } => Some(relay_sender::sas_token(
            &target.endpoint,
            &target.hc,
            name,
            key,
            3600,
        )),
        Credential::Token(t) => Some(t.clone()),
        Credential::None => None,
    };
    let options = ConnectOptions {
        token,
        tls: Some(tls),
        ..ConnectOptions::default()
    };
    let conn = match relay_sender::connect(&target.endpoint, &target.hc, &options).await {
        Ok(c) => c,
        Err(e) => {
            match e.hint() {
                Some(hint) => tracing::warn!(%peer, error = %e, hint, "relayed connect failed"),
                None => tracing::warn!(%peer, error = %e, "relayed connect failed"),
            }
            return;
        }
    };
    match relay_io::splice::splice(conn.stream.into_parts(), tcp.into_split()).await {
        Ok(s) => tracing::debug!(
            %peer,
            from_listener = s.to_tcp,
            to_listener = s.to_ws,
            "connection finished"
        ),
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
    }
}
