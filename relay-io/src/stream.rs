//! Binary WebSocket messages as a byte stream.
//!
//! Reading yields the payload of every data message in order (text too, as bytes); the
//! peer's Close 1000 (or an empty Close) is end of stream. Any other Close code is an error of
//! kind `ConnectionAborted`, and a connection lost without a Close one of kind
//! `ConnectionReset`: an aborted stream never reads as a complete one. Writing sends each
//! write as one binary message; `shutdown` sends a Close 1000 and leaves the read side open,
//! so half-close works end to end; [`WsByteStream::close_with`] sends another code, which is
//! how an abort is passed on. Pings are answered with the next write or read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use relay_core::frame::{self, FrameHeader, OpCode, apply_mask};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::writer::push_header;
use crate::{Role, WsError, WsReader, WsWriter};

/// Largest payload put in one outgoing frame.
const MAX_WRITE_FRAME: usize = 64 * 1024;

/// A WebSocket carrying a byte stream.
#[derive(Debug)]
pub struct WsByteStream<R, W> {
    reader: WsReader<R>,
    writer: WsWriter<W>,
    /// Inside a data frame's payload.
    in_data: bool,
    /// Payload of the control frame being read.
    control: Option<(OpCode, Vec<u8>)>,
    /// The stream ended: `Some(None)` when the connection was lost without a Close,
    /// `Some(Some(..))` with the peer's Close code (1000 for an empty Close) and reason.
    peer_closed: Option<Option<(u16, String)>>,
    /// Bytes of `writer.scratch` already written.
    staged_pos: usize,
    /// Our Close is staged or sent.
    write_closed: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> WsByteStream<R, W> {
    /// Wraps an established WebSocket.
    pub fn new(mut reader: WsReader<R>, writer: WsWriter<W>) -> Self {
        // A byte stream carries data: let a bulk transfer grow its read buffer.
        reader.grow_when_busy(crate::reader::BULK_BUFFER);
        Self {
            reader,
            writer,
            in_data: false,
            control: None,
            peer_closed: None,
            staged_pos: 0,
            write_closed: false,
        }
    }

    /// The code and reason of the peer's Close, once end of stream was reached.
    pub fn close_status(&self) -> Option<(u16, &str)> {
        self.peer_closed
            .as_ref()
            .and_then(|c| c.as_ref())
            .map(|(c, r)| (*c, r.as_str()))
    }

    /// Gives back the frame reader and writer, for message-level use.
    pub fn into_parts(self) -> (WsReader<R>, WsWriter<W>) {
        (self.reader, self.writer)
    }

    /// Sends a Close with a chosen code (instead of `shutdown`'s 1000).
    pub async fn close_with(&mut self, code: u16, reason: &str) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        if !self.write_closed {
            self.write_closed = true;
            self.stage(OpCode::Close, &frame::close_payload(code, reason));
        }
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        self.writer.flush().await
    }

