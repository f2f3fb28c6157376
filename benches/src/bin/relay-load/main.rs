//! `relay-load`: end-to-end measurements of the relay next to direct loopback TCP, bore and
//! rathole, in one run, as BENCHMARKS.md reports them.
//!
//! `cargo build --release -p relay-broker -p relay-listener -p relay-sender -p relay-benches`
//! then `target/release/relay-load --tls --tools-dir /path/with/bore-and-rathole`.

mod backend;
mod http;
mod measure;
mod memory;
mod procs;
mod soak;
mod targets;
mod wan;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::measure::percentile;
use crate::targets::Target;

#[derive(Parser, Debug)]
#[command(
    name = "relay-load",
    about = "End-to-end relay measurements beside direct TCP, bore and rathole"
)]
struct Cli {
    /// Compare one node with two cluster nodes (nats-server and PostgreSQL from Debian's
    /// packages): the table of single-stream, 8-stream, CPU and connect figures only.
    #[arg(long)]
    cluster: bool,
    /// Megabytes pushed per throughput run (split over the streams).
    #[arg(long, default_value_t = 1000)]
    mb: u64,
    /// Fresh connections for connect-to-first-byte latency.
    #[arg(long, default_value_t = 1000)]
    connects: usize,
    /// 64-byte round trips.
    #[arg(long, default_value_t = 1000)]
    rtts: usize,
    /// Seconds of HTTP load at 64 concurrent requests.
    #[arg(long, default_value_t = 5)]
    http_secs: u64,
    /// Idle listener control channels for the memory figure.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Rounds; targets are interleaved within each round and medians reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also measure the relay over TLS (wss/https).
    #[arg(long)]
    tls: bool,
    /// Directory holding `bore` and `rathole` binaries; peers are skipped when absent.
    #[arg(long)]
    tools_dir: Option<PathBuf>,
    /// One-way delay (ms) of the emulated link between the listener's site and the broker,
    /// for the connect figures across a wide-area link; 0 skips them.
    #[arg(long, default_value_t = 5)]
    wan_ms: u64,
    /// Fresh connections per target across the emulated link.
    #[arg(long, default_value_t = 200)]
    wan_connects: usize,
    /// Directory holding the release relay binaries (default: next to this tool).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Soak instead of measuring: this many seconds of mixed traffic with the broker's RSS,
    /// file descriptors, tasks and pending rendezvous sampled; exits 1 when any keeps growing.
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
    /// Seconds between soak samples.
    #[arg(long, default_value_t = 5.0)]
    soak_interval_secs: f64,
    /// Where the soak's samples go, as CSV (`benches/soak_plot.py` draws them).
    #[arg(long, default_value = "soak.csv")]
    soak_csv: PathBuf,
}

