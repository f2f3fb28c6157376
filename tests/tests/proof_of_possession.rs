//! Proof-of-possession login for listeners behind an L7 proxy that ends TLS: the whole flow
//! through a real nginx, and every bad proof of the enrollment design (§4.10 #24, #25).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use relay_core::pop::{self, Algorithm, Claims};
use relay_io::WsError;
use relay_io::client::{ConnectOptions, Connected};
use relay_listener::CertificateIdentity;
use relay_tests::certs::{Env, leaf};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const POP_ON: &str = "proof_of_possession = true";

/// A real nginx ending TLS in front of the broker (and speaking TLS to it, without a client
/// certificate), so no listener certificate reaches the broker in the handshake.
struct Nginx {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(dir: &Path, upstream: std::net::SocketAddr) -> Self {
        // nginx binds by itself; take a free port and hand it over.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let conf = format!(
            r#"worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen {addr} ssl;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        location / {{
            proxy_pass https://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#,
            root = root.display(),
            dir = dir.display(),
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").output().is_ok())
            .expect("nginx is needed for this suite: apt-get install nginx-light (.ci/run does)");
        let child = Command::new(binary)
            .args(["-e", "stderr", "-p"])
            .arg(&root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let nginx = Self { child, addr };
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return nginx;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
        panic!("nginx did not start on {addr}: {log}");
    }
}

fn pop_identity(dir: &Path) -> Arc<CertificateIdentity> {
    Arc::new(
        CertificateIdentity::load(dir)
            .unwrap()
            .with_proof_of_possession(true),
    )
}

#[tokio::test]
async fn a_listener_behind_nginx_logs_in_by_proof_of_possession_relays_renews_and_is_revoked() {
    let env = Env::start_with("pop-nginx", POP_ON).await;
    let nginx = Nginx::start(&env.dir, env.broker.addr);
    let endpoint = format!("wss://{}", nginx.addr);
    let dir = env.register("site-9", &["hyco"]).await;

    // mTLS cannot work here: nginx ends TLS, so the broker sees no client certificate.
    let mtls = env.identity(&dir);
    let url = format!("{endpoint}/$hc/hyco?sb-hc-action=listen");
    let options = ConnectOptions {
        tls: Some(mtls.client_config(Some(&env.server_ca())).unwrap()),
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let through_proxy = relay_io::client::connect(&url, &options).await;
    assert!(
        matches!(through_proxy, Err(WsError::Refused { status: 401, .. })),
        "{:?}",
        through_proxy.err()
    );

    let identity = pop_identity(&dir);
    let echo = env.echo_listener(endpoint.clone(), "hyco", Arc::clone(&identity));
    env.wait_listeners("hyco", 1, Duration::from_secs(10)).await;

    // A sender relays bytes through nginx, the broker and the listener.
    let mut conn = env.sender(&endpoint, "hyco").await;
    conn.stream.write_all(b"through nginx").await.unwrap();
    let mut echoed = [0u8; 13];
    conn.stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"through nginx");

    // Renewal logs in the same way, with a new key.
    let before = std::fs::read(dir.join("cert.pem")).unwrap();
    identity.renew(&endpoint, &env.anonymous()).await.unwrap();
    assert_ne!(std::fs::read(dir.join("cert.pem")).unwrap(), before);
    env.wait_listeners("hyco", 1, Duration::from_secs(10)).await;

    // Revocation closes the channel within a second and refuses further logins.
    let path = format!("/listeners/{}/revoke", identity.listener_id());
    assert_eq!(
        env.admin("POST", &path, serde_json::Value::Null).await.0,
        200
    );
    env.wait_listeners("hyco", 0, Duration::from_secs(1)).await;
    let login = identity.login(&endpoint, &env.anonymous()).await;
    assert!(
        matches!(
            login,
            Err(relay_listener::IdentityError::Refused { status: 401, .. })
        ),
        "{login:?}"
    );
    assert!(env.audit().await.contains("pop.rejected"));
    echo.stop().await;
}

/// Builds proofs by hand, so each field can be made wrong on its own.
struct Prover<'a> {
    env: &'a Env,
    aud: String,
    key: rcgen::KeyPair,
    chain: Vec<Vec<u8>>,
}

