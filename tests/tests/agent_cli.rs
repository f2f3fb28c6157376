//! The agent and sender tools as an operator runs them: the real binaries, an agent config
//! with a TCP service, named ports and a web UI, `relay-listener status`, `relay-sender
//! forward` with several mappings, `relay-sender http`, JSON logs without secrets, and an
//! agent killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_tests::external::{Process, echo_thread, free_port, web_app};
use relay_tests::{bin, build_binaries, temp_dir};

const KEY: &str = "cli-agent-key";

/// Connects (retrying while processes start) and reads the target's greeting.
fn greeting_through(local: SocketAddr, len: usize, within: Duration) -> Option<String> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(mut conn) = TcpStream::connect(local) {
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = vec![0u8; len];
            if conn.read_exact(&mut buf).is_ok() {
                return Some(String::from_utf8(buf).unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn start_broker(dir: &std::path::Path) -> (Process, String) {
    let config = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n\
         [[hybrid_connections]]\nname = \"db\"\n[[hybrid_connections]]\nname = \"edge-7\"\n\
         [[hybrid_connections]]\nname = \"ui\"\n\
         [[authorization_rules]]\nname = \"root\"\nkey = \"{KEY}\"\nrights = [\"Manage\"]\n"
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    relay_tests::external::relay_broker(&dir.join("broker.toml"))
}

fn start_agent(dir: &std::path::Path) -> Process {
    let log = std::fs::File::create(dir.join(format!(
        "agent-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )))
    .unwrap();
    Process(
        Command::new(bin("relay-listener"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(dir.join("agent.toml"))
            .env("AGENT_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn status(addr: SocketAddr) -> String {
    let out = Command::new(bin("relay-listener"))
        .args(["status", "--status-addr", &addr.to_string()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn wait_connected(addr: SocketAddr, n: usize) -> String {
    let started = Instant::now();
    loop {
        let out = status(addr);
        if out.matches("CONNECTED").count() == n {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not connected: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_operator_runs_the_agent_from_a_config_and_reaches_everything_with_the_sender() {
    build_binaries();
    let dir = temp_dir("agent-cli");
    let (_broker, addr) = start_broker(&dir);
    let endpoint = format!("ws://{addr}");
    let (db, plc, cam) = (echo_thread("db:"), echo_thread("plc:"), echo_thread("cam:"));
    let (_app, app) = web_app();
    let status_addr = free_port();
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[broker]\nendpoint = \"{endpoint}\"\nsas_key_name = \"root\"\nsas_key_env = \"AGENT_KEY\"\n\
             [agent]\nstatus_bind = \"{status_addr}\"\ninstance = \"gw-1\"\n\
             [[endpoints]]\nhc = \"db\"\ntcp = \"{db}\"\n\
             [[endpoints]]\nhc = \"edge-7\"\nports = {{ plc = \"{plc}\", camera = \"{cam}\" }}\n\
             [[endpoints]]\nhc = \"ui\"\nhttp = \"http://{app}\"\n"
        ),
    )
    .unwrap();
    let agent = start_agent(&dir);
    let table = wait_connected(status_addr, 3);
    assert!(
        table.contains("edge-7") && table.contains("ports camera, plc"),
        "{table}"
    );

    // One sender process, several local ports: a TCP service and two named device ports.
    let (l_db, l_plc, l_cam) = (free_port(), free_port(), free_port());
    let _sender = Process(
        Command::new(bin("relay-sender"))
            .args(["forward", "--endpoint", &endpoint, "--hc", "db"])
            .args(["--sas-key-name", "root"])
            .args(["--local", &l_db.to_string()])
            .args(["--local", &format!("{l_plc}=edge-7/plc")])
            .args(["--local", &format!("{l_cam}=edge-7/camera")])
            .env("RELAY_SAS_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let within = Duration::from_secs(10);
    assert_eq!(greeting_through(l_db, 3, within).as_deref(), Some("db:"));
    assert_eq!(greeting_through(l_plc, 4, within).as_deref(), Some("plc:"));
    assert_eq!(greeting_through(l_cam, 4, within).as_deref(), Some("cam:"));

    // The web UI through the broker's HTTP mode.
    let out = Command::new(bin("relay-sender"))
        .args(["http", "POST", &format!("http://{addr}/ui/echo?from=cli")])
        .args([
            "--sas-key-name",
            "root",
            "--data",
            "hello=1",
            "-H",
            "X-Op: yes",
        ])
        .env("RELAY_SAS_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["url"], "/echo?from=cli");
    assert_eq!(echo["body"], "hello=1");
    assert_eq!(echo["headers"]["x-op"], "yes");
    let wrong = Command::new(bin("relay-sender"))
        .args([
            "http",
            "GET",
            &format!("http://{addr}/ui/"),
            "--sas-key-name",
            "root",
        ])
        .env("RELAY_SAS_KEY", "not-the-key")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401 from broker"));

    // Kill the agent outright and start it again: it is back at once.
    drop(agent);
    let _agent = start_agent(&dir);
    wait_connected(status_addr, 3);
    assert_eq!(greeting_through(l_db, 3, within).as_deref(), Some("db:"));

    // Logs are JSON lines and never carry the key.
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("agent-") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(!text.contains(KEY), "{name} holds the key");
        for line in text.lines().filter(|l| !l.is_empty()) {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{name}: not JSON: {line}"
            );
        }
    }
}