/// Per-target samples, one per round.
#[derive(Default)]
struct Row {
    one: Vec<f64>,
    eight: Vec<f64>,
    cpu: Vec<f64>,
    connect50: Vec<f64>,
    connect99: Vec<f64>,
    rtt50: Vec<f64>,
    rtt99: Vec<f64>,
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bins = cli.bin_dir.clone().unwrap_or_else(targets::bin_dir);
    let dir = std::env::temp_dir().join(format!("relay-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let backends = backend::start().await?;
    if cli.soak_secs > 0 {
        let durable = targets::Site {
            durable: true,
            ..targets::Site::LOCAL
        };
        let relay = targets::relay_at(&backends, &bins, &dir, false, durable).await?;
        measure::wait_ready(relay.echo).await?;
        println!(
            "Soak: {} s of mixed traffic against the relay (ws, SQLite store), sampled every {} s.\n",
            cli.soak_secs, cli.soak_interval_secs
        );
        let interval = Duration::from_secs_f64(cli.soak_interval_secs.max(0.1));
        let flat = soak::run(&relay, cli.soak_secs, interval, &cli.soak_csv).await?;
        drop(relay);
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::ensure!(flat, "the broker kept growing during the soak (see above)");
        return Ok(());
    }

    let mut all: Vec<Target> = vec![
        targets::direct(&backends),
        targets::relay(&backends, &bins, &dir, false).await?,
    ];
    // One NATS server per cluster (two on one server would be one cluster), kept alive for
    // the run; killed on drop.
    let mut nats_servers = Vec::new();
    let mut monitors = Vec::new();
    if cli.cluster {
        let pg = relay_broker::store::TestPostgres::shared();
        // Its own NATS server and database per target.
        let mut services = || -> anyhow::Result<(String, String)> {
            let (nats, url, monitor) = cluster_services()?;
            nats_servers.push(nats);
            monitors.push(monitor);
            let db = pg.fresh_database("bench");
            let store = format!(
                "postgres://postgres@127.0.0.1:{}/{}",
                pg.port,
                db.get_dbname().unwrap_or_default()
            );
            Ok((url, store))
        };
        for how in [targets::CrossNode::Direct, targets::CrossNode::Spliced] {
            let (url, store) = services()?;
            all.push(targets::relay_cluster(&backends, &bins, &dir, &url, &store, how).await?);
        }
        // Through the load balancer: one node (the same extra hop, the baseline), and three
        // with 6 standbys over them (a node lacks one about 9% of the time at random) and
        // with none.
        for standby in [6, 0] {
            let lb = targets::relay_behind_lb(&backends, &bins, &dir, None, standby).await?;
            all.push(lb);
            let (url, store) = services()?;
            let cluster = Some((url.as_str(), store.as_str()));
            let lb = targets::relay_behind_lb(&backends, &bins, &dir, cluster, standby).await?;
            all.push(lb);
        }
    }
    if cli.tls && !cli.cluster {
        all.push(targets::relay(&backends, &bins, &dir, true).await?);
    }
    if let Some(tools) = cli.tools_dir.as_ref().filter(|_| !cli.cluster) {
        if tools.join("bore").exists() {
            all.push(targets::bore(&backends, tools).await?);
        }
        if tools.join("rathole").exists() {
            all.push(targets::rathole(&backends, tools, &dir).await?);
            if cli.tls {
                all.push(targets::rathole_tls(&backends, tools, &dir).await?);
            }
        }
    }

    for t in &all {
        measure::wait_ready(t.echo).await?;
    }
    let mut rows: Vec<Row> = all.iter().map(|_| Row::default()).collect();
    for _ in 0..cli.repeat.max(1) {
        for (t, row) in all.iter().zip(rows.iter_mut()) {
            let pids = t.pids();
            let cpu0 = procs::total_cpu(&pids);
            row.one
                .push(measure::throughput(t.sink, cli.mb * 1_000_000, 1).await?);
            row.eight
                .push(measure::throughput(t.sink, cli.mb * 1_000_000, 8).await?);
            row.cpu
                .push((procs::total_cpu(&pids) - cpu0) / (2.0 * cli.mb as f64 / 1000.0));
            let mut connect = measure::connect_latency(t.echo, cli.connects).await?;
            let mut rtt = measure::round_trips(t.echo, cli.rtts).await?;
            row.connect50.push(percentile(&mut connect, 50.0));
            row.connect99.push(percentile(&mut connect, 99.0));
            row.rtt50.push(percentile(&mut rtt, 50.0));
            row.rtt99.push(percentile(&mut rtt, 99.0));
        }
    }
    println!("Medians of {} interleaved rounds.\n", cli.repeat.max(1));
    println!(
        "| target | 1 stream MB/s | 8 streams MB/s | relay CPU s/GB | connect p50 / p99 µs | 64 B RTT p50 / p99 µs |"
    );
    println!("|---|---|---|---|---|---|");
    for (t, row) in all.iter().zip(rows.iter_mut()) {
        let cpu = if t.procs.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.2}", median(&mut row.cpu))
        };
        println!(
            "| {} | {:.0} | {:.0} | {cpu} | {:.0} / {:.0} | {:.0} / {:.0} |",
            t.name,
            median(&mut row.one),
            median(&mut row.eight),
            median(&mut row.connect50),
            median(&mut row.connect99),
            median(&mut row.rtt50),
            median(&mut row.rtt99)
        );
    }

