//! Control messages from listeners and brokers: decoding never panics, the size bound holds,
//! and whatever decodes encodes to JSON that decodes to the same message (headers included,
//! repeated ones as arrays). Header names are case-insensitive (RFC 9110 §5.1): names that
//! differ only in case travel as one repeated header, so the round trip is exact up to that
//! spelling, and encoding is a fixed point after it. Standby replies too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::control::{ControlError, ListenerCommand};

const LIMIT: usize = relay_core::limits::MAX_CONTROL_MESSAGE_BYTES;

fuzz_target!(|data: &[u8]| {
    match ListenerCommand::decode(data, LIMIT) {
        Ok(command) => {
            let text = command.encode();
            let again = ListenerCommand::decode(text.as_bytes(), usize::MAX)
                .expect("an encoded message decodes");
            assert_eq!(
                again.encode(),
                text,
                "encoding is a fixed point after one round trip"
            );
            assert_eq!(spelled_alike(&again), spelled_alike(&command), "round trip");
            if let ListenerCommand::Request(r) = &command {
                if let Some(h) = &r.request_headers {
                    let folded = h.folded();
                    assert!(folded.0.len() <= h.0.len());
                }
            }
        }
        Err(ControlError::TooLarge(n)) => assert!(n > LIMIT),
        Err(_) => {}
    }
    let _ = relay_core::standby::StandbyReply::decode(data);
});

/// The command with every header name in lower case and the lines in name order (values of
/// one name keep theirs): what HTTP treats as the same headers.
fn spelled_alike(command: &ListenerCommand) -> String {
    let normal = |h: &relay_core::control::Headers| {
        let mut lines: Vec<(String, String)> =
            h.0.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        relay_core::control::Headers(lines)
    };
    let mut command = command.clone();
    match &mut command {
        ListenerCommand::Request(r) => {
            if let Some(h) = &mut r.request_headers {
                *h = normal(h);
            }
        }
        ListenerCommand::Response(r) => r.response_headers = normal(&r.response_headers),
        ListenerCommand::Accept(a) => a.connect_headers = normal(&a.connect_headers),
        _ => {}
    }
    format!("{command:?}")
}
