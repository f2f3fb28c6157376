//! The audit trail's one writer. Events from every task go into one bounded queue, and one
//! thread appends them to the store in order: a durable store syncs each append to disk, so
//! the writer is off the runtime threads, and a connect is always written before its
//! disconnect. When the queue is full (the disk stalls under a storm of rejections), the
//! event is dropped and counted (`relay_audit_dropped_total`) rather than holding up the
//! request that caused it. Events that must not be lost (a registration, a revocation) are
//! written by the identity plane with the change they record, not through this queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::store::{AuditEvent, AuditKind, AuditStore};

/// Events queued for the writer before new ones are dropped.
pub const AUDIT_QUEUE: usize = 4096;

enum Entry {
    Event(AuditEvent),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where the data plane and identity send audit events. Cheap to clone; the writer thread
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// A sink writing to `store` from its own thread, queueing at most `capacity` events.
    ///
    /// # Panics
    /// When the operating system refuses a new thread.
    #[must_use]
    pub fn new(store: Arc<dyn AuditStore>, capacity: usize) -> Self {
        let (tx, rx) = sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("relay-audit".into())
            .spawn(move || write_all(&*store, &rx))
            .expect("spawn the audit writer thread");
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues an event stamped now; never blocks.
    pub fn record(&self, kind: AuditKind, subject: &str, detail: &str) {
        let event = AuditEvent::now(kind, subject, detail);
        match self.tx.try_send(Entry::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("audit queue full: dropping events (relay_audit_dropped_total)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(kind = kind.as_str(), "audit writer gone: event lost");
            }
        }
    }

    /// Waits until every event queued before this call is written (or failed to be).
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        // Blocking here would hold a runtime thread while the disk syncs; a full queue is
        // retried instead, briefly.
        let mut entry = Entry::Flush(done);
        for _ in 0..200 {
            match self.tx.try_send(entry) {
                Ok(()) => {
                    let _ = wait.await;
                    return;
                }
                Err(TrySendError::Full(back)) => {
                    entry = back;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// Events dropped because the queue was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_all(store: &dyn AuditStore, rx: &Receiver<Entry>) {
    while let Ok(entry) = rx.recv() {
        match entry {
            Entry::Event(event) => {
                if let Err(e) = store.append_audit(&event) {
                    tracing::warn!(error = %e, kind = event.kind, "audit event lost");
                }
            }
            Entry::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn events_are_written_in_order_and_a_full_queue_drops_and_counts() {
        let store = Arc::new(MemoryStore::new(&[], &[]));
        let sink = AuditSink::new(Arc::clone(&store) as Arc<dyn AuditStore>, 8);
        for i in 0..5 {
            sink.record(AuditKind::ListenerConnect, &format!("hc{i}"), "");
        }
        sink.flush().await;
        let subjects: Vec<_> = store
            .audit(0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.subject)
            .collect();
        assert_eq!(subjects, ["hc0", "hc1", "hc2", "hc3", "hc4"]);

        // A queue of one with a stalled writer cannot take a burst: the rest is counted.
        let (tx, _rx) = sync_channel(1);
        let stalled = AuditSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..10 {
            stalled.record(AuditKind::PopRejected, "", "");
        }
        assert_eq!(stalled.dropped(), 9);
    }
}
