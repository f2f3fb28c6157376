//! A delay line standing in for the wide-area link between a customer site and the broker:
//! every byte crossing it arrives `delay` later, in each direction and in order. The TCP
//! handshake is modelled too: a dialler's first bytes cannot arrive before one round trip
//! (SYN, SYN-ACK) plus their own crossing, 3 × `delay` after it connected.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Listens on a free loopback port and relays each connection to `upstream` through the
/// delay line. Returns the port's address; the task lives as long as the process.
pub(crate) async fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((site, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(broker) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = site.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                let (sr, sw) = site.into_split();
                let (br, bw) = broker.into_split();
                let handshake = Instant::now() + 3 * delay;
                tokio::join!(
                    line(sr, bw, delay, Some(handshake)),
                    line(br, sw, delay, None)
                );
            });
        }
    });
    Ok(addr)
}

/// One direction: what is read at `t` is written at `t + delay`, and not before `earliest`.
async fn line(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    earliest: Option<Instant>,
) {
    // Bounded: a stalled receiver stops the reader, as a real link's window would.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            let at = (Instant::now() + delay).max(earliest.unwrap_or_else(Instant::now));
            if n == 0 || tx.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
