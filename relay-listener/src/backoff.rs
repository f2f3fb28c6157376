//! Reconnect delays: exponential with full jitter, so a fleet of agents coming back after a
//! broker restart does not arrive in lockstep.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// First delay (before jitter).
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    attempt: u32,
    /// Whether the short delay after a going-away close was taken since the last success.
    quick: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// A backoff between `initial` and `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
            quick: false,
        }
    }

    /// The next delay: uniformly between half and all of `initial * 2^attempt`, capped.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(rand::random::<f64>().mul_add(0.5, 0.5))
    }

    /// The delay after the broker closed a connection that worked with 1001 (going away:
    /// a shutdown, and in a cluster the other nodes are there now): up to a fifth of
    /// `initial`, only to spread a fleet's reconnects. Once per success; failures after it
    /// back off as usual, from the start.
    pub fn after_going_away(&mut self) -> Duration {
        if self.attempt > 0 || self.quick {
            return self.next_delay();
        }
        self.quick = true;
        self.initial.mul_f64(rand::random::<f64>() * 0.2)
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.quick = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jitters_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.after_going_away() <= Duration::from_millis(20));
        let next = b.after_going_away();
        assert!(
            next >= Duration::from_millis(50),
            "then the usual backoff, from the start: {next:?}"
        );
        assert!(b.next_delay() >= Duration::from_millis(100), "growing");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
