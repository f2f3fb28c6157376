//! The broker's wall clock stepped an hour forwards and then back, as an operator's `date -s`
//! or a first NTP sync does: the real `relay-broker` binary runs under libfaketime, with the
//! monotonic clock left alone (a step does not move it). The documented rule (ARCHITECTURE.md,
//! "Time"): a credential is judged by the wall clock when it is presented; an open control
//! channel keeps the deadline it got then; every timer runs on the monotonic clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use relay_core::control::{ListenerCommand, RenewToken};
use relay_core::frame::{OpCode, close_code};
use relay_io::client::Connected;
use relay_io::{Message, WsError};
use relay_tests::external::Process;
use relay_tests::{KEY, KEY_NAME, bin, build_binaries_once, http_request, temp_dir, ws_connect};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const HOUR: i64 = 3600;

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token for `hyco` that expires at `expires_at` (Unix seconds, by the real clock).
fn token(addr: &str, expires_at: i64) -> String {
    relay_core::sas::create_token(
        &format!("http://{addr}/hyco"),
        KEY_NAME,
        KEY,
        expires_at.max(0) as u64,
    )
}

/// The offset libfaketime applies to the broker's wall clock, read at every clock call.
struct FakeClock(PathBuf);

impl FakeClock {
    fn set(&self, offset_secs: i64) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_secs:+}\n")).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

fn start_broker(dir: &Path, clock: &FakeClock) -> (Process, String) {
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        relay_tests::config("[limits]\nping_interval_secs = 1\ntoken_grace_secs = 0\n"),
    )
    .unwrap();
    let mut command = Command::new(bin("relay-broker"));
    command
        .arg("--config")
        .arg(&config)
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &clock.0)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let (broker, addr) = relay_tests::external::spawn_broker(command);
    (broker, addr.trim_start_matches("http://").to_owned())
}

/// How far the broker's wall clock is ahead of ours, as it says itself: by how much it finds
/// a token that expired one second ago (by ours) expired.
async fn skew(addr: &str) -> i64 {
    let expired = token(addr, real_now() - 1);
    let auth = [("ServiceBusAuthorization", expired.as_str())];
    let (status, _, body) =
        http_request("GET", &format!("http://{addr}/hyco"), &auth, vec![]).await;
    let text = String::from_utf8_lossy(&body);
    if status != 401 {
        // The broker's clock is more than a second behind ours: the token is still good.
        return -1;
    }
    let ago: i64 = text
        .split("token expired ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no expiry in {text}"));
    ago - 1
}

/// Waits, bounded, until the broker's clock reads `offset` from ours (within 3 s).
async fn wait_skew(addr: &str, offset: i64) {
    for _ in 0..100 {
        if offset < 0 {
            // Behind ours, an expired token is no longer expired: judge by a listen instead.
            let t = token(addr, real_now() + offset + 60);
            if listen(addr, &t).await.is_ok() {
                return;
            }
        } else if (skew(addr).await - offset).abs() <= 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the broker's clock never moved by {offset} s");
}

async fn listen(addr: &str, token: &str) -> Result<Connected, WsError> {
    let url = format!("ws://{addr}/$hc/hyco?sb-hc-action=listen");
    ws_connect(&url, Some(token), &[], &[]).await
}

/// What a control channel saw.
#[derive(Debug)]
enum Seen {
    Ping,
    Closed(u16, String),
}

/// A control channel whose pings are answered all along, in a task of its own.
struct Channel {
    seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    send: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Channel {
    fn spawn(conn: Connected) -> Self {
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let (send, mut texts) = tokio::sync::mpsc::unbounded_channel::<String>();
        let Connected {
            mut reader,
            mut writer,
            ..
        } = conn;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(text) = texts.recv() => writer.text(&text).await.unwrap(),
                    message = reader.message(1 << 20) => match message {
                        Ok(Some(Message::Ping(p))) => {
                            let _ = seen_tx.send(Seen::Ping);
                            writer.send(true, OpCode::Pong, &p).await.unwrap();
                            writer.flush().await.unwrap();
                        }
                        Ok(Some(Message::Close(status))) => {
                            let (code, reason) = status.unwrap_or((1005, String::new()));
                            let _ = seen_tx.send(Seen::Closed(code, reason));
                            return;
                        }
                        other => panic!("unexpected {other:?}"),
                    },
                }
            }
        });
        Self { seen, send }
    }

    /// Pings seen in the next `window`; panics when the channel closes.
    async fn pings_in(&mut self, window: Duration) -> usize {
        while let Ok(old) = self.seen.try_recv() {
            assert!(matches!(old, Seen::Ping), "closed early: {old:?}");
        }
        let until = tokio::time::Instant::now() + window;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(until, self.seen.recv()).await {
                Err(_) => return pings,
                Ok(Some(Seen::Ping)) => pings += 1,
                Ok(other) => panic!("the channel should stay open, got {other:?}"),
            }
        }
    }

    /// The Close the broker sends next.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let seen = tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
                .await
                .expect("a Close in time");
            match seen {
                Some(Seen::Ping) => {}
                Some(Seen::Closed(code, reason)) => return (code, reason),
                None => panic!("the channel ended without a Close"),
            }
        }
    }
}

