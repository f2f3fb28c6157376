//! Dialling a rendezvous: tried again, a few times within the configured timeout, while no
//! try got the broker's answer.
//!
//! Through a load balancer the dial lands on any broker node, and a hung node's TCP still
//! accepts until the balancer's health check marks it down and cuts its sessions (seconds).
//! The rendezvous stays pending on the node that waits for it until a socket arrives there,
//! so another draw is safe, and without it the sender waits out its whole timeout.

use std::time::Duration;

use relay_io::WsError;
use relay_io::client::{ConnectOptions, Connected};

/// The bound of each dial (a rendezvous within one broker deployment takes milliseconds);
/// all of them together stay within the configured timeout.
const EACH_TRY: Duration = Duration::from_secs(3);
/// How many dials a rendezvous gets, and the pause between them (a refused TCP connect
/// fails at once).
const TRIES: u32 = 4;
const PAUSE: Duration = Duration::from_millis(50);

/// Opens the rendezvous WebSocket at `address`.
pub(crate) async fn dial(address: &str, options: &ConnectOptions) -> Result<Connected, WsError> {
    dial_within(address, options, EACH_TRY).await
}

async fn dial_within(
    address: &str,
    options: &ConnectOptions,
    each_try: Duration,
) -> Result<Connected, WsError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = ConnectOptions {
            timeout: left.min(each_try),
            ..options.clone()
        };
        match relay_io::client::connect(address, &attempt).await {
            Err(e) if again(&e) && tries < TRIES && left > attempt.timeout + PAUSE => {
                tracing::debug!(error = %e, tries, "rendezvous dial failed; trying again");
                tokio::time::sleep(PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Whether a failed dial may be tried again: not when the broker answered (the rendezvous
/// is used, expired or refused) or the address cannot work.
fn again(e: &WsError) -> bool {
    !matches!(e, WsError::Refused { .. } | WsError::Url(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_that_hangs_is_tried_again_and_a_refusal_is_not() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let options = ConnectOptions {
            timeout: Duration::from_millis(600),
            ..Default::default()
        };
        let each_try = Duration::from_millis(150);
        // A TCP that accepts and never answers (a hung node behind a balancer): tried again
        // within the configured timeout (600 ms: tries of 150 ms with pauses between).
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/$hc/h?sb-hc-action=accept",
            hung.local_addr().unwrap()
        );
        let accepts = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok(Ok((s, _))) =
                tokio::time::timeout(Duration::from_secs(1), hung.accept()).await
            {
                held.push(s);
            }
            held.len()
        });
        let started = std::time::Instant::now();
        assert!(dial_within(&url, &options, each_try).await.is_err());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(1),
            "{took:?}"
        );
        let tries = accepts.await.unwrap();
        assert!(
            (2..=4).contains(&tries),
            "the hung dial is tried again: {tries}"
        );

        // A broker's answer (404: no such rendezvous) is final.
        let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/$hc/h?sb-hc-action=accept",
            refusing.local_addr().unwrap()
        );
        let answers = tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(500), refusing.accept()).await
            {
                n += 1;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
            n
        });
        let e = dial_within(&url, &options, each_try).await.unwrap_err();
        assert!(matches!(e, WsError::Refused { status: 404, .. }), "{e}");
        assert_eq!(answers.await.unwrap(), 1, "a refusal is final");
    }
}
