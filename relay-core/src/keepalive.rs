//! The broker's timers for one control channel, without IO: pings at an interval, a
//! listener silent for two intervals dropped as half-open, and the credential's expiry
//! (a token's with its grace, a certificate's without) moved by each renewal. Time is
//! injected: the wall clock is read once, when a credential's remaining life is turned
//! into a deadline ([`credential_left`]), and every deadline after that is on the caller's
//! monotonic clock, which tests pause and advance.

use std::time::{Duration, Instant};

/// What is due on a control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet; look again at [`ChannelTimers::deadline`].
    Nothing,
    /// Send a ping.
    Ping,
    /// The listener was silent for two ping intervals: close the channel (half-open).
    Silent,
    /// The credential ran out (past its grace): close the channel.
    Expired,
}

/// One control channel's timers.
#[derive(Debug, Clone)]
pub struct ChannelTimers {
    interval: Duration,
    grace: Duration,
    next_ping: Instant,
    last_heard: Instant,
    expires: Instant,
}

/// The remaining life of a credential that expires at `expires_at` (Unix seconds), as the
/// wall clock reads `unix_now`; zero once it has passed.
#[must_use]
pub fn credential_left(expires_at: u64, unix_now: u64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(unix_now))
}

impl ChannelTimers {
    /// Timers for a channel opened at `now`, pinging every `interval`, whose credential has
    /// `left` to live and then `grace` (zero for certificates).
    #[must_use]
    pub fn new(now: Instant, interval: Duration, grace: Duration, left: Duration) -> Self {
        Self {
            interval,
            grace,
            next_ping: now + interval,
            last_heard: now,
            expires: now + left + grace,
        }
    }

    /// The listener sent something (any frame counts as a sign of life).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// The credential was renewed at `now` and has `left` to live from here.
    pub fn renewed(&mut self, now: Instant, left: Duration) {
        self.expires = now + left + self.grace;
    }

    /// When something is next due.
    #[must_use]
    pub fn deadline(&self) -> Instant {
        self.next_ping.min(self.expires)
    }

    /// What is due at `now`. Expiry comes first: an expired channel is closed, not pinged.
    pub fn on_time(&mut self, now: Instant) -> Due {
        if now >= self.expires {
            return Due::Expired;
        }
        if now < self.next_ping {
            return Due::Nothing;
        }
        if now.saturating_duration_since(self.last_heard) > self.interval * 2 {
            return Due::Silent;
        }
        // The next ping one interval after this one, however late this one came.
        self.next_ping = now + self.interval;
        Due::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn pings_keep_a_talking_listener_and_drop_a_silent_one() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(t0, 30 * SEC, 300 * SEC, 3600 * SEC);
        assert_eq!(t.deadline(), t0 + 30 * SEC);
        assert_eq!(t.on_time(t0 + 29 * SEC), Due::Nothing);
        assert_eq!(t.on_time(t0 + 30 * SEC), Due::Ping);
        t.heard(t0 + 31 * SEC);
        assert_eq!(t.on_time(t0 + 60 * SEC), Due::Ping);
        assert_eq!(
            t.on_time(t0 + 90 * SEC),
            Due::Ping,
            "heard 59 s ago: still within two"
        );
        // Nothing heard since 31 s: at 120 s that is more than two intervals.
        assert_eq!(t.on_time(t0 + 120 * SEC), Due::Silent);
    }

    #[test]
    fn a_token_expires_after_its_grace_and_a_renewal_moves_it() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(t0, 30 * SEC, 300 * SEC, 100 * SEC);
        let talk = |t: &mut ChannelTimers, at: Duration| {
            t.heard(t0 + at);
            t.on_time(t0 + at)
        };
        assert_eq!(talk(&mut t, 399 * SEC), Due::Ping);
        assert_eq!(
            talk(&mut t, 400 * SEC),
            Due::Expired,
            "100 s of life, 300 s of grace"
        );
        let mut renewed = ChannelTimers::new(t0, 30 * SEC, 300 * SEC, 100 * SEC);
        renewed.renewed(t0 + 50 * SEC, 3600 * SEC);
        assert_eq!(talk(&mut renewed, 400 * SEC), Due::Ping);
        assert_eq!(renewed.deadline(), t0 + 430 * SEC);
    }

    #[test]
    fn a_certificate_has_no_grace_and_an_expired_credential_is_not_pinged() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(t0, 30 * SEC, Duration::ZERO, 45 * SEC);
        assert_eq!(t.deadline(), t0 + 30 * SEC);
        assert_eq!(t.on_time(t0 + 30 * SEC), Due::Ping);
        assert_eq!(t.deadline(), t0 + 45 * SEC, "expiry before the next ping");
        assert_eq!(t.on_time(t0 + 60 * SEC), Due::Expired);
        assert_eq!(credential_left(100, 40), 60 * SEC);
        assert_eq!(credential_left(100, 140), Duration::ZERO);
    }
}
