//! Relays frames from one WebSocket to another, both as clients (the listener between a
//! rendezvous and a local WebSocket backend): message types, message boundaries, pings,
//! pongs and the Close are passed on; payload is streamed from the reader's buffer and
//! re-masked for the writer, never gathered into whole messages.

use relay_core::frame::OpCode;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{WsError, WsReader, WsWriter};

/// Moves frames until the reader's Close (which is forwarded, whatever its code); returns the
/// payload bytes moved. A connection lost without a Close is passed on as a Close 1011 and
/// reported as [`WsError::ConnectionLost`].
pub async fn frames<R, W>(from: &mut WsReader<R>, to: &mut WsWriter<W>) -> Result<u64, WsError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        let Some(header) = from.header().await? else {
            // Lost without a Close: an abort, and the other side must see one too.
            let _ = to
                .close(
                    relay_core::frame::close_code::INTERNAL_ERROR,
                    "aborted: the peer's connection was lost",
                )
                .await;
            return Err(WsError::ConnectionLost);
        };
        if header.opcode.is_control() {
            let mut payload = Vec::new();
            from.read_small_payload(&mut payload).await?;
            to.send(true, header.opcode, &payload).await?;
            to.flush().await?;
            if header.opcode == OpCode::Close {
                return Ok(total);
            }
            continue;
        }
        if header.payload_len == 0 {
            to.send(header.fin, header.opcode, &[]).await?;
        }
        // A frame arrives in pieces; each goes out as its own fragment, the first with the
        // frame's opcode and the rest as continuations (RFC 6455 §5.4 lets intermediaries
        // refragment).
        let mut opcode = header.opcode;
        while from.fill_payload().await? > 0 {
            let last = from.payload_remaining() == 0;
            let chunk = from.payload();
            let n = chunk.len();
            to.send(header.fin && last, opcode, chunk).await?;
            from.consume(n);
            total += n as u64;
            opcode = OpCode::Continuation;
        }
        if !from.has_buffered() {
            to.flush().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Role};

    #[tokio::test]
    async fn passes_messages_pings_and_close() {
        // source server -> [client reader | pump | client writer] -> sink server
        let (src_client, src_server) = tokio::io::duplex(1 << 16);
        let (dst_client, dst_server) = tokio::io::duplex(1 << 16);
        let mut from = WsReader::new(src_client, Role::Client, 1024);
        let mut to = WsWriter::new(dst_client, Role::Client);
        let mut source = WsWriter::new(src_server, Role::Server);
        let mut sink = WsReader::new(dst_server, Role::Server, 1024);
        let task = tokio::spawn(async move { frames(&mut from, &mut to).await });
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        source.send(true, OpCode::Text, b"hello").await.unwrap();
        source
            .send(false, OpCode::Binary, &big[..4000])
            .await
            .unwrap();
        source
            .send(true, OpCode::Continuation, &big[4000..])
            .await
            .unwrap();
        source.send(true, OpCode::Ping, b"p").await.unwrap();
        source.close(1000, "bye").await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = sink.message(1 << 20).await.unwrap() {
            let end = matches!(m, Message::Close(_));
            got.push(m);
            if end {
                break;
            }
        }
        assert!(matches!(&got[0], Message::Text(t) if t == "hello"));
        assert!(matches!(&got[1], Message::Binary(b) if *b == big));
        assert!(matches!(&got[2], Message::Ping(p) if p == b"p"));
        assert!(matches!(&got[3], Message::Close(Some((1000, r))) if r == "bye"));
        assert_eq!(task.await.unwrap().unwrap(), 10_005);
    }
}