impl Prover<'_> {
    async fn nonce(&self) -> String {
        let (status, reply) = self
            .env
            .call(
                "POST",
                "/$register/v1/pop/challenge",
                &[],
                &serde_json::json!({}),
                &self.env.anonymous(),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        reply["nonce"].as_str().unwrap().to_owned()
    }

    fn claims(&self, nonce: &str) -> Claims {
        let now = unix_now();
        Claims {
            aud: self.aud.clone(),
            nonce: nonce.into(),
            iat: now,
            exp: now + 30,
            jti: "j1".into(),
        }
    }

    fn sign_with(&self, key: &rcgen::KeyPair, chain: &[Vec<u8>], claims: &Claims) -> String {
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        let input = pop::signing_input(Algorithm::Es256, &chain, claims);
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        pop::compact(&input, sig.as_ref())
    }

    fn sign(&self, claims: &Claims) -> String {
        self.sign_with(&self.key, &self.chain, claims)
    }

    async fn login(&self, proof: &str) -> (u16, serde_json::Value) {
        self.env
            .call(
                "POST",
                "/$register/v1/pop/session",
                &[],
                &serde_json::json!({ "proof": proof }),
                &self.env.anonymous(),
            )
            .await
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn der_chain(pem: &str) -> Vec<Vec<u8>> {
    use relay_io::rustls::pki_types::CertificateDer;
    use relay_io::rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

async fn listen_with(env: &Env, headers: Vec<(String, String)>) -> Result<Connected, WsError> {
    let url = format!("{}/$hc/hyco?sb-hc-action=listen", env.wss());
    let options = ConnectOptions {
        tls: Some(env.anonymous()),
        timeout: Duration::from_secs(10),
        headers,
        ..ConnectOptions::default()
    };
    relay_io::client::connect(&url, &options).await
}

fn status_of(result: &Result<Connected, WsError>) -> Option<u16> {
    match result {
        Err(WsError::Refused { status, .. }) => Some(*status),
        Ok(_) => Some(101),
        Err(_) => None,
    }
}

#[tokio::test]
async fn every_bad_proof_is_refused_and_a_ticket_works_once() {
    let env = Env::start_with("pop-bad", POP_ON).await;
    let dir = env.register("site-10", &["hyco"]).await;
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("key.pem")).unwrap()).unwrap();
    let chain = der_chain(&std::fs::read_to_string(dir.join("cert.pem")).unwrap());
    let listener_id = CertificateIdentity::load(&dir)
        .unwrap()
        .listener_id()
        .to_owned();
    let p = Prover {
        env: &env,
        aud: format!("https://{}", env.broker.addr),
        key,
        chain,
    };

    // The control case: a good proof gets a ticket, which opens a control channel once.
    let nonce = p.nonce().await;
    let (status, reply) = p.login(&p.sign(&p.claims(&nonce))).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["listener_id"], listener_id.as_str());
    let ticket = reply["session"].as_str().unwrap().to_owned();
    let header = |t: &str| vec![(pop::SESSION_HEADER.to_owned(), t.to_owned())];
    let open = listen_with(&env, header(&ticket)).await;
    assert_eq!(status_of(&open), Some(101));
    assert_eq!(
        status_of(&listen_with(&env, header(&ticket)).await),
        Some(401),
        "a ticket is single use"
    );
    assert_eq!(
        status_of(&listen_with(&env, header("made-up")).await),
        Some(401),
        "an unknown ticket is refused, not taken for SAS"
    );
    drop(open);

    // The same nonce again, with an otherwise perfect proof.
    let mut replay = p.claims(&nonce);
    replay.jti = "j2".into();
    assert_eq!(p.login(&p.sign(&replay)).await.0, 401, "nonce reused");

    let issuing = env.issuer("issuing");
    let root = env.issuer("root");
    let stranger = rcgen::KeyPair::generate().unwrap();
    let foreign_ca = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::Issuer::new(params, key)
    };
    let client = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
    let server = rcgen::ExtendedKeyUsagePurpose::ServerAuth;
    let pem_leaf = |issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
                    key: &rcgen::KeyPair,
                    eku: rcgen::ExtendedKeyUsagePurpose| {
        let mut chain = der_chain(&leaf(&env, issuer, key, &listener_id, eku));
        chain.extend(der_chain(&env.chain_pem()));
        chain
    };
    let wrong_issuer = pem_leaf(&root, &p.key, client.clone());
    let from_foreign = pem_leaf(&foreign_ca, &p.key, client.clone());
    let server_eku = pem_leaf(&issuing, &p.key, server);
    // A valid chain, but for a listener id that was never registered.
    let unregistered = {
        let mut chain = der_chain(&leaf(&env, &issuing, &p.key, "nobody", client));
        chain.extend(der_chain(&env.chain_pem()));
        chain
    };

    type Case<'a> = (&'a str, Box<dyn Fn(&Claims) -> String + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (
            "unknown nonce",
            Box::new(|c: &Claims| {
                let mut c = c.clone();
                c.nonce = "never-issued".into();
                p.sign(&c)
            }),
        ),
        (
            "exp more than 60 s after iat",
            Box::new(|c: &Claims| {
                let mut c = c.clone();
                c.exp = c.iat + 120;
                p.sign(&c)
            }),
        ),
        (
            "expired",
            Box::new(|c: &Claims| {
                let mut c = c.clone();
                c.iat -= 600;
                c.exp = c.iat + 30;
                p.sign(&c)
            }),
        ),
        (
            "wrong aud",
            Box::new(|c: &Claims| {
                let mut c = c.clone();
                c.aud = "https://other-broker.example.com".into();
                p.sign(&c)
            }),
        ),
        (
            "signed by another key than x5c",
            Box::new(|c: &Claims| p.sign_with(&stranger, &p.chain, c)),
        ),
        (
            "x5c from the root, not the issuing CA",
            Box::new(|c: &Claims| p.sign_with(&p.key, &wrong_issuer, c)),
        ),
        (
            "x5c from a foreign CA",
            Box::new(|c: &Claims| p.sign_with(&p.key, &from_foreign, c)),
        ),
        (
            "x5c without clientAuth",
            Box::new(|c: &Claims| p.sign_with(&p.key, &server_eku, c)),
        ),
        (
            "x5c naming an unregistered listener",
            Box::new(|c: &Claims| p.sign_with(&p.key, &unregistered, c)),
        ),
        (
            "alg none",
            Box::new(|c: &Claims| {
                let good = p.sign(c);
                let (_, rest) = good.split_once('.').unwrap();
                let (payload, _) = rest.split_once('.').unwrap();
                let header = base64_url(&format!(
                    r#"{{"alg":"none","typ":"{}","x5c":[]}}"#,
                    pop::TYP
                ));
                format!("{header}.{payload}.")
            }),
        ),
    ];
    for (what, make) in &cases {
        let nonce = p.nonce().await;
        let (status, reply) = p.login(&make(&p.claims(&nonce))).await;
        assert_eq!(status, 401, "{what}: {reply}");
    }

    // A revoked listener's proof, perfect otherwise.
    let path = format!("/listeners/{listener_id}/revoke");
    assert_eq!(
        env.admin("POST", &path, serde_json::Value::Null).await.0,
        200
    );
    let nonce = p.nonce().await;
    assert_eq!(p.login(&p.sign(&p.claims(&nonce))).await.0, 401, "revoked");
    assert!(env.audit().await.contains("pop.rejected"));
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn without_the_setting_there_is_no_login_and_a_client_cert_header_means_nothing() {
    let env = Env::start("pop-off").await;
    let (status, reply) = env
        .call(
            "POST",
            "/$register/v1/pop/challenge",
            &[],
            &serde_json::json!({}),
            &env.anonymous(),
        )
        .await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply.to_string().contains("proof_of_possession"), "{reply}");

    // §4.10 #25: a forwarded client-certificate header sent straight to the broker is not a
    // credential; only the TLS handshake (or a login) is.
    let dir = env.register("site-11", &["hyco"]).await;
    let cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let escaped: String = cert.replace('\n', "%0A");
    let forged = vec![
        ("X-Client-Cert".to_owned(), escaped.clone()),
        ("X-SSL-Client-Cert".to_owned(), escaped),
    ];
    assert_eq!(status_of(&listen_with(&env, forged).await), Some(401));
}
