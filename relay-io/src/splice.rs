//! Splices a client WebSocket and a TCP stream without intermediate copies: TCP bytes are
//! read into a buffer that leaves room for the frame header in front, masked in place and
//! written as one contiguous frame; WebSocket payload is written to TCP straight from the
//! frame reader's buffer. End of stream on TCP becomes a Close (a half-close: the other
//! direction keeps flowing); the peer's Close becomes a TCP write shutdown. Pings are answered.

use std::io;

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

/// Runs until both directions have ended. `ws` is a client-role reader and writer.
pub async fn splice<R, W, TR, TW>(
    ws: (WsReader<R>, WsWriter<W>),
    tcp: (TR, TW),
) -> Result<Spliced, WsError>
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
    let (to_ws, (to_tcp, close)) = tokio::try_join!(
        tcp_to_ws(&mut tcp_read, &mut ws_write, pongs_rx),
        ws_to_tcp(&mut ws_read, &mut tcp_write, pongs_tx)
    )?;
    Ok(Spliced {
        to_ws,
        to_tcp,
        close,
    })
}

async fn tcp_to_ws<TR, W>(
    tcp: &mut TR,
    ws: &mut WsWriter<W>,
    mut pongs: mpsc::Receiver<Vec<u8>>,
) -> Result<u64, WsError>
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
                        ws.send(true, OpCode::Pong, &payload).await?;
                        ws.flush().await?;
                    }
                    None => pongs_open = false,
                }
                continue;
            }
            n = tcp.read(&mut buf[MAX_HEADER_LEN..]) => n?,
        };
        if n == 0 {
            ws.close(close_code::NORMAL, "").await?;
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
        ws.write_raw(&buf[start..MAX_HEADER_LEN + n]).await?;
        ws.flush().await?;
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
) -> Result<(u64, Option<(u16, String)>), WsError>
where
    R: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        let Some(header) = ws.header().await? else {
            tcp.shutdown().await?;
            return Ok((total, None));
        };
        match header.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                let mut payload = Vec::new();
                ws.read_small_payload(&mut payload).await?;
                match header.opcode {
                    OpCode::Ping => {
                        let _ = pongs.try_send(payload);
                    }
                    OpCode::Close => {
                        let close = frame::parse_close(&payload)?.map(|(c, r)| (c, r.to_owned()));
                        shutdown_quietly(tcp).await;
                        return Ok((total, close));
                    }
                    _ => {}
                }
            }
            _ => {
                while ws.fill_payload().await? > 0 {
                    let chunk = ws.payload();
                    let n = chunk.len();
                    tcp.write_all(chunk).await?;
                    ws.consume(n);
                    total += n as u64;
                }
                if !ws.has_buffered() {
                    tcp.flush().await?;
                }
            }
        }
    }
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
}
