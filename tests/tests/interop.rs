//! Runs the interop suite (`interop/`): Microsoft's unmodified hyco-ws and hyco-https npm
//! clients against the real binaries, and the browser suite (Debian's Chromium driven by
//! playwright-core, and curl, through the relay to a real web app behind our agent), once over
//! plain ws/http and once over TLS with a certificate minted here (with the wildcard host
//! mode needs). Needs Node.js, npm, curl and Chromium; `npm ci` installs the pinned packages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(status.success(), "{what} failed: {status}");
}

#[test]
fn hyco_clients_against_the_broker_plain_and_tls() {
    let root = relay_tests::workspace();
    let interop = root.join("interop");
    relay_tests::build_binaries();
    if ["hyco-ws", "hyco-https", "playwright-core"]
        .iter()
        .any(|m| !interop.join("node_modules").join(m).exists())
    {
        run(
            Command::new("npm")
                .current_dir(&interop)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci",
        );
    }
    let node_test = |tls: bool, extra: &[(&str, &Path)]| {
        let mut cmd = Command::new("node");
        cmd.current_dir(&interop)
            .args([
                "--test",
                "--test-concurrency=1",
                "--test-timeout=60000",
                "test/",
            ])
            .env("RELAY_TLS", if tls { "1" } else { "0" })
            .env("RELAY_BROKER_BIN", relay_tests::bin("relay-broker"))
            .env("RELAY_LISTENER_BIN", relay_tests::bin("relay-listener"))
            .env("RELAY_SENDER_BIN", relay_tests::bin("relay-sender"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        run(
            &mut cmd,
            if tls {
                "interop suite over TLS"
            } else {
                "interop suite over plain ws/http"
            },
        );
    };
    node_test(false, &[]);
    let dir = std::env::temp_dir().join(format!("relay-interop-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = relay_tests::server_tls_files(&dir);
    node_test(
        true,
        &[
            ("RELAY_TLS_CERT", &cert),
            ("RELAY_TLS_KEY", &key),
            ("NODE_EXTRA_CA_CERTS", &cert),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
