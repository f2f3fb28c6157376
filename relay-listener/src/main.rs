//! `relay-listener`: the listener agent.
//!
//! `relay-listener run --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --forward 127.0.0.1:5432` relays every accepted connection to the target.
//! With `--identity DIR` (from `relay-listener register`) it authenticates with its
//! certificate instead, and renews it before it expires.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_cli::{ConnectionArgs, LogFormat, init_logging, shutdown_signal};
use relay_core::connection_string::Credential;
use relay_listener::forward::TcpForward;
use relay_listener::{
    CertificateIdentity, Listener, ListenerConfig, SasKeySource, StaticToken, TokenSource,
};
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
}

#[derive(Args, Debug)]
struct RegisterArgs {
    /// The broker, e.g. https://relay.example.com:9400.
    #[arg(long, env = "RELAY_ENDPOINT")]
    endpoint: String,
    /// The person registering (password from RELAY_PERSON_PASSWORD or a prompt).
    #[arg(long)]
    person: Option<String>,
    /// The person's API token instead of a password (identifies the person by itself).
    #[arg(long, env = "RELAY_PERSON_TOKEN", hide_env_values = true)]
    person_token: Option<String>,
    /// Hybrid connections, comma-separated.
    #[arg(long, value_delimiter = ',')]
    hc: Vec<String>,
    /// Listener name.
    #[arg(long)]
    name: Option<String>,
    /// A single-use token minted by the person (unattended installs) instead of --person.
    #[arg(long, env = "RELAY_ENROLLMENT_TOKEN", hide_env_values = true)]
    enrollment_token: Option<String>,
    /// Directory for the key (mode 0600), certificate and registration details.
    #[arg(long)]
    identity: PathBuf,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
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
    /// Authenticate with the certificate in this directory (from `register`) instead of SAS.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// With --identity, for a broker behind an L7 proxy that ends TLS: prove the key with a
    /// signed login before each connect instead of in the TLS handshake.
    #[arg(long, requires = "identity")]
    proof_of_possession: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format, "info");
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Register(args) => register(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let target = args.connection.target()?;
    let shutdown = CancellationToken::new();
    let config = match (&args.identity, target.credential) {
        (Some(dir), Credential::None) => {
            let identity = CertificateIdentity::load(dir).with_context(|| {
                format!(
                    "loading the identity in {} (run `relay-listener register` first)",
                    dir.display()
                )
            })?;
            let identity = Arc::new(identity.with_proof_of_possession(args.proof_of_possession));
            let config = ListenerConfig::with_certificate(
                target.endpoint.clone(),
                target.hc,
                Arc::clone(&identity),
                args.ca_cert.as_deref(),
            )
            .context("loading --ca-cert")?;
            let tls = config.tls.clone().context("TLS configuration")?;
            tracing::info!(listener = identity.listener_id(), not_after = ?identity.not_after(), "using certificate identity");
            tokio::spawn(keep_renewed(
                identity,
                target.endpoint,
                tls,
                shutdown.clone(),
            ));
            config
        }
        (Some(_), _) => anyhow::bail!("--identity replaces the SAS key; give one or the other"),
        (None, credential) => {
            let token: Arc<dyn TokenSource> = match credential {
                Credential::Key { name, key } => Arc::new(SasKeySource::new(name, key)),
                Credential::Token(token) => Arc::new(StaticToken(token)),
                Credential::None => anyhow::bail!(
                    "a listener needs --sas-key-name and --sas-key (or a connection string), or --identity"
                ),
            };
            let mut config = ListenerConfig::new(target.endpoint, target.hc, token);
            config.tls = Some(
                relay_io::tls::client_config(args.ca_cert.as_deref())
                    .context("loading --ca-cert")?,
            );
            config
        }
    };
    let listener = Listener::new(config);
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

/// Renews the certificate in the background; a refusal is final, so say what to do.
async fn keep_renewed(
    identity: Arc<CertificateIdentity>,
    endpoint: String,
    tls: Arc<relay_io::rustls::ClientConfig>,
    shutdown: CancellationToken,
) {
    if let Err(e) = identity.keep_renewed(endpoint, tls, shutdown).await {
        tracing::error!(error = %e, "certificate renewal refused: the listener was revoked or its person lost the right; it keeps listening until the certificate expires, then register it again");
    }
}

/// Makes a P-256 key locally (it never leaves this machine), registers its CSR, and writes
/// key, certificate chain and details atomically into the identity directory.
async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let mut body = match (&args.enrollment_token, &args.person) {
        (Some(token), _) => serde_json::json!({ "enrollment_token": token }),
        (None, _) if args.person_token.is_some() => {
            anyhow::ensure!(!args.hc.is_empty(), "--hc is required with --person-token");
            serde_json::json!({ "person_token": args.person_token, "hybrid_connections": args.hc })
        }
        (None, Some(person)) => {
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
            serde_json::json!({ "person": person, "password": password, "hybrid_connections": args.hc })
        }
        (None, None) => {
            anyhow::bail!("give --person or --person-token (with --hc), or --enrollment-token")
        }
    };
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    body["csr"] = csr.into();
    if let Some(name) = &args.name {
        body["name"] = name.clone().into();
    }
    let base = relay_core::connection_string::http_base(&args.endpoint);
    let url = format!("{base}/$register/v1/listeners");
    let reply =
        relay_cli::http::call(&url, "POST", &[], Some(&body), args.ca_cert.as_deref()).await?;
    if reply.status != 200 {
        let hint = match reply.status {
            401 => " (the password, person token or enrollment token is wrong, used or expired)",
            409 => " (this key is already registered; run register again to make a new one)",
            403 => {
                " (the person is disabled or lacks listener.register on these hybrid connections)"
            }
            404 => " (the broker has no [ca] configured)",
            _ => "",
        };
        anyhow::bail!("{} from broker: {}{hint}", reply.status, reply.message());
    }
    let r = &reply.json;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    relay_io::secure_fs::create_private_dir(&args.identity)?;
    let write = |name: &str, body: &str, secret: bool| {
        let path = args.identity.join(name);
        relay_io::secure_fs::write_atomic(&path, body.as_bytes(), secret)
            .with_context(|| format!("writing {}", path.display()))
    };
    write("key.pem", &key.serialize_pem(), true)?;
    write(
        "cert.pem",
        &format!("{}{}", text(&r["certificate"]), text(&r["chain"])),
        false,
    )?;
    let details = serde_json::json!({
        "listener_id": r["listener_id"],
        "endpoint": args.endpoint,
        "hybrid_connections": r["hybrid_connections"],
        "not_after_ms": r["not_after_ms"],
    });
    write("listener.json", &details.to_string(), false)?;
    println!(
        "registered listener {} for {}; identity in {}",
        text(&r["listener_id"]),
        r["hybrid_connections"],
        args.identity.display()
    );
    Ok(())
}
