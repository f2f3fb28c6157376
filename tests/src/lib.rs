//! Test harness: an in-process broker on `127.0.0.1:0`, raw protocol clients, and helpers.
#![allow(missing_docs, unreachable_pub)]

pub mod certs;
pub mod chain;
pub mod cluster;
pub mod external;

use std::net::SocketAddr;
use std::time::Duration;

use relay_broker::{Broker, BrokerConfig, ServeOptions};
use relay_core::control::ListenerCommand;
use relay_io::client::{ConnectOptions, Connected};
use relay_io::{Message, WsError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEY_NAME: &str = "root";
pub const KEY: &str = "test-key";

/// The base configuration every suite starts from; `extra` is appended.
pub fn config(extra: &str) -> String {
    config_with_server("", extra)
}

/// [`config`] with more `[server]` keys.
pub fn config_with_server(server: &str, extra: &str) -> String {
    format!(
        r#"
[server]
bind = "127.0.0.1:0"
{server}
[[hybrid_connections]]
name = "hyco"
[[hybrid_connections]]
name = "a/b"
[[hybrid_connections]]
name = "open"
requires_client_authorization = false
[[authorization_rules]]
name = "{KEY_NAME}"
key = "{KEY}"
rights = ["Manage"]
[[authorization_rules]]
name = "listen-only"
key = "lk"
rights = ["Listen"]
{extra}
"#
    )
}

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Broker,
    pub stop: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestBroker {
    pub async fn start(extra: &str) -> Self {
        Self::start_with(extra, ServeOptions::default()).await
    }

    pub async fn start_with(extra: &str, options: ServeOptions) -> Self {
        let config = BrokerConfig::parse(&config(extra), "test").expect("test config");
        Self::serve(
            Broker::builder(&config).build().expect("open broker"),
            options,
        )
        .await
    }

    /// A broker serving TLS with a fresh self-signed server certificate for 127.0.0.1
    /// (written into `dir` as `server.pem`/`server.key`), verifying listener client
    /// certificates when `extra` configures `[ca]`.
    pub async fn start_tls(extra: &str, dir: &std::path::Path) -> Self {
        let config = BrokerConfig::parse(&config(extra), "test").expect("test config");
        let broker = Broker::builder(&config).build().expect("open broker");
        let (cert, key) = server_tls_files(dir);
        let tls = broker.server_tls(&cert, &key).expect("server TLS");
        Self::serve(broker, ServeOptions { tls: Some(tls) }).await
    }

    /// A plain broker on a chosen address (a restart on the port the last one used).
    pub async fn start_on(addr: SocketAddr, extra: &str) -> Self {
        let config = BrokerConfig::parse(&config(extra), "test").expect("test config");
        let broker = Broker::builder(&config).build().expect("open broker");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        Self::serve_on(broker, listener, ServeOptions::default())
    }

    /// Serves a broker built by the test on `127.0.0.1:0`.
    pub async fn serve_broker(broker: Broker, options: ServeOptions) -> Self {
        Self::serve(broker, options).await
    }

    async fn serve(broker: Broker, options: ServeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve_on(broker, listener, options)
    }

    fn serve_on(broker: Broker, listener: tokio::net::TcpListener, options: ServeOptions) -> Self {
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let (b, s) = (broker.clone(), stop.clone());
        let task =
            tokio::spawn(async move { b.serve(listener, options, s.cancelled_owned()).await });
        Self {
            addr,
            broker,
            stop,
            task,
        }
    }

    /// Stops serving and waits for the drain.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Options for `relay_sender::connect` to `hyco` under `path` (empty for none), with a
    /// SAS token for it.
    pub fn sender_options(&self, path: &str) -> relay_sender::ConnectOptions {
        relay_sender::ConnectOptions {
            token: Some(relay_sender::sas_token(
                &self.ws(),
                "hyco",
                KEY_NAME,
                KEY,
                60,
            )),
            path: path.into(),
            ..Default::default()
        }
    }

    pub fn token(&self, path: &str) -> String {
        token_for(&format!("http://{}/{path}", self.addr), KEY_NAME, KEY, 3600)
    }

    /// Waits (bounded) until `hc` has `n` listeners.
    pub async fn wait_listeners(&self, hc: &str, n: usize) {
        for _ in 0..500 {
            if self.broker.listener_count(hc) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{hc} never reached {n} listeners (has {})",
            self.broker.listener_count(hc)
        );
    }
}

pub fn token_for(audience: &str, name: &str, key: &str, ttl: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    relay_core::sas::create_token(audience, name, key, now + ttl)
}

/// Opens a raw WebSocket with optional `ServiceBusAuthorization`.
pub async fn ws_connect(
    url: &str,
    token: Option<&str>,
    protocols: &[&str],
    headers: &[(&str, &str)],
) -> Result<Connected, WsError> {
    let mut options = ConnectOptions {
        protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    options.timeout = Duration::from_secs(10);
    if let Some(t) = token {
        options
            .headers
            .push(("ServiceBusAuthorization".into(), t.to_owned()));
    }
    options.headers.extend(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    relay_io::client::connect(url, &options).await
}

/// A raw control channel, for checking the protocol's JSON exactly.
pub struct RawListener {
    pub conn: Connected,
}

impl RawListener {
    pub async fn open(broker: &TestBroker, hc: &str) -> Self {
        let raw = Self::open_with(broker, hc, &[]).await;
        broker.wait_listeners(hc, 1).await;
        raw
    }

    /// Opens with extra request headers; does not wait for the broker to register it.
    pub async fn open_with(broker: &TestBroker, hc: &str, headers: &[(&str, &str)]) -> Self {
        Self::open_at(&broker.ws(), &broker.token(hc), hc, headers).await
    }

    /// Opens on the broker at `ws` (`ws://host:port`) with `token`; does not wait.
    pub async fn open_at(ws: &str, token: &str, hc: &str, headers: &[(&str, &str)]) -> Self {
        let url = format!("{ws}/$hc/{hc}?sb-hc-action=listen");
        let conn = ws_connect(&url, Some(token), &[], headers)
            .await
            .expect("listen");
        Self { conn }
    }

    /// The next control command, skipping pings (answered) and pongs.
    pub async fn command(&mut self) -> ListenerCommand {
        loop {
            let msg =
                tokio::time::timeout(Duration::from_secs(10), self.conn.reader.message(1 << 20))
                    .await
                    .expect("control message in time")
                    .expect("control read")
                    .expect("control open");
            match msg {
                Message::Text(t) => {
                    return ListenerCommand::decode(t.as_bytes(), 1 << 20).expect("command");
                }
                Message::Ping(p) => {
                    self.conn
                        .writer
                        .send(true, relay_core::frame::OpCode::Pong, &p)
                        .await
                        .expect("pong");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next message of any kind.
    pub async fn message(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(10), self.conn.reader.message(1 << 20))
            .await
            .expect("message in time")
            .ok()
            .flatten()
    }
}

/// A plain HTTP/1.1 request; returns status, headers and body.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, headers, body)
}

/// A self-signed server certificate for 127.0.0.1, localhost and the wildcard
/// `*.relay.test` (host mode's names in the browser tests) in `dir`, reused when present so a
/// restarted broker keeps the name clients trust.
pub fn server_tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    if !cert.exists() {
        std::fs::create_dir_all(dir).expect("tls dir");
        let made = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".into(),
            "localhost".into(),
            "relay.test".into(),
            "*.relay.test".into(),
        ])
        .expect("server cert");
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    }
    (cert, key)
}

/// A fresh, empty directory under the system temp dir, unique to this process.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The workspace root.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Path of a debug binary of the workspace (see [`build_binaries`]).
pub fn bin(name: &str) -> std::path::PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace().join("target"), std::path::PathBuf::from)
        .join("debug")
        .join(name)
}

/// Builds the three binaries, for suites that run them as a user would.
pub fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(workspace())
        .args([
            "build",
            "-q",
            "-p",
            "relay-broker",
            "-p",
            "relay-listener",
            "-p",
            "relay-sender",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed: {status}");
}

/// [`build_binaries`], once per test process (suites whose tests run in parallel).
pub fn build_binaries_once() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(build_binaries);
}

/// Echoes WebSocket connections; answers HTTP with the path it saw, in a small body or a
/// large one (which the listener library sends over a rendezvous instead of inline).
pub struct Edge;

impl relay_listener::Handler for Edge {
    async fn on_connection(&self, conn: relay_listener::IncomingConnection) {
        let Ok(stream) = conn.accept().await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
    }

    async fn on_request(
        &self,
        req: http::Request<relay_listener::RelayBody>,
    ) -> http::Response<relay_listener::RelayBody> {
        let path = req.uri().path().to_owned();
        let body = if path.ends_with("/big") {
            "x".repeat(300 * 1024)
        } else {
            format!("edge saw {path}")
        };
        http::Response::builder()
            .header("x-edge", "b")
            .body(relay_listener::full_body(body))
            .expect("a valid response")
    }
}