    if cli.cluster {
        // The cross-node pair: control channels on node b (the senders' node), node a
        // knowing them from presence.
        let pair = &all[2];
        let endpoint = pair.endpoint.clone().unwrap_or_default();
        let node_a = pair.node_a.context("the cross-node target's node a")?;
        let (held, other, nats) = memory::cluster_idle_listener(
            (pair.procs[1].pid(), pair.procs[0].pid()),
            &endpoint,
            node_a,
            monitors[0],
            targets::KEY,
            cli.idle,
        )
        .await?;
        println!(
            "\n| cost of one idle listener, {} listeners, two nodes | |",
            cli.idle
        );
        println!("|---|---|");
        println!(
            "| RSS on the node holding its control channel | {:.1} KiB |",
            held / 1024.0
        );
        println!(
            "| RSS on the other node (presence) | {:.2} KiB |",
            other / 1024.0
        );
        println!("| NATS traffic, in and out | {nats:.1} B/s |");
        connects_per_second(&all, cli.repeat.max(1)).await?;
        return Ok(());
    }
    if cli.wan_ms > 0 {
        wide_area(&cli, &backends, &bins, &dir).await?;
    }

    println!("\n| HTTP, 64 concurrent | requests/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    let secs = Duration::from_secs(cli.http_secs);
    let direct = http::direct_base().await?;
    let (rps, mut lat) = http::load(&direct, None, 64, secs, None).await?;
    println!(
        "| direct (same app) | {rps:.0} | {:.0} | {:.0} |",
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0)
    );
    let relay = &all[1];
    let endpoint = relay.endpoint.clone().unwrap_or_default();
    let (base, token) = http::relayed_base(&endpoint, targets::KEY, None).await?;
    let (rps, mut lat) = http::load(&base, Some(&token), 64, secs, None).await?;
    println!(
        "| relay (http) | {rps:.0} | {:.0} | {:.0} |",
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0)
    );
    if cli.tls {
        let tls = relay_io::tls::client_config(Some(&dir.join("cert.pem")))?;
        let endpoint = all[2].endpoint.clone().unwrap_or_default();
        let (base, token) =
            http::relayed_base(&endpoint, targets::KEY, Some(Arc::clone(&tls))).await?;
        let (rps, mut lat) = http::load(&base, Some(&token), 64, secs, Some(tls)).await?;
        println!(
            "| relay (https) | {rps:.0} | {:.0} | {:.0} |",
            percentile(&mut lat, 50.0),
            percentile(&mut lat, 99.0)
        );
    }

    println!("\n| broker memory | figure |");
    println!("|---|---|");
    // Per broker: agent listeners first, held open while the control channels are measured,
    // so that neither figure is read off memory the other freed; then both are closed.
    // Four sockets per agent listener, so fewer of them keep file descriptors in bounds.
    let agents = (cli.idle / 6).max(1);
    let standby = usize::from(targets::Site::LOCAL.standby);
    let mut memory_targets = vec![("ws", relay, None)];
    if cli.tls {
        let tls = relay_io::tls::client_config(Some(&dir.join("cert.pem")))?;
        memory_targets.push(("wss", &all[2], Some(tls)));
    }
    let mut agent_rows = Vec::new();
    for (name, target, tls) in memory_targets {
        let endpoint = target.endpoint.clone().unwrap_or_default();
        let pid = target.procs[0].pid();
        let (per_agent, held) = memory::per_idle_agent_listener(
            pid,
            &endpoint,
            targets::KEY,
            agents,
            standby,
            tls.clone(),
        )
        .await?;
        let per = memory::per_idle_listener(pid, &endpoint, targets::KEY, cli.idle, tls).await?;
        drop(held);
        println!(
            "| per idle control channel, {} channels, {name} | {:.1} KiB |",
            cli.idle,
            per / 1024.0
        );
        agent_rows.push(format!(
            "| per idle agent listener (control channel and {standby} standby sockets), {agents} listeners, {name} | {:.1} KiB |",
            per_agent / 1024.0
        ));
    }
    for row in agent_rows {
        println!("{row}");
    }
    let mut stalled_targets = vec![("ws", relay, None)];
    if cli.tls {
        let tls = relay_io::tls::client_config(Some(&dir.join("cert.pem")))?;
        stalled_targets.push(("wss", &all[2], Some(tls)));
    }
    for (name, target, tls) in stalled_targets {
        let endpoint = target.endpoint.clone().unwrap_or_default();
        let (sent, growth) = memory::stalled_push(
            target.procs[0].pid(),
            &endpoint,
            targets::KEY,
            1 << 30,
            Duration::from_secs(10),
            tls,
        )
        .await?;
        println!(
            "| RSS growth while a sender pushes 1 GB into a stalled listener, {name} | {:.1} MiB (the sender got {:.1} MiB out before TCP backpressure stopped it) |",
            growth as f64 / 1048576.0,
            sent as f64 / 1048576.0
        );
    }
    drop(all);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Connect latency with the listener (or tunnel client) `--wan-ms` away from the broker,
