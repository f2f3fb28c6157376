//! Fixtures for certificate-authenticated listeners: a TLS broker with a store and a CA, a
//! person who may register, and certificates minted with rcgen at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_io::WsError;
use relay_io::client::{ConnectOptions, Connected};
use relay_io::rustls::ClientConfig;
use relay_io::rustls::pki_types::pem::PemObject as _;
use relay_io::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use relay_listener::CertificateIdentity;

use crate::{KEY, KEY_NAME, TestBroker, temp_dir, token_for};

pub const PASSWORD: &str = "correct horse battery";

/// A listener that echoes every accepted connection, running until stopped.
pub struct EchoListener {
    pub status: tokio::sync::watch::Receiver<relay_listener::Status>,
    pub stop: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl EchoListener {
    pub fn spawn(listener: relay_listener::Listener) -> Self {
        use tokio::io::AsyncWriteExt as _;
        let status = listener.status();
        let stop = tokio_util::sync::CancellationToken::new();
        let handler = Arc::new(|conn: relay_listener::IncomingConnection| async move {
            let stream = conn.accept().await.unwrap();
            let (mut r, mut w) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        let s = stop.clone();
        let task = tokio::spawn(async move { listener.run(handler, s).await });
        Self { status, stop, task }
    }

    /// Stops it and waits for it to end.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A TLS broker with a store and a CA, and a person `alice` who may register on `hyco*`.
pub struct Env {
    pub dir: PathBuf,
    pub broker: TestBroker,
    ca_extra: String,
}

/// `[store]` and `[ca]` in `dir`; `ca_extra` goes into `[ca]`.
pub fn extra(dir: &Path, ca_extra: &str) -> String {
    format!(
        "[store]\npath = \"{}\"\n[ca]\ndir = \"{}\"\ncert_lifetime_hours = 24\n{ca_extra}\n",
        dir.join("relay.db").display(),
        dir.join("ca").display()
    )
}

impl Env {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, "").await
    }

    /// Like [`Env::start`], with `ca_extra` added to `[ca]`.
    pub async fn start_with(name: &str, ca_extra: &str) -> Self {
        let dir = temp_dir(name);
        let broker = TestBroker::start_tls(&extra(&dir, ca_extra), &dir).await;
        let env = Self {
            dir,
            broker,
            ca_extra: ca_extra.to_owned(),
        };
        env.add_alice().await;
        env
    }

    /// Two TLS brokers in one process, nodes `a` and `b`, sharing what a cluster shares: the
    /// store, the CA (one directory), the listener directory, the interconnect and the
    /// revocation bus. The `Env` is node `a`; the second broker is returned beside it.
    pub async fn pair(name: &str) -> (Self, TestBroker) {
        use relay_broker::{
            Broker, BrokerConfig, LocalDirectory, LocalInterconnect, LocalRevocations, NodeId,
            ServeOptions,
        };
        let dir = temp_dir(name);
        let ca = format!(
            "[ca]\ndir = \"{}\"\ncert_lifetime_hours = 24\n",
            dir.join("ca").display()
        );
        let config = BrokerConfig::parse(&crate::config(&ca), "test").expect("test config");
        let store: Arc<dyn relay_broker::Store> = Arc::new(
            relay_broker::SqliteStore::open(
                &dir.join("relay.db"),
                &config.hybrid_connections,
                &config.rules,
            )
            .expect("store"),
        );
        let directory = Arc::new(LocalDirectory::default());
        let interconnect = Arc::new(LocalInterconnect::default());
        let bus = Arc::new(LocalRevocations::default());
        let (cert, key) = crate::server_tls_files(&dir);
        let mut brokers = Vec::new();
        for node in ["a", "b"] {
            let broker = Broker::builder(&config)
                .node(NodeId::new(node).unwrap())
                .store(Arc::clone(&store))
                .directory(directory.clone())
                .interconnect(interconnect.clone())
                .revocations(bus.clone())
                .build()
                .expect("broker");
            let tls = broker.server_tls(&cert, &key).expect("server TLS");
            brokers.push(TestBroker::serve_broker(broker, ServeOptions { tls: Some(tls) }).await);
        }
        let b = brokers.pop().expect("b");
        let env = Self {
            dir,
            broker: brokers.pop().expect("a"),
            ca_extra: String::new(),
        };
        env.add_alice().await;
        (env, b)
    }

    async fn add_alice(&self) {
        let (status, reply) = self
            .admin(
                "POST",
                "/persons",
                serde_json::json!({"name": "alice", "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        self.grant("alice", "listener.register", "hyco*").await;
    }

    pub async fn restart(self) -> Self {
        self.broker.shutdown().await;
        let broker = TestBroker::start_tls(&extra(&self.dir, &self.ca_extra), &self.dir).await;
        Self {
            dir: self.dir,
            broker,
            ca_extra: self.ca_extra,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.broker.addr)
    }

    pub fn wss(&self) -> String {
        format!("wss://{}", self.broker.addr)
    }

    pub fn server_ca(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// Trusts the broker's server certificate; presents no client certificate.
    pub fn anonymous(&self) -> Arc<ClientConfig> {
        relay_io::tls::client_config(Some(&self.server_ca())).unwrap()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
        tls: &Arc<ClientConfig>,
    ) -> (u16, serde_json::Value) {
        let (status, reply) = relay_io::http1::call(
            &self.url(path),
            method,
            headers,
            body.to_string().as_bytes(),
            Some(tls),
        )
        .await
        .unwrap();
        (status, serde_json::from_slice(&reply).unwrap_or_default())
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let manage = token_for(&format!("https://{}/", self.broker.addr), KEY_NAME, KEY, 60);
        let headers = [("ServiceBusAuthorization", manage.as_str())];
        let path = format!("/$admin/v1{path}");
        self.call(method, &path, &headers, &body, &self.anonymous())
            .await
    }

    pub async fn grant(&self, person: &str, right: &str, pattern: &str) {
        let body = serde_json::json!({"right": right, "pattern": pattern});
        let path = format!("/persons/{person}/grants");
        assert_eq!(self.admin("POST", &path, body).await.0, 200);
    }

    /// Registers as alice, the way `relay-listener register` does, into a fresh identity
    /// directory; returns it.
    pub async fn register(&self, name: &str, hcs: &[&str]) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let body = serde_json::json!({
            "csr": csr(&key), "hybrid_connections": hcs, "person": "alice", "password": PASSWORD,
        });
        let (status, reply) = self
            .call(
                "POST",
                "/$register/v1/listeners",
                &[],
                &body,
                &self.anonymous(),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let chain = format!(
            "{}{}",
            reply["certificate"].as_str().unwrap(),
            reply["chain"].as_str().unwrap()
        );
        std::fs::write(dir.join("cert.pem"), chain).unwrap();
        std::fs::write(dir.join("listener.json"), reply.to_string()).unwrap();
        dir
    }

    pub fn identity(&self, dir: &Path) -> Arc<CertificateIdentity> {
        Arc::new(CertificateIdentity::load(dir).unwrap())
    }

    /// Opens a control channel on `hc` with `tls` and no SAS token.
    pub async fn listen(&self, hc: &str, tls: Arc<ClientConfig>) -> Result<Connected, WsError> {
        let url = format!("{}/$hc/{hc}?sb-hc-action=listen", self.wss());
        let options = ConnectOptions {
            tls: Some(tls),
            timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        };
        relay_io::client::connect(&url, &options).await
    }

    pub fn issuer(&self, which: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let read = |f: &str| std::fs::read_to_string(self.dir.join("ca").join(f)).unwrap();
        let key = rcgen::KeyPair::from_pem(&read(&format!("{which}.key"))).unwrap();
        rcgen::Issuer::from_ca_cert_pem(&read(&format!("{which}.pem")), key).unwrap()
    }

    pub fn chain_pem(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join("ca").join(f)).unwrap();
        format!("{}{}", read("issuing.pem"), read("root.pem"))
    }

    pub async fn wait_listeners(&self, hc: &str, n: usize, within: Duration) {
        let started = Instant::now();
        while self.broker.broker.listener_count(hc) != n {
            assert!(
                started.elapsed() < within,
                "{hc} did not reach {n} listeners within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A SAS sender (as Azure senders are) connected to `hc` at `endpoint`, trusting the
    /// broker's server certificate.
    pub async fn sender(&self, endpoint: &str, hc: &str) -> relay_sender::Connection {
        let options = relay_sender::ConnectOptions {
            token: Some(relay_sender::sas_token(endpoint, hc, KEY_NAME, KEY, 60)),
            tls: Some(self.anonymous()),
            ..Default::default()
        };
        relay_sender::connect(endpoint, hc, &options).await.unwrap()
    }

    /// Posts a registration body as `relay-listener register` does.
    pub async fn post_registration(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.call(
            "POST",
            "/$register/v1/listeners",
            &[],
            body,
            &self.anonymous(),
        )
        .await
    }

    /// Runs a certificate listener on `hc` at `endpoint` that echoes every connection.
    pub fn echo_listener(
        &self,
        endpoint: String,
        hc: &str,
        identity: Arc<CertificateIdentity>,
    ) -> EchoListener {
        let config = relay_listener::ListenerConfig::with_certificate(
            endpoint,
            hc,
            identity,
            Some(&self.server_ca()),
        )
        .unwrap();
        EchoListener::spawn(relay_listener::Listener::new(config))
    }

    /// Waits (bounded) until the audit trail mentions `needle`.
    pub async fn wait_audit(&self, needle: &str) {
        for _ in 0..200 {
            if self.audit().await.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the audit trail never mentioned {needle:?}");
    }

    pub async fn audit(&self) -> String {
        self.admin("GET", "/audit", serde_json::Value::Null)
            .await
            .1
            .to_string()
    }
}

pub fn csr(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

/// A client configuration trusting the broker and presenting `chain_pem` with `key`.
pub fn client_with(env: &Env, chain_pem: &str, key: &rcgen::KeyPair) -> Arc<ClientConfig> {
    client_cert_config(&env.server_ca(), chain_pem, key)
}

/// A client configuration trusting `server_ca` and presenting `chain_pem` with `key`.
pub fn client_cert_config(
    server_ca: &Path,
    chain_pem: &str,
    key: &rcgen::KeyPair,
) -> Arc<ClientConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut roots = relay_io::rustls::RootCertStore::empty();
    for cert in relay_io::tls::load_certs(server_ca).unwrap() {
        roots.add(cert).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(relay_io::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// A leaf with the broker's SAN URI for `listener_id`, signed by `issuer`.
pub fn leaf(
    env: &Env,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    key: &rcgen::KeyPair,
    listener_id: &str,
    eku: rcgen::ExtendedKeyUsagePurpose,
) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let uri = env.broker.broker.ca().unwrap().listener_uri(listener_id);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params.signed_by(key, issuer).unwrap().pem()
}

pub fn refused(result: &Result<Connected, WsError>) -> Option<u16> {
    match result {
        Err(WsError::Refused { status, .. }) => Some(*status),
        _ => None,
    }
}

/// A token-shaped secret nobody minted.
pub fn random_token() -> String {
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
