//! `relay-sender`: the sender tool.
//!
//! `relay-sender forward --endpoint ws://127.0.0.1:9400 --hc orders --sas-key-name NAME
//! --sas-key KEY --local 127.0.0.1:15432` opens one relayed connection per local connection;
//! `--local 127.0.0.1:1502/plc` names a port on the listener, `--local ADDR=HC[/port]` picks
//! another hybrid connection. `relay-sender http GET https://broker/hc/path` sends one
//! request through the broker's HTTP mode; `relay-sender token` mints a SAS token.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use relay_cli::{ConnectionArgs, LogFormat, init_logging};
use relay_core::connection_string::{Credential, Target};
use relay_io::WsError;
use relay_io::splice::SpliceError;
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
    /// Send one HTTP request through the broker's HTTP mode and print the response body.
    Http(HttpArgs),
}

#[derive(Args, Debug)]
struct HttpArgs {
    /// Method, e.g. GET or POST.
    method: String,
    /// The relayed URL: the broker's address, the hybrid connection, the path
    /// (e.g. https://relay.example.com/webui/login?next=1).
    url: String,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Request body; `@FILE` reads a file, `@-` standard input.
    #[arg(long)]
    data: Option<String>,
    /// Extra request header `Name: value`; repeat for several.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Print the status line and response headers to standard error.
    #[arg(long, short = 'i')]
    include: bool,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Proxy for the broker (http://user:password@host:port or socks5://); default from
    /// HTTPS_PROXY / ALL_PROXY / NO_PROXY.
    #[arg(long)]
    proxy: Option<String>,
}

#[derive(Args, Debug)]
struct ForwardArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Local address to accept on, `ADDR[/PORT_NAME]` or `ADDR=HC[/PORT_NAME]`; repeat for
    /// several.
    #[arg(long, required = true)]
    local: Vec<String>,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Proxy for the broker (http://user:password@host:port or socks5://); default from
    /// HTTPS_PROXY / ALL_PROXY / NO_PROXY.
    #[arg(long)]
    proxy: Option<String>,
}

/// One `--local` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    bind: String,
    hc: Option<String>,
    port: Option<String>,
}

impl std::str::FromStr for Mapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (bind, remote) = match text.split_once('=') {
            Some((bind, remote)) => (bind, Some(remote)),
            None => (text, None),
        };
        let (bind, port) = match (remote, bind.split_once('/')) {
            (None, Some((bind, port))) => (bind, Some(port.to_owned())),
            _ => (bind, None),
        };
        let (hc, port) = match remote {
            // `HC/port`: the last segment names the port (hybrid connection names may hold '/').
            Some(remote) => match remote.rsplit_once('/') {
                Some((hc, port)) => (Some(hc.to_owned()), Some(port.to_owned())),
                None => (Some(remote.to_owned()), None),
            },
            None => (None, port),
        };
        if bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("--local {text}: the local address must be ip:port"));
        }
        if hc.as_deref() == Some("") || port.as_deref() == Some("") {
            return Err(format!(
                "--local {text}: empty hybrid connection or port name"
            ));
        }
        Ok(Self {
            bind: bind.to_owned(),
            hc,
            port,
        })
    }
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
        Command::Http(args) => http(args).await,
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

fn proxy_rules(flag: Option<&str>) -> anyhow::Result<Option<Arc<relay_io::proxy::ProxyRules>>> {
    let rules = match flag {
        Some(url) => relay_io::proxy::ProxyRules::new(url, "")?,
        None => relay_io::proxy::ProxyRules::from_env()?,
    };
    Ok(Some(rules)
        .filter(|r| *r != relay_io::proxy::ProxyRules::default())
        .map(Arc::new))
}

fn token_for(target: &Target, hc: &str) -> Option<String> {
    match &target.credential {
        Credential::Key { name, key } => Some(relay_sender::sas_token(
            &target.endpoint,
            hc,
            name,
            key,
            3600,
        )),
        Credential::Token(t) => Some(t.clone()),
        Credential::None => None,
    }
}

