//! Whole-message reads, for control traffic where messages are small and bounded.
//! Data relaying never uses this: it moves frames.

use relay_core::frame::{self, FrameError, OpCode};
use tokio::io::AsyncRead;

use crate::{WsError, WsReader};

/// One WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8 checked).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping; the caller should answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong, solicited or not.
    Pong(Vec<u8>),
    /// A close frame with its code and reason, if any.
    Close(Option<(u16, String)>),
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// Reads the next message, reassembling fragments up to `limit` bytes. Control frames
    /// that arrive between fragments are returned at once; the partial message is kept.
    /// `Ok(None)` is a clean end of stream.
    pub async fn message(&mut self, limit: usize) -> Result<Option<Message>, WsError> {
        loop {
            let Some(header) = self.header().await? else {
                return if self.partial.is_some() {
                    Err(WsError::UnexpectedEof)
                } else {
                    Ok(None)
                };
            };
            if header.opcode.is_control() {
                let mut payload = Vec::with_capacity(header.payload_len as usize);
                self.read_small_payload(&mut payload).await?;
                return Ok(Some(match header.opcode {
                    OpCode::Ping => Message::Ping(payload),
                    OpCode::Pong => Message::Pong(payload),
                    _ => Message::Close(
                        frame::parse_close(&payload)?.map(|(c, r)| (c, r.to_owned())),
                    ),
                }));
            }
            let (kind, mut data) = match (header.opcode, self.partial.take()) {
                (OpCode::Continuation, Some(partial)) => partial,
                (OpCode::Text | OpCode::Binary, None) => (header.opcode, Vec::new()),
                _ => return Err(FrameError::BadFragment.into()),
            };
            if data.len() as u64 + header.payload_len > limit as u64 {
                return Err(WsError::MessageTooBig(limit));
            }
            data.reserve(header.payload_len as usize);
            while self.fill_payload().await? > 0 {
                data.extend_from_slice(self.payload());
                let n = self.payload().len();
                self.consume(n);
            }
            if !header.fin {
                self.partial = Some((kind, data));
                continue;
            }
            return Ok(Some(match kind {
                OpCode::Text => {
                    Message::Text(String::from_utf8(data).map_err(|_| FrameError::InvalidUtf8)?)
                }
                _ => Message::Binary(data),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, WsWriter};

    #[tokio::test]
    async fn fragments_with_interleaved_ping_and_limit() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = WsWriter::new(a, Role::Client);
        w.send(false, OpCode::Text, b"hel").await.unwrap();
        w.send(true, OpCode::Ping, b"p").await.unwrap();
        w.send(true, OpCode::Continuation, b"lo").await.unwrap();
        w.send(true, OpCode::Binary, &[0u8; 100]).await.unwrap();
        w.send(true, OpCode::Continuation, b"stray").await.unwrap();
        let mut r = WsReader::new(b, Role::Server, 512);
        assert_eq!(
            r.message(64).await.unwrap(),
            Some(Message::Ping(b"p".to_vec()))
        );
        assert_eq!(
            r.message(64).await.unwrap(),
            Some(Message::Text("hello".into()))
        );
        assert!(matches!(
            r.message(64).await,
            Err(WsError::MessageTooBig(64))
        ));
    }
}