#[tokio::test]
async fn a_clock_stepped_an_hour_either_way_judges_credentials_by_the_new_time_and_keeps_timers() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is needed for this suite: apt-get install libfaketime (.ci/run does)"
    );
    build_binaries_once();
    let dir = temp_dir("clock");
    let clock = FakeClock(dir.join("faketime"));
    clock.set(0);
    let (_broker, addr) = start_broker(&dir, &clock);
    assert!(
        skew(&addr).await.abs() <= 3,
        "the broker starts on our time"
    );

    // Two control channels: one whose token has two hours left, one with half an hour.
    let mut long = Channel::spawn(
        listen(&addr, &token(&addr, real_now() + 2 * HOUR))
            .await
            .unwrap(),
    );
    let mut short = Channel::spawn(
        listen(&addr, &token(&addr, real_now() + HOUR / 2))
            .await
            .unwrap(),
    );

    clock.set(HOUR);
    wait_skew(&addr, HOUR).await;
    // Presented now, a token with half an hour left by the sender's clock is half an hour
    // expired by the broker's, and says so; one with two hours left is good for one more.
    let refused = listen(&addr, &token(&addr, real_now() + HOUR / 2)).await;
    match refused {
        Err(WsError::Refused {
            status: 401,
            reason,
        }) => {
            assert!(reason.contains("by this server's clock"), "{reason}");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| "a listener")),
    }
    let mut fresh = Channel::spawn(
        listen(&addr, &token(&addr, real_now() + 2 * HOUR))
            .await
            .expect("a token with an hour left by the broker's clock"),
    );
    // Open channels keep the deadline they got when opened, and their timers their pace: a
    // ping a second, neither a burst nor silence.
    for conn in [&mut long, &mut short, &mut fresh] {
        let pings = conn.pings_in(Duration::from_millis(3500)).await;
        assert!((2..=5).contains(&pings), "{pings} pings in 3.5 s");
    }
    // A renewal is a credential presented now: half an hour left by the sender's clock is
    // expired by the broker's.
    let renew = ListenerCommand::RenewToken(RenewToken {
        token: token(&addr, real_now() + HOUR / 2),
    });
    short.send.send(renew.encode()).unwrap();
    let (code, reason) = short.closed().await;
    assert_eq!(code, close_code::POLICY_VIOLATION);
    assert!(
        reason.contains("Token renewal refused") && reason.contains("by this server's clock"),
        "{reason}"
    );

    clock.set(-HOUR);
    wait_skew(&addr, -HOUR).await;
    // An hour behind: a token that ran out half an hour ago by the sender's clock has half
    // an hour left by the broker's.
    listen(&addr, &token(&addr, real_now() - HOUR / 2))
        .await
        .expect("judged by the broker's clock");
    for conn in [&mut long, &mut fresh] {
        let pings = conn.pings_in(Duration::from_millis(3500)).await;
        assert!(
            (2..=5).contains(&pings),
            "{pings} pings in 3.5 s after the step back"
        );
    }
}
