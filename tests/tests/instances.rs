//! Two agents with the same host name and credential on one hybrid connection (two services
//! on one host, cloned virtual machines): each has a stable id of its own, made at first start
//! in its state directory, so both stay connected. Two that do share an id (a copied state
//! directory) do not replace each other for ever: the broker sees the loop and refuses the
//! newcomer with 409, and the flapping stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use relay_tests::external::Process;
use relay_tests::{TestBroker, http_request, temp_dir};

fn agent(broker: &TestBroker, state: &std::path::Path, target: std::net::SocketAddr) -> Process {
    relay_tests::chain::agent(
        &broker.ws(),
        target,
        &["--state-dir", state.to_str().unwrap()],
    )
}

async fn connects(broker: &TestBroker) -> u64 {
    let (_, _, body) =
        http_request("GET", &format!("{}/metrics", broker.http()), &[], vec![]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("relay_listener_connects_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the listener connect counter")
}

#[tokio::test]
async fn same_host_agents_each_keep_their_own_instance_and_clones_stop_flapping() {
    relay_tests::build_binaries_once();
    let dir = temp_dir("instances");
    let target = relay_tests::external::echo_server("hi").await;

    let broker = TestBroker::start("").await;
    let _a = agent(&broker, &dir.join("a"), target);
    let _b = agent(&broker, &dir.join("b"), target);
    broker.wait_listeners("hyco", 2).await;
    let settled = connects(&broker).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.broker.listener_count("hyco"), 2);
    assert_eq!(connects(&broker).await, settled, "no replacement loop");
    let a = std::fs::read_to_string(dir.join("a/instance-id")).unwrap();
    let b = std::fs::read_to_string(dir.join("b/instance-id")).unwrap();
    assert_ne!(a, b, "each agent made its own id at first start");
    drop((_a, _b));
    broker.shutdown().await;

    // A cloned machine: the second agent's state directory is a copy of the first's.
    let broker = TestBroker::start("").await;
    std::fs::create_dir_all(dir.join("clone")).unwrap();
    std::fs::copy(dir.join("a/instance-id"), dir.join("clone/instance-id")).unwrap();
    let _a = agent(&broker, &dir.join("a"), target);
    broker.wait_listeners("hyco", 1).await;
    let _clone = agent(&broker, &dir.join("clone"), target);
    // They replace each other a few times, then the broker refuses the newcomer.
    let mut last = connects(&broker).await;
    let mut quiet = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = connects(&broker).await;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
        if quiet >= 6 {
            break;
        }
    }
    assert!(
        quiet >= 6,
        "the two clones kept replacing each other ({last} connects)"
    );
    assert_eq!(broker.broker.listener_count("hyco"), 1);
}
