//! The tunnels under test, each leading to the same sink and echo backends:
//! direct TCP, our relay (relay-sender → relay-broker → relay-listener, ws or wss), bore, and
//! rathole. Each reports the processes whose CPU counts as "the relay".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::backend::Backends;
use crate::procs::{Proc, spawn};

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) sink: SocketAddr,
    pub(crate) echo: SocketAddr,
    pub(crate) procs: Vec<Proc>,
    /// For our relay: the broker's ws(s) endpoint, for HTTP and memory measurements.
    pub(crate) endpoint: Option<String>,
    /// For the cross-node pair: the other node (the endpoint is node b).
    pub(crate) node_a: Option<SocketAddr>,
}

impl Target {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

pub(crate) fn direct(b: &Backends) -> Target {
    Target {
        name: "direct TCP".into(),
        sink: b.sink,
        echo: b.echo,
        procs: Vec::new(),
        endpoint: None,
        node_a: None,
    }
}

pub(crate) const KEY: &str = "load-test-key";

/// Where the listener (or tunnel client) sits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    /// One-way delay between the site and the broker; `None` for plain loopback.
    pub(crate) wan: Option<Duration>,
    /// Standby sockets our listener keeps (`relay-listener run --standby`).
    pub(crate) standby: u8,
    /// The broker keeps its state in a SQLite file in the run's folder, as in production,
    /// instead of in memory (whose audit ring fills towards its bound of 10,000 events).
    pub(crate) durable: bool,
}

impl Site {
    /// Next to the broker, with the agent's default standby sockets.
    pub(crate) const LOCAL: Self = Self {
        wan: None,
        standby: 3,
        durable: false,
    };
}

/// Our relay, with the release binaries in `bins`.
pub(crate) async fn relay(
    b: &Backends,
    bins: &Path,
    dir: &Path,
    tls: bool,
) -> anyhow::Result<Target> {
    relay_at(b, bins, dir, tls, Site::LOCAL).await
}

/// Our relay with its listener agents at `site`; the senders stay next to the broker.
pub(crate) async fn relay_at(
    b: &Backends,
    bins: &Path,
    dir: &Path,
    tls: bool,
    site: Site,
) -> anyhow::Result<Target> {
    let mut config = String::from("[server]\nbind = \"127.0.0.1:0\"\n");
    let mut extra: Vec<String> = Vec::new();
    if tls {
        let cert =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
        config.push_str(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ));
        extra = vec![
            "--ca-cert".into(),
            dir.join("cert.pem").display().to_string(),
        ];
    }
    config.push_str(&format!(
        "[limits]\nauth_failures_per_minute = 1000000\nmax_listeners_per_hc = 100000\n[[hybrid_connections]]\nname = \"sink\"\n[[hybrid_connections]]\nname = \"echo\"\n[[hybrid_connections]]\nname = \"http\"\n[[hybrid_connections]]\nname = \"idle\"\n[[hybrid_connections]]\nname = \"stall\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"{KEY}\"\nrights = [\"Manage\"]\n"
    ));
    if site.durable {
        config.push_str(&format!(
            "[store]\npath = \"{}\"\n",
            dir.join("broker-state/relay.db").display()
        ));
    }
    let path = dir.join(if tls {
        "broker-tls.toml"
    } else {
        "broker.toml"
    });
    let (broker, line) = start_broker(bins, &path, &config).await?;
    let addr = line
        .rsplit(' ')
        .next()
        .context("broker address")?
        .to_owned();
    let scheme = if tls { "wss" } else { "ws" };
    let endpoint = format!("{scheme}://{addr}");
    let site_endpoint = match site.wan {
        Some(delay) => format!(
            "{scheme}://{}",
            crate::wan::start(addr.parse()?, delay).await?
        ),
        None => endpoint.clone(),
    };
    let mut procs = vec![broker];
    let (agents, locals) = agents(b, bins, &site_endpoint, &endpoint, &extra, site.standby).await?;
    procs.extend(agents);
    let name = match site.wan {
        None => format!("relay ({scheme})"),
        Some(_) => format!("relay ({scheme}), {} standby", site.standby),
    };
    Ok(Target {
        name,
        sink: locals[0],
        echo: locals[1],
        procs,
        endpoint: Some(endpoint),
        node_a: None,
    })
}

/// Writes `config` to `path` and starts the broker on it; it and the line naming its address.
async fn start_broker(bins: &Path, path: &Path, config: &str) -> anyhow::Result<(Proc, String)> {
    std::fs::write(path, config)?;
    spawn(
        &bins.join("relay-broker"),
        &["--config".into(), path.display().to_string()],
        &[("RUST_LOG", "warn")],
        "listening on",
    )
    .await
}

