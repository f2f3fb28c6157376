//! The command-line flow as a user runs it: the real `relay-broker` and `relay-listener`
//! binaries, a broker with a durable store and a CA, persons, and registration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace().join("target"), PathBuf::from)
        .join("debug")
        .join(name)
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

#[test]
fn person_registers_listeners_by_password_and_by_enrollment_token() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "-q", "-p", "relay-broker", "-p", "relay-listener"])
        .status()
        .unwrap();
    assert!(built.success());
    let dir = std::env::temp_dir().join(format!("relay-cli-flow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n[ca]\ndir = \"{}\"\n[[hybrid_connections]]\nname = \"orders\"\n[[authorization_rules]]\nname = \"root\"\nkey = \"cli-key\"\nrights = [\"Manage\"]\n",
        dir.join("relay.db").display(),
        dir.join("ca").display()
    );
    std::fs::write(dir.join("broker.toml"), config).unwrap();
    let mut child = Command::new(bin("relay-broker"))
        .args(["--config", dir.join("broker.toml").to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("broker prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    let _broker = Broker(child);
    let endpoint = format!("http://{addr}");
    let admin = |args: &[&str]| {
        run(Command::new(bin("relay-broker"))
            .args(args)
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
                "--identity",
            ])
            .arg(dir.join(out)))
    };
    assert!(with_token("identity-2").status.success());
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
    let _ = std::fs::remove_dir_all(&dir);
}
