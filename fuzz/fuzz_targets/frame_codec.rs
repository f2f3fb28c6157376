//! RFC 6455 frame headers, fed whole (coalesced) and in pieces (split at fuzzer-chosen
//! points): a prefix never yields a different header than the whole, the parser never reads
//! past what it was given, and a parsed header encodes back to the same bytes. Close
//! payloads parse or fail without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::frame::{FrameHeader, MAX_HEADER_LEN, parse_close};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut at = 0;
    while at < bytes.len() {
        let whole = FrameHeader::parse(&bytes[at..]);
        // Split input: every prefix is "need more" or the same answer as the whole.
        let cut = (usize::from(split) % MAX_HEADER_LEN).min(bytes.len() - at);
        let prefix = FrameHeader::parse(&bytes[at..at + cut]);
        if !matches!(prefix, Ok(None)) {
            assert_eq!(
                format!("{prefix:?}"),
                format!("{whole:?}"),
                "a prefix disagrees"
            );
        }
        let Ok(Some((header, used))) = whole else {
            break;
        };
        assert!(used <= MAX_HEADER_LEN && used <= bytes.len() - at);
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut out);
        assert_eq!(
            format!("{:?}", FrameHeader::parse(&out[..n])),
            format!("{:?}", Ok::<_, ()>(Some((header, n)))),
            "encode then parse"
        );
        // Take the payload, if the input holds it, and go on to the next frame (coalesced).
        let payload = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        let start = at + used;
        let end = start.saturating_add(payload).min(bytes.len());
        if header.opcode == relay_core::frame::OpCode::Close {
            let _ = parse_close(&bytes[start..end]);
        }
        at = end;
    }
});
