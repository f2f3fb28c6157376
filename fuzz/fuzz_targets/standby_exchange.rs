//! The standby exchange and early pairing's copy (relay_core::standby), driven by random
//! sequences of what the listener sends, sender frames and the passing of time. Checked:
//! no panic; an exchange decides once and never "accepts" before the receipt; deadlines
//! never move back; the copy stays within its bound; and no byte is both delivered through
//! the standby and replayed through the control channel.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::frame::OpCode;
use relay_core::standby::{
    EARLY_RETAINED_BYTES, EarlyCopy, Exchange, Heard, Kept, Next, StandbyReply,
};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let answer_within = Duration::from_millis(u64::from(data.first().copied().unwrap_or(0)) * 100);
    let mut exchange = Exchange::new(now, answer_within);
    let mut copy = EarlyCopy::default();
    let (mut decided, mut last_deadline, mut received_seen) = (false, exchange.deadline(), false);
    let (mut delivered_after_receipt, mut replayed) = (0usize, None::<usize>);
    for chunk in data.chunks(2).skip(1) {
        let (op, arg) = (chunk[0], chunk.get(1).copied().unwrap_or(0));
        let next = match op % 8 {
            0 => {
                Some(exchange.on_heard(Heard::Text(StandbyReply::Received {}.encode().as_bytes())))
            }
            1 => Some(
                exchange.on_heard(Heard::Text(
                    StandbyReply::Accepted { protocol: None }
                        .encode()
                        .as_bytes(),
                )),
            ),
            2 => Some(
                exchange.on_heard(Heard::Text(
                    StandbyReply::Rejected {
                        status_code: u16::from(arg) + 400,
                        status_description: "x".into(),
                    }
                    .encode()
                    .as_bytes(),
                )),
            ),
            3 => Some(exchange.on_heard(if arg % 2 == 0 {
                Heard::Closed
            } else {
                Heard::Other
            })),
            4 => {
                now += Duration::from_millis(u64::from(arg) * 20);
                Some(exchange.on_time(now))
            }
            5 | 6 => {
                let opcode = if arg % 17 == 0 {
                    OpCode::Ping
                } else {
                    OpCode::Binary
                };
                let len = usize::from(arg) * 700;
                if copy.may_forward(opcode, len as u64) {
                    assert!(replayed.is_none(), "nothing is forwarded after a replay");
                    assert!(!opcode.is_control());
                    if exchange.received() {
                        delivered_after_receipt += len;
                    }
                    copy.forwarded(Kept {
                        fin: true,
                        opcode,
                        payload: vec![0; len],
                    });
                }
                assert!(
                    copy.kept_bytes() <= EARLY_RETAINED_BYTES,
                    "the copy is bounded"
                );
                None
            }
            _ => {
                let frames = copy.replay();
                let bytes: usize = frames.iter().map(|k| k.payload.len()).sum();
                if exchange.received() {
                    assert_eq!(bytes, 0, "nothing is replayed after the receipt");
                }
                if bytes > 0 {
                    assert!(replayed.is_none(), "replayed once");
                    replayed = Some(bytes);
                }
                None
            }
        };
        if exchange.received() && !received_seen {
            received_seen = true;
            copy.confirm();
        }
        let Some(next) = next else { continue };
        match next {
            Next::Wait(at) => {
                assert!(!decided, "nothing waits after the decision");
                assert!(
                    at >= last_deadline || exchange.received(),
                    "deadlines never move back"
                );
                last_deadline = at;
            }
            Next::Accepted(_) | Next::Rejected { .. } => {
                assert!(exchange.received(), "answered only after the receipt");
                decided = true;
            }
            Next::Dead => {
                assert!(!exchange.received(), "dead only before the receipt");
                decided = true;
            }
            Next::Failed(_) => decided = true,
        }
    }
    if let Some(bytes) = replayed {
        assert_eq!(
            delivered_after_receipt, 0,
            "{bytes} bytes replayed and more delivered"
        );
    }
});
