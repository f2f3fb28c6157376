//! The listener agent as users run it: one config with TCP, HTTP reverse-proxy and
//! named-port endpoints; a real web app (Node, with the `ws` package) behind the proxy mode;
//! limits refused with a status; real HTTP CONNECT (tinyproxy) and SOCKS5 (Dante) proxies;
//! graceful shutdown; a restarted agent replacing its stale channel; a restarted broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use relay_io::Message;
use relay_listener::agent::{Agent, AgentConfig, EndpointState, fetch_status};
use relay_tests::external::{danted, echo_server, free_port, tinyproxy, web_app};
use relay_tests::{KEY, KEY_NAME, RawListener, TestBroker, http_request, temp_dir};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// An agent config for `broker` with the root SAS rule; `broker_extra` goes into `[broker]`.
fn config(broker: &TestBroker, broker_extra: &str, rest: &str) -> AgentConfig {
    let text = format!(
        "[broker]\nendpoint = \"{}\"\nsas_key_name = \"{KEY_NAME}\"\nsas_key = \"{KEY}\"\n{broker_extra}\n{rest}",
        broker.ws()
    );
    AgentConfig::parse(&text, "agent.toml", std::path::Path::new("."), |_| None).unwrap()
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: AgentConfig) -> Running {
    let agent = Agent::new(config).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { agent.run(s).await.unwrap() });
    Running { stop, task }
}