async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let target = Arc::new(args.connection.target()?);
    let tls = relay_io::tls::client_config(args.ca_cert.as_deref()).context("loading --ca-cert")?;
    let proxy = proxy_rules(args.proxy.as_deref())?;
    let mappings: Vec<Mapping> = args
        .local
        .iter()
        .map(|l| l.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    for mapping in mappings {
        let listener = TcpListener::bind(&mapping.bind)
            .await
            .with_context(|| format!("binding --local {}", mapping.bind))?;
        let hc = mapping.hc.clone().unwrap_or_else(|| target.hc.clone());
        let path = mapping.port.as_ref().map_or_else(String::new, |p| {
            format!("/{}", relay_core::address::encode_name(p))
        });
        println!(
            "forwarding {} -> {}/{hc}{path}",
            listener.local_addr()?,
            target.endpoint
        );
        let dialer = relay_sender::WarmDialer::start(
            &target.endpoint,
            Some(Arc::clone(&tls)),
            proxy.clone(),
        )?;
        let route = Arc::new(Route {
            target: Arc::clone(&target),
            hc,
            path,
            dialer,
        });
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let route = Arc::clone(&route);
                        tokio::spawn(async move { relay_one(tcp, peer, &route).await });
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

/// Where one `--local` mapping's connections go.
struct Route {
    target: Arc<Target>,
    hc: String,
    path: String,
    /// Keeps a connection to the broker dialled for the next local connection.
    dialer: Arc<relay_sender::WarmDialer>,
}

async fn relay_one(tcp: TcpStream, peer: std::net::SocketAddr, route: &Route) {
    let _ = tcp.set_nodelay(true);
    // Until the relayed stream ends in order, any close (a failed connect, an abort, this
    // process killed) resets the local client rather than telling it the stream is complete.
    relay_io::splice::reset_on_close(&tcp);
    let options = ConnectOptions {
        token: token_for(&route.target, &route.hc),
        path: route.path.clone(),
        // A byte stream has no use for the upgrade's status; a refusal is logged below.
        early_pairing: true,
        ..ConnectOptions::default()
    };
    let conn = match route.dialer.connect(&route.hc, &options).await {
        Ok(c) => c,
        Err(e) => {
            let hint = e.hint().unwrap_or("");
            tracing::warn!(%peer, hc = %route.hc, error = %e, hint, "relayed connect failed");
            return;
        }
    };
    let (mut from_client, mut to_client) = tcp.into_split();
    let spliced =
        relay_io::splice::splice(conn.stream.into_parts(), (&mut from_client, &mut to_client))
            .await;
    let tcp = from_client.reunite(to_client);
    match spliced {
        Ok(s) => {
            tracing::debug!(
                %peer,
                from_listener = s.to_tcp,
                to_listener = s.to_ws,
                "connection finished"
            );
            if let Ok(tcp) = &tcp {
                relay_io::splice::finished(tcp);
            }
        }
        Err(SpliceError::Relay(WsError::Aborted { code, reason }))
            if code == relay_core::standby::CLOSE_REJECTED =>
        {
            tracing::warn!(%peer, hc = %route.hc, %reason, "the listener refused the connection");
        }
        Err(e) => {
            tracing::info!(%peer, hc = %route.hc, error = %e, "connection aborted; resetting the local connection");
        }
    }
}

/// `relay-sender http METHOD URL`: the hybrid connection is `--hc` (or the connection
/// string's EntityPath), else the URL's first path segment.
async fn http(args: HttpArgs) -> anyhow::Result<()> {
    let url: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("{}: not a URL", args.url))?;
    let path = url.path().trim_start_matches('/');
    let mut connection = args.connection;
    if connection.endpoint.is_none() && connection.connection_string.is_none() {
        connection.endpoint = Some(format!(
            "{}://{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str())
        ));
    }
    if connection.hc.is_none() {
        connection.hc = path.split('/').next().map(str::to_owned);
    }
    let target = connection.target()?;
    let body = match args.data.as_deref() {
        None => Vec::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?
        }
        Some(d) => d.as_bytes().to_vec(),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h}: use 'Name: value'"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some(token) = token_for(&target, &target.hc) {
        headers.push(("ServiceBusAuthorization".into(), token));
    }
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let tls = relay_io::tls::client_config(args.ca_cert.as_deref()).context("loading --ca-cert")?;
    let proxy = proxy_rules(args.proxy.as_deref())?;
    let url = http_scheme(&args.url);
    let (status, reply) = relay_io::http1::call_via(
        &url,
        &args.method.to_ascii_uppercase(),
        &header_refs,
        &body,
        Some(&tls),
        proxy.as_deref(),
    )
    .await
    .with_context(|| format!("calling {url}"))?;
    if args.include {
        eprintln!("HTTP {status}");
    }
    use std::io::Write as _;
    std::io::stdout().write_all(&reply)?;
    if status >= 400 {
        let hint = match status {
            401 => " (the key is wrong or lacks Send on this hybrid connection)",
            404 => " (no such hybrid connection)",
            502 => " (no listener is connected, or it failed)",
            504 => " (the listener did not answer in time)",
            _ => "",
        };
        anyhow::bail!("{status} from broker{hint}");
    }
    Ok(())
}

/// The relayed URL with an HTTP scheme (`wss`/`sb` → `https`, `ws` → `http`), path kept.
fn http_scheme(url: &str) -> String {
    match url.split_once("://") {
        Some(("wss" | "sb", rest)) => format!("https://{rest}"),
        Some(("ws", rest)) => format!("http://{rest}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::Mapping;

    #[test]
    fn local_mappings() {
        let m = |t: &str| t.parse::<Mapping>();
        assert_eq!(
            m("127.0.0.1:1502/plc").unwrap(),
            Mapping {
                bind: "127.0.0.1:1502".into(),
                hc: None,
                port: Some("plc".into())
            }
        );
        assert_eq!(
            m("127.0.0.1:1502=edge/7/plc").unwrap(),
            Mapping {
                bind: "127.0.0.1:1502".into(),
                hc: Some("edge/7".into()),
                port: Some("plc".into())
            }
        );
        assert_eq!(
            m("127.0.0.1:15432=orders").unwrap(),
            Mapping {
                bind: "127.0.0.1:15432".into(),
                hc: Some("orders".into()),
                port: None
            }
        );
        assert!(m("localhost:1").is_err());
        assert!(m("127.0.0.1:1/").is_err());
    }
}
