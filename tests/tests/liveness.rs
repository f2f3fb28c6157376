//! A half-open link to the broker (it accepted the control channel, then went silent: no
//! pongs, no traffic) is declared dead within 30 s and the listener reconnects. Virtual
//! time: the runtime's clock is paused and jumps while everything waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use relay_listener::{Listener, ListenerConfig, StaticToken, Status};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Accepts one WebSocket upgrade on `tcp`, then never says anything again.
async fn accept_then_go_silent(mut tcp: tokio::net::TcpStream) -> tokio::net::TcpStream {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("a WebSocket key");
    let accept = relay_core::frame::accept_key(key.as_bytes());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(reply.as_bytes()).await.unwrap();
    tcp
}

#[tokio::test(start_paused = true)]
async fn a_silent_broker_is_declared_dead_within_30_seconds_and_the_listener_reconnects() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let config = ListenerConfig::new(
        format!("ws://{addr}"),
        "hyco",
        Arc::new(StaticToken(
            "SharedAccessSignature sr=x&sig=y&se=1&skn=z".into(),
        )),
    );
    let listener = Listener::new(config);
    let mut status = listener.status();
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = Arc::new(|_conn: relay_listener::IncomingConnection| async {});
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { listener.run(handler, stop).await })
    };

    let (first, _) = server.accept().await.unwrap();
    let _silent = accept_then_go_silent(first).await;
    while *status.borrow_and_update() != Status::Connected {
        status.changed().await.unwrap();
    }
    let connected_at = tokio::time::Instant::now();
    let error = loop {
        status.changed().await.unwrap();
        if let Status::Connecting {
            last_error: Some(e),
            ..
        } = &*status.borrow()
        {
            break e.clone();
        }
    };
    let detected = connected_at.elapsed();
    assert!(error.contains("the link is dead"), "{error}");
    assert!(
        detected >= Duration::from_secs(29) && detected <= Duration::from_secs(31),
        "declared dead after {detected:?}"
    );
    // And it dials again by itself.
    let (_second, _) = tokio::time::timeout(Duration::from_secs(60), server.accept())
        .await
        .expect("the listener reconnects")
        .unwrap();
    stop.cancel();
    run.await.unwrap();
}
