//! Throttling of failed authentication.
//!
//! hyco-ws reconnects with no backoff: a listener with a wrong key makes hundreds of
//! attempts a second, often from the same address as good clients. Failures are therefore
//! counted per client address *and* credential, so a storm of one bad key is slowed while the
//! same host's good credentials pass. Throttled attempts are held for a moment before their
//! 429 (bounded by a semaphore), which turns a tight reconnect loop into a slow one.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Counting window.
const WINDOW: Duration = Duration::from_secs(60);
/// Most (address, credential) pairs tracked; beyond it, stale entries are swept.
const MAX_TRACKED: usize = 100_000;
/// How long a throttled attempt is held before its 429.
pub(crate) const TARPIT: Duration = Duration::from_millis(500);
/// Most attempts held at once; the rest get their 429 immediately.
const MAX_HELD: usize = 512;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Counts authentication failures per (address, credential).
#[derive(Debug)]
pub(crate) struct AuthLimiter {
    failures: DashMap<(IpAddr, u64), Window>,
    per_window: u32,
    held: Arc<Semaphore>,
}

impl AuthLimiter {
    pub(crate) fn new(per_window: u32) -> Self {
        Self {
            failures: DashMap::new(),
            per_window,
            held: Arc::new(Semaphore::new(MAX_HELD)),
        }
    }

    /// A fingerprint of the presented credential (not stored in clear).
    pub(crate) fn fingerprint(token: Option<&str>) -> u64 {
        let mut h = DefaultHasher::new();
        token.hash(&mut h);
        h.finish()
    }

    /// Whether this address has failed too often with this credential.
    pub(crate) fn is_throttled(&self, ip: IpAddr, credential: u64) -> bool {
        self.failures
            .get(&(ip, credential))
            .is_some_and(|w| w.start.elapsed() < WINDOW && w.failures >= self.per_window)
    }

    /// Records a failure.
    pub(crate) fn record_failure(&self, ip: IpAddr, credential: u64) {
        if self.failures.len() >= MAX_TRACKED {
            self.failures.retain(|_, w| w.start.elapsed() < WINDOW);
        }
        let now = Instant::now();
        let mut entry = self.failures.entry((ip, credential)).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(entry.start) >= WINDOW {
            *entry = Window {
                start: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Holds a throttled attempt for [`TARPIT`] if there is room to.
    pub(crate) async fn hold(&self) {
        if let Ok(_permit) = Arc::clone(&self.held).try_acquire_owned() {
            tokio::time::sleep(TARPIT).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttles_one_credential_not_the_host() {
        let l = AuthLimiter::new(3);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let bad = AuthLimiter::fingerprint(Some("bad"));
        let good = AuthLimiter::fingerprint(Some("good"));
        for _ in 0..3 {
            assert!(!l.is_throttled(ip, bad));
            l.record_failure(ip, bad);
        }
        assert!(l.is_throttled(ip, bad));
        assert!(!l.is_throttled(ip, good));
        tokio::time::advance(WINDOW).await;
        assert!(!l.is_throttled(ip, bad));
    }
}
