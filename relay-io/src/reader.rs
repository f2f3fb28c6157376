//! Frame-level reading from a fixed buffer, unmasking in place.
//!
//! The reader never allocates after construction: payload bytes are handed out as slices of
//! its buffer (`payload`), so a relay copies each byte once, socket to socket. All state
//! lives in the struct, so every `poll_*` method is cancel-safe.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use relay_core::frame::{FrameError, FrameHeader, OpCode, apply_mask};
use tokio::io::{AsyncRead, ReadBuf};

use crate::{Role, WsError};

/// Default read buffer: large enough for interactive traffic, small enough per connection.
pub const DEFAULT_BUFFER: usize = 64 * 1024;
/// What a busy data stream's buffer grows to (see [`WsReader::grow_when_busy`]): a quarter
/// of the system calls per byte of a 64 KiB one.
pub const BULK_BUFFER: usize = 256 * 1024;
/// Reads that fill the whole buffer before it grows.
const FULL_READS_TO_GROW: u8 = 2;

/// Reads frames from `R`.
pub struct WsReader<R> {
    io: R,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Of those, the first `ready` are unmasked payload of the current frame.
    ready: usize,
    /// Payload bytes of the current frame not yet in `ready`.
    remaining: u64,
    /// Payload bytes of the current frame already unmasked (the masking offset).
    offset: u64,
    mask: Option<[u8; 4]>,
    /// Bytes of the last header read, still in the buffer before `start`.
    header_len: usize,
    /// Capacity to grow to once reads keep filling the buffer; 0 = fixed.
    grow_to: usize,
    full_reads: u8,
    role: Role,
    /// A fragmented data message being assembled by [`WsReader::message`].
    pub(crate) partial: Option<(OpCode, Vec<u8>)>,
}

