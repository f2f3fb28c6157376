//! The library's own bound on what it runs for senders: every accepted connection and
//! every relayed request is one task, tracked and counted against
//! [`ListenerConfig::max_in_flight`](crate::ListenerConfig::max_in_flight). Past the bound a
//! WebSocket sender is refused with 503 and an HTTP request answered 503, at once, so a
//! flood costs the listener a refusal each, not a task each.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

/// Default bound on connections and requests in flight per listener.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Refusals in flight at once; past it a sender is left to the broker's deadline.
const MAX_REFUSALS: usize = 64;

/// The tasks one listener runs for its senders.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    max: usize,
}

impl Work {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(max.max(1))),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            max: max.max(1),
        }
    }

    /// A place for one more task, or `None` at the bound.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Runs `task`, holding `permit` until it ends.
    pub(crate) fn spawn<F>(&self, permit: OwnedSemaphorePermit, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(async move {
            let _permit = permit;
            task.await;
        });
    }

    /// Runs a refusal (short, bounded by its own connect timeout) within its own small
    /// bound; past that it is dropped and the broker answers the sender at its deadline.
    pub(crate) fn refuse<F>(&self, refusal: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.refusals).try_acquire_owned() else {
            tracing::warn!("too many refusals in flight; leaving a sender to the broker");
            return;
        };
        self.tracker.spawn(async move {
            let _permit = permit;
            refusal.await;
        });
    }

    /// Tasks running now (refusals included).
    pub(crate) fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// What a sender refused at the bound is told.
    pub(crate) fn busy_text(&self) -> String {
        format!(
            "The listener is at its bound of {} connections and requests in flight",
            self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_admits_max_tasks_and_frees_a_place_when_one_ends() {
        let work = Work::new(2);
        let (a, b) = (work.admit().unwrap(), work.admit().unwrap());
        assert!(work.admit().is_none(), "at the bound");
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        work.spawn(a, async move {
            let _ = wait.await;
        });
        assert_eq!(work.in_flight(), 1);
        drop(b);
        let c = work.admit().expect("b's place is free again");
        release.send(()).unwrap();
        while work.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(work.admit().is_some(), "a's place is free again");
        drop(c);
    }
}
