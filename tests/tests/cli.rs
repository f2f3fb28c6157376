//! The command-line flow as a user runs it: the real `relay-broker`, `relay-listener` and
//! `relay-sender` binaries, a TLS broker with a durable store and a CA, persons,
//! registration, a certificate-authenticated listener relaying bytes, and revocation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use relay_tests::{bin, build_binaries};

/// A child process killed when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

#[test]
fn person_registers_listens_with_mtls_relays_and_is_revoked_from_the_command_line() {
    build_binaries();
    let dir = std::env::temp_dir().join(format!("relay-cli-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (server_pem, server_key) = relay_tests::server_tls_files(&dir);
    let ca_cert = server_pem.to_str().unwrap().to_owned();
    let config = format!(
        "[server]\nbind = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[store]\npath = \"{}\"\n[ca]\ndir = \"{}\"\n[[hybrid_connections]]\nname = \"orders\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"cli-key\"\nrights = [\"Manage\"]\n",
        server_pem.display(),
        server_key.display(),
        dir.join("relay.db").display(),
        dir.join("ca").display()
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    let (_broker, addr) = relay_tests::external::relay_broker(&dir.join("broker.toml"));
    let endpoint = format!("https://{addr}");
    let admin = |args: &[&str]| {
        run(Command::new(bin("relay-broker"))
            .args(args)
            .args(["--ca-cert", &ca_cert])
            .env("RELAY_ENDPOINT", &endpoint)
            .env("RELAY_SAS_KEY_NAME", "root")
            .env("RELAY_SAS_KEY", "cli-key")
            .env("ALICE_PASSWORD", "correct horse battery"))
    };
    assert!(
        admin(&["person", "add", "alice", "--password-env", "ALICE_PASSWORD"])
            .status
            .success()
    );
    assert!(
        admin(&["person", "grant", "alice", "listener.register", "orders*"])
            .status
            .success()
    );

    let identity = dir.join("identity");
    let registered = run(Command::new(bin("relay-listener"))
        .args([
            "register",
            "--endpoint",
            &endpoint,
            "--person",
            "alice",
            "--hc",
            "orders",
            "--name",
            "site-7",
            "--ca-cert",
            &ca_cert,
            "--identity",
        ])
        .arg(&identity)
        .env("RELAY_PERSON_PASSWORD", "correct horse battery"));
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(String::from_utf8_lossy(&registered.stdout).contains("registered listener"));
    assert_eq!(
        std::fs::read_to_string(identity.join("cert.pem"))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        3
    );
    assert!(
        std::fs::read_to_string(identity.join("key.pem"))
            .unwrap()
            .contains("PRIVATE KEY")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(identity.join("key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    let minted = admin(&[
        "enrollment-token",
        "create",
        "--person",
        "alice",
        "--hc",
        "orders",
    ]);
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let with_token = |out: &str| {
        run(Command::new(bin("relay-listener"))
            .args([
                "register",
                "--endpoint",
                &endpoint,
                "--enrollment-token",
                &token,
                "--ca-cert",
                &ca_cert,
                "--identity",
            ])
            .arg(dir.join(out)))
    };
    let enrolled = with_token("identity-2");
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let reused = with_token("identity-3");
    assert!(!reused.status.success());
    assert!(
        String::from_utf8_lossy(&reused.stderr).contains("401 from broker"),
        "{}",
        String::from_utf8_lossy(&reused.stderr)
    );

    let listed = admin(&["listener", "list"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.contains("site-7  alice  orders  active"));
    let audit = String::from_utf8(admin(&["audit"]).stdout).unwrap();
    assert!(audit.contains("listener.register") && audit.contains("certificate.issue"));

    // The agent listens with its certificate alone; a sender reaches the TCP service.
    let echo = relay_tests::external::echo_thread("");
    let wss = format!("wss://{addr}");
    let common = ["--endpoint", &wss, "--hc", "orders", "--ca-cert", &ca_cert];
    let _listener = background(
        Command::new(bin("relay-listener"))
            .arg("run")
            .args(common)
            .arg("--identity")
            .arg(&identity)
            .args(["--forward", &echo.to_string()]),
    );
    let local = free_port();
    let _sender = background(
        Command::new(bin("relay-sender"))
            .arg("forward")
            .args(common)
            .args(["--sas-key-name", "root", "--sas-key", "cli-key"])
            .args(["--local", &local.to_string()]),
    );
    let mut relayed = echo_through(local, Duration::from_secs(30)).expect("relayed echo");

    // Revoke from the command line: the relayed connection is cut, and new ones fail.
    let details: serde_json::Value =
        serde_json::from_slice(&std::fs::read(identity.join("listener.json")).unwrap()).unwrap();
    let id = details["listener_id"].as_str().unwrap();
    let revoked = admin(&["listener", "revoke", id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    relayed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    // A reset, not a read timeout and not a clean end: the broker cut the connection, and
    // the sender tool passes the cut on as one.
    let cut = relayed.read_to_end(&mut rest);
    assert!(
        cut.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{cut:?}"
    );
    assert!(
        echo_through(local, Duration::from_secs(2)).is_none(),
        "a revoked listener relays nothing"
    );
    let listed = String::from_utf8(admin(&["listener", "list"]).stdout).unwrap();
    assert!(
        listed.contains("site-7  alice  orders  revoked"),
        "{listed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a quiet child process, killed when the handle drops.
fn background(cmd: &mut Command) -> KillOnDrop {
    KillOnDrop(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("process starts"),
    )
}

fn free_port() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Connects to the sender's local port and checks an echo, retrying (bounded) while the
/// processes start; returns the still-open connection.
fn echo_through(local: std::net::SocketAddr, within: Duration) -> Option<TcpStream> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(mut conn) = TcpStream::connect(local) {
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut reply = [0u8; 5];
            if conn.write_all(b"hello").is_ok() && conn.read_exact(&mut reply).is_ok() {
                assert_eq!(&reply, b"hello");
                return Some(conn);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
