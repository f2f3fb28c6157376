//! Splices a client WebSocket and a TCP stream without intermediate copies: TCP bytes are
//! read into a buffer that leaves room for the frame header in front, masked in place and
//! written as one contiguous frame; WebSocket payload is written to TCP straight from the
//! frame reader's buffer. End of stream on TCP becomes a Close (a half-close: the other
//! direction keeps flowing); the peer's Close becomes a TCP write shutdown. Pings are answered.
//!
//! Aborts stay aborts. Only a Close 1000 (or an empty Close) is an end of stream; any other
//! code, a connection lost without a Close, or a framing error ends the splice with
//! [`SpliceError::Relay`], and a reset or error on the TCP side with [`SpliceError::Tcp`],
//! after a Close 1011 went out so the far end aborts too. Either way the caller then resets
//! its TCP connection ([`reset`]): a FIN would tell a client without its own framing that a
//! cut stream was complete.

use std::io;
use std::time::Duration;

use relay_core::frame::{self, FrameHeader, MAX_HEADER_LEN, OpCode, apply_mask, close_code};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{Role, WsError, WsReader, WsWriter};

/// Payload bytes per frame sent from TCP.
const CHUNK: usize = 64 * 1024;
/// What a busy stream's chunk grows to, as [`crate::reader::BULK_BUFFER`] for reading.
const BULK_CHUNK: usize = crate::reader::BULK_BUFFER;

/// Bytes moved each way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Spliced {
    /// From TCP into the WebSocket.
    pub to_ws: u64,
    /// From the WebSocket into TCP.
    pub to_tcp: u64,
    /// The peer's Close code and reason, when it sent one.
    pub close: Option<(u16, String)>,
}

/// How a splice ended that did not end in order. Either way, reset the TCP side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    /// The WebSocket side aborted: a Close other than 1000, a connection lost without a
    /// Close, a framing error, or a failed write.
    #[error("the relayed stream was aborted: {0}")]
    Relay(WsError),
    /// The TCP side was reset or failed; a Close 1011 was sent on the WebSocket.
    #[error("the local connection failed: {0}")]
    Tcp(io::Error),
}

/// How long the Close 1011 after a TCP failure may take to go out.
const ABORT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until both directions have ended. `ws` is a client-role reader and writer; `tcp` may
/// be borrowed halves (`(&mut r, &mut w)`), so that the caller can [`reset`] the connection
/// after an error.
pub async fn splice<R, W, TR, TW>(
    ws: (WsReader<R>, WsWriter<W>),
    tcp: (TR, TW),
) -> Result<Spliced, SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    TR: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let (mut ws_read, mut ws_write) = ws;
    let (mut tcp_read, mut tcp_write) = tcp;
    let (pongs_tx, pongs_rx) = mpsc::channel(4);
    // An error in either direction ends both, as with `copy_bidirectional`.
    let joined = tokio::try_join!(
        tcp_to_ws(&mut tcp_read, &mut ws_write, pongs_rx),
        ws_to_tcp(&mut ws_read, &mut tcp_write, pongs_tx)
    );
    match joined {
        Ok((to_ws, (to_tcp, close))) => Ok(Spliced {
            to_ws,
            to_tcp,
            close,
        }),
        Err(SpliceError::Tcp(e)) => {
            let reason = match e.kind() {
                io::ErrorKind::ConnectionReset => "aborted: the local connection was reset",
                _ => "aborted: the local connection failed",
            };
            let close = ws_write.close(close_code::INTERNAL_ERROR, reason);
            let _ = tokio::time::timeout(ABORT_CLOSE_TIMEOUT, close).await;
            Err(SpliceError::Tcp(e))
        }
        Err(e) => Err(e),
    }
}

/// Resets a TCP connection: an RST instead of a FIN, so the far end sees an abort.
pub fn reset(stream: tokio::net::TcpStream) {
    reset_on_close(&stream);
    drop(stream);
}

/// Makes every close of `stream` a reset (SO_LINGER 0) until [`finished`] says it ended in
/// order. Set it as soon as a relayed connection exists: then a process that dies, is killed
/// or drops the socket on any early return resets the far end instead of sending the FIN
/// the kernel would send for it, which reads as a complete stream.
pub fn reset_on_close(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "SO_LINGER 0 failed; a close will be a FIN");
    }
}

/// Marks `stream` as ended in order (both FINs exchanged): its close is an ordinary one again.
pub fn finished(stream: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(None) {
        tracing::debug!(error = %e, "restoring SO_LINGER failed");
    }
}

