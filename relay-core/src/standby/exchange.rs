//! The broker's rules for one `accept` written on a standby socket, without IO: the
//! receipt and its deadline, then the answer and its deadline, and, for early pairing, the
//! copy of the sender's frames kept until the receipt. The caller moves bytes and timers
//! and feeds in what it heard and what time it is; time is injected (`now`), so the rules
//! run under a virtual clock in tests and fuzzers.

use std::time::{Duration, Instant};

use super::{EARLY_RETAINED_BYTES, MAX_REPLY_BYTES, RECEIPT_DEADLINE, StandbyReply};
use crate::frame::OpCode;

/// What the listener sent on the standby socket, as the exchange needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// A complete text message.
    Text(&'a [u8]),
    /// Any other frame (binary, a control frame, an oversized text).
    Other,
    /// A Close, the end of the stream, or a read error.
    Closed,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Keep reading; act by this deadline at the latest ([`Exchange::on_time`]).
    Wait(Instant),
    /// The listener accepted: the socket now carries the sender, with this sub-protocol.
    Accepted(Option<String>),
    /// The listener refused the sender with its own status.
    Rejected {
        /// The listener's status (4xx or 5xx).
        status: u16,
        /// Its description, for the sender.
        description: String,
    },
    /// No receipt in time, or the socket failed before it: the socket (and likely its
    /// siblings, behind the same middlebox) is dead. Use the control channel; nothing
    /// reached the listener's application.
    Dead,
    /// The listener confirmed receipt and then failed: the sender is refused (502), not
    /// retried, because the listener may already have acted on the `accept`.
    Failed(Failure),
}

/// How a confirmed exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The socket closed without an answer.
    Closed,
    /// The answer was not a standby reply.
    Garbled,
    /// No answer by the deadline.
    TimedOut,
}

impl Failure {
    /// The sender-facing words: "The listener {…}".
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Closed => "closed its standby socket without an answer",
            Self::Garbled => "sent no valid answer on its standby socket",
            Self::TimedOut => "did not answer in time",
        }
    }
}

/// One `accept` on a standby socket, from the moment it was written.
#[derive(Debug, Clone)]
pub struct Exchange {
    receipt_by: Instant,
    answer_by: Instant,
    received: bool,
    ended: bool,
}

impl Exchange {
    /// The `accept` was written at `now`; the listener must confirm receipt within
    /// [`RECEIPT_DEADLINE`] and answer within `answer_within` of `now`.
    #[must_use]
    pub fn new(now: Instant, answer_within: Duration) -> Self {
        Self {
            receipt_by: now + RECEIPT_DEADLINE,
            answer_by: now + answer_within.max(RECEIPT_DEADLINE),
            received: false,
            ended: false,
        }
    }

    /// Whether the listener confirmed receipt.
    #[must_use]
    pub fn received(&self) -> bool {
        self.received
    }

    /// The next deadline: the receipt's, then the answer's.
    #[must_use]
    pub fn deadline(&self) -> Instant {
        if self.received {
            self.answer_by
        } else {
            self.receipt_by
        }
    }

    /// Applies what the listener sent.
    pub fn on_heard(&mut self, heard: Heard<'_>) -> Next {
        if self.ended {
            return self.ended_again();
        }
        let reply = match heard {
            Heard::Text(text) if text.len() <= MAX_REPLY_BYTES => StandbyReply::decode(text).ok(),
            _ => None,
        };
        match (self.received, reply, heard) {
            (false, Some(StandbyReply::Received {}), _) => {
                self.received = true;
                Next::Wait(self.answer_by)
            }
            (true, Some(StandbyReply::Accepted { protocol }), _) => {
                self.end(Next::Accepted(protocol))
            }
            (
                true,
                Some(StandbyReply::Rejected {
                    status_code,
                    status_description,
                }),
                _,
            ) => self.end(Next::Rejected {
                status: status_code,
                description: status_description,
            }),
            // Gone or garbled before the receipt: the control channel may still work.
            (false, _, _) => self.end(Next::Dead),
            (true, _, Heard::Closed) => self.end(Next::Failed(Failure::Closed)),
            (true, _, _) => self.end(Next::Failed(Failure::Garbled)),
        }
    }

