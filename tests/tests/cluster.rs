//! The cluster suite: three broker nodes (the real binary) on three clustered nats-server
//! processes, one PostgreSQL database and HAProxy, all on loopback or a veth the test makes (`relay_tests::cluster`).
//! A listener on one node serves WebSocket and HTTP senders of every other node, through
//! per-node addresses and through the shared address; a killed node loses only its own
//! connections and its listener is back on another node within 2 s, and a hung one's
//! moves too; a node cut off from NATS, by its server's death or by the network (a
//! namespace), fences itself and every view heals; a NATS server killed or hung under
//! load costs at most a retry; revocation reaches every node within a second, also without
//! the broadcast, and no relayed connection of a revoked listener carries data after it;
//! each rendezvous is used once, whichever node it is tried on; standbys parked on any node
//! serve the senders that land there; and Microsoft's clients listen on one node and send
//! through the others. Tests that check invariants log each client event with a monotonic
//! timestamp and check them afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_tests::certs::EchoListener;
use relay_tests::cluster::{Cluster, NodeOptions, listener_count};
use relay_tests::{Edge, KEY, KEY_NAME};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Our listener on `endpoint`, pinging every `keepalive`.
fn listen(endpoint: &str, keepalive: Duration) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    listen_with(endpoint, keepalive, None)
}

/// [`listen`] with `standby` standby sockets instead of the library's default.
fn listen_with(
    endpoint: &str,
    keepalive: Duration,
    standby: Option<usize>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = Arc::new(relay_listener::SasKeySource::new(KEY_NAME, KEY));
    let mut config = relay_listener::ListenerConfig::new(endpoint, "hyco", token);
    config.keepalive = keepalive;
    if let Some(standby) = standby {
        config.standby = standby;
    }
    let listener = relay_listener::Listener::new(config);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = listener.run(Arc::new(Edge), stop).await;
        }
    });
    (stop, task)
}

