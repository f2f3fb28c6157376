//! RFC 6455 framing without IO: frame headers, masking, close payloads and the upgrade key.
//!
//! The broker relays *frames*, not messages, so it only ever needs a header parser and a
//! masking routine that works on a payload in pieces (`offset` says where a piece starts).
//! No extension is ever negotiated, so any RSV bit is a protocol error.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Longest possible frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The GUID that RFC 6455 §1.3 mixes into `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A frame opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// Continues a fragmented text or binary message.
    Continuation,
    /// First frame of a text message.
    Text,
    /// First frame of a binary message.
    Binary,
    /// Close handshake.
    Close,
    /// Ping; the receiver answers with a pong carrying the same payload.
    Ping,
    /// Pong; may also be sent unsolicited as a keep-alive.
    Pong,
}

impl OpCode {
    /// Whether this is a control opcode (close, ping, pong).
    #[must_use]
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }

    fn from_bits(bits: u8) -> Result<Self, FrameError> {
        Ok(match bits {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            other => return Err(FrameError::UnknownOpCode(other)),
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }
}

/// A violation of RFC 6455 framing. Each one closes the connection with 1002.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// An RSV bit was set although no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// The opcode is not defined by RFC 6455.
    #[error("unknown opcode {0}")]
    UnknownOpCode(u8),
    /// A control frame was fragmented or longer than 125 bytes.
    #[error("malformed control frame")]
    BadControlFrame,
    /// The 64-bit length had its most significant bit set.
    #[error("payload length out of range")]
    BadLength,
    /// A client sent an unmasked frame, or a server a masked one.
    #[error("frame masking does not match the sender's role")]
    BadMasking,
    /// A close payload was one byte long, or carried an invalid code.
    #[error("malformed close payload")]
    BadClose,
    /// A text message was not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A continuation frame without a message to continue, or a new message before the
    /// previous one ended.
    #[error("unexpected continuation or interleaved data message")]
    BadFragment,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Masking key; clients must set one, servers must not.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// An unmasked header, as a server sends.
    #[must_use]
    pub fn new(fin: bool, opcode: OpCode, payload_len: u64) -> Self {
        Self {
            fin,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Parses a header from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// otherwise returns the header and its encoded length.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut used) = match b1 & 0x7f {
            126 => match rest {
                [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
                _ => return Ok(None),
            },
            127 => match rest.get(..8) {
                Some(bytes) => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(bytes);
                    (u64::from_be_bytes(len), 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if payload_len >> 63 != 0 {
            return Err(FrameError::BadLength);
        }
        if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
            return Err(FrameError::BadControlFrame);
        }
        let mask = if masked {
            let Some(key) = buf.get(used..used + 4) else {
                return Ok(None);
            };
            used += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some((
            Self {
                fin,
                opcode,
                mask,
                payload_len,
            },
            used,
        )))
    }

    /// Encodes the header into `out` and returns the number of bytes written.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = u8::from(self.fin) << 7 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut used = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[used..used + 4].copy_from_slice(&key);
            used += 4;
        }
        used
    }
}

/// XORs `buf` with the masking key, where `buf` starts `offset` bytes into the payload.
///
/// Runs eight bytes at a time; this is on the per-frame hot path of the relay.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let key = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Builds a close payload: a big-endian code then a UTF-8 reason, cut to fit 125 bytes.
#[must_use]
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_CONTROL_PAYLOAD as usize);
    out.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// Parses a close payload. An empty payload means "no status" (`None`).
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::BadClose)?;
            if is_valid_close_code(code) {
                Ok(Some((code, reason)))
            } else {
                Err(FrameError::BadClose)
            }
        }
    }
}

/// Close codes a peer may send on the wire (RFC 6455 §7.4).
#[must_use]
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Computes `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
#[must_use]
pub fn accept_key(client_key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a peer's Close ends a stream in order: code 1000, or no code at all (an empty
/// Close, which browsers report as 1005). Any other code is an abort, and so is a connection
/// lost without a Close: a byte stream relayed over WebSocket must never turn those into a
/// clean end of stream.
#[must_use]
pub fn is_orderly_close(code: Option<u16>) -> bool {
    matches!(code, None | Some(close_code::NORMAL))
}

/// Close codes the relay itself uses.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away: hybrid connection removed, peer gone, broker shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: malformed frames.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Policy violation: token expired or renewal refused.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message exceeded a limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal error; also what our tools send when their local TCP side was reset, so
    /// the far end aborts too.
    pub const INTERNAL_ERROR: u16 = 1011;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_roundtrip_all_length_forms() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = FrameHeader {
                    fin: len % 2 == 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut out);
                assert_eq!(FrameHeader::parse(&out[..n]), Ok(Some((h, n))));
                // Every strict prefix asks for more bytes instead of failing.
                for cut in 0..n {
                    assert_eq!(
                        FrameHeader::parse(&out[..cut]),
                        Ok(None),
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_garbage_headers() {
        assert_eq!(
            FrameHeader::parse(&[0xf2, 0x00]),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            FrameHeader::parse(&[0x83, 0x00]),
            Err(FrameError::UnknownOpCode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x09, 0x00]),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 126, 0, 200]),
            Err(FrameError::BadControlFrame)
        );
        let mut huge = [0u8; 10];
        huge[0] = 0x82;
        huge[1] = 127;
        huge[2] = 0x80;
        assert_eq!(FrameHeader::parse(&huge), Err(FrameError::BadLength));
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let mut offset = 0;
        for size in [1usize, 3, 8, 13, 64, 911] {
            let end = (offset + size).min(pieces.len());
            apply_mask(&mut pieces[offset..end], key, offset as u64);
            offset = end;
        }
        assert_eq!(whole, pieces);
        for (i, (m, d)) in whole.iter().zip(&data).enumerate() {
            assert_eq!(*m, d ^ key[i % 4]);
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(
            parse_close(&close_payload(4000, "bye")),
            Ok(Some((4000, "bye")))
        );
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[3]), Err(FrameError::BadClose));
        assert_eq!(
            parse_close(&close_payload(1005, "")),
            Err(FrameError::BadClose)
        );
        let long = "é".repeat(100);
        let p = close_payload(1000, &long);
        assert!(p.len() <= 125);
        assert!(parse_close(&p).is_ok());
    }
}
