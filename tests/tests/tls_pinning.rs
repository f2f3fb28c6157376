//! A self-signed server certificate made the usual way (`openssl req -x509 ...`, which marks
//! it `CA:TRUE`) works as `--ca-cert`: the tools pin exactly that certificate, which webpki
//! alone refuses (`CaUsedAsEndEntity`). Any other certificate is still refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use relay_io::client::ConnectOptions;
use relay_tests::{TestBroker, temp_dir};

/// A self-signed certificate for 127.0.0.1 made by the usual `openssl req -x509` one-liner
/// (which marks it `CA:TRUE`).
fn ca_true_cert(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let (pem, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the one-liner's certificate is a CA certificate"
    );
    pem
}

async fn listen_with(broker: &TestBroker, ca: &std::path::Path) -> Result<(), relay_io::WsError> {
    let url = format!("wss://{}/$hc/hyco?sb-hc-action=listen", broker.addr);
    let options = ConnectOptions {
        tls: Some(relay_io::tls::client_config(Some(ca)).unwrap()),
        headers: vec![("ServiceBusAuthorization".into(), broker.token("hyco"))],
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    relay_io::client::connect(&url, &options).await.map(drop)
}

#[tokio::test]
async fn a_ca_true_self_signed_server_certificate_is_pinned() {
    let dir = temp_dir("pinning");
    // `start_tls` serves `server.pem`/`server.key` from the folder when they exist.
    let pinned = ca_true_cert(&dir, "server");
    let broker = TestBroker::start_tls("", &dir).await;
    listen_with(&broker, &pinned)
        .await
        .expect("the exact certificate given is trusted");
    let other = ca_true_cert(&dir.join("other"), "other");
    let refused = listen_with(&broker, &other).await.unwrap_err();
    assert!(
        matches!(
            refused,
            relay_io::WsError::Tls(_) | relay_io::WsError::Io(_)
        ),
        "{refused}"
    );
}
