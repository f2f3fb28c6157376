//! A whole cluster on loopback, from Debian's packages: three `nats-server` processes
//! clustered with routes, a throwaway PostgreSQL database, broker nodes running the real
//! binary, and HAProxy in front (TCP, random balance, `/readyz` checks), optionally one node
//! in a network namespace of its own for partitions ([`Netns`]). Every process is
//! killed when the [`Cluster`] drops. `.ci/run` installs the packages.
//!
//! A harness: a failed step is a failed test, so it panics with what failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::external::{Process, free_port_on, installed, spawn_broker, wait_accepting};
use crate::{KEY, KEY_NAME, token_for};

/// The cluster secret of the tests.
pub const SECRET: &str = "cluster-secret-for-tests-0123456789";

/// NATS servers clustered with routes.
pub struct Nats {
    servers: Vec<Option<Process>>,
    bin: String,
    dir: PathBuf,
    configs: Vec<PathBuf>,
    /// Client addresses, one per server.
    pub clients: Vec<SocketAddr>,
    monitors: Vec<SocketAddr>,
}

impl Nats {
    /// `n` servers on `ip` with full routes, with short pings (the cluster spec's settings),
    /// ready when each monitoring endpoint reports its routes.
    pub fn start(dir: &std::path::Path, n: usize, ip: IpAddr) -> Self {
        let bin = installed("nats-server", "nats-server");
        let clients: Vec<SocketAddr> = (0..n).map(|_| free_port_on(ip)).collect();
        let routes: Vec<SocketAddr> = (0..n).map(|_| free_port_on(ip)).collect();
        let monitors: Vec<SocketAddr> = (0..n).map(|_| free_port_on(ip)).collect();
        let route_list: Vec<String> = routes.iter().map(|r| format!("\"nats://{r}\"")).collect();
        let mut configs = Vec::new();
        for i in 0..n {
            let config = format!(
                "server_name: n{i}\nlisten: \"{}\"\nhttp: \"{}\"\nping_interval: \"1s\"\nping_max: 2\n\
                 cluster {{\n  name: relay\n  listen: \"{}\"\n  no_advertise: true\n  routes: [{}]\n}}\n",
                clients[i],
                monitors[i],
                routes[i],
                route_list.join(", ")
            );
            let path = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&path, config).unwrap();
            configs.push(path);
        }
        let mut nats = Self {
            servers: Vec::new(),
            bin: bin.clone(),
            dir: dir.to_path_buf(),
            configs,
            clients,
            monitors,
        };
        for i in 0..n {
            let server = nats.spawn(&bin, dir, i);
            nats.servers.push(Some(server));
        }
        for i in 0..n {
            nats.wait_routes(i, n - 1);
        }
        nats
    }

    fn spawn(&self, bin: &str, dir: &std::path::Path, i: usize) -> Process {
        let log = dir.join(format!("nats-{i}.log"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.configs[i])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nats-server runs");
        wait_accepting(self.clients[i], "nats-server", &log);
        Process(child)
    }

    /// Waits (bounded) until server `i` has `routes` routes.
    pub fn wait_routes(&self, i: usize, routes: usize) {
        let started = Instant::now();
        loop {
            let body = get(self.monitors[i], "/routez")
                .map(|(_, b)| b)
                .unwrap_or_default();
            if body.contains(&format!("\"num_routes\": {routes}")) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats server {i} did not get {routes} routes: {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Sends `signal` (`STOP`, `CONT`) to server `i`: a hung server keeps its sockets open.
    pub fn signal(&self, i: usize, signal: &str) {
        send_signal(
            self.servers[i].as_ref().expect("server runs").0.id(),
            signal,
        );
    }

    /// Starts server `i` again, on the same ports, and waits for its routes.
    pub fn restart(&mut self, i: usize) {
        let server = self.spawn(&self.bin, &self.dir, i);
        self.servers[i] = Some(server);
        self.wait_routes(i, self.servers.len() - 1);
    }

    /// The `nats://` URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.clients[i])
    }
}

/// A plain HTTP GET on loopback, for monitoring endpoints: status and body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A GET to a node's own endpoint with curl, run after `prefix` (TLS certificates are the
/// tests' self-signed one).
fn curl(prefix: &[&str], scheme: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    let out = command
        .args(["-sk", "--max-time", "2", "-w", "\n%{http_code}"])
        .arg(format!("{scheme}://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_owned()))
}

/// One broker node: the real binary with a `[cluster]` section.
pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    /// Whether it serves TLS.
    pub tls: bool,
    pub peer: SocketAddr,
    config: PathBuf,
    pub log: PathBuf,
    /// The network namespace it runs in, when it is the cluster's isolated node.
    netns: Option<String>,
    process: Option<Process>,
}

impl Node {
    /// Its `ws://` (or `wss://`) address.
    pub fn ws(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// A GET of its own endpoint `path`, over TLS when it serves TLS.
    /// An isolated node is asked from inside its namespace, so also while it is cut off.
    fn fetch(&self, path: &str) -> Option<(u16, String)> {
        let scheme = if self.tls { "https" } else { "http" };
        match &self.netns {
            Some(ns) => curl(&["ip", "netns", "exec", ns], scheme, self.addr, path),
            None if self.tls => curl(&[], scheme, self.addr, path),
            None => get(self.addr, path),
        }
    }

    /// Its `/readyz` status now (`None` when it does not answer).
    pub fn ready_status(&self) -> Option<u16> {
        self.fetch("/readyz").map(|(status, _)| status)
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        self.fetch("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One metric's value (the first line starting with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    fn pid(&self) -> Option<u32> {
        Some(self.process.as_ref()?.0.id())
    }
}

/// What a node's config holds besides the cluster's own keys.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// The NATS servers this node may use (indexes); default: all of them.
    pub nats: Option<Vec<usize>>,
    /// Give each node its own `advertise_url` (per-node rendezvous addresses).
    pub advertise: bool,
    /// TLS (`server.pem` in the cluster's folder) and the one CA every node shares
    /// (`ca/` there): certificate listeners, registration, revocation.
    pub identity: bool,
    /// `[limits].standby_per_listener`, when not the default.
    pub standby_per_listener: Option<usize>,
    /// Run this node in the cluster's [`Netns`], where [`Netns::cut`] cuts it off from
    /// NATS, the other nodes, HAProxy and the tests (PostgreSQL stays, on its socket).
    /// At most one node; the others and NATS then bind the namespace's host address.
    pub isolated: bool,
}

/// A network namespace joined to this one by a veth pair: the host end has [`Self::host`],
/// the namespace's end [`Self::inside`]. Deleted when dropped.
pub struct Netns {
    pub name: String,
    veth: String,
    pub host: IpAddr,
    pub inside: IpAddr,
}

impl Netns {
    /// A fresh namespace (root only: `ip netns` and veth, from iproute2).
    pub fn new() -> Self {
        // Names unique per test process, short enough for an interface (15 bytes).
        let tag = std::process::id() % 100_000;
        let (name, veth) = (format!("relay-test-{tag}"), format!("rt{tag}h"));
        let third = tag % 250;
        let host = IpAddr::V4(Ipv4Addr::new(10, 231, third as u8, 1));
        let inside = IpAddr::V4(Ipv4Addr::new(10, 231, third as u8, 2));
        // A namespace of a killed earlier run of this pid goes first.
        for args in [["netns", "del", &name], ["link", "del", &veth]] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
        let inner = format!("rt{tag}n");
        let steps: [Vec<String>; 7] = [
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                veth.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                inner.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host}/30"),
                "dev".into(),
                veth.clone(),
            ],
            vec!["link".into(), "set".into(), veth.clone(), "up".into()],
            ns(
                &name,
                &["addr", "add", &format!("{inside}/30"), "dev", &inner],
            ),
            ns(&name, &["link", "set", &inner, "up"]),
            ns(&name, &["link", "set", "lo", "up"]),
        ];
        let netns = Self {
            name,
            veth,
            host,
            inside,
        };
        for args in steps {
            let out = Command::new(installed("ip", "iproute2"))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {} (partition tests need root): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        netns
    }

    /// Takes the host's end down: packets between the namespace and the rest are dropped
    /// both ways, with no FIN and no reset, as when a cable is pulled.
    pub fn cut(&self) {
        self.link("down");
    }

    /// Brings the host's end back; connections that outlived the cut carry on.
    pub fn heal(&self) {
        self.link("up");
    }

    fn link(&self, state: &str) {
        let ok = Command::new("ip")
            .args(["link", "set", &self.veth, state])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {} {state}", self.veth);
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `ip` arguments that run `args` inside namespace `name`.
fn ns(name: &str, args: &[&str]) -> Vec<String> {
    ["netns", "exec", name, "ip"]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect()
}

/// NATS, PostgreSQL, broker nodes and HAProxy.
pub struct Cluster {
    pub dir: PathBuf,
    pub nats: Nats,
    pub nodes: Vec<Node>,
    /// The shared address (HAProxy).
    pub lb: SocketAddr,
    /// The database every node shares (on [`relay_broker::store::TestPostgres::shared`]).
    pub db: String,
    _haproxy: Process,
    /// The namespace of the isolated node, if one is (dropped after every process).
    pub netns: Option<Netns>,
}

impl Cluster {
    /// Starts `n` nodes on a fresh database named after `name`, each with the options
    /// `options(i)` gives, behind HAProxy; returns once every node is ready.
    pub fn start(name: &str, n: usize, options: impl Fn(usize) -> NodeOptions) -> Self {
        crate::build_binaries_once();
        let dir = crate::temp_dir(name);
        let all: Vec<NodeOptions> = (0..n).map(options).collect();
        assert!(
            all.iter().filter(|o| o.isolated).count() <= 1,
            "one isolated node"
        );
        let netns = all.iter().any(|o| o.isolated).then(Netns::new);
        let host = netns
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |ns| ns.host);
        let nats = Nats::start(&dir, 3, host);
        let pg = relay_broker::store::TestPostgres::shared();
        let db = pg.fresh_database(name);
        let db = db.get_dbname().unwrap().to_owned();
        let mut nodes = Vec::new();
        for (i, opts) in all.into_iter().enumerate() {
            let store = if opts.isolated {
                // The socket: PostgreSQL listens on loopback only, the namespace's own.
                let socket = pg.socket_dir.display().to_string().replace('/', "%2F");
                format!("postgres://postgres@{socket}:{}/{db}", pg.port)
            } else {
                format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port)
            };
            let ip = match &netns {
                Some(ns) if opts.isolated => ns.inside,
                _ => host,
            };
            let servers: Vec<String> = opts
                .nats
                .clone()
                .unwrap_or_else(|| (0..3).map(|k| (i + k) % 3).collect())
                .into_iter()
                .map(|k| format!("\"{}\"", nats.url(k)))
                .collect();
            // Free on the host is as good as free in a fresh namespace.
            let addr = SocketAddr::new(ip, free_port_on(host).port());
            let peer = SocketAddr::new(ip, free_port_on(host).port());
            let advertise = if opts.advertise {
                let scheme = if opts.identity { "wss" } else { "ws" };
                format!("advertise_url = \"{scheme}://{addr}\"\n")
            } else {
                String::new()
            };
            let (server, ca) = if opts.identity {
                let (cert, key) = crate::server_tls_files(&dir);
                (
                    format!(
                        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                        cert.display(),
                        key.display()
                    ),
                    format!(
                        "[ca]\ndir = \"{}\"\ncert_lifetime_hours = 24\n",
                        dir.join("ca").display()
                    ),
                )
            } else {
                (String::new(), String::new())
            };
            let limits = opts.standby_per_listener.map_or_else(String::new, |n| {
                format!("[limits]\nstandby_per_listener = {n}\n")
            });
            let config = crate::config_with_server(
                &server,
                &format!(
                    "[cluster]\nnode_id = \"b{i}\"\nnats = [{}]\npeer_bind = \"{peer}\"\nsecret = \"{SECRET}\"\n{advertise}\
                     [store]\nurl = \"{store}\"\n{ca}{limits}",
                    servers.join(", ")
                ),
            )
            .replace("bind = \"127.0.0.1:0\"", &format!("bind = \"{addr}\""));
            let path = dir.join(format!("b{i}.toml"));
            std::fs::write(&path, config).unwrap();
            let mut node = Node {
                id: format!("b{i}"),
                addr,
                tls: opts.identity,
                peer,
                config: path,
                log: dir.join(format!("b{i}.log")),
                netns: netns
                    .as_ref()
                    .filter(|_| opts.isolated)
                    .map(|ns| ns.name.clone()),
                process: None,
            };
            start_node(&mut node);
            nodes.push(node);
        }
        let lb = free_port_on(host);
        let haproxy = haproxy(&dir, lb, &nodes);
        let cluster = Self {
            dir,
            nats,
            nodes,
            lb,
            db,
            _haproxy: haproxy,
            netns,
        };
        for i in 0..n {
            cluster.wait_serving(i, Duration::from_secs(20));
        }
        cluster
    }

    /// The shared address, `ws://` (or `wss://`).
    pub fn ws(&self) -> String {
        let scheme = if self.nodes[0].tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.lb)
    }

    /// The server certificate every TLS node presents (a trust root for clients).
    pub fn server_ca(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// Waits (bounded) until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&self, i: usize, bound: Duration) {
        let started = Instant::now();
        while self.nodes[i].ready_status() != Some(200) {
            assert!(
                started.elapsed() < bound,
                "node {i} not ready within {bound:?}: {}",
                std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether HAProxy has node `i` up (its stats socket).
    pub fn lb_up(&self, i: usize) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.dir.join("haproxy.sock"))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"show stat\n").is_err() {
            return false;
        }
        let mut csv = String::new();
        let _ = s.read_to_string(&mut csv);
        let id = &self.nodes[i].id;
        csv.lines().any(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f.len() > 17 && f[0] == "brokers" && f[1] == id && f[17] == "UP"
        })
    }

    /// Waits (bounded) until node `i` is ready and HAProxy has it up.
    pub fn wait_serving(&self, i: usize, bound: Duration) {
        self.wait_ready(i, bound);
        let started = Instant::now();
        while !self.lb_up(i) {
            assert!(
                started.elapsed() < bound,
                "HAProxy did not take node {i} up within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process = None;
    }

    /// Stops node `i` the way systemd does (SIGTERM) and waits (bounded) for it to exit:
    /// it closes its control channels and drains its relays.
    pub fn terminate(&mut self, i: usize, bound: Duration) -> Duration {
        self.signal(i, "TERM");
        let started = Instant::now();
        let process = self.nodes[i].process.as_mut().expect("node runs");
        while process.0.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < bound,
                "node {i} still running {bound:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.nodes[i].process = None;
        started.elapsed()
    }

    /// Starts node `i` again with the same config.
    pub fn restart(&mut self, i: usize) {
        start_node(&mut self.nodes[i]);
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        send_signal(self.nodes[i].pid().expect("node runs"), signal);
    }
}

/// `kill -<signal> <pid>`.
fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

fn start_node(node: &mut Node) {
    let mut command = match &node.netns {
        Some(name) => {
            let mut c = Command::new("ip");
            // `ip netns exec` execs the broker: the pid is the broker's.
            c.args(["netns", "exec", name])
                .arg(crate::bin("relay-broker"));
            c
        }
        None => Command::new(crate::bin("relay-broker")),
    };
    command
        .arg("--config")
        .arg(&node.config)
        .env("RUST_LOG", "info,relay_broker=debug,async_nats=warn")
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .unwrap(),
        );
    let (process, _) = spawn_broker(command);
    node.process = Some(process);
}

/// HAProxy as the tests (and `dist/haproxy/relay.cfg`) configure it: TCP, random balance,
/// redispatch, `/readyz` checks every 200 ms that cut a node's sessions when it goes down.
fn haproxy(dir: &std::path::Path, bind: SocketAddr, nodes: &[Node]) -> Process {
    let bin = installed("haproxy", "haproxy");
    let template = std::fs::read_to_string(crate::workspace().join("dist/haproxy/relay.cfg"))
        .expect("dist/haproxy/relay.cfg");
    let servers: String = nodes
        .iter()
        .map(|n| {
            // A TLS node is checked over TLS (its own certificate; HAProxy only relays).
            let tls = if n.tls { " check-ssl verify none" } else { "" };
            format!("    server {} {} check{tls}\n", n.id, n.addr)
        })
        .collect();
    let mut config = String::new();
    let mut servers = Some(servers);
    for line in template.lines() {
        if line.trim_start().starts_with("server ") {
            // Ours where the template's were: after `default-server`, which applies only
            // to the servers that follow it.
            if let Some(servers) = servers.take() {
                config.push_str(&servers);
            }
            continue;
        }
        if line.trim_start().starts_with("bind ") {
            config.push_str(&format!("    bind {bind}\n"));
            continue;
        }
        // Foreground, no pid file, and a bound that fits a test's file descriptor limit.
        let key = line.split_whitespace().next().unwrap_or_default();
        if matches!(key, "pidfile" | "daemon") {
            continue;
        }
        if key == "maxconn" {
            config.push_str("    maxconn 2000\n");
            continue;
        }
        config.push_str(line);
        config.push('\n');
        if line.starts_with("global") {
            // The tests ask HAProxy which servers it has up.
            config.push_str(&format!(
                "    stats socket {}\n",
                dir.join("haproxy.sock").display()
            ));
        }
    }
    assert!(servers.is_none(), "the HAProxy template has no server line");
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("haproxy.log");
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
        .spawn()
        .expect("haproxy runs");
    wait_accepting(bind, "haproxy", &dir.join("haproxy.err"));
    Process(child)
}

/// A management token for `/{hc}` on `addr`.
pub fn manage_token(addr: &str, hc: &str) -> String {
    token_for(&format!("http://{addr}/{hc}"), KEY_NAME, KEY, 600)
}

/// `ListenerCount` of `hc` as node `addr` reports it (the .NET SDK's runtime information).
pub async fn listener_count(addr: SocketAddr, hc: &str) -> Option<usize> {
    let token = manage_token(&addr.to_string(), hc);
    let url = format!("http://{addr}/{hc}?api-version=2017-04");
    let headers = [
        ("ServiceBusAuthorization", token.as_str()),
        ("X-PROCESS-AT", "ServiceBus"),
    ];
    let (status, _, body) = crate::http_request("GET", &url, &headers, Vec::new()).await;
    if status != 200 {
        return None;
    }
    let body = String::from_utf8_lossy(&body);
    let count = body.split("<ListenerCount>").nth(1)?.split('<').next()?;
    count.parse().ok()
}
