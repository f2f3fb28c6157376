//! Control messages from listeners and brokers: decoding never panics, the size bound holds,
//! and whatever decodes encodes to JSON that decodes to the same message (headers included,
//! repeated ones as arrays). Standby replies too.
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
            assert_eq!(again, command, "round trip");
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