    /// Applies the passing of time.
    pub fn on_time(&mut self, now: Instant) -> Next {
        if self.ended {
            return self.ended_again();
        }
        match (self.received, now >= self.deadline()) {
            (_, false) => Next::Wait(self.deadline()),
            (false, true) => self.end(Next::Dead),
            (true, true) => self.end(Next::Failed(Failure::TimedOut)),
        }
    }

    fn end(&mut self, next: Next) -> Next {
        self.ended = true;
        next
    }

    /// An exchange decides once; anything after it is the caller's bug, answered safely.
    fn ended_again(&self) -> Next {
        Next::Failed(Failure::Garbled)
    }
}

/// A sender frame forwarded on a standby socket before the listener confirmed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// FIN bit.
    pub fin: bool,
    /// Its opcode (never a control frame).
    pub opcode: OpCode,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Early pairing's copy of what it forwarded ahead of the receipt, so that a dead standby
/// can fall back to the control channel with nothing lost. The rule that keeps the two
/// paths apart: frames are forwarded only while [`EarlyCopy::may_forward`] says so, every
/// one forwarded before the receipt is kept, the copy is dropped at the receipt, and it is
/// handed out for replay at most once. So a byte is either delivered through the standby
/// or replayed through the control channel's rendezvous, never both.
#[derive(Debug, Default)]
pub struct EarlyCopy {
    kept: Vec<Kept>,
    bytes: usize,
    confirmed: bool,
    replayed: bool,
}

impl EarlyCopy {
    /// Whether a sender frame of `opcode` and `len` bytes may be forwarded now. A control
    /// frame, or more than [`EARLY_RETAINED_BYTES`] kept, stops reading the sender until
    /// the answer: what is left waits, in place, for the relay.
    #[must_use]
    pub fn may_forward(&self, opcode: OpCode, len: u64) -> bool {
        if self.replayed || opcode.is_control() {
            return false;
        }
        let room = if self.confirmed {
            EARLY_RETAINED_BYTES
        } else {
            EARLY_RETAINED_BYTES - self.bytes
        };
        len <= room as u64
    }

    /// Records a frame that was forwarded (or whose forwarding failed half-way: the
    /// listener may not have it, so it is kept for the replay too).
    pub fn forwarded(&mut self, frame: Kept) {
        if self.confirmed || self.replayed {
            return;
        }
        self.bytes += frame.payload.len();
        self.kept.push(frame);
    }

    /// The listener confirmed receipt: what it was sent is its own now.
    pub fn confirm(&mut self) {
        self.confirmed = true;
        self.kept = Vec::new();
        self.bytes = 0;
    }

    /// Bytes kept for a replay.
    #[must_use]
    pub fn kept_bytes(&self) -> usize {
        self.bytes
    }