/// standbys on and off: what pre-opened sockets save where they matter.
async fn wide_area(
    cli: &Cli,
    backends: &backend::Backends,
    bins: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let delay = Duration::from_millis(cli.wan_ms);
    let wan_dir = dir.join("wan");
    std::fs::create_dir_all(&wan_dir)?;
    let site = |standby| targets::Site {
        wan: Some(delay),
        standby,
        durable: false,
    };
    let standby = targets::Site::LOCAL.standby;
    let mut far = vec![
        targets::relay_at(backends, bins, &wan_dir, false, site(standby)).await?,
        targets::relay_at(backends, bins, &wan_dir, false, site(0)).await?,
    ];
    if cli.tls {
        far.push(targets::relay_at(backends, bins, &wan_dir, true, site(standby)).await?);
        far.push(targets::relay_at(backends, bins, &wan_dir, true, site(0)).await?);
    }
    if let Some(tools) = cli
        .tools_dir
        .as_deref()
        .filter(|t| t.join("rathole").exists())
    {
        far.push(targets::rathole_at(backends, tools, &wan_dir, Some(delay)).await?);
        if cli.tls {
            far.push(targets::rathole_tls_at(backends, tools, &wan_dir, Some(delay)).await?);
        }
    }
    println!(
        "\nListener site {} ms (one way) from the broker, {} fresh connections each:\n",
        cli.wan_ms, cli.wan_connects
    );
    println!("| target | connect p50 / p99 ms | 64 B RTT p50 ms |");
    println!("|---|---|---|");
    for t in &far {
        measure::wait_ready(t.echo).await?;
        let mut connect = measure::connect_latency(t.echo, cli.wan_connects).await?;
        let mut rtt = measure::round_trips(t.echo, 50).await?;
        println!(
            "| {} | {:.1} / {:.1} | {:.1} |",
            t.name,
            percentile(&mut connect, 50.0) / 1000.0,
            percentile(&mut connect, 99.0) / 1000.0,
            percentile(&mut rtt, 50.0) / 1000.0
        );
    }
    Ok(())
}

/// One nats-server on a free loopback port for the cluster targets; it and its URL.
/// Connects per second through HAProxy with standbys, one node against three, 32 clients
/// for 5 s, rounds interleaved.
async fn connects_per_second(all: &[Target], rounds: usize) -> anyhow::Result<()> {
    let behind: Vec<&Target> = all
        .iter()
        .filter(|t| t.name.contains("behind HAProxy, 6 standby"))
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); behind.len()];
    let mut failures = vec![0; behind.len()];
    for _ in 0..rounds {
        for (i, t) in behind.iter().enumerate() {
            let (rate, failed) = measure::connect_rate(t.echo, 32, Duration::from_secs(5)).await?;
            rates[i].push(rate);
            failures[i] += failed;
        }
    }
    println!("\n| connects per second, 32 clients, median of {rounds} | connects/s | failed |");
    println!("|---|---|---|");
    for ((t, rate), failed) in behind.iter().zip(rates.iter_mut()).zip(failures) {
        println!("| {} | {:.0} | {failed} |", t.name, median(rate));
    }
    Ok(())
}

fn cluster_services() -> anyhow::Result<(tokio::process::Child, String, SocketAddr)> {
    let free = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, monitor) = (free()?, free()?);
    let bin = ["/usr/bin/nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| {
            anyhow::anyhow!("--cluster needs nats-server (apt-get install nats-server)")
        })?;
    let child = tokio::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            let monitor = SocketAddr::from(([127, 0, 0, 1], monitor));
            return Ok((child, format!("nats://{addr}"), monitor));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("nats-server did not start on {addr}")
}