async fn tcp_to_ws<TR, W>(
    tcp: &mut TR,
    ws: &mut WsWriter<W>,
    mut pongs: mpsc::Receiver<Vec<u8>>,
) -> Result<u64, SpliceError>
where
    TR: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let masked = ws.role == Role::Client;
    let mut buf = vec![0u8; MAX_HEADER_LEN + CHUNK];
    let mut full_reads = 0u8;
    let mut total = 0u64;
    let mut pongs_open = true;
    loop {
        let n = tokio::select! {
            biased;
            pong = pongs.recv(), if pongs_open => {
                match pong {
                    Some(payload) => {
                        ws.send(true, OpCode::Pong, &payload).await.map_err(relay)?;
                        ws.flush().await.map_err(relay)?;
                    }
                    None => pongs_open = false,
                }
                continue;
            }
            n = tcp.read(&mut buf[MAX_HEADER_LEN..]) => n.map_err(SpliceError::Tcp)?,
        };
        if n == 0 {
            ws.close(close_code::NORMAL, "").await.map_err(relay)?;
            return Ok(total);
        }
        // A bulk transfer keeps filling the chunk: fewer, larger frames then cost fewer
        // system calls on every hop. Interactive streams keep the small chunk.
        let grow = n == buf.len() - MAX_HEADER_LEN && buf.len() < MAX_HEADER_LEN + BULK_CHUNK;
        full_reads += u8::from(grow);
        let key = masked.then(rand::random::<[u8; 4]>);
        if let Some(key) = key {
            apply_mask(&mut buf[MAX_HEADER_LEN..MAX_HEADER_LEN + n], key, 0);
        }
        let header = FrameHeader {
            fin: true,
            opcode: OpCode::Binary,
            mask: key,
            payload_len: n as u64,
        };
        let mut h = [0u8; MAX_HEADER_LEN];
        let len = header.encode(&mut h);
        let start = MAX_HEADER_LEN - len;
        buf[start..MAX_HEADER_LEN].copy_from_slice(&h[..len]);
        ws.write_raw(&buf[start..MAX_HEADER_LEN + n])
            .await
            .map_err(relay)?;
        ws.flush().await.map_err(relay)?;
        total += n as u64;
        if full_reads >= 2 && buf.len() < MAX_HEADER_LEN + BULK_CHUNK {
            buf.resize(MAX_HEADER_LEN + BULK_CHUNK, 0);
        }
    }
}

async fn ws_to_tcp<R, TW>(
    ws: &mut WsReader<R>,
    tcp: &mut TW,
    pongs: mpsc::Sender<Vec<u8>>,
) -> Result<(u64, Option<(u16, String)>), SpliceError>
where
    R: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let ws_err = |e: WsError| SpliceError::Relay(e);
    let mut total = 0u64;
    loop {
        let Some(header) = ws.header().await.map_err(ws_err)? else {
            return Err(SpliceError::Relay(WsError::ConnectionLost));
        };
        match header.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                let mut payload = Vec::new();
                ws.read_small_payload(&mut payload).await.map_err(ws_err)?;
                match header.opcode {
                    OpCode::Ping => {
                        let _ = pongs.try_send(payload);
                    }
                    OpCode::Close => {
                        let close = frame::parse_close(&payload)
                            .map_err(|e| SpliceError::Relay(e.into()))?
                            .map(|(c, r)| (c, r.to_owned()));
                        if let Some((code, reason)) = close
                            .clone()
                            .filter(|(c, _)| !frame::is_orderly_close(Some(*c)))
                        {
                            return Err(SpliceError::Relay(WsError::Aborted { code, reason }));
                        }
                        shutdown_quietly(tcp).await;
                        return Ok((total, close));
                    }
                    _ => {}
                }
            }
            _ => {
                while ws.fill_payload().await.map_err(ws_err)? > 0 {
                    let chunk = ws.payload();
                    let n = chunk.len();
                    tcp.write_all(chunk).await.map_err(SpliceError::Tcp)?;
                    ws.consume(n);
                    total += n as u64;
                }
                if !ws.has_buffered() {
                    tcp.flush().await.map_err(SpliceError::Tcp)?;
                }
            }
        }
    }
}

fn relay(e: io::Error) -> SpliceError {
    SpliceError::Relay(WsError::Io(e))
}

