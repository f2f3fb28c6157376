//! What revocation closes on this node: one cancellation token per certificate listener
//! with something open (control channels, relayed connections). The revocation bus calls
//! [`Sessions::close`]; an entry leaves the map when the last thing holding it ends, so the
//! map is bounded by what is open, not by every listener that ever connected.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// Close code for a control channel whose listener was revoked (application range).
pub(crate) const CLOSE_REVOKED: u16 = 4401;

type Map = DashMap<String, Weak<Held>>;

/// The live sessions by listener id.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Arc<Map>);

#[derive(Debug)]
struct Held {
    token: CancellationToken,
    listener_id: String,
    map: Weak<Map>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(map) = self.map.upgrade() {
            // Only our own entry: a revocation may have replaced it with a fresh one.
            map.remove_if(&self.listener_id, |_, weak| weak.strong_count() == 0);
        }
    }
}

/// A listener's hold on its session: cancelled when it is revoked. Clones share the hold.
#[derive(Clone, Debug)]
pub(crate) struct Revoked(Arc<Held>);

impl Revoked {
    /// Resolves when the listener is revoked. The future keeps the hold: a relay waiting
    /// on it keeps its session in the map, so a revocation still finds it after the
    /// listener's control channel has gone.
    pub(crate) async fn cancelled_owned(self) {
        self.0.token.cancelled().await;
    }

    /// Whether the listener was revoked.
    #[cfg(test)]
    fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }
}

impl Sessions {
    /// A hold on `listener_id`'s session. Take it before checking the listener's rights: a
    /// revocation that lands after the hold, even during the check, still cancels it.
    pub(crate) fn hold(&self, listener_id: &str) -> Revoked {
        let mut entry = self.0.entry(listener_id.to_owned()).or_default();
        if let Some(held) = entry.upgrade() {
            return Revoked(held);
        }
        let held = Arc::new(Held {
            token: CancellationToken::new(),
            listener_id: listener_id.to_owned(),
            map: Arc::downgrade(&self.0),
        });
        *entry = Arc::downgrade(&held);
        Revoked(held)
    }

    /// Closes everything `listener_id` has open here; later connects get a fresh hold and
    /// face identity's checks again.
    pub(crate) fn close(&self, listener_id: &str) {
        if let Some((_, weak)) = self.0.remove(listener_id)
            && let Some(held) = weak.upgrade()
        {
            held.token.cancel();
        }
    }

    /// Closes every listener's sessions (a node fenced off from revocations).
    pub(crate) fn close_all(&self) {
        let held: Vec<_> = self.0.iter().filter_map(|e| e.value().upgrade()).collect();
        self.0.clear();
        for held in held {
            held.token.cancel();
        }
    }

    /// Listeners with something open.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A control channel's certificate facts: the listener, and what closes it early.
#[derive(Clone, Debug)]
pub(crate) struct CertSession {
    /// The listener id, for audit.
    pub(crate) listener_id: Arc<str>,
    /// Cancelled on revocation or when the person is disabled.
    pub(crate) revoked: Revoked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_leaves_when_its_last_holder_ends_and_close_cancels_every_holder() {
        let sessions = Sessions::default();
        let (a, b) = (sessions.hold("l1"), sessions.hold("l1"));
        assert_eq!(sessions.len(), 1);
        drop(a);
        assert_eq!(sessions.len(), 1, "still held by b");
        drop(b);
        assert_eq!(sessions.len(), 0, "no entry outlives what it closes");

        let (c, d) = (sessions.hold("l2"), sessions.hold("l2"));
        sessions.close("l2");
        assert!(c.is_cancelled() && d.is_cancelled());
        let fresh = sessions.hold("l2");
        assert!(!fresh.is_cancelled(), "a later connect is checked again");
        drop((c, d));
        assert_eq!(
            sessions.len(),
            1,
            "the old holds do not remove the fresh entry"
        );
        drop(fresh);
        assert_eq!(sessions.len(), 0);

        // A relay waiting on its hold keeps the session: a revocation still reaches it.
        let waiting = sessions.hold("l3").cancelled_owned();
        assert_eq!(sessions.len(), 1);
        sessions.close("l3");
        let done = futures_util::FutureExt::now_or_never(waiting);
        assert_eq!(done, Some(()), "the waiting relay was revoked");
    }
}
