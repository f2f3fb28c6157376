//! The one place the planes' routes meet. Each sub-router carries its own state: health and
//! the data plane the relay's, identity its own. Layers run outermost first: host mode (a
//! host named after a hybrid connection owns its whole path space), then the
//! proof-of-possession session (which turns a ticket into a certificate before anything
//! reads credentials), then the routes.

use std::sync::Arc;

use crate::relay::Relay;

pub(crate) fn compose(
    relay: &Arc<Relay>,
    #[cfg(feature = "identity")] identity: &Arc<crate::identity::Identity>,
) -> axum::Router {
    let router = crate::health::router(Arc::clone(relay));
    #[cfg(feature = "identity")]
    let router = router.merge(identity.router());
    let router = router.merge(relay.router());
    #[cfg(feature = "identity")]
    let router = identity.session_layer(router);
    relay.host_layer(router)
}