impl<R> std::fmt::Debug for WsReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader")
            .field("role", &self.role)
            .field("capacity", &self.buf.len())
            .field("buffered", &(self.end - self.start))
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// A reader for the given role with a buffer of `capacity` bytes (at least 256).
    pub fn new(io: R, role: Role, capacity: usize) -> Self {
        Self::with_prefix(io, role, capacity, &[])
    }

    /// Like [`WsReader::new`], starting with bytes already read from `io` (after a handshake).
    pub fn with_prefix(io: R, role: Role, capacity: usize, prefix: &[u8]) -> Self {
        let mut buf = vec![0u8; capacity.max(256).max(prefix.len())].into_boxed_slice();
        buf[..prefix.len()].copy_from_slice(prefix);
        Self {
            io,
            buf,
            start: 0,
            end: prefix.len(),
            ready: 0,
            remaining: 0,
            offset: 0,
            mask: None,
            header_len: 0,
            grow_to: 0,
            full_reads: 0,
            role,
            partial: None,
        }
    }

    /// Replaces the buffer with one of `capacity` bytes (at least 256, and at least what is
    /// buffered), keeping unread bytes: a socket parked with a small buffer grows it when it
    /// starts carrying data.
    pub fn set_capacity(&mut self, capacity: usize) {
        let held = self.end - self.start;
        let mut buf = vec![0u8; capacity.max(256).max(held)].into_boxed_slice();
        buf[..held].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = buf;
        self.start = 0;
        self.end = held;
    }

    /// Lets the buffer grow to `max` bytes once reads keep filling it: a bulk transfer then
    /// costs fewer system calls, while interactive and idle streams keep the small buffer.
    pub fn grow_when_busy(&mut self, max: usize) {
        self.grow_to = max;
    }

    /// Puts the header just read back, as if it had not been read, so a caller that looked
    /// at a frame and chose not to take it leaves it intact for the next reader. Only valid
    /// right after [`WsReader::header`], before any of the payload; false otherwise.
    pub fn unread_header(&mut self) -> bool {
        let untouched = self.ready == 0 && self.offset == 0 && self.header_len > 0;
        if !untouched || self.start < self.header_len {
            return false;
        }
        self.start -= self.header_len;
        self.header_len = 0;
        self.remaining = 0;
        self.mask = None;
        true
    }

    /// Whether unread bytes are buffered (so a writer may delay its flush).
    pub fn has_buffered(&self) -> bool {
        self.end > self.start
    }

    /// Payload bytes of the current frame not yet made available by
    /// [`WsReader::poll_payload`]: 0 once the last piece is in [`WsReader::payload`].
    pub fn payload_remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the current frame's payload has been fully consumed.
    pub fn frame_done(&self) -> bool {
        self.ready == 0 && self.remaining == 0
    }

    /// Reads the next frame header. `Ok(None)` is a clean end of stream between frames.
    /// Any unread payload of the previous frame is skipped first.
    pub fn poll_header(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<FrameHeader>, WsError>> {
        while !self.frame_done() {
            if ready!(self.poll_payload(cx))? == 0 {
                break;
            }
            self.consume(self.ready);
        }
        loop {
            if let Some((header, used)) = FrameHeader::parse(&self.buf[self.start..self.end])? {
                self.start += used;
                self.header_len = used;
                self.check_mask(&header)?;
                self.remaining = header.payload_len;
                self.offset = 0;
                self.mask = header.mask;
                return Poll::Ready(Ok(Some(header)));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(if self.has_buffered() {
                    Err(WsError::UnexpectedEof)
                } else {
                    Ok(None)
                });
            }
        }
    }

    /// Makes some payload of the current frame available through [`WsReader::payload`] and
    /// returns how much; 0 means the frame's payload is complete.
    pub fn poll_payload(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, WsError>> {
        if self.ready > 0 || self.remaining == 0 {
            return Poll::Ready(Ok(self.ready));
        }
        if !self.has_buffered() && ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(WsError::UnexpectedEof));
        }
        let n = (self.end - self.start).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if let Some(key) = self.mask {
            apply_mask(&mut self.buf[self.start..self.start + n], key, self.offset);
        }
        self.ready = n;
        self.remaining -= n as u64;
        self.offset += n as u64;
        Poll::Ready(Ok(n))
    }

    /// The payload bytes made available by the last [`WsReader::poll_payload`], unmasked.
    pub fn payload(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.ready]
    }

    /// Marks `n` bytes of [`WsReader::payload`] as used.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.ready);
        self.start += n;
        self.ready -= n;
    }

    /// Async form of [`WsReader::poll_header`].
    pub async fn header(&mut self) -> Result<Option<FrameHeader>, WsError> {
        poll_fn(|cx| self.poll_header(cx)).await
    }

    /// Async form of [`WsReader::poll_payload`].
    pub async fn fill_payload(&mut self) -> Result<usize, WsError> {
        poll_fn(|cx| self.poll_payload(cx)).await
    }

    /// Reads the whole payload of the current frame into `out`, which must be large enough
    /// (used for control frames, at most 125 bytes).
    pub async fn read_small_payload(&mut self, out: &mut Vec<u8>) -> Result<(), WsError> {
        while self.fill_payload().await? > 0 {
            out.extend_from_slice(self.payload());
            self.consume(self.ready);
        }
        Ok(())
    }

    fn check_mask(&self, header: &FrameHeader) -> Result<(), FrameError> {
        let expect_masked = self.role == Role::Server;
        if header.mask.is_some() == expect_masked {
            Ok(())
        } else {
            Err(FrameError::BadMasking)
        }
    }

    /// Reads more bytes from the transport, compacting the buffer when it is full.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.end;
        let mut read_buf = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read_buf))?;
        let n = read_buf.filled().len();
        self.end += n;
        if n == room && self.buf.len() < self.grow_to {
            self.full_reads += 1;
            if self.full_reads >= FULL_READS_TO_GROW {
                self.set_capacity(self.grow_to);
            }
        }
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use relay_core::frame::MAX_HEADER_LEN;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn masked_frame(fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader {
            fin,
            opcode,
            mask: Some(key),
            payload_len: payload.len() as u64,
        };
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut h);
        let mut out = h[..n].to_vec();
        let mut body = payload.to_vec();
        apply_mask(&mut body, key, 0);
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn reads_frames_split_at_every_byte() {
        let payload: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let mut wire = masked_frame(false, OpCode::Binary, &payload, [9, 8, 7, 6]);
        wire.extend(masked_frame(
            true,
            OpCode::Continuation,
            b"end",
            [1, 2, 3, 4],
        ));
        let (mut tx, rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            for byte in wire {
                tx.write_all(&[byte]).await.unwrap();
            }
        });
        let mut reader = WsReader::new(rx, Role::Server, 256);
        let mut got = Vec::new();
        let h = reader.header().await.unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len),
            (false, OpCode::Binary, 600)
        );
        reader.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, payload);
        let h = reader.header().await.unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Continuation);
        got.clear();
        reader.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, b"end");
        assert!(reader.header().await.unwrap().is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn growing_the_buffer_keeps_what_was_read_ahead() {
        let payload: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = masked_frame(true, OpCode::Text, b"first", [3, 1, 4, 1]);
        wire.extend(masked_frame(true, OpCode::Binary, &payload, [5, 9, 2, 6]));
        let mut reader = WsReader::new(&wire[..], Role::Server, 300);
        reader.header().await.unwrap().unwrap();
        let mut got = Vec::new();
        reader.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, b"first");
        // The next frame's first bytes are already buffered when the buffer grows.
        assert!(reader.has_buffered());
        reader.set_capacity(64 * 1024);
        let h = reader.header().await.unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len), (OpCode::Binary, 2000));
        got.clear();
        reader.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn an_unread_header_is_read_again_with_its_payload() {
        let mut wire = masked_frame(true, OpCode::Binary, b"payload", [7, 7, 1, 2]);
        wire.extend(masked_frame(true, OpCode::Close, &[3, 232], [1, 2, 3, 4]));
        let mut reader = WsReader::new(&wire[..], Role::Server, 256);
        let first = reader.header().await.unwrap().unwrap();
        assert!(reader.unread_header());
        assert!(!reader.unread_header(), "only once");
        assert_eq!(reader.header().await.unwrap().unwrap(), first);
        let mut got = Vec::new();
        reader.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, b"payload");
        assert!(!reader.unread_header(), "not after the payload");
        let close = reader.header().await.unwrap().unwrap();
        assert_eq!(close.opcode, OpCode::Close);
    }

    #[tokio::test]
    async fn a_busy_stream_grows_its_buffer_and_an_idle_one_does_not() {
        let payload = vec![5u8; 20_000];
        let wire = masked_frame(true, OpCode::Binary, &payload, [1, 2, 3, 4]);
        let mut busy = WsReader::new(&wire[..], Role::Server, 1024);
        busy.grow_when_busy(8192);
        busy.header().await.unwrap().unwrap();
        let mut got = Vec::new();
        busy.read_small_payload(&mut got).await.unwrap();
        assert_eq!(got, payload);
        assert_eq!(busy.buf.len(), 8192);

        let small = masked_frame(true, OpCode::Text, b"hi", [1, 2, 3, 4]);
        let mut idle = WsReader::new(&small[..], Role::Server, 1024);
        idle.grow_when_busy(8192);
        idle.header().await.unwrap().unwrap();
        assert_eq!(idle.buf.len(), 1024);
    }

    #[tokio::test]
    async fn unmasked_client_frame_is_a_protocol_error() {
        let wire = [0x82u8, 0x01, 0xff];
        let mut reader = WsReader::new(&wire[..], Role::Server, 256);
        assert!(matches!(
            reader.header().await,
            Err(WsError::Protocol(FrameError::BadMasking))
        ));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_reported() {
        let wire = masked_frame(true, OpCode::Binary, b"hello", [1, 1, 1, 1]);
        let mut reader = WsReader::new(&wire[..wire.len() - 2], Role::Server, 256);
        reader.header().await.unwrap();
        let mut got = Vec::new();
        assert!(matches!(
            reader.read_small_payload(&mut got).await,
            Err(WsError::UnexpectedEof)
        ));
        let mut reader = WsReader::new(&wire[..3], Role::Server, 256);
        assert!(matches!(reader.header().await, Err(WsError::UnexpectedEof)));
    }
}