    /// The frames to replay through the control channel's rendezvous; once, and never
    /// after a receipt.
    pub fn replay(&mut self) -> Vec<Kept> {
        if self.confirmed || self.replayed {
            return Vec::new();
        }
        self.replayed = true;
        self.bytes = 0;
        std::mem::take(&mut self.kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn text(reply: &StandbyReply) -> String {
        reply.encode()
    }

    #[test]
    fn receipt_then_answer_within_their_deadlines() {
        let t0 = Instant::now();
        let mut x = Exchange::new(t0, Duration::from_secs(30));
        assert_eq!(x.deadline(), at(t0, 2000));
        assert_eq!(x.on_time(at(t0, 1999)), Next::Wait(at(t0, 2000)));
        let received = text(&StandbyReply::Received {});
        assert_eq!(
            x.on_heard(Heard::Text(received.as_bytes())),
            Next::Wait(at(t0, 30_000))
        );
        assert!(x.received());
        // The receipt's deadline no longer applies.
        assert_eq!(x.on_time(at(t0, 2500)), Next::Wait(at(t0, 30_000)));
        let accepted = text(&StandbyReply::Accepted {
            protocol: Some("mqtt".into()),
        });
        assert_eq!(
            x.on_heard(Heard::Text(accepted.as_bytes())),
            Next::Accepted(Some("mqtt".into()))
        );
    }

    #[test]
    fn no_receipt_is_a_dead_socket_and_a_failure_after_it_is_the_senders() {
        let t0 = Instant::now();
        let mut silent = Exchange::new(t0, Duration::from_secs(30));
        assert_eq!(silent.on_time(at(t0, 2000)), Next::Dead);
        let mut closed = Exchange::new(t0, Duration::from_secs(30));
        assert_eq!(closed.on_heard(Heard::Closed), Next::Dead);
        let mut garbled = Exchange::new(t0, Duration::from_secs(30));
        assert_eq!(garbled.on_heard(Heard::Text(b"{")), Next::Dead);
        // An answer before the receipt is out of order: dead too, never accepted.
        let mut early = Exchange::new(t0, Duration::from_secs(30));
        let accepted = text(&StandbyReply::Accepted { protocol: None });
        assert_eq!(early.on_heard(Heard::Text(accepted.as_bytes())), Next::Dead);

        let received = text(&StandbyReply::Received {});
        for (heard, failure) in [
            (Heard::Closed, Failure::Closed),
            (Heard::Other, Failure::Garbled),
            (Heard::Text(b"[]"), Failure::Garbled),
        ] {
            let mut x = Exchange::new(t0, Duration::from_secs(30));
            x.on_heard(Heard::Text(received.as_bytes()));
            assert_eq!(x.on_heard(heard), Next::Failed(failure));
        }
        let mut slow = Exchange::new(t0, Duration::from_secs(30));
        slow.on_heard(Heard::Text(received.as_bytes()));
        assert_eq!(
            slow.on_time(at(t0, 30_000)),
            Next::Failed(Failure::TimedOut)
        );
    }

    #[test]
    fn a_rejection_carries_the_listeners_status_and_the_exchange_decides_once() {
        let t0 = Instant::now();
        let mut x = Exchange::new(t0, Duration::from_secs(5));
        let received = text(&StandbyReply::Received {});
        x.on_heard(Heard::Text(received.as_bytes()));
        let rejected = text(&StandbyReply::Rejected {
            status_code: 503,
            status_description: "busy".into(),
        });
        assert_eq!(
            x.on_heard(Heard::Text(rejected.as_bytes())),
            Next::Rejected {
                status: 503,
                description: "busy".into()
            }
        );
        let accepted = text(&StandbyReply::Accepted { protocol: None });
        assert!(matches!(
            x.on_heard(Heard::Text(accepted.as_bytes())),
            Next::Failed(_)
        ));
    }

    fn frame(len: usize) -> Kept {
        Kept {
            fin: true,
            opcode: OpCode::Binary,
            payload: vec![7; len],
        }
    }

    #[test]
    fn the_early_copy_is_bounded_dropped_at_the_receipt_and_replayed_once() {
        let mut copy = EarlyCopy::default();
        assert!(copy.may_forward(OpCode::Binary, EARLY_RETAINED_BYTES as u64));
        assert!(
            !copy.may_forward(OpCode::Ping, 0),
            "a control frame pauses the sender"
        );
        copy.forwarded(frame(EARLY_RETAINED_BYTES - 10));
        assert!(
            !copy.may_forward(OpCode::Binary, 11),
            "past the bound: pause"
        );
        assert!(copy.may_forward(OpCode::Text, 10));
        copy.forwarded(frame(10));
        let replay = copy.replay();
        assert_eq!(
            replay.iter().map(|k| k.payload.len()).sum::<usize>(),
            EARLY_RETAINED_BYTES
        );
        assert!(copy.replay().is_empty(), "replayed once");
        assert!(
            !copy.may_forward(OpCode::Binary, 1),
            "nothing is forwarded after a replay"
        );

        let mut confirmed = EarlyCopy::default();
        confirmed.forwarded(frame(100));
        confirmed.confirm();
        assert_eq!(confirmed.kept_bytes(), 0);
        assert!(
            confirmed.replay().is_empty(),
            "never replayed after the receipt"
        );
        assert!(confirmed.may_forward(OpCode::Binary, EARLY_RETAINED_BYTES as u64));
        confirmed.forwarded(frame(100));
        assert_eq!(confirmed.kept_bytes(), 0, "nothing kept once confirmed");
    }
}
