//! The services behind every tunnel: a sink that counts what it reads and answers the count
//! at end of stream, and an echo server.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) struct Backends {
    pub(crate) sink: SocketAddr,
    pub(crate) echo: SocketAddr,
}

pub(crate) async fn start() -> anyhow::Result<Backends> {
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = Backends {
        sink: sink.local_addr()?,
        echo: echo.local_addr()?,
    };
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = sink.accept().await {
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = sock.write_all(&total.to_be_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = echo.accept().await {
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addrs)
}
