//! Out of file descriptors: a broker whose descriptor limit is reached backs off in its
//! accept loop instead of spinning, and serves good clients again as soon as descriptors
//! free up. The broker binary runs under `prlimit --nofile`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

fn healthz(addr: &str) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return false;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200")
}

#[test]
fn out_of_descriptors_the_broker_backs_off_and_recovers() {
    relay_tests::build_binaries_once();
    let dir = relay_tests::temp_dir("nofile");
    let config = dir.join("broker.toml");
    std::fs::write(&config, relay_tests::config("")).unwrap();
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=40:40")
        .arg(relay_tests::bin("relay-broker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stderr(Stdio::null());
    let (broker, addr) = relay_tests::external::spawn_broker(command);
    assert!(healthz(&addr));

    // Silent clients until the broker has no descriptor left to accept with.
    let hogs: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(!healthz(&addr), "the limit is reached");
    let pid = broker.0.id();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        busy < 0.5,
        "the accept loop spins: {busy:.2} CPU seconds per second"
    );

    drop(hogs);
    let started = Instant::now();
    while !healthz(&addr) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "good clients are not served again after descriptors freed up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "served again {:.0} ms after the descriptors were freed; {busy:.2} CPU s/s while exhausted",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