/// One listener agent per backend on `listen_at` and one `relay-sender forward` per backend
/// on `send_at`; the processes and the senders' local addresses (sink, echo).
async fn agents(
    b: &Backends,
    bins: &Path,
    listen_at: &str,
    send_at: &str,
    extra: &[String],
    standby: u8,
) -> anyhow::Result<(Vec<Proc>, Vec<SocketAddr>)> {
    let env = [("RELAY_SAS_KEY", KEY), ("RUST_LOG", "info")];
    let mut procs = Vec::new();
    let mut locals = Vec::new();
    for (hc, backend) in [("sink", b.sink), ("echo", b.echo)] {
        let mut args: Vec<String> = [
            "run",
            "--endpoint",
            listen_at,
            "--hc",
            hc,
            "--sas-key-name",
            "root",
            "--forward",
            &backend.to_string(),
            "--standby",
            &standby.to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().cloned());
        procs.push(
            spawn(&bins.join("relay-listener"), &args, &env, "listening")
                .await?
                .0,
        );
        let mut args: Vec<String> = [
            "forward",
            "--endpoint",
            send_at,
            "--hc",
            hc,
            "--sas-key-name",
            "root",
            "--local",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().cloned());
        let (sender, line) = spawn(&bins.join("relay-sender"), &args, &env, "forwarding").await?;
        procs.push(sender);
        let local = line
            .split_whitespace()
            .nth(1)
            .context("sender address")?
            .parse()?;
        locals.push(local);
    }
    Ok((procs, locals))
}

/// How the cluster target reaches its listener: the sender on node b, the listener's
/// control channel on node a.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrossNode {
    /// The listener dials node b's own address for its rendezvous (per-node addresses, or
    /// a load balancer that happened to pick the sender's node).
    Direct,
    /// Every rendezvous address names node a (as a shared address whose load balancer
    /// picked the wrong node would), so node a splices each socket to node b.
    Spliced,
}

/// Two broker nodes on one NATS server and one PostgreSQL database: listeners on node a,
/// senders on node b.
pub(crate) async fn relay_cluster(
    b: &Backends,
    bins: &Path,
    dir: &Path,
    nats: &str,
    store: &str,
    how: CrossNode,
) -> anyhow::Result<Target> {
    let free = || -> anyhow::Result<SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let nodes = [(free()?, free()?), (free()?, free()?)];
    let public = match how {
        CrossNode::Direct => String::new(),
        CrossNode::Spliced => format!("public_url = \"ws://{}\"\n", nodes[0].0),
    };
    let mut procs = Vec::new();
    for (i, (addr, peer)) in nodes.iter().enumerate() {
        let config = format!(
            "[server]\nbind = \"{addr}\"\n{public}[limits]\nauth_failures_per_minute = 1000000\nmax_listeners_per_hc = 100000\n[[hybrid_connections]]\nname = \"sink\"\n[[hybrid_connections]]\nname = \"echo\"\n[[hybrid_connections]]\nname = \"idle\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"{KEY}\"\nrights = [\"Manage\"]\n[cluster]\nnode_id = \"n{i}\"\nnats = [\"{nats}\"]\npeer_bind = \"{peer}\"\nsecret = \"bench-cluster-secret-0123456789\"\n[store]\nurl = \"{store}\"\n"
        );
        let path = dir.join(format!("cluster-{how:?}-{i}.toml"));
        procs.push(start_broker(bins, &path, &config).await?.0);
    }
    let (a, b_node) = (
        format!("ws://{}", nodes[0].0),
        format!("ws://{}", nodes[1].0),
    );
    let (agents, locals) = agents(b, bins, &a, &b_node, &[], Site::LOCAL.standby).await?;
    procs.extend(agents);
    // Node b learns node a's listeners from a's heartbeats: wait until it counts both.
    let started = std::time::Instant::now();
    while !sees_listeners(nodes[1].0).await {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "node b never counted node a's listeners"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Target {
        name: match how {
            CrossNode::Direct => "relay cluster (ws), cross-node".into(),
            CrossNode::Spliced => "relay cluster (ws), cross-node spliced".into(),
        },
        sink: locals[0],
        echo: locals[1],
        procs,
        endpoint: Some(b_node),
        node_a: Some(nodes[0].0),
    })
}

