//! Pre-opened rendezvous sockets ("standbys"): an extension between our broker and our
//! listener that standard clients never see.
//!
//! In the standard protocol each sender costs the listener a new connection to the broker
//! (TCP, TLS, upgrade) before the sender gets its `101`. A listener that asks for standbys
//! keeps a few WebSockets open in advance, and the broker hands the sender's `accept` to one
//! of them instead:
//!
//! 1. The listener sends [`STANDBY_HEADER`]` = n` on its `listen` upgrade. A broker that
//!    supports standbys answers the `101` with [`STANDBY_HEADER`] (how many it grants) and
//!    [`STANDBY_KEY_HEADER`] (an unguessable key, valid while that control channel lives).
//! 2. The listener opens up to that many `sb-hc-action=standby` WebSockets carrying the key
//!    in [`STANDBY_KEY_HEADER`], and sends nothing on them.
//! 3. For a sender, the broker writes the usual `{"accept":{...}}` text on one standby. The
//!    listener at once sends [`StandbyReply::Received`], decides, and then sends `accepted`
//!    or `rejected` on the same socket. After `accepted` the socket carries the sender's
//!    connection.
//! 4. A standby that does not confirm receipt within [`RECEIPT_DEADLINE`] is taken for dead
//!    (a middlebox may drop idle connections silently): the broker retires every parked
//!    standby of that listener and falls back to the control channel, as it does when none
//!    is parked. Idle standbys are also retired after a bounded age, with a normal Close;
//!    the listener replaces what it loses.
//!
//! **Early pairing.** A sender of ours that sends [`EARLY_HEADER`] (and offers no
//! sub-protocol) may get its `101` as soon as the `accept` is on a standby, and the broker
//! writes the sender's first frames right behind the `accept`: the listener has them when it
//! decides, and its first bytes follow its answer. That takes one round trip across the
//! listener's link off every connect. A refusal then reaches the sender as a Close with
//! [`CLOSE_REJECTED`] and the status in the reason. Until the listener confirms receipt the
//! broker keeps a copy of what it forwarded (at most [`EARLY_RETAINED_BYTES`]; beyond that,
//! and at any control frame, it stops reading the sender), so a dead standby still falls
//! back to the control channel with nothing lost.

use serde::{Deserialize, Serialize};

pub mod exchange;

pub use exchange::{EarlyCopy, Exchange, Failure, Heard, Kept, Next};

/// On `listen`: how many standbys the listener wants; on its `101`: how many it may open.
pub const STANDBY_HEADER: &str = "relay-standby";
/// On the `listen` `101`, and on every standby upgrade: the key binding standbys to one
/// control channel.
pub const STANDBY_KEY_HEADER: &str = "relay-standby-key";
/// Most standbys a listener may ask for.
pub const MAX_STANDBY: usize = 8;
/// On a sender's `connect`: it accepts an early `101` (see the module notes).
pub const EARLY_HEADER: &str = "relay-early-pairing";
/// Close code for an early-paired sender whose listener refused it; the reason is
/// `"<status> <description>"`.
pub const CLOSE_REJECTED: u16 = 4000;
/// Sender bytes the broker forwards ahead of the listener's receipt, keeping a copy.
pub const EARLY_RETAINED_BYTES: usize = 64 * 1024;

/// The Close reason for a refusal, within the 123 bytes a Close frame allows.
#[must_use]
pub fn rejection_reason(status: u16, description: &str) -> String {
    let mut reason = format!("{status} {description}");
    if reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Largest [`StandbyReply`] message.
pub const MAX_REPLY_BYTES: usize = 4096;
/// How long the broker waits for [`StandbyReply::Received`] before it takes the socket for
/// dead and uses the control channel instead.
pub const RECEIPT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The listener's answer to an `accept` written on a standby socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StandbyReply {
    /// The `accept` arrived; the decision follows.
    Received {},
    /// The socket now carries the sender's connection, with this sub-protocol.
    Accepted {
        /// The sub-protocol chosen from the sender's offer, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
    },
    /// The sender is refused with this status; the broker closes the socket.
    #[serde(rename_all = "camelCase")]
    Rejected {
        /// An HTTP 4xx or 5xx status.
        status_code: u16,
        /// Shown to the sender.
        status_description: String,
    },
}

impl StandbyReply {
    /// Encodes the reply as JSON text.
    #[must_use]
    pub fn encode(&self) -> String {
        // Plain structs with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a reply, refusing anything over [`MAX_REPLY_BYTES`] before parsing.
    pub fn decode(text: &[u8]) -> Result<Self, crate::control::ControlError> {
        if text.len() > MAX_REPLY_BYTES {
            return Err(crate::control::ControlError::TooLarge(text.len()));
        }
        Ok(serde_json::from_slice(text)?)
    }
}

/// The standby count a listener asked for, clamped to `1..=granted_max`; `None` when it
/// asked for none or the header is malformed.
#[must_use]
pub fn requested(value: &str, granted_max: usize) -> Option<usize> {
    let n: usize = value.trim().parse().ok()?;
    (n > 0 && granted_max > 0).then(|| n.min(granted_max).min(MAX_STANDBY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_in_their_wire_form() {
        let accepted = StandbyReply::Accepted {
            protocol: Some("mqtt".into()),
        };
        assert_eq!(accepted.encode(), r#"{"accepted":{"protocol":"mqtt"}}"#);
        let plain = StandbyReply::Accepted { protocol: None };
        assert_eq!(plain.encode(), r#"{"accepted":{}}"#);
        let rejected = StandbyReply::Rejected {
            status_code: 502,
            status_description: "target down".into(),
        };
        assert_eq!(
            rejected.encode(),
            r#"{"rejected":{"statusCode":502,"statusDescription":"target down"}}"#
        );
        assert_eq!(StandbyReply::Received {}.encode(), r#"{"received":{}}"#);
        for reply in [accepted, plain, rejected, StandbyReply::Received {}] {
            assert_eq!(
                StandbyReply::decode(reply.encode().as_bytes()).unwrap(),
                reply
            );
        }
    }

    #[test]
    fn bad_replies_are_errors() {
        assert!(StandbyReply::decode(b"{}").is_err());
        assert!(StandbyReply::decode(br#"{"accept":{}}"#).is_err());
        assert!(StandbyReply::decode(&vec![b' '; MAX_REPLY_BYTES + 1]).is_err());
    }

    #[test]
    fn rejection_reasons_fit_a_close_frame() {
        assert_eq!(rejection_reason(404, "no such door"), "404 no such door");
        let long = rejection_reason(502, &"é".repeat(100));
        assert!(long.len() <= 123 && long.starts_with("502 é"));
    }

    #[test]
    fn requested_counts_are_clamped() {
        assert_eq!(requested("2", 4), Some(2));
        assert_eq!(requested(" 9 ", 4), Some(4));
        assert_eq!(requested("100", 100), Some(MAX_STANDBY));
        assert_eq!(requested("0", 4), None);
        assert_eq!(requested("2", 0), None);
        assert_eq!(requested("two", 4), None);
    }
}
