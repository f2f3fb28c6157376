//! Frame-level writing. As a client every frame is masked with a fresh random key (copied
//! through a scratch buffer, since the caller's bytes are borrowed); as a server frames go out
//! unmasked and large payloads are written straight from the caller's buffer.

use std::io;

use relay_core::frame::{self, FrameHeader, MAX_HEADER_LEN, OpCode, apply_mask};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::Role;

/// Payloads up to this size are copied next to their header so the frame leaves in one write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Writes frames to `W`.
#[derive(Debug)]
pub struct WsWriter<W> {
    pub(crate) io: W,
    pub(crate) role: Role,
    pub(crate) scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// A writer for the given role.
    pub fn new(io: W, role: Role) -> Self {
        Self {
            io,
            role,
            scratch: Vec::new(),
        }
    }

    /// Writes one whole frame (not flushed).
    pub async fn send(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        match self.role {
            Role::Server => {
                self.start_frame(FrameHeader::new(fin, opcode, payload.len() as u64), payload)
                    .await
            }
            Role::Client => {
                let key: [u8; 4] = rand::random();
                let header = FrameHeader {
                    fin,
                    opcode,
                    mask: Some(key),
                    payload_len: payload.len() as u64,
                };
                self.scratch.clear();
                push_header(&mut self.scratch, &header);
                let mut offset = 0u64;
                for chunk in payload.chunks(COALESCE_LIMIT) {
                    let at = self.scratch.len();
                    self.scratch.extend_from_slice(chunk);
                    apply_mask(&mut self.scratch[at..], key, offset);
                    offset += chunk.len() as u64;
                    self.io.write_all(&self.scratch).await?;
                    self.scratch.clear();
                }
                if !self.scratch.is_empty() {
                    self.io.write_all(&self.scratch).await?;
                }
                Ok(())
            }
        }
    }

    /// Writes an unmasked frame header followed by the first part of its payload; the rest
    /// follows with [`WsWriter::write_raw`]. Server role only (relayed frames).
    pub async fn start_frame(&mut self, header: FrameHeader, first: &[u8]) -> io::Result<()> {
        debug_assert!(header.mask.is_none());
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut h);
        if first.len() <= COALESCE_LIMIT {
            self.scratch.clear();
            self.scratch.extend_from_slice(&h[..n]);
            self.scratch.extend_from_slice(first);
            self.io.write_all(&self.scratch).await
        } else {
            // One vectored write instead of a tiny header packet (TCP_NODELAY is on).
            write_all_vectored(&mut self.io, &h[..n], first).await
        }
    }

    /// Writes payload bytes of a frame already started.
    pub async fn write_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.io.write_all(data).await
    }

    /// Flushes the transport (needed with TLS).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }

    /// Sends a Close frame with `code` and `reason`, and flushes.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        self.send(true, OpCode::Close, &frame::close_payload(code, reason))
            .await?;
        self.flush().await
    }

    /// Sends a text message and flushes.
    pub async fn text(&mut self, text: &str) -> io::Result<()> {
        self.send(true, OpCode::Text, text.as_bytes()).await?;
        self.flush().await
    }

    /// Shuts the transport's write side (TCP FIN or TLS close_notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

/// Writes `head` then `body`, vectored where the transport supports it.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut head: &[u8],
    mut body: &[u8],
) -> io::Result<()> {
    while !head.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    io.write_all(body).await
}

/// Appends an encoded header.
pub(crate) fn push_header(out: &mut Vec<u8>, header: &FrameHeader) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.extend_from_slice(&h[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WsReader;

    #[tokio::test]
    async fn client_frames_read_back_by_a_server() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = WsWriter::new(a, Role::Client);
        let big = vec![42u8; 100_000];
        w.send(true, OpCode::Binary, &big).await.unwrap();
        w.close(4000, "bye").await.unwrap();
        let mut r = WsReader::new(b, Role::Server, 4096);
        let h = r.header().await.unwrap().unwrap();
        assert_eq!(h.payload_len, 100_000);
        let mut got = Vec::new();
        r.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, big);
        assert_eq!(r.header().await.unwrap().unwrap().opcode, OpCode::Close);
        got.clear();
        r.read_small_payload(&mut got).await.unwrap();
        assert_eq!(frame::parse_close(&got).unwrap(), Some((4000, "bye")));
    }
}