/// Broker nodes behind HAProxy as `dist/haproxy/relay.cfg` configures it: listeners and
/// senders both dial the shared address, so control channels, standbys and senders land on
/// random nodes. With `cluster` (NATS, store URL) three nodes, else one plain node (the
/// baseline with the same extra hop).
pub(crate) async fn relay_behind_lb(
    b: &Backends,
    bins: &Path,
    dir: &Path,
    cluster: Option<(&str, &str)>,
    standby: u8,
) -> anyhow::Result<Target> {
    let free = || -> anyhow::Result<SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let count = if cluster.is_some() { 3 } else { 1 };
    let nodes: Vec<(SocketAddr, SocketAddr)> = (0..count)
        .map(|_| Ok((free()?, free()?)))
        .collect::<anyhow::Result<_>>()?;
    let tag = format!("{count}-{standby}");
    let mut procs = Vec::new();
    for (i, (addr, peer)) in nodes.iter().enumerate() {
        let cluster = cluster.map_or_else(String::new, |(nats, store)| {
            format!(
                "[cluster]\nnode_id = \"lb{i}\"\nnats = [\"{nats}\"]\npeer_bind = \"{peer}\"\nsecret = \"bench-cluster-secret-0123456789\"\n[store]\nurl = \"{store}\"\n"
            )
        });
        let config = format!(
            "[server]\nbind = \"{addr}\"\n[limits]\nauth_failures_per_minute = 1000000\nmax_listeners_per_hc = 100000\nstandby_per_listener = {standby}\n[[hybrid_connections]]\nname = \"sink\"\n[[hybrid_connections]]\nname = \"echo\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"{KEY}\"\nrights = [\"Manage\"]\n{cluster}"
        );
        let path = dir.join(format!("lb-{tag}-{i}.toml"));
        procs.push(start_broker(bins, &path, &config).await?.0);
    }
    let lb = free()?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.0).collect();
    procs.push(haproxy(dir, lb, &addrs, &tag).await?);
    let shared = format!("ws://{lb}");
    let (agents, locals) = agents(b, bins, &shared, &shared, &[], standby).await?;
    procs.extend(agents);
    let started = std::time::Instant::now();
    for &(addr, _) in &nodes {
        while !sees_listeners(addr).await {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "node {addr} never counted both listeners"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(Target {
        name: if count == 1 {
            format!("relay (ws), one node behind HAProxy, {standby} standby")
        } else {
            format!("relay cluster (ws), 3 nodes behind HAProxy, {standby} standby")
        },
        sink: locals[0],
        echo: locals[1],
        procs,
        endpoint: Some(shared),
        node_a: None,
    })
}

/// HAProxy on `bind` in front of `nodes`, from `dist/haproxy/relay.cfg` with its `bind`
/// and `server` lines replaced, in the foreground.
async fn haproxy(
    dir: &Path,
    bind: SocketAddr,
    nodes: &[SocketAddr],
    tag: &str,
) -> anyhow::Result<Proc> {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/haproxy/relay.cfg"),
    )?;
    let mut config = String::new();
    for line in template.lines() {
        let key = line.split_whitespace().next().unwrap_or_default();
        match key {
            "server" | "daemon" | "pidfile" => continue,
            "bind" => config.push_str(&format!("    bind {bind}\n")),
            "maxconn" => config.push_str("    maxconn 2000\n"),
            _ => {
                config.push_str(line);
                config.push('\n');
            }
        }
        if line.starts_with("backend ") {
            for (i, node) in nodes.iter().enumerate() {
                config.push_str(&format!("    server n{i} {node} check\n"));
            }
        }
    }
    let path = dir.join(format!("haproxy-{tag}.cfg"));
    std::fs::write(&path, config)?;
    let child = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("--cluster needs haproxy (apt-get install haproxy)")?;
    let proc = Proc { child };
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(bind).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "haproxy never listened on {bind}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(proc)
}

/// Whether the broker at `addr` counts a listener on both `sink` and `echo` (`/metrics`).
async fn sees_listeners(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    ["sink", "echo"]
        .iter()
        .all(|hc| text.contains(&format!("relay_listeners{{hybrid_connection=\"{hc}\"}} 1")))
}