    fn stage(&mut self, opcode: OpCode, payload: &[u8]) {
        let scratch = &mut self.writer.scratch;
        if self.staged_pos >= scratch.len() {
            scratch.clear();
            self.staged_pos = 0;
        }
        let mask = (self.writer.role == Role::Client).then(rand::random::<[u8; 4]>);
        push_header(
            scratch,
            &FrameHeader {
                fin: true,
                opcode,
                mask,
                payload_len: payload.len() as u64,
            },
        );
        let at = scratch.len();
        scratch.extend_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut scratch[at..], key, 0);
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.staged_pos < self.writer.scratch.len() {
            let pending = &self.writer.scratch[self.staged_pos..];
            let n = ready!(Pin::new(&mut self.writer.io).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.staged_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the payload of a control frame; returns it once complete.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<Result<(OpCode, Vec<u8>), WsError>> {
        while ready!(self.reader.poll_payload(cx))? > 0 {
            let chunk = self.reader.payload();
            let len = chunk.len();
            if let Some((_, buf)) = self.control.as_mut() {
                buf.extend_from_slice(chunk);
            }
            self.reader.consume(len);
        }
        Poll::Ready(Ok(self
            .control
            .take()
            .unwrap_or((OpCode::Pong, Vec::new()))))
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), WsError>> {
        // Answer pings even when the application only reads.
        if self.staged_pos < self.writer.scratch.len() {
            let _ = self.poll_drain(cx)?;
        }
        loop {
            match &self.peer_closed {
                Some(None) => return Poll::Ready(Err(WsError::ConnectionLost)),
                Some(Some((code, reason))) if !frame::is_orderly_close(Some(*code)) => {
                    return Poll::Ready(Err(WsError::Aborted {
                        code: *code,
                        reason: reason.clone(),
                    }));
                }
                Some(Some(_)) => return Poll::Ready(Ok(())),
                None => {}
            }
            if self.in_data {
                let n = ready!(self.reader.poll_payload(cx))?;
                if n == 0 {
                    self.in_data = false;
                    continue;
                }
                let take = n.min(buf.remaining());
                buf.put_slice(&self.reader.payload()[..take]);
                self.reader.consume(take);
                return Poll::Ready(Ok(()));
            }
            if self.control.is_some() {
                let (opcode, payload) = ready!(self.poll_control(cx))?;
                match opcode {
                    OpCode::Ping if !self.write_closed => {
                        self.stage(OpCode::Pong, &payload);
                        let _ = self.poll_drain(cx)?;
                    }
                    OpCode::Close => {
                        // An empty Close is an orderly end, like 1000.
                        let status = frame::parse_close(&payload)?
                            .map_or((frame::close_code::NORMAL, String::new()), |(c, r)| {
                                (c, r.to_owned())
                            });
                        self.peer_closed = Some(Some(status));
                    }
                    _ => {}
                }
                continue;
            }
            match ready!(self.reader.poll_header(cx))? {
                None => {
                    self.peer_closed = Some(None);
                }
                Some(h) if h.opcode.is_control() => {
                    self.control = Some((h.opcode, Vec::with_capacity(h.payload_len as usize)));
                }
                Some(_) => self.in_data = true,
            }
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncRead for WsByteStream<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf).map_err(into_io)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncWrite for WsByteStream<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_WRITE_FRAME);
        this.stage(OpCode::Binary, &data[..n]);
        // Start sending now; what does not fit is finished by the next write or flush.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.writer.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.write_closed {
            this.write_closed = true;
            this.stage(
                OpCode::Close,
                &frame::close_payload(frame::close_code::NORMAL, ""),
            );
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.writer.io).poll_flush(cx)
    }
}

fn into_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        e @ (WsError::UnexpectedEof | WsError::ConnectionLost) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        e @ WsError::Aborted { .. } => io::Error::new(io::ErrorKind::ConnectionAborted, e),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::Message;

    #[tokio::test]
    async fn half_close_then_keep_reading() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client);
        let mut stream = WsByteStream::new(
            WsReader::new(cr, Role::Client, 1024),
            WsWriter::new(cw, Role::Client),
        );
        let (sr, sw) = tokio::io::split(server);
        let mut sreader = WsReader::new(sr, Role::Server, 1024);
        let mut swriter = WsWriter::new(sw, Role::Server);

        stream.write_all(b"request").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(
            sreader.message(1 << 10).await.unwrap(),
            Some(Message::Binary(b"request".to_vec()))
        );
        assert_eq!(
            sreader.message(1 << 10).await.unwrap(),
            Some(Message::Close(Some((1000, String::new()))))
        );

        // The server may still talk after our Close: that is the half-close.
        swriter.send(true, OpCode::Ping, b"hb").await.unwrap();
        swriter.send(false, OpCode::Binary, b"resp").await.unwrap();
        swriter
            .send(true, OpCode::Continuation, b"onse")
            .await
            .unwrap();
        swriter.close(1000, "bye").await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        assert_eq!(stream.close_status(), Some((1000, "bye")));
    }

    async fn ended_by(
        end: impl AsyncFnOnce(WsWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>),
    ) -> io::Result<Vec<u8>> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client);
        let mut stream = WsByteStream::new(
            WsReader::new(cr, Role::Client, 1024),
            WsWriter::new(cw, Role::Client),
        );
        let (_sr, sw) = tokio::io::split(server);
        let mut swriter = WsWriter::new(sw, Role::Server);
        swriter.send(true, OpCode::Binary, b"part").await.unwrap();
        swriter.flush().await.unwrap();
        end(swriter).await;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.map(|_| got)
    }

    #[tokio::test]
    async fn aborts_read_as_errors_never_as_end_of_stream() {
        let aborted = ended_by(async |mut w| w.close(1011, "reset").await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            aborted.kind(),
            io::ErrorKind::ConnectionAborted,
            "{aborted}"
        );
        let going = ended_by(async |mut w| w.close(1001, "").await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(going.kind(), io::ErrorKind::ConnectionAborted);
        // A connection lost without a Close: the transport ends (FIN) after the data.
        let lost = ended_by(async |mut w| w.shutdown().await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(lost.kind(), io::ErrorKind::ConnectionReset, "{lost}");
        let empty = ended_by(async |mut w| {
            w.send(true, OpCode::Close, &[]).await.unwrap();
            w.flush().await.unwrap();
        })
        .await
        .unwrap();
        assert_eq!(empty, b"part", "an empty Close is an orderly end");
    }
}