/// Waits (bounded) until every node in `nodes` counts `n` listeners on `hyco`; how long.
async fn wait_count(cluster: &Cluster, nodes: &[usize], n: usize, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for &i in nodes {
            if listener_count(cluster.nodes[i].addr, "hyco").await != Some(n) {
                all = false;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "nodes {nodes:?} did not all count {n} listeners within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The metric of the listeners on `hyco` a node sees (the cluster's).
const HYCO_LISTENERS: &str = "relay_listeners{hybrid_connection=\"hyco\"}";

fn sender_options(endpoint: &str) -> relay_sender::ConnectOptions {
    relay_sender::ConnectOptions {
        token: Some(relay_sender::sas_token(
            endpoint, "hyco", KEY_NAME, KEY, 600,
        )),
        ..Default::default()
    }
}

/// One echo round trip of `bytes` through `endpoint`.
async fn echo(endpoint: &str, bytes: usize) -> Result<(), String> {
    let mut options = sender_options(endpoint);
    // A tracking id of our own, to find the connection in the nodes' logs.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!(
        "cluster-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    options.id = Some(id.clone());
    echo_with(endpoint, bytes, &options)
        .await
        .map_err(|e| format!("{e} (tracking id {id})"))
}

async fn echo_with(
    endpoint: &str,
    bytes: usize,
    options: &relay_sender::ConnectOptions,
) -> Result<(), String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        relay_sender::connect(endpoint, "hyco", options),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let mut stream = conn.stream;
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let write = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let (written, read) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .map_err(|_| "echo timed out".to_owned())?;
    written.map_err(|e| e.to_string())?;
    read.map_err(|e| e.to_string())?;
    if back != data {
        return Err(format!("echo differs: {} of {bytes} bytes", back.len()));
    }
    Ok(())
}

/// A relayed HTTP GET through `addr`; status and body.
async fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let token = relay_tests::cluster::manage_token(addr, "hyco");
    let url = format!("http://{addr}/hyco{path}");
    let headers = [("ServiceBusAuthorization", token.as_str())];
    let (status, _, body) = relay_tests::http_request("GET", &url, &headers, Vec::new()).await;
    (status, body)
}

fn node_sum(cluster: &Cluster, metric: &str) -> f64 {
    cluster.nodes.iter().map(|n| n.metric(metric)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_on_every_node_reach_a_listener_on_one_through_both_address_forms() {
    let cluster = Cluster::start("cluster-relay", 3, |_| NodeOptions::default());
    // Listener on node 0, by its own address.
    let (stop, task) = listen(&cluster.nodes[0].ws(), Duration::from_secs(10));
    let seen = wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    eprintln!("every node counted the listener {seen:?} after the first");

    // WebSocket senders on the other nodes, by their own addresses: the notice crosses
    // NATS, the rendezvous goes to the sender's node (the listener's base is node 0, so the
    // socket lands there and is spliced back).
    for i in [1, 2] {
        echo(&cluster.nodes[i].ws(), 256 * 1024).await.unwrap();
    }
    // Through the shared address, many times: senders land on any node.
    for _ in 0..15 {
        echo(&cluster.ws(), 16 * 1024).await.unwrap();
    }
    // HTTP: inline (the answer comes back over NATS) and large (over the rendezvous).
    for i in [1, 2] {
        let addr = cluster.nodes[i].addr.to_string();
        let (status, body) = get(&addr, "/status").await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"edge saw /hyco/status"[..])
        );
        let (status, body) = get(&addr, "/big").await;
        assert_eq!((status, body.len()), (200, 300 * 1024));
    }
    for _ in 0..10 {
        let (status, body) = get(&cluster.lb.to_string(), "/big").await;
        assert_eq!((status, body.len()), (200, 300 * 1024));
    }
    let notices = node_sum(&cluster, "relay_cluster_notices_total");
    let splices = node_sum(&cluster, "relay_cluster_splices_total");
    eprintln!("notices over NATS {notices}, spliced rendezvous {splices}");
    assert!(notices >= 4.0, "notices crossed NATS: {notices}");
    assert!(splices >= 4.0, "rendezvous sockets were spliced: {splices}");
    assert_eq!(
        node_sum(&cluster, "relay_cluster_splice_failures_total"),
        0.0
    );

    // A second listener through the shared address: ListenerCount is the cluster's.
    let (stop2, task2) = listen(&cluster.ws(), Duration::from_secs(10));
    wait_count(&cluster, &[0, 1, 2], 2, Duration::from_secs(10)).await;
    for _ in 0..10 {
        echo(&cluster.ws(), 4096).await.unwrap();
    }
    stop2.cancel();
    task2.await.unwrap();
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(5)).await;
    stop.cancel();
    task.await.unwrap();
    wait_count(&cluster, &[0, 1, 2], 0, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_addresses_take_the_rendezvous_straight_to_the_senders_node() {
    let cluster = Cluster::start("cluster-advertise", 3, |_| NodeOptions {
        advertise: true,
        ..NodeOptions::default()
    });
    // No standbys: the listener opens those to the shared address, and they are spliced
    // to their node (the standby protocol carries no address).
    let (stop, task) = listen_with(&cluster.ws(), Duration::from_secs(10), Some(0));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    for _ in 0..10 {
        echo(&cluster.ws(), 64 * 1024).await.unwrap();
    }
    for i in 0..3 {
        let (status, body) = get(&cluster.nodes[i].addr.to_string(), "/big").await;
        assert_eq!((status, body.len()), (200, 300 * 1024));
    }
    assert_eq!(
        node_sum(&cluster, "relay_cluster_splices_total"),
        0.0,
        "every rendezvous went to its own node"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_parked_on_any_node_serve_the_senders_that_land_there() {
    let cluster = Cluster::start("cluster-standby", 3, |_| NodeOptions {
        standby_per_listener: Some(6),
        ..NodeOptions::default()
    });
    // Everything through the shared address: the control channel lands on one node, the
    // six standbys and every sender on random ones.
    let (stop, task) = listen_with(&cluster.ws(), Duration::from_secs(10), Some(6));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    let started = Instant::now();
    while node_sum(&cluster, "relay_standby_parked") < 6.0 {
        let parked: Vec<f64> = (cluster.nodes.iter())
            .map(|n| n.metric("relay_standby_parked"))
            .collect();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "six standbys parked: {parked:?} per node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = holder(&cluster).expect("a node holds the channel");
    let parked: Vec<f64> = cluster
        .nodes
        .iter()
        .map(|n| n.metric("relay_standby_parked"))
        .collect();
    eprintln!("channel on node {held}; standbys parked per node {parked:?}");

    // Served by a standby parked on the sender's own node: this node's channel's, or one
    // adopted for the channel on another node. The rest take the control channel (a notice
    // over NATS when the sender landed elsewhere).
    let counts = |cluster: &Cluster| {
        let by_standby = node_sum(cluster, "relay_standby_accepts_total")
            + node_sum(cluster, "relay_standby_early_total");
        let cross = node_sum(cluster, "relay_cluster_standby_connects_total");
        let notices = node_sum(cluster, "relay_cluster_notices_total");
        (by_standby, cross, notices)
    };
    // The first standbys opened before presence carried the channel: spliced to its node
    // and parked there. Used ones are replaced on whichever node the balancer picks.
    const WARM: usize = 30;
    const CONNECTS: usize = 60;
    for _ in 0..WARM {
        echo(&cluster.ws(), 1024).await.unwrap();
    }
    let (warm_standby, warm_cross, warm_notices) = counts(&cluster);
    for _ in 0..CONNECTS {
        echo(&cluster.ws(), 1024).await.unwrap();
    }
    let (by_standby, cross, notices) = counts(&cluster);
    let adopted = node_sum(&cluster, "relay_cluster_standby_adopted_total");
    let (steady, cross, notices) = (
        by_standby - warm_standby,
        cross - warm_cross,
        notices - warm_notices,
    );
    let share = steady / CONNECTS as f64;
    eprintln!(
        "first {WARM} connects: {warm_standby} by a standby on the sender's node; next \
         {CONNECTS}: {steady} ({:.0}%), {cross} of them for the channel on another node, \
         {notices} notices over NATS; {adopted} standbys adopted in all",
        share * 100.0
    );
    assert!(
        adopted >= 1.0,
        "nodes other than the channel's parked standbys"
    );
    assert!(cross >= 1.0, "an adopted standby served a sender");
    // 70-80% here (a replacement takes a moment to park; with random(1) a node lacks one
    // about 9% of the time). Only the channel's node's standbys would serve about a third.
    assert!(share >= 0.5, "share served locally: {share:.2}");
    assert_eq!(
        node_sum(&cluster, "relay_cluster_splice_failures_total"),
        0.0
    );
    stop.cancel();
    task.await.unwrap();
    // The listener closed its standbys with its channel: no node keeps one.
    let started = Instant::now();
    while node_sum(&cluster, "relay_standby_parked") > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "standbys closed everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which node holds the one listener.
fn holder(cluster: &Cluster) -> Option<usize> {
    (0..cluster.nodes.len()).find(|&i| cluster.nodes[i].metric("relay_node_channels") >= 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_only_its_own_and_its_listener_is_back_within_two_seconds() {
    let mut cluster = Cluster::start("cluster-kill", 3, |_| NodeOptions::default());
    // Our listener through the shared address, pinging often enough for the 2 s bound.
    let (stop, task) = listen(&cluster.ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    // A steady connect load through the shared address the whole time.
    let load_stop = CancellationToken::new();
    let load = steady_load(cluster.ws(), load_stop.clone());
    let mut moves = Vec::new();
    let mut kills = Vec::new();
    for round in 0..3 {
        let held = holder(&cluster).expect("a node holds the listener");
        cluster.kill(held);
        let killed = Instant::now();
        kills.push(killed);
        let others: Vec<usize> = (0..3).filter(|&i| i != held).collect();
        let moved = moved(&cluster, &others, killed).await;
        moves.push(moved);
        eprintln!(
            "round {round}: node {held} killed; listener back on another node after {moved:?}"
        );
        for &i in &others {
            echo(&cluster.nodes[i].ws(), 4096).await.unwrap();
        }
        cluster.restart(held);
        cluster.wait_serving(held, Duration::from_secs(20));
    }
    load_stop.cancel();
    let events = load.await.unwrap();
    let failed: Vec<_> = events.iter().filter(|(_, r)| r.is_err()).collect();
    for (at, result) in &failed {
        let since: Vec<_> = kills
            .iter()
            .filter(|k| *at >= **k)
            .map(|k| at.duration_since(*k))
            .collect();
        eprintln!(
            "  failed {result:?}, {:?} after the last kill",
            since.last()
        );
    }
    eprintln!(
        "steady load: {} connects through the shared address, {} failed",
        events.len(),
        failed.len()
    );
    // Connects fail while the listener is away (its node dead, the others not yet told)
    // and around the killed node's restart. Elsewhere, at most two: on this 2-core machine a
    // debug-build node can miss three heartbeats under load and be dropped for a moment
    // (see the issue note).
    let window = Duration::from_secs(3);
    let elsewhere: Vec<_> = failed
        .iter()
        .filter(|(at, _)| {
            !kills
                .iter()
                .any(|k| *at >= *k && at.duration_since(*k) < window)
        })
        .collect();
    assert!(
        elsewhere.len() <= 2,
        "connects failed away from the kills: {elsewhere:?}"
    );
    assert!(events.len() > failed.len() * 2, "most connects succeed");
    moves.sort();
    eprintln!("listener moves after SIGKILL: {moves:?}");
    assert!(
        moves[moves.len() - 1] < Duration::from_secs(2),
        "every move within 2 s: {moves:?}"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_detected_and_its_listener_moves() {
    let cluster = Cluster::start("cluster-hang", 3, |_| NodeOptions::default());
    let (stop, task) = listen(&cluster.ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    let held = holder(&cluster).expect("a node holds the listener");
    let others: Vec<usize> = (0..3).filter(|&i| i != held).collect();
    // Senders on the nodes that stay up, by their own addresses. Between the hung node's drop from the views and the listener's return, they wait for
    // the listener (the handover) instead of hearing 404.
    let load_stop = CancellationToken::new();
    let loads: Vec<_> = others
        .iter()
        .map(|&i| arrivals(cluster.nodes[i].ws(), load_stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.signal(held, "STOP");
    let hung = Instant::now();
    // No FIN: the load balancer's check and our listener's pings find the hang.
    let moved = moved(&cluster, &others, hung).await;
    eprintln!("node {held} hung (SIGSTOP); listener on another node after {moved:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    load_stop.cancel();
    for load in loads {
        let events = load.await.unwrap();
        let failed: Vec<_> = events.iter().filter(|(_, r)| r.is_err()).collect();
        let longest = events.iter().filter_map(|(_, r)| r.as_ref().ok()).max();
        eprintln!(
            "  {} connects on a node that stayed up, {} failed, the longest took {longest:?}",
            events.len(),
            failed.len(),
        );
        for (at, e) in &failed {
            eprintln!(
                "  failed {:?} after the hang: {e:?}",
                at.saturating_duration_since(hung)
            );
        }
        // Before the handover, the listener's rendezvous retries and a harness whose
        // HAProxy servers missed `default-server`, about a quarter of these failed (a
        // rendezvous dial stuck on the hung node until the sender's 10 s timeout).
        assert!(failed.is_empty(), "connects on live nodes failed");
        assert!(
            longest.is_some_and(|t| *t < Duration::from_secs(5)),
            "a sender on a live node waited {longest:?}"
        );
    }
    for &i in &others {
        echo(&cluster.nodes[i].ws(), 4096).await.unwrap();
    }
    // Woken, the node rejoins; its stale channel is gone, and every view counts one listener.
    cluster.signal(held, "CONT");
    cluster.wait_serving(held, Duration::from_secs(10));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(5)).await;
    echo(&cluster.ws(), 4096).await.unwrap();
    stop.cancel();
    task.await.unwrap();
}

/// Waits (bounded) until the listener is registered on one of `others` and counted once by
/// each of them; how long after `since`.
async fn moved(cluster: &Cluster, others: &[usize], since: Instant) -> Duration {
    loop {
        if holder_among(cluster, others).is_some() {
            let mut ok = true;
            for &i in others {
                ok &= listener_count(cluster.nodes[i].addr, "hyco").await == Some(1);
            }
            if ok {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the listener did not move to nodes {others:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn holder_among(cluster: &Cluster, nodes: &[usize]) -> Option<usize> {
    nodes
        .iter()
        .copied()
        .find(|&i| cluster.nodes[i].metric("relay_node_channels") >= 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_fences_itself_until_nats_is_back() {
    // Node 2 may use only NATS server 2; the others never use it.
    let mut cluster = Cluster::start("cluster-fence", 3, |i| NodeOptions {
        nats: Some(if i == 2 {
            vec![2]
        } else {
            vec![i, (i + 1) % 2]
        }),
        ..NodeOptions::default()
    });
    // The listener on node 2, by its own address: fenced, node 2 closes its channel and
    // refuses it (503) until NATS is back; the other nodes drop it from their views.
    let (stop, task) = listen(&cluster.nodes[2].ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    cluster.nats.kill(2);
    let cut = Instant::now();
    while cluster.nodes[2].ready_status() == Some(200) {
        assert!(
            cut.elapsed() < Duration::from_secs(3),
            "node 2 still ready without NATS"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fenced = cut.elapsed();
    eprintln!("node 2 not ready {fenced:?} after its NATS server died");
    assert_eq!(cluster.nodes[2].ready_status(), Some(503));
    // It closed its listener's channel, and takes no new ones.
    let started = Instant::now();
    while cluster.nodes[2].metric("relay_node_channels") >= 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the fenced node kept its channel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cluster.nodes[2].metric("relay_cluster_fenced_total") >= 1.0);
    // The others dropped node 2 and its listener from their views.
    wait_count(&cluster, &[0, 1], 0, Duration::from_secs(2)).await;
    // NATS back: the node rejoins, is ready again and takes listeners.
    cluster.nats.restart(2);
    cluster.wait_ready(2, Duration::from_secs(10));
    stop.cancel();
    task.await.unwrap();
    let (stop, task) = listen(&cluster.nodes[2].ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    echo(&cluster.nodes[0].ws(), 4096).await.unwrap();
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_the_network_fences_itself_and_every_view_heals() {
    // Node 2 in a network namespace of its own, on NATS server 2 only (PostgreSQL on its
    // socket); nodes 0 and 1 on servers 0 and 1.
    let cluster = Cluster::start("cluster-partition", 3, |i| NodeOptions {
        nats: Some(if i == 2 { vec![2] } else { vec![i, 1 - i] }),
        isolated: i == 2,
        ..NodeOptions::default()
    });
    let netns = cluster.netns.as_ref().expect("node 2 is isolated");
    let seen = |i: usize| cluster.nodes[i].metric(HYCO_LISTENERS);
    // A listener on each side, by its node's own address.
    let (stop2, task2) = listen(&cluster.nodes[2].ws(), Duration::from_millis(500));
    let (stop0, task0) = listen(&cluster.nodes[0].ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 2, Duration::from_secs(10)).await;
    for i in 0..3 {
        echo(&cluster.nodes[i].ws(), 4096).await.unwrap();
    }

    // Cut: no FIN, no reset; node 2 only stops hearing anything.
    netns.cut();
    let cut = Instant::now();
    // The other side drops node 2 and its listener within a heartbeat timeout, and its
    // senders are all paired with the listener they can reach.
    let dropped = wait_count(&cluster, &[0, 1], 1, Duration::from_secs(3)).await;
    for _ in 0..10 {
        echo(&cluster.nodes[1].ws(), 1024).await.unwrap();
    }
    // Node 2, asked from inside its namespace, fences: not ready, its channel closed, and
    // node 0 gone from its view.
    let (mut fenced, mut closed, mut alone) = (None, None, None);
    loop {
        let now = cut.elapsed();
        if fenced.is_none() && cluster.nodes[2].ready_status() == Some(503) {
            fenced = Some(now);
        }
        if closed.is_none() && cluster.nodes[2].metric("relay_node_channels") == 0.0 {
            closed = Some(now);
        }
        if alone.is_none() && seen(2) == 0.0 {
            alone = Some(now);
        }
        if fenced.is_some() && closed.is_some() && alone.is_some() {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "node 2 did not fence itself: ready {:?}, channels {}, view {}",
            cluster.nodes[2].ready_status(),
            cluster.nodes[2].metric("relay_node_channels"),
            seen(2)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (fenced, closed, alone) = (fenced.unwrap(), closed.unwrap(), alone.unwrap());
    eprintln!(
        "cut: nodes 0 and 1 dropped node 2's listener after {dropped:?}; node 2 fenced after {fenced:?}, closed its channel after {closed:?}, dropped node 0's listener after {alone:?}"
    );
    assert!(cluster.nodes[2].metric("relay_cluster_fenced_total") >= 1.0);
    assert!(
        dropped < Duration::from_millis(1500),
        "dropped after {dropped:?}"
    );

    // Healed: node 2 hears itself, takes node 0's listener into its view, and its own
    // listener back; every live listener is in every view within two heartbeats of being
    // live (measured from node 2 ready, and from its listener's channel back).
    netns.heal();
    let healed = Instant::now();
    let (mut ready, mut view, mut back) = (None, None, None);
    let channels = || cluster.nodes[2].metric("relay_node_channels");
    loop {
        let now = healed.elapsed();
        // Node 0's listener: what node 2 sees beyond its own channels.
        let theirs = seen(2) - channels();
        if view.is_none() && theirs >= 1.0 {
            view = Some(now);
        }
        if ready.is_none() && cluster.nodes[2].ready_status() == Some(200) {
            // Ready only with the view whole: HAProxy sends it senders from then on.
            let theirs = seen(2) - channels();
            assert!(
                theirs >= 1.0,
                "node 2 ready without node 0's listener in its view"
            );
            ready = Some(now);
        }
        if back.is_none() && channels() >= 1.0 {
            back = Some(now);
        }
        if ready.is_some() && view.is_some() && back.is_some() {
            break;
        }
        assert!(
            now < Duration::from_secs(15),
            "not healed: ready {ready:?}, node 0's listener in node 2's view {view:?}, node 2's listener back {back:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ready, view, back) = (ready.unwrap(), view.unwrap(), back.unwrap());
    wait_count(&cluster, &[0, 1, 2], 2, Duration::from_secs(5)).await;
    let all = healed.elapsed();
    eprintln!(
        "healed: node 0's listener in node 2's view after {view:?}, node 2 ready after {ready:?}, its own listener back after {back:?}, both in every view after {all:?}"
    );
    // The polling itself (a curl per check) adds its own lag; a full set every 8th beat
    // would take 2 s.
    let two_beats = relay_broker::cluster::BEAT * 2;
    let slack = Duration::from_millis(500);
    assert!(
        all.saturating_sub(back) <= two_beats + slack,
        "node 2's listener reached every view {:?} after its channel was back",
        all.saturating_sub(back)
    );
    for i in 0..3 {
        echo(&cluster.nodes[i].ws(), 4096).await.unwrap();
    }
    stop2.cancel();
    stop0.cancel();
    task2.await.unwrap();
    task0.await.unwrap();
}

/// The round of [`connects_through_a_nats_fault`] at which the fault begins.
const FAULT_AT: usize = 10;

/// 40 connects through nodes 1 and 2 to a listener on node 0, with `fault(cluster, round)`
/// called before each; each failed connect gets one retry, as a client makes it (after a
/// moment, not in the same millisecond), which must succeed. At most 4 need it, and every
/// node is ready again afterwards (a node that fenced once it has heard its beats for the
/// warm-up).
async fn connects_through_a_nats_fault(
    cluster: &mut Cluster,
    what: &str,
    mut fault: impl FnMut(&mut Cluster, usize),
) {
    let (stop, task) = listen(&cluster.nodes[0].ws(), Duration::from_secs(10));
    wait_count(cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    let (mut failures, mut ok) = (0, 0);
    let mut faulted = None;
    for round in 0..40 {
        if round == FAULT_AT {
            faulted = Some(Instant::now());
        }
        fault(cluster, round);
        let node = 1 + round % 2;
        match echo(&cluster.nodes[node].ws(), 1024).await {
            Ok(()) => ok += 1,
            Err(e) => {
                failures += 1;
                let since = faulted.map(|at| at.elapsed());
                eprintln!("round {round} via node {node}, {since:?} into the fault: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                echo(&cluster.nodes[node].ws(), 1024).await.unwrap();
            }
        }
    }
    eprintln!("{ok} connects first time, {failures} needed a retry, with one NATS server {what}");
    assert!(failures <= 4, "{failures} connects failed");
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(5));
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_under_load_costs_at_most_a_retry() {
    let mut cluster = Cluster::start("cluster-nats-kill", 3, |_| NodeOptions::default());
    connects_through_a_nats_fault(&mut cluster, "killed", |cluster, round| {
        if round == FAULT_AT {
            cluster.nats.kill(1);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_hung_under_load_costs_at_most_a_retry() {
    let mut cluster = Cluster::start("cluster-nats-hang", 3, |_| NodeOptions::default());
    connects_through_a_nats_fault(&mut cluster, "hung", |cluster, round| {
        // No FIN: its clients only notice by their pings.
        if round == FAULT_AT {
            cluster.nats.signal(1, "STOP");
        }
        if round == FAULT_AT + 20 {
            cluster.nats.signal(1, "CONT");
        }
    })
    .await;
    let fenced = node_sum(&cluster, "relay_cluster_fenced_total");
    eprintln!("nodes fenced during the hang: {fenced}");
}

#[test]
fn microsofts_clients_listen_on_one_node_and_send_through_the_others() {
    let interop = relay_tests::workspace().join("interop");
    if ["hyco-ws", "hyco-https"]
        .iter()
        .any(|m| !interop.join("node_modules").join(m).exists())
    {
        let status = std::process::Command::new("npm")
            .current_dir(&interop)
            .args(["ci", "--no-audit", "--no-fund"])
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci: {status}");
    }
    let cluster = Cluster::start("cluster-interop", 3, |_| NodeOptions::default());
    let description = serde_json::json!({
        "nodes": cluster.nodes.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>(),
        "lb": cluster.lb.to_string(),
        "keyName": KEY_NAME,
        "key": KEY,
    });
    let status = std::process::Command::new("node")
        .current_dir(&interop)
        .args([
            "--test",
            "--test-concurrency=1",
            "--test-timeout=60000",
            "test/cluster.test.js",
        ])
        .env("RELAY_CLUSTER", description.to_string())
        .status()
        .expect("node runs");
    assert!(
        status.success(),
        "hyco-ws and hyco-https across nodes: {status}"
    );
}

/// What the revocation test needs of one identity-enabled cluster.
struct Identity<'a> {
    cluster: &'a Cluster,
    tls: Arc<relay_io::rustls::ClientConfig>,
    /// Alice's personal API token (a password would cost an Argon2 check per registration).
    token: String,
}

impl<'a> Identity<'a> {
    /// Alice, through node 0, with the right to register `hyco*` (granted through node 1)
    /// and an API token (minted through node 2).
    async fn start(cluster: &'a Cluster) -> Self {
        let mut id = Identity {
            cluster,
            tls: relay_io::tls::client_config(Some(&cluster.server_ca())).unwrap(),
            token: String::new(),
        };
        let alice =
            serde_json::json!({"name": "alice", "password": "correct horse battery staple"});
        let (status, reply) = id.call(0, "POST", "/$admin/v1/persons", &alice).await;
        assert_eq!(status, 200, "{reply}");
        let grant = serde_json::json!({"right": "listener.register", "pattern": "hyco*"});
        let (status, reply) = id
            .call(1, "POST", "/$admin/v1/persons/alice/grants", &grant)
            .await;
        assert_eq!(status, 200, "{reply}");
        let (status, reply) = id
            .call(
                2,
                "POST",
                "/$admin/v1/persons/alice/tokens",
                &serde_json::Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        id.token = reply["token"].as_str().unwrap().to_owned();
        id
    }

    async fn call(
        &self,
        node: usize,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let addr = self.cluster.nodes[node].addr;
        let manage = relay_tests::token_for(&format!("https://{addr}/"), KEY_NAME, KEY, 600);
        let headers = [("ServiceBusAuthorization", manage.as_str())];
        let (status, reply) = relay_io::http1::call(
            &format!("https://{addr}{path}"),
            method,
            &headers,
            body.to_string().as_bytes(),
            Some(&self.tls),
        )
        .await
        .unwrap();
        (status, serde_json::from_slice(&reply).unwrap_or_default())
    }

    /// Registers a listener for `hyco` through `node`; its id and client TLS configuration.
    async fn register(&self, node: usize) -> (String, Arc<relay_io::rustls::ClientConfig>) {
        let (listener, chain, key) = self.enroll(node).await;
        let tls = relay_tests::certs::client_cert_config(&self.cluster.server_ca(), &chain, &key);
        (listener, tls)
    }

    /// Registers a listener for `hyco` through `node` and writes its identity into `dir` as
    /// `relay-listener register` does, for the listener library.
    async fn register_identity(
        &self,
        node: usize,
        dir: &std::path::Path,
    ) -> Arc<relay_listener::CertificateIdentity> {
        let (listener, chain, key) = self.enroll(node).await;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), chain).unwrap();
        let details = serde_json::json!({"listener_id": listener, "hybrid_connections": ["hyco"]});
        std::fs::write(dir.join("listener.json"), details.to_string()).unwrap();
        Arc::new(relay_listener::CertificateIdentity::load(dir).unwrap())
    }

    /// Registers a listener for `hyco` through `node`: its id, certificate chain and key.
    async fn enroll(&self, node: usize) -> (String, String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let body = serde_json::json!({
            "csr": relay_tests::certs::csr(&key), "hybrid_connections": ["hyco"],
            "person_token": self.token,
        });
        let (status, reply) = self
            .call(node, "POST", "/$register/v1/listeners", &body)
            .await;
        assert_eq!(status, 200, "{reply}");
        let chain = format!(
            "{}{}",
            reply["certificate"].as_str().unwrap(),
            reply["chain"].as_str().unwrap()
        );
        (
            reply["listener_id"].as_str().unwrap().to_owned(),
            chain,
            key,
        )
    }

    /// A control channel on `node` with the listener's certificate.
    async fn listen(
        &self,
        node: usize,
        tls: Arc<relay_io::rustls::ClientConfig>,
    ) -> relay_io::client::Connected {
        self.try_listen(node, tls).await.unwrap()
    }

    async fn try_listen(
        &self,
        node: usize,
        tls: Arc<relay_io::rustls::ClientConfig>,
    ) -> Result<relay_io::client::Connected, relay_io::WsError> {
        let url = format!(
            "{}/$hc/hyco?sb-hc-action=listen",
            self.cluster.nodes[node].ws()
        );
        let options = relay_io::client::ConnectOptions {
            tls: Some(tls),
            timeout: Duration::from_secs(10),
            ..Default::default()
        };
        relay_io::client::connect(&url, &options).await
    }
}

/// Waits until `conn` ends (a Close or the end of the stream); how long from `from`.
async fn closed(
    conn: &mut relay_io::client::Connected,
    from: Instant,
    bound: Duration,
) -> Duration {
    closed_with(conn, from, bound).await.0
}

/// [`closed`], and the Close's reason (empty when the stream ended without one).
async fn closed_with(
    conn: &mut relay_io::client::Connected,
    from: Instant,
    bound: Duration,
) -> (Duration, String) {
    let ended = tokio::time::timeout(bound, async {
        loop {
            match conn.reader.message(1 << 20).await {
                Ok(Some(relay_io::Message::Close(frame))) => {
                    return frame.map(|(_, reason)| reason).unwrap_or_default();
                }
                Ok(None) | Err(_) => return String::new(),
                Ok(Some(_)) => {}
            }
        }
    })
    .await;
    let Ok(reason) = ended else {
        panic!("the revoked listener's channel stayed open for {bound:?}");
    };
    (from.elapsed(), reason)
}

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), times[times.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_the_listener_on_every_node_within_a_second_also_without_the_broadcast() {
    let cluster = Cluster::start("cluster-revoke", 3, |_| NodeOptions {
        identity: true,
        ..NodeOptions::default()
    });
    let id = Identity::start(&cluster).await;

    // Registered through one node, listening on a second, revoked through the third: the
    // broadcast (and the poll behind it) reaches the node holding the channel.
    let mut broadcast = Vec::new();
    for rep in 0..100 {
        let (listener, tls) = id.register((rep + 1) % 3).await;
        let mut conn = id.listen(rep % 3, tls).await;
        let path = format!("/$admin/v1/listeners/{listener}/revoke");
        let (status, reply) = id
            .call((rep + 2) % 3, "POST", &path, &serde_json::Value::Null)
            .await;
        assert_eq!(status, 200, "{reply}");
        // The commit happened before the answer.
        broadcast.push(closed(&mut conn, Instant::now(), Duration::from_secs(1)).await);
    }
    let (p50, p99, max) = percentiles(broadcast);
    eprintln!("revocation on another node, 100 times: p50 {p50:?}, p99 {p99:?}, max {max:?}");

    // Revoked in the database behind the brokers' backs: no broadcast at all, only the
    // store's revocation sequence, which every node polls.
    let pg = relay_broker::store::TestPostgres::shared();
    let mut polled = Vec::new();
    for rep in 0..20 {
        let (listener, tls) = id.register(rep % 3).await;
        let mut conn = id.listen((rep + 1) % 3, tls).await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        pg.execute(
            &cluster.db,
            &format!("UPDATE listeners SET revoked_at_ms = {now_ms} WHERE id = '{listener}'"),
        );
        polled.push(closed(&mut conn, Instant::now(), Duration::from_secs(1)).await);
    }
    let (p50, p99, max) = percentiles(polled);
    eprintln!(
        "revocation seen only through the store's sequence, 20 times: p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_node_within_a_second_while_one_nodes_nats_is_cut() {
    // Node 2 may use only NATS server 2; the others never use it.
    let cluster = Cluster::start("cluster-revoke-cut", 3, |i| NodeOptions {
        identity: true,
        nats: Some(if i == 2 {
            vec![2]
        } else {
            vec![i, (i + 1) % 2]
        }),
        ..NodeOptions::default()
    });
    let id = Identity::start(&cluster).await;

    // The cut node itself: two listeners on node 2, one revoked through node 0 just after
    // node 2's NATS server hung (SIGSTOP: no FIN, nothing to reconnect to). The broadcast cannot reach node 2; the store's sequence, which it
    // still polls, closes the revoked one within a second and before the fence (about
    // 750 ms) closes every certificate session.
    let (revoked_id, revoked_tls) = id.register(0).await;
    let mut revoked = id.listen(2, Arc::clone(&revoked_tls)).await;
    let (_, tls) = id.register(0).await;
    let mut bystander = id.listen(2, tls).await;
    cluster.nats.signal(2, "STOP");
    let path = format!("/$admin/v1/listeners/{revoked_id}/revoke");
    let (status, reply) = id.call(0, "POST", &path, &serde_json::Value::Null).await;
    assert_eq!(status, 200, "{reply}");
    let committed = Instant::now();
    let by_poll = closed(&mut revoked, committed, Duration::from_secs(1)).await;
    let (by_fence, why) = closed_with(&mut bystander, committed, Duration::from_secs(3)).await;
    assert!(
        why.contains("cut off from its cluster"),
        "fence close: {why}"
    );
    eprintln!(
        "node 2 without NATS: revoked listener closed after {by_poll:?}, the rest at the fence after {by_fence:?}"
    );
    assert!(
        by_poll < by_fence,
        "the revocation came only with the fence ({by_poll:?}, fence {by_fence:?})"
    );

    // While node 2 stays cut off (fenced): 100 revocations, alternately through node 2,
    // whose broadcast goes nowhere (only its commit to the store carries it), and through
    // the nodes with NATS; the listeners on nodes 0 and 1.
    let mut times = [Vec::new(), Vec::new()];
    let mut revoked_ids = vec![(revoked_id, revoked_tls)];
    for rep in 0..100 {
        let (listener, tls) = id.register(rep % 3).await;
        let mut conn = id.listen(rep % 2, Arc::clone(&tls)).await;
        let through = if rep % 2 == 0 { 2 } else { (rep + 1) % 2 };
        let path = format!("/$admin/v1/listeners/{listener}/revoke");
        let (status, reply) = id
            .call(through, "POST", &path, &serde_json::Value::Null)
            .await;
        assert_eq!(status, 200, "{reply}");
        let took = closed(&mut conn, Instant::now(), Duration::from_secs(1)).await;
        times[usize::from(through == 2)].push(took);
        if rep % 25 == 0 {
            revoked_ids.push((listener, tls));
        }
    }
    let [broadcast, polled] = times.map(percentiles);
    eprintln!(
        "revocation with node 2's NATS cut, through nodes 0 and 1 (broadcast), 50 times: p50, p99, max {broadcast:?}"
    );
    eprintln!("through node 2 (the store's sequence only), 50 times: p50, p99, max {polled:?}");

    // Healed: node 2 is back and takes listeners, but none of the revoked certificates, on
    // any node (the connect-time check reads the store).
    cluster.nats.signal(2, "CONT");
    cluster.wait_ready(2, Duration::from_secs(10));
    for (listener, tls) in revoked_ids {
        for node in 0..3 {
            assert!(
                id.try_listen(node, Arc::clone(&tls)).await.is_err(),
                "node {node} took revoked listener {listener}"
            );
        }
    }
    let (_, tls) = id.register(2).await;
    drop(id.listen(2, tls).await);
}

/// What one relayed connection saw, each with a monotonic timestamp: its echoes and how it
/// ended. The invariants are checked afterwards.
#[derive(Debug, Default)]
struct Flow {
    echoes: Vec<Instant>,
    end: Option<(Instant, String)>,
}

/// A relayed connection through `endpoint` that writes 64 bytes every 5 ms and logs what
/// comes back, until the stream ends.
async fn flow(
    endpoint: String,
    tls: Arc<relay_io::rustls::ClientConfig>,
) -> (Arc<std::sync::Mutex<Flow>>, tokio::task::JoinHandle<()>) {
    let mut options = sender_options(&endpoint);
    options.tls = Some(tls);
    let conn = relay_sender::connect(&endpoint, "hyco", &options)
        .await
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(Flow::default()));
    let task = tokio::spawn({
        let log = Arc::clone(&log);
        async move {
            let (mut r, mut w) = tokio::io::split(conn.stream);
            let write = tokio::spawn(async move {
                while w.write_all(&[7; 64]).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            let mut buf = vec![0; 4096];
            let end = loop {
                match r.read(&mut buf).await {
                    Ok(0) => break "a clean end of stream".to_owned(),
                    Ok(_) => log.lock().unwrap().echoes.push(Instant::now()),
                    Err(e) => break format!("{:?}: {e}", e.kind()),
                }
            };
            log.lock().unwrap().end = Some((Instant::now(), end));
            write.abort();
        }
    });
    (log, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_listeners_relayed_connections_stop_on_every_node_within_a_second() {
    let cluster = Cluster::start("cluster-revoke-data", 3, |_| NodeOptions {
        identity: true,
        ..NodeOptions::default()
    });
    let id = Identity::start(&cluster).await;
    let mut logs = Vec::new();
    for rep in 0..6 {
        // Registered through one node, its channel on the next; one relayed connection
        // pumped on every node (by each node's own address), data flowing both ways.
        let dir = cluster.dir.join(format!("listener-{rep}"));
        let identity = id.register_identity(rep % 3, &dir).await;
        let config = relay_listener::ListenerConfig::with_certificate(
            cluster.nodes[(rep + 1) % 3].ws(),
            "hyco",
            identity,
            Some(&cluster.server_ca()),
        )
        .unwrap();
        let listener = EchoListener::spawn(relay_listener::Listener::new(config));
        // Every node counts it (and no longer the last one); TLS nodes, so by their metrics.
        let started = Instant::now();
        while cluster
            .nodes
            .iter()
            .any(|n| n.metric(HYCO_LISTENERS) != 1.0)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "listener {rep} not seen everywhere"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut flows = Vec::new();
        for node in &cluster.nodes {
            flows.push(flow(node.ws(), Arc::clone(&id.tls)).await);
        }
        let started = Instant::now();
        while flows
            .iter()
            .any(|(log, _)| log.lock().unwrap().echoes.is_empty())
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no echo on every node"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Revoked through the third node; the commit happened before the answer.
        let path = format!("/$admin/v1/listeners/{}/revoke", listener_id(&dir));
        let (status, reply) = id
            .call((rep + 2) % 3, "POST", &path, &serde_json::Value::Null)
            .await;
        let committed = Instant::now();
        assert_eq!(status, 200, "{reply}");
        for (log, task) in flows {
            let ended = tokio::time::timeout(Duration::from_secs(3), task).await;
            assert!(
                ended.is_ok(),
                "a relayed connection of a revoked listener went on"
            );
            logs.push((committed, log));
        }
        listener.stop().await;
    }
    // Afterwards, the invariants over the whole log.
    let (mut after, mut ends, mut kinds) =
        (Vec::new(), Vec::new(), std::collections::BTreeSet::new());
    for (n, (committed, log)) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        let (ended, how) = log.end.clone().expect("every connection ended");
        let last = log.echoes.last().copied().unwrap_or(*committed);
        after.push(last.saturating_duration_since(*committed));
        ends.push(ended.saturating_duration_since(*committed));
        kinds.insert(how.clone());
        assert!(
            last <= *committed + Duration::from_secs(1),
            "connection {n} (node {}) carried data {:?} after the revocation committed",
            n % 3,
            last - *committed
        );
        assert!(
            ended <= *committed + Duration::from_secs(1),
            "connection {n} ended {:?} after the commit",
            ended - *committed
        );
        // A cut connection reads as cut, never as a stream that ended by itself.
        assert_ne!(how, "a clean end of stream", "connection {n}");
    }
    let (p50, p99, max) = percentiles(after);
    let (e50, e99, emax) = percentiles(ends);
    eprintln!(
        "{} relayed connections of revoked listeners (pumped on every node): last data after the answer p50 {p50:?}, p99 {p99:?}, max {max:?}; ended after it p50 {e50:?}, p99 {e99:?}, max {emax:?}, as {kinds:?}",
        logs.len()
    );
}

/// The listener id of an identity written by [`Identity::register_identity`].
fn listener_id(dir: &std::path::Path) -> String {
    let details: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("listener.json")).unwrap()).unwrap();
    details["listener_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rendezvous_is_used_once_whichever_node_it_is_tried_on() {
    let cluster = Cluster::start("cluster-once", 3, |_| NodeOptions::default());
    let base = cluster.nodes[0].ws();
    let token = relay_sender::sas_token(&base, "hyco", KEY_NAME, KEY, 600);
    let mut listener = relay_tests::RawListener::open_at(&base, &token, "hyco", &[]).await;
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    for rep in 0..6 {
        // A sender on each node in turn, by its own address.
        let node = &cluster.nodes[rep % 3];
        let url = format!(
            "{}/$hc/hyco?sb-hc-action=connect&sb-hc-id=once-{rep}",
            node.ws()
        );
        let token = relay_sender::sas_token(&node.ws(), "hyco", KEY_NAME, KEY, 600);
        let sender =
            tokio::spawn(
                async move { relay_tests::ws_connect(&url, Some(&token), &[], &[]).await },
            );
        let relay_core::control::ListenerCommand::Accept(accept) = listener.command().await else {
            panic!("expected an accept");
        };
        // The rendezvous taken through another node than the sender's: spliced to it.
        let through = |i: usize| {
            let authority = accept.address.split('/').nth(2).unwrap();
            accept
                .address
                .replacen(authority, &cluster.nodes[i].addr.to_string(), 1)
        };
        let mut side_l = relay_tests::ws_connect(&through((rep + 1) % 3), None, &[], &[])
            .await
            .unwrap();
        let mut side_s = sender.await.unwrap().unwrap();
        // Used once: the same address is refused on every node, the pair untouched.
        for i in 0..3 {
            match relay_tests::ws_connect(&through(i), None, &[], &[]).await {
                Err(relay_io::WsError::Refused { status, reason }) => {
                    assert_eq!(status, 403, "rendezvous {rep} again on node {i}: {reason}");
                }
                other => panic!(
                    "rendezvous {rep} used again on node {i}: {:?}",
                    other.map(|_| ())
                ),
            }
        }
        let message = format!("pair {rep}");
        side_s
            .writer
            .send(true, relay_core::frame::OpCode::Text, message.as_bytes())
            .await
            .unwrap();
        side_s.writer.flush().await.unwrap();
        assert_eq!(
            side_l.reader.message(1 << 20).await.unwrap(),
            Some(relay_io::Message::Text(message))
        );
    }
}

/// Echoes through `endpoint` every 20 ms until `stop`; when each started and how it went.
fn steady_load(
    endpoint: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(Instant, Result<(), String>)>> {
    tokio::spawn(async move {
        let mut events = Vec::new();
        while !stop.is_cancelled() {
            let started = Instant::now();
            let result = echo(&endpoint, 1024).await;
            events.push((
                started,
                result.map_err(|e| format!("{e} after {:?}", started.elapsed())),
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        events
    })
}

/// A sender arriving at `endpoint` every 25 ms, each on its own, until `stop`: when each
/// started, and how long its echo took or why it failed.
fn arrivals(
    endpoint: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(Instant, Result<Duration, String>)>> {
    tokio::spawn(async move {
        let mut senders = Vec::new();
        while !stop.is_cancelled() {
            let endpoint = endpoint.clone();
            senders.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = echo(&endpoint, 1024).await;
                let took = started.elapsed();
                (
                    started,
                    result
                        .map(|()| took)
                        .map_err(|e| format!("{e} after {took:?}")),
                )
            }));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut events = Vec::new();
        for sender in senders {
            events.push(sender.await.unwrap());
        }
        events
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_costs_no_connect() {
    let mut cluster = Cluster::start("cluster-rolling", 3, |_| NodeOptions::default());
    let (stop, task) = listen(&cluster.ws(), Duration::from_millis(500));
    wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(10)).await;
    let load_stop = CancellationToken::new();
    let load = steady_load(cluster.ws(), load_stop.clone());
    // Every node in turn, as an upgrade does it: SIGTERM, wait for the exit, start again,
    // and on to the next once it serves and every node counts the listener again.
    let begin = Instant::now();
    let (mut marks, mut holders) = (Vec::new(), 0);
    for round in 0..3 {
        let i = (round + 2) % 3;
        let held = holder(&cluster) == Some(i);
        holders += usize::from(held);
        marks.push((begin.elapsed(), format!("TERM {i}")));
        let exited = cluster.terminate(i, Duration::from_secs(20));
        marks.push((begin.elapsed(), format!("exited {i}")));
        cluster.restart(i);
        cluster.wait_serving(i, Duration::from_secs(20));
        marks.push((begin.elapsed(), format!("serving {i}")));
        let again = wait_count(&cluster, &[0, 1, 2], 1, Duration::from_secs(5)).await;
        eprintln!(
            "round {round}: node {i} (holding the listener: {held}) exited {exited:?} after SIGTERM; every node counts the listener {again:?} after it serves again"
        );
    }
    load_stop.cancel();
    let events = load.await.unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter_map(|(at, r)| Some((at.saturating_duration_since(begin), r.as_ref().err()?)))
        .collect();
    eprintln!(
        "rolling restart: {} connects through the shared address, {} failed: {failed:#?}; steps {marks:?}",
        events.len(),
        failed.len()
    );
    assert!(
        events.len() >= 30,
        "the load ran: {} connects",
        events.len()
    );
    assert!(holders >= 1, "the listener's own node was restarted");
    assert!(
        failed.is_empty(),
        "connects failed during the rolling restart"
    );
    stop.cancel();
    task.await.unwrap();
}