/// bore: `bore server` plus one `bore local` per backend.
pub(crate) async fn bore(b: &Backends, tools: &Path) -> anyhow::Result<Target> {
    let bin = tools.join("bore");
    let (server, _) = spawn(
        &bin,
        &[
            "server".into(),
            "--min-port".into(),
            "30000".into(),
            "--max-port".into(),
            "30100".into(),
        ],
        &[],
        "server listening",
    )
    .await?;
    let mut procs = vec![server];
    let mut remotes = Vec::new();
    for (port, backend) in [(30001u16, b.sink), (30002, b.echo)] {
        let args: Vec<String> = [
            "local",
            &backend.port().to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec();
        procs.push(spawn(&bin, &args, &[], "listening at").await?.0);
        remotes.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Ok(Target {
        name: "bore".into(),
        sink: remotes[0],
        echo: remotes[1],
        procs,
        endpoint: None,
        node_a: None,
    })
}

/// rathole: one server and one client, two services, plain TCP transport.
pub(crate) async fn rathole(b: &Backends, tools: &Path, dir: &Path) -> anyhow::Result<Target> {
    rathole_at(b, tools, dir, None).await
}

/// rathole with its client at the far end of a `wan` delay line.
pub(crate) async fn rathole_at(
    b: &Backends,
    tools: &Path,
    dir: &Path,
    wan: Option<Duration>,
) -> anyhow::Result<Target> {
    let setup = RatholeSetup {
        name: "rathole",
        base_port: if wan.is_some() { 23350 } else { 23330 },
        server_transport: String::new(),
        client_transport: String::new(),
        wan,
    };
    setup.start(b, tools, dir).await
}

/// rathole with its TLS transport (native-tls), using the certificate the wss relay target
/// wrote into `dir`, converted to PKCS#12 with the openssl CLI as rathole requires.
pub(crate) async fn rathole_tls(b: &Backends, tools: &Path, dir: &Path) -> anyhow::Result<Target> {
    rathole_tls_at(b, tools, dir, None).await
}

/// rathole's TLS transport with its client at the far end of a `wan` delay line.
pub(crate) async fn rathole_tls_at(
    b: &Backends,
    tools: &Path,
    dir: &Path,
    wan: Option<Duration>,
) -> anyhow::Result<Target> {
    let pfx = dir.join("identity.pfx");
    let status = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:bench", "-out"])
        .arg(&pfx)
        .arg("-inkey")
        .arg(dir.join("key.pem"))
        .arg("-in")
        .arg(dir.join("cert.pem"))
        .status()
        .context("running openssl pkcs12")?;
    anyhow::ensure!(status.success(), "openssl pkcs12 failed");
    let setup = RatholeSetup {
        name: "rathole (tls)",
        base_port: if wan.is_some() { 23360 } else { 23340 },
        server_transport: format!(
            "[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"bench\"\n",
            pfx.display()
        ),
        client_transport: format!(
            "[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n",
            dir.join("cert.pem").display()
        ),
        wan,
    };
    setup.start(b, tools, dir).await
}

/// One rathole server and client: control on `base_port`, sink and echo on the next two.
struct RatholeSetup {
    name: &'static str,
    base_port: u16,
    server_transport: String,
    client_transport: String,
    wan: Option<Duration>,
}

impl RatholeSetup {
    async fn start(&self, b: &Backends, tools: &Path, dir: &Path) -> anyhow::Result<Target> {
        let (control, sink, echo) = (self.base_port, self.base_port + 1, self.base_port + 2);
        let server = format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n{}[server.services.sink]\ntoken = \"t\"\nbind_addr = \"127.0.0.1:{sink}\"\n[server.services.echo]\ntoken = \"t\"\nbind_addr = \"127.0.0.1:{echo}\"\n",
            self.server_transport
        );
        let remote = match self.wan {
            Some(delay) => {
                let server = SocketAddr::from(([127, 0, 0, 1], control));
                format!(
                    "127.0.0.1:{}",
                    crate::wan::start(server, delay).await?.port()
                )
            }
            None => format!("localhost:{control}"),
        };
        let client = format!(
            "[client]\nremote_addr = \"{remote}\"\n{}[client.services.sink]\ntoken = \"t\"\nlocal_addr = \"{}\"\n[client.services.echo]\ntoken = \"t\"\nlocal_addr = \"{}\"\n",
            self.client_transport, b.sink, b.echo
        );
        let (sp, cp) = (
            dir.join(format!("rathole-{control}-server.toml")),
            dir.join(format!("rathole-{control}-client.toml")),
        );
        std::fs::write(&sp, server)?;
        std::fs::write(&cp, client)?;
        let env = [("RUST_LOG", "info")];
        let bin = tools.join("rathole");
        let s = spawn(
            &bin,
            &["--server".into(), sp.display().to_string()],
            &env,
            "Listening",
        )
        .await?
        .0;
        let c = spawn(
            &bin,
            &["--client".into(), cp.display().to_string()],
            &env,
            "Control channel established",
        )
        .await?
        .0;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Target {
            name: self.name.into(),
            sink: SocketAddr::from(([127, 0, 0, 1], sink)),
            echo: SocketAddr::from(([127, 0, 0, 1], echo)),
            procs: vec![s, c],
            endpoint: None,
            node_a: None,
        })
    }
}

/// Where the release binaries are.
pub(crate) fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}