async fn shutdown_quietly<TW: AsyncWrite + Unpin>(tcp: &mut TW) {
    if let Err(e) = tcp.shutdown().await {
        if e.kind() != io::ErrorKind::NotConnected {
            tracing::debug!(error = %e, "TCP shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::Message;

    #[tokio::test]
    async fn both_directions_with_half_close_and_ping() {
        // ws_client <-> ws_server (the "broker"), tcp_app <-> tcp_side.
        let (ws_client, ws_server) = tokio::io::duplex(1 << 20);
        let (tcp_side, mut tcp_app) = tokio::io::duplex(1 << 20);
        let (cr, cw) = tokio::io::split(ws_client);
        let (tr, tw) = tokio::io::split(tcp_side);
        let task = tokio::spawn(splice(
            (
                WsReader::new(cr, Role::Client, 4096),
                WsWriter::new(cw, Role::Client),
            ),
            (tr, tw),
        ));
        let (sr, sw) = tokio::io::split(ws_server);
        let mut server_r = WsReader::new(sr, Role::Server, 4096);
        let mut server_w = WsWriter::new(sw, Role::Server);

        // TCP → WebSocket, then TCP end of stream → Close.
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        tcp_app.write_all(&payload).await.unwrap();
        tcp_app.shutdown().await.unwrap();
        let mut got = Vec::new();
        loop {
            match server_r.message(1 << 20).await.unwrap().unwrap() {
                Message::Binary(b) => got.extend(b),
                Message::Close(c) => {
                    assert_eq!(c.map(|c| c.0), Some(1000));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, payload);

        // The other direction still flows after that half-close; a ping is answered.
        server_w.send(true, OpCode::Ping, b"p").await.unwrap();
        server_w
            .send(true, OpCode::Binary, b"late reply")
            .await
            .unwrap();
        server_w.close(1000, "").await.unwrap();
        let mut back = Vec::new();
        tcp_app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late reply");
        let spliced = task.await.unwrap().unwrap();
        assert_eq!(
            spliced,
            Spliced {
                to_ws: 200_000,
                to_tcp: 10,
                close: Some((1000, String::new())),
            }
        );
    }

    type Duplex = tokio::io::DuplexStream;
    type Peer = (
        tokio::task::JoinHandle<Result<Spliced, SpliceError>>,
        WsReader<tokio::io::ReadHalf<Duplex>>,
        WsWriter<tokio::io::WriteHalf<Duplex>>,
    );

    /// A splice whose WebSocket peer is the returned server reader and writer, and whose TCP
    /// side is `tcp`.
    fn spliced_with<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(tcp: T) -> Peer {
        let (ws_client, ws_server) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(ws_client);
        let task = tokio::spawn(splice(
            (
                WsReader::new(cr, Role::Client, 4096),
                WsWriter::new(cw, Role::Client),
            ),
            tokio::io::split(tcp),
        ));
        let (sr, sw) = tokio::io::split(ws_server);
        (
            task,
            WsReader::new(sr, Role::Server, 4096),
            WsWriter::new(sw, Role::Server),
        )
    }

    #[tokio::test]
    async fn a_close_other_than_1000_or_a_lost_connection_is_an_abort() {
        for code in [1001u16, 1011, 4000] {
            let (tcp_side, _tcp_app) = tokio::io::duplex(1 << 16);
            let (task, _r, mut w) = spliced_with(tcp_side);
            w.send(true, OpCode::Binary, b"partial").await.unwrap();
            w.close(code, "cut").await.unwrap();
            match task.await.unwrap() {
                Err(SpliceError::Relay(WsError::Aborted { code: c, reason })) => {
                    assert_eq!((c, reason.as_str()), (code, "cut"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let (tcp_side, _tcp_app) = tokio::io::duplex(1 << 16);
        let (task, r, mut w) = spliced_with(tcp_side);
        w.send(true, OpCode::Binary, b"partial").await.unwrap();
        w.shutdown().await.unwrap();
        drop((r, w));
        assert!(matches!(
            task.await.unwrap(),
            Err(SpliceError::Relay(WsError::ConnectionLost))
        ));
    }

    /// A TCP side whose reads fail with a reset.
    struct Reset;

    impl AsyncRead for Reset {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Reset {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_tcp_reset_goes_out_as_a_close_1011() {
        let (task, mut r, _w) = spliced_with(Reset);
        assert!(matches!(task.await.unwrap(), Err(SpliceError::Tcp(_))));
        match r.message(1024).await.unwrap() {
            Some(Message::Close(Some((code, reason)))) => {
                assert_eq!(code, 1011);
                assert!(reason.contains("reset"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