async fn sender(
    broker: &TestBroker,
    hc: &str,
    path: &str,
    protocols: &[&str],
) -> Result<relay_sender::Connection, relay_sender::SenderError> {
    let options = relay_sender::ConnectOptions {
        token: Some(relay_sender::sas_token(&broker.ws(), hc, KEY_NAME, KEY, 60)),
        path: path.into(),
        protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    relay_sender::connect(&broker.ws(), hc, &options).await
}

async fn read_n(stream: &mut relay_sender::RelayStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .unwrap();
    buf
}

fn refusal(result: Result<relay_sender::Connection, relay_sender::SenderError>) -> (u16, String) {
    match result {
        Err(relay_sender::SenderError::Ws(relay_io::WsError::Refused { status, reason })) => {
            (status, reason)
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test]
async fn one_config_serves_tcp_a_real_web_app_and_named_ports() {
    let broker = TestBroker::start(
        "[[hybrid_connections]]\nname = \"ui\"\n[[hybrid_connections]]\nname = \"edge-7\"",
    )
    .await;
    let db = echo_server("db:").await;
    let plc = echo_server("plc:").await;
    let cam = echo_server("cam:").await;
    let (_app, app) = web_app();
    let status_addr = free_port();
    let agent = start(config(
        &broker,
        "",
        &format!(
            "[agent]\nstatus_bind = \"{status_addr}\"\n\
             [[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n\
             [[endpoints]]\nhc = \"ui\"\nhttp = \"http://{app}/\"\n\
             [[endpoints]]\nhc = \"edge-7\"\nports = {{ plc = \"{plc}\", camera = \"{cam}\" }}\n"
        ),
    ));
    for hc in ["hyco", "ui", "edge-7"] {
        broker.wait_listeners(hc, 1).await;
    }
    let status = fetch_status(status_addr).await.unwrap();
    assert_eq!(status.len(), 3);
    assert!(
        status.iter().all(|e| e.state == EndpointState::Connected),
        "{status:?}"
    );

    // TCP.
    let mut c = sender(&broker, "hyco", "", &[]).await.unwrap();
    assert_eq!(read_n(&mut c.stream, 3).await, b"db:");
    c.stream.write_all(b"select 1").await.unwrap();
    assert_eq!(read_n(&mut c.stream, 8).await, b"select 1");

    // Named ports on one hybrid connection.
    let mut p = sender(&broker, "edge-7", "/plc", &[]).await.unwrap();
    assert_eq!(read_n(&mut p.stream, 4).await, b"plc:");
    let mut k = sender(&broker, "edge-7", "/camera", &[]).await.unwrap();
    assert_eq!(read_n(&mut k.stream, 4).await, b"cam:");
    let (status, reason) = refusal(sender(&broker, "edge-7", "/hmi", &[]).await);
    assert_eq!(status, 404);
    assert!(
        reason.contains("no port 'hmi'") && reason.contains("camera, plc"),
        "{reason}"
    );
    assert_eq!(refusal(sender(&broker, "edge-7", "", &[]).await).0, 400);

    // The web app over relayed HTTP: redirect and cookie stay on the relay.
    let base = broker.http();
    let auth = broker.token("ui");
    let headers = [("ServiceBusAuthorization", auth.as_str())];
    let (code, h, _) = http_request("GET", &format!("{base}/ui/"), &headers, vec![]).await;
    assert_eq!(code, 302);
    assert_eq!(h["location"], "/ui/login?from=root");
    let (code, h, body) = http_request("GET", &format!("{base}/ui/login"), &headers, vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(h["set-cookie"], "sid=abc123; Path=/ui; HttpOnly");
    assert_eq!(body, b"<a href=\"/home\">home</a>");
    let (code, _, body) = http_request(
        "POST",
        &format!("{base}/ui/echo?x=1&y=%2F"),
        &[("ServiceBusAuthorization", auth.as_str()), ("X-App", "42")],
        b"form=data".to_vec(),
    )
    .await;
    assert_eq!(code, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["url"], "/echo?x=1&y=%2F");
    assert_eq!(echo["body"], "form=data");
    assert_eq!(echo["headers"]["host"], app.to_string());
    assert_eq!(echo["headers"]["x-forwarded-prefix"], "/ui");
    assert_eq!(echo["headers"]["x-app"], "42");
    assert!(echo["headers"].get("servicebusauthorization").is_none());
    let (code, _, body) = http_request("GET", &format!("{base}/ui/big"), &headers, vec![]).await;
    assert_eq!(
        (code, body.len()),
        (200, 300 * 1024),
        "a body past the inline limit"
    );

    // WebSocket through to the web app, with its sub-protocol and both message types.
    let ws = sender(&broker, "ui", "/ws", &["chat"]).await.unwrap();
    assert_eq!(ws.protocol.as_deref(), Some("chat"));
    let (mut r, mut w) = ws.stream.into_parts();
    let next = |m: Option<Message>| m.expect("a message");
    assert!(
        matches!(next(r.message(1 << 16).await.unwrap()), Message::Text(t) if t == "hello /ui")
    );
    w.text("ping").await.unwrap();
    assert!(
        matches!(next(r.message(1 << 16).await.unwrap()), Message::Text(t) if t == "echo:ping")
    );
    w.send(true, relay_core::frame::OpCode::Binary, &[1, 2, 3])
        .await
        .unwrap();
    w.flush().await.unwrap();
    assert!(
        matches!(next(r.message(1 << 16).await.unwrap()), Message::Binary(b) if b == [1, 2, 3])
    );
    let (code, _) = refusal(sender(&broker, "ui", "/nowhere", &[]).await);
    assert_eq!(code, 400, "the backend's own refusal reaches the sender");

    drop((c, p, k, r, w));
    agent.stop.cancel();
    agent.task.await.unwrap();
}

#[tokio::test]
async fn a_refused_key_is_reported_with_the_rule_to_check() {
    let broker = TestBroker::start("").await;
    let status_addr = free_port();
    let text = format!(
        "[broker]\nendpoint = \"{}\"\nsas_key_name = \"{KEY_NAME}\"\nsas_key = \"not-the-key\"\n\
         [agent]\nstatus_bind = \"{status_addr}\"\n[[endpoints]]\nhc = \"hyco\"\ntcp = \"127.0.0.1:9\"\n",
        broker.ws()
    );
    let agent = start(
        AgentConfig::parse(&text, "agent.toml", std::path::Path::new("."), |_| None).unwrap(),
    );
    let mut said = String::new();
    for _ in 0..200 {
        if let Some(e) = fetch_status(status_addr)
            .await
            .ok()
            .and_then(|s| s[0].last_error.clone())
        {
            said = e;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(said.contains("401"), "{said}");
    assert!(
        said.contains("the key of rule 'root' is wrong or expired, or lacks Listen on 'hyco'"),
        "{said}"
    );
    assert!(
        !said.contains("not-the-key"),
        "no secret in the status: {said}"
    );
    agent.stop.cancel();
    agent.task.await.unwrap();
}

#[tokio::test]
async fn limits_refuse_with_a_status_and_bandwidth_is_paced() {
    let broker = TestBroker::start("[[hybrid_connections]]\nname = \"slow\"").await;
    let db = echo_server("").await;
    let rate = 200_000u64;
    let agent = start(config(
        &broker,
        "",
        &format!(
            "[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\nmax_connections = 1\n\
             [[endpoints]]\nhc = \"slow\"\ntcp = \"{db}\"\nbandwidth_bytes_per_sec = {rate}\n"
        ),
    ));
    broker.wait_listeners("hyco", 1).await;
    broker.wait_listeners("slow", 1).await;

    let mut first = sender(&broker, "hyco", "", &[]).await.unwrap();
    first.stream.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut first.stream, 1).await, b"x");
    let (status, reason) = refusal(sender(&broker, "hyco", "", &[]).await);
    assert_eq!(status, 503);
    assert!(reason.contains("at most 1 connections"), "{reason}");
    // Once the first ends, there is room again.
    first.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    first.stream.read_to_end(&mut rest).await.unwrap();
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = sender(&broker, "hyco", "", &[]).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "the slot is released when the connection ends"
    );

    // 600 kB through a 200 kB/s cap cannot take less than ~2.5 s (burst allowance aside);
    // only the lower bound is asserted, so a slow machine cannot fail it.
    let mut slow = sender(&broker, "slow", "", &[]).await.unwrap();
    let payload = vec![9u8; 600_000];
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(&mut slow.stream);
    let (_, echoed) = tokio::join!(async { w.write_all(&payload).await.unwrap() }, async {
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    });
    let took = started.elapsed().as_secs_f64();
    assert_eq!(echoed.len(), payload.len());
    let measured = payload.len() as f64 / took;
    eprintln!("bandwidth cap {rate} B/s: measured {measured:.0} B/s over {took:.2} s");
    assert!(took >= 2.5, "600 kB at {rate} B/s took only {took:.2} s");
    drop((slow, again));
    agent.stop.cancel();
    agent.task.await.unwrap();
}

#[tokio::test]
async fn the_agent_reaches_the_broker_through_real_http_and_socks5_proxies() {
    let dir = temp_dir("agent-proxies");
    let broker = TestBroker::start("[[hybrid_connections]]\nname = \"socks\"").await;
    let db = echo_server("via proxy:").await;
    let (_tinyproxy, http_proxy) = tinyproxy(&dir, "agent", "pa55word");
    let (_danted, socks) = danted(&dir);

    let status_addr = free_port();
    let agent = start(config(
        &broker,
        &format!("proxy = \"http://agent:pa55word@{http_proxy}\""),
        &format!(
            "[agent]\nstatus_bind = \"{status_addr}\"\n[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n"
        ),
    ));
    broker.wait_listeners("hyco", 1).await;
    let mut c = sender(&broker, "hyco", "", &[]).await.unwrap();
    assert_eq!(read_n(&mut c.stream, 10).await, b"via proxy:");
    let log = std::fs::read_to_string(dir.join("tinyproxy.log")).unwrap();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{}", broker.addr.port()))
            || log.contains(&format!("127.0.0.1:{}", broker.addr.port())),
        "the control channel and the rendezvous went through tinyproxy: {log}"
    );
    drop(c);
    agent.stop.cancel();
    agent.task.await.unwrap();

    // A wrong password: the agent keeps trying and says why.
    let wrong = start(config(
        &broker,
        &format!("proxy = \"http://agent:wrong@{http_proxy}\""),
        &format!(
            "[agent]\nstatus_bind = \"{status_addr}\"\n[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n"
        ),
    ));
    let mut said = String::new();
    for _ in 0..200 {
        if let Ok(s) = fetch_status(status_addr).await {
            if let Some(e) = s[0].last_error.clone() {
                said = e;
                assert_eq!(s[0].state, EndpointState::Connecting);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(said.contains("refused the credentials"), "{said}");
    wrong.stop.cancel();
    wrong.task.await.unwrap();

    // SOCKS5.
    let agent = start(config(
        &broker,
        &format!("proxy = \"socks5://{socks}\""),
        &format!("[[endpoints]]\nhc = \"socks\"\ntcp = \"{db}\"\n"),
    ));
    broker.wait_listeners("socks", 1).await;
    let mut c = sender(&broker, "socks", "", &[]).await.unwrap();
    assert_eq!(read_n(&mut c.stream, 10).await, b"via proxy:");
    let log = std::fs::read_to_string(dir.join("danted.log")).unwrap_or_default();
    assert!(
        log.contains("connect"),
        "the agent went through Dante: {log}"
    );
    drop(c);
    agent.stop.cancel();
    agent.task.await.unwrap();
}

/// A broker, and an agent serving `hyco` from an echo service with `agent` in `[agent]`.
async fn echo_agent(agent: &str) -> (TestBroker, Running) {
    let broker = TestBroker::start("").await;
    let db = echo_server("").await;
    let running = start(config(
        &broker,
        "",
        &format!("[agent]\n{agent}\n[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n"),
    ));
    broker.wait_listeners("hyco", 1).await;
    (broker, running)
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_in_flight_connections_finish() {
    let (broker, agent) = echo_agent("shutdown_drain_secs = 30").await;
    let mut c = sender(&broker, "hyco", "", &[]).await.unwrap();
    c.stream.write_all(b"before").await.unwrap();
    assert_eq!(read_n(&mut c.stream, 6).await, b"before");

    agent.stop.cancel();
    // No new connections: the control channel is gone.
    broker.wait_listeners("hyco", 0).await;
    assert_eq!(refusal(sender(&broker, "hyco", "", &[]).await).0, 404);
    // The one in flight still works, and the agent waits for it.
    c.stream.write_all(b"during").await.unwrap();
    assert_eq!(read_n(&mut c.stream, 6).await, b"during");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !agent.task.is_finished(),
        "the agent drains before it exits"
    );
    c.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .expect("the agent exits once drained")
        .unwrap();
}

#[tokio::test]
async fn a_short_drain_deadline_cuts_what_is_left() {
    let (broker, agent) = echo_agent("shutdown_drain_secs = 1").await;
    let _held = sender(&broker, "hyco", "", &[]).await.unwrap();
    agent.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), agent.task)
        .await
        .expect("the agent exits at the deadline although a connection is open")
        .unwrap();
}

#[tokio::test]
async fn a_restarted_agent_replaces_its_own_stale_channel_at_once() {
    let broker = TestBroker::start("").await;
    let db = echo_server("new:").await;
    // The old agent's channel: still registered at the broker, but nobody answers on it.
    let mut stale = RawListener::open_with(
        &broker,
        "hyco",
        &[(relay_core::control::INSTANCE_HEADER, "gw-1/hyco")],
    )
    .await;
    broker.wait_listeners("hyco", 1).await;
    let agent = start(config(
        &broker,
        "",
        &format!("[agent]\ninstance = \"gw-1\"\n[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n"),
    ));
    let closed = stale.message().await;
    assert!(
        matches!(closed, Some(Message::Close(Some((code, _)))) if code == relay_core::control::CLOSE_REPLACED),
        "{closed:?}"
    );
    broker.wait_listeners("hyco", 1).await;
    // Every sender reaches the new agent, none waits on the stale channel.
    for _ in 0..3 {
        let mut c = sender(&broker, "hyco", "", &[]).await.unwrap();
        assert_eq!(read_n(&mut c.stream, 4).await, b"new:");
    }
    agent.stop.cancel();
    agent.task.await.unwrap();
}

#[tokio::test]
async fn the_agent_comes_back_after_the_broker_restarts() {
    let broker = TestBroker::start("").await;
    let addr = broker.addr;
    let db = echo_server("back:").await;
    let mut cfg = config(
        &broker,
        "",
        &format!("[[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n"),
    );
    cfg.endpoints[0].max_connections = 8;
    let agent = start(cfg);
    broker.wait_listeners("hyco", 1).await;
    broker.shutdown().await;
    let broker = TestBroker::start_on(addr, "").await;
    // Backoff is at most a few seconds after one failure.
    for _ in 0..1500 {
        if broker.broker.listener_count("hyco") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = sender(&broker, "hyco", "", &[]).await.unwrap();
    assert_eq!(read_n(&mut c.stream, 5).await, b"back:");
    drop(c);
    agent.stop.cancel();
    agent.task.await.unwrap();
}

#[tokio::test]
async fn an_agent_behind_a_proxy_enrolls_itself_on_first_start_and_listens_with_mtls() {
    let env = relay_tests::certs::Env::start("agent-enroll").await;
    let (_tinyproxy, proxy) = tinyproxy(&env.dir, "agent", "pa55word");
    let db = echo_server("enrolled:").await;
    let body = serde_json::json!({"person": "alice", "hybrid_connections": ["hyco"]});
    let (status, minted) = env.admin("POST", "/enrollment-tokens", body).await;
    assert_eq!(status, 200, "{minted}");
    std::fs::write(
        env.dir.join("enroll.token"),
        minted["token"].as_str().unwrap(),
    )
    .unwrap();
    let text = format!(
        "[broker]\nendpoint = \"{}\"\nidentity = \"agent-identity\"\nenrollment_token_file = \"enroll.token\"\n\
         ca_cert = \"server.pem\"\nproxy = \"http://agent:pa55word@{proxy}\"\n\
         [[endpoints]]\nhc = \"hyco\"\ntcp = \"{db}\"\n",
        env.wss()
    );
    let config = AgentConfig::parse(&text, "agent.toml", &env.dir, |_| None).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(relay_listener::agent::run_config(config, stop.clone()));
    env.wait_listeners("hyco", 1, Duration::from_secs(20)).await;

    // It registered (key made here, 0600; the token burned and its file gone) ...
    assert!(env.dir.join("agent-identity/listener.json").exists());
    assert!(!env.dir.join("enroll.token").exists());
    assert!(env.audit().await.contains("listener.register"));
    // ... and relays over mTLS, all through the proxy.
    let mut c = env.sender(&env.wss(), "hyco").await;
    assert_eq!(read_n(&mut c.stream, 9).await, b"enrolled:");
    let log = std::fs::read_to_string(env.dir.join("tinyproxy.log")).unwrap();
    assert!(log.contains("CONNECT"), "{log}");
    drop(c);
    stop.cancel();
    run.await.unwrap().unwrap();

    // A crash after the certificate was written but before listener.json: the burned token
    // cannot be used again, so the next start finishes the identity from the certificate.
    env.wait_listeners("hyco", 0, Duration::from_secs(10)).await;
    std::fs::remove_file(env.dir.join("agent-identity/listener.json")).unwrap();
    std::fs::write(env.dir.join("enroll.token"), "already-burned").unwrap();
    let config = AgentConfig::parse(&text, "agent.toml", &env.dir, |_| None).unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(relay_listener::agent::run_config(config, stop.clone()));
    env.wait_listeners("hyco", 1, Duration::from_secs(20)).await;
    assert!(!env.dir.join("enroll.token").exists());
    stop.cancel();
    run.await.unwrap().unwrap();
}
