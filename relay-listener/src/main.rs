//! `relay-listener`: the listener agent.
//!
//! `relay-listener run --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --forward 127.0.0.1:5432` relays every accepted connection to the target;
//! `run --config agent.toml` serves many endpoints (TCP, HTTP reverse proxy, named ports).
//! With `--identity DIR` (from `relay-listener register`) it authenticates with its
//! certificate instead, and renews it before it expires. `status` shows a running agent.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_cli::{ConnectionArgs, LogFormat, init_logging, shutdown_signal};
use relay_core::connection_string::Credential;
use relay_listener::IdentityError;
use relay_listener::agent::{AgentConfig, Credentials, Endpoint, Target};
use relay_listener::register::Enrollment;
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
    /// Register this listener: make a key here, send a CSR, store the certificate.
    Register(RegisterArgs),
    /// Show a running agent's endpoints: CONNECTED, CONNECTING (last error, next retry) or REVOKED.
    Status(StatusArgs),
    /// Run as a Windows service: install, uninstall, or the service's own entry.
    #[command(subcommand)]
    Service(service::ServiceCommand),
}

mod service;

#[derive(Args, Debug)]
struct RegisterArgs {
    /// The broker, e.g. https://relay.example.com:9400.
    #[arg(long, env = "RELAY_ENDPOINT")]
    endpoint: String,
    /// The person registering (password from RELAY_PERSON_PASSWORD or a prompt).
    #[arg(long)]
    person: Option<String>,
    /// The person's API token instead of a password (identifies the person by itself).
    #[arg(
        long,
        env = "RELAY_PERSON_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    person_token: Option<String>,
    /// Hybrid connections, comma-separated.
    #[arg(long, value_delimiter = ',')]
    hc: Vec<String>,
    /// Listener name.
    #[arg(long)]
    name: Option<String>,
    /// A single-use token minted by the person (unattended installs) instead of --person.
    #[arg(
        long,
        env = "RELAY_ENROLLMENT_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    enrollment_token: Option<String>,
    /// Directory for the key (mode 0600), certificate and registration details.
    #[arg(long)]
    identity: PathBuf,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Proxy for the broker (http://user:password@host:port or socks5://); default from
    /// HTTPS_PROXY / ALL_PROXY / NO_PROXY.
    #[arg(long)]
    proxy: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Agent configuration file (TOML, many endpoints); the flags below make a one-off
    /// single endpoint instead.
    #[arg(long, conflicts_with_all = ["forward", "http"])]
    config: Option<PathBuf>,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// TCP target host:port for every accepted connection.
    #[arg(long, conflicts_with = "http")]
    forward: Option<String>,
    /// Reverse-proxy relayed HTTP and WebSocket to this base URL (http:// or https://).
    #[arg(long)]
    http: Option<String>,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Authenticate with the certificate in this directory (from `register`) instead of SAS.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// With --identity, for a broker behind an L7 proxy that ends TLS: prove the key with a
    /// signed login before each connect instead of in the TLS handshake.
    #[arg(long, requires = "identity")]
    proof_of_possession: bool,
    /// Proxy for the broker (http://user:password@host:port or socks5://); default from
    /// HTTPS_PROXY / ALL_PROXY / NO_PROXY.
    #[arg(long)]
    proxy: Option<String>,
    /// Connections in flight at most; more are refused with 503.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Bytes per second in each direction.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Rendezvous sockets kept open in advance to our broker (faster connects); 0 = none.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=8))]
    standby: u8,
    /// Local status endpoint (for `relay-listener status`).
    #[arg(long)]
    status_bind: Option<std::net::SocketAddr>,
    /// Where the agent keeps its instance id, so that a restart replaces its own stale
    /// control channel at once (default: the identity directory, or $STATE_DIRECTORY).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The agent's status endpoint ([agent].status_bind).
    #[arg(long, default_value = "127.0.0.1:9401")]
    status_addr: std::net::SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A service logs to a file and owns its runtime; everything else logs to stderr.
    match cli.command {
        Command::Service(command) => service::dispatch(command),
        command => {
            init_logging(cli.log_format, "info");
            tokio::runtime::Runtime::new()?.block_on(async_main(command))
        }
    }
}

async fn async_main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Service(_) => anyhow::bail!("service commands run before the runtime starts"),
        Command::Run(args) => run(args).await,
        Command::Register(args) => register(args).await,
        Command::Status(args) => status(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => one_off(&args)?,
    };
    for e in &config.endpoints {
        tracing::info!(hc = %e.hc, target = ?e.target, max_connections = e.max_connections, "endpoint");
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: no new connections; in-flight ones may finish");
        stop.cancel();
    });
    relay_listener::agent::run_config(config, shutdown).await?;
    Ok(())
}

/// The single endpoint the flags describe.
fn one_off(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let target = args.connection.target()?;
    let credentials = match (&args.identity, target.credential) {
        (Some(dir), Credential::None) => Credentials::Certificate {
            identity: dir.clone(),
            proof_of_possession: args.proof_of_possession,
            enrollment_token_file: None,
        },
        (Some(_), _) => anyhow::bail!("--identity replaces the SAS key; give one or the other"),
        (None, Credential::Key { name, key }) => Credentials::Sas {
            key_name: name,
            key,
        },
        (None, Credential::Token(token)) => Credentials::SasToken(token),
        (None, Credential::None) => anyhow::bail!(
            "a listener needs --sas-key-name and --sas-key (or a connection string), or --identity, or --config"
        ),
    };
    let endpoint_target = match (&args.forward, &args.http) {
        (Some(tcp), None) => Target::Tcp(tcp.clone()),
        (None, Some(url)) => Target::Http(url.clone()),
        _ => anyhow::bail!("give --forward host:port or --http URL (or --config FILE)"),
    };
    Ok(AgentConfig {
        endpoint: target.endpoint,
        credentials,
        ca_cert: args.ca_cert.clone(),
        proxy: args.proxy.clone().map(|p| (p, String::new())),
        status_bind: args.status_bind,
        shutdown_drain: std::time::Duration::from_secs(10),
        instance: None,
        state_dir: args.state_dir.clone(),
        endpoints: vec![Endpoint {
            hc: target.hc,
            target: endpoint_target,
            max_connections: args
                .max_connections
                .unwrap_or(relay_listener::agent::config::DEFAULT_MAX_CONNECTIONS),
            bandwidth: args.bandwidth,
            standby: usize::from(args.standby),
        }],
    })
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let endpoints = relay_listener::agent::fetch_status(args.status_addr)
        .await
        .with_context(|| {
            format!(
                "reading the agent's status at {} (is it running with [agent].status_bind?)",
                args.status_addr
            )
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&endpoints)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{:<24} {:<11} {:>9}  TARGET / DETAIL",
        "HYBRID CONNECTION", "STATE", "IN FLIGHT"
    );
    for e in &endpoints {
        let state = serde_json::to_value(e.state)?;
        let in_flight = format!("{}/{}", e.in_flight, e.max_connections);
        println!(
            "{:<24} {:<11} {in_flight:>9}  {}",
            e.hc,
            state.as_str().unwrap_or("?"),
            e.target
        );
        if let Some(error) = &e.last_error {
            let retry = e.next_retry_unix.map_or(String::new(), |t| {
                format!(" (next retry in {} s)", t.saturating_sub(now))
            });
            println!("{:<24} last error: {error}{retry}", "");
        }
    }
    Ok(())
}

/// The proof of the right to register that the arguments name; asks for the password on
/// the terminal when `RELAY_PERSON_PASSWORD` is not set.
fn enrollment(args: &RegisterArgs) -> anyhow::Result<Enrollment> {
    Ok(
        match (&args.enrollment_token, &args.person, &args.person_token) {
            (Some(token), _, _) => Enrollment::Token(token.clone()),
            (None, _, Some(token)) => {
                anyhow::ensure!(!args.hc.is_empty(), "--hc is required with --person-token");
                Enrollment::PersonToken {
                    token: token.clone(),
                    hybrid_connections: args.hc.clone(),
                }
            }
            (None, Some(person), None) => {
                anyhow::ensure!(!args.hc.is_empty(), "--hc is required with --person");
                let password = match std::env::var("RELAY_PERSON_PASSWORD") {
                    Ok(p) => p,
                    Err(_) => {
                        eprint!("Password for {person}: ");
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .context("reading the password")?;
                        line.trim_end_matches(['\r', '\n']).to_owned()
                    }
                };
                Enrollment::Password {
                    person: person.clone(),
                    password,
                    hybrid_connections: args.hc.clone(),
                }
            }
            (None, None, None) => {
                anyhow::bail!("give --person or --person-token (with --hc), or --enrollment-token")
            }
        },
    )
}

/// Makes a P-256 key locally (it never leaves this machine), registers its CSR, and writes
/// key, certificate chain and details atomically into the identity directory.
async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let enrollment = enrollment(&args)?;
    let tls = relay_io::tls::client_config(args.ca_cert.as_deref())?;
    let proxy = match &args.proxy {
        Some(url) => relay_io::proxy::ProxyRules::new(url, "")?,
        None => relay_io::proxy::ProxyRules::from_env()?,
    };
    let store = relay_listener::keystore::platform_key_store();
    let registered = relay_listener::register::register(
        &args.endpoint,
        &enrollment,
        args.name.as_deref(),
        &args.identity,
        &*store,
        &tls,
        Some(&proxy),
    )
    .await
    .map_err(|e| match &e {
        IdentityError::Refused { status, message } => anyhow::anyhow!(
            "{status} from broker: {message}{}",
            relay_listener::register::refusal_hint(*status)
        ),
        _ => anyhow::Error::new(e),
    })?;
    println!(
        "registered listener {} for {:?}; identity in {}",
        registered.listener_id,
        registered.hybrid_connections,
        args.identity.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command};

    #[test]
    fn a_token_that_starts_with_a_dash_is_a_value_not_a_flag() {
        let cli = Cli::try_parse_from([
            "relay-listener",
            "register",
            "--endpoint",
            "https://relay.example.com",
            "--enrollment-token",
            "-Qx3v",
            "--identity",
            "id",
        ])
        .unwrap();
        let Command::Register(args) = cli.command else {
            panic!("expected register")
        };
        assert_eq!(args.enrollment_token.as_deref(), Some("-Qx3v"));
    }
}
