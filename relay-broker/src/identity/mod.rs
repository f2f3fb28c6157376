//! The identity control plane: persons and their rights, the certificate authority,
//! registration and renewal of listeners, proof of possession, the admin API. It is a
//! default cargo feature (`identity`); without it the broker is a SAS-only relay, and the
//! build proves that the data plane never reaches in here. It sees the data plane only
//! through the seams: it answers [`Authority`] questions, publishes revocations on the bus
//! and writes audit events.
//!
//! | module | responsibility |
//! |---|---|
//! | [`ca`] | the certificate authority for listener identities |
//! | [`admin`] | the versioned administration API (`/$admin/v1`) |
//! | `registration` | `/$register/v1`: register with an enrollment token or a password, renew, dynamic hybrid connections |
//! | `pop` | proof-of-possession login for listeners behind an L7 proxy that ends TLS |
//! | `listeners` | what a certificate listener may do; the [`Authority`] the data plane asks |
//! | [`policy`] | the closed list of rights, name patterns |
//! | `principal` | who calls the admin API |
//! | `secrets` | random secrets, their digests, password hashes |
//! | [`error`] | every status the control plane answers |

pub mod admin;
pub mod ca;
pub mod error;
mod listeners;
pub mod policy;
mod pop;
mod principal;
mod registration;
mod secrets;

use std::sync::Arc;
use std::time::Duration;

pub use error::IdentityError;
pub use listeners::StoreAuthority;

use crate::limiter::AuthLimiter;
use crate::metrics::Counters;
use crate::seams::audit::AuditSink;
use crate::seams::authority::Authority;
use crate::seams::revocation::RevocationBus;
use crate::store::Store;

/// Largest body of a registration, renewal or login call (a CSR is at most 8 KiB).
const MAX_REGISTER_BODY: usize = 64 * 1024;

/// Everything the control plane shares between its handlers.
pub(crate) struct Identity {
    pub(crate) store: Arc<dyn Store>,
    /// The certificate authority, when `[ca]` is configured.
    pub(crate) ca: Option<Arc<ca::CertificateAuthority>>,
    /// Lifetime of listener certificates (`[ca].cert_lifetime_hours`).
    pub(crate) ca_lifetime: Duration,
    /// Proof-of-possession logins, when `[ca].proof_of_possession` is on.
    pub(crate) pop: Option<Arc<pop::PopLogins>>,
    pub(crate) limiter: Arc<AuthLimiter>,
    pub(crate) counters: Arc<Counters>,
    /// The broker's external URL, when configured: proofs of possession must name its host.
    pub(crate) public_url: Option<String>,
    /// Path of `public_url`; a namespace token's audience may include it.
    pub(crate) mount: String,
    pub(crate) revocations: Arc<dyn RevocationBus>,
    pub(crate) audit: AuditSink,
}

/// What the control plane is built from.
pub(crate) struct Parts<'a> {
    pub(crate) config: &'a crate::BrokerConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) limiter: Arc<AuthLimiter>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) revocations: Arc<dyn RevocationBus>,
    pub(crate) audit: AuditSink,
}

impl Identity {
    /// The control plane, its CA loaded or created when `[ca]` is configured.
    pub(crate) fn open(parts: Parts<'_>) -> Result<Self, crate::OpenError> {
        let config = parts.config;
        let mut identity = Self {
            store: parts.store,
            ca: None,
            ca_lifetime: Duration::from_secs(7 * 86_400),
            pop: None,
            limiter: parts.limiter,
            counters: parts.counters,
            public_url: config.public_url.clone(),
            mount: crate::config::mount_path(config.public_url.as_deref()),
            revocations: parts.revocations,
            audit: parts.audit,
        };
        if let Some(ca) = &config.ca {
            let authority = ca::CertificateAuthority::load_or_create(
                &ca.dir,
                &ca.trust_domain,
                time::OffsetDateTime::now_utc(),
            )?;
            if ca.proof_of_possession {
                identity.pop = Some(Arc::new(pop::PopLogins::new(&authority)?));
            }
            identity.ca = Some(Arc::new(authority));
            identity.ca_lifetime = ca.cert_lifetime;
        }
        Ok(identity)
    }

    /// What the data plane asks about certificate listeners; `None` without a CA.
    pub(crate) fn authority(&self) -> Option<Arc<dyn Authority>> {
        let ca = Arc::clone(self.ca.as_ref()?);
        Some(Arc::new(StoreAuthority::new(ca, Arc::clone(&self.store))))
    }

    /// `/$register/v1/...` and `/$admin/v1/...`.
    pub(crate) fn router(self: &Arc<Self>) -> axum::Router {
        use axum::routing::{post, put};
        let register = axum::Router::new()
            .route(registration::PATH, post(registration::register))
            .route(pop::CHALLENGE_PATH, post(pop::challenge))
            .route(pop::SESSION_PATH, post(pop::session))
            .route(registration::RENEW_PATH, post(registration::renew))
            .route(
                registration::HC_PATH,
                put(registration::create_hybrid_connection)
                    .delete(registration::remove_hybrid_connection),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REGISTER_BODY));
        axum::Router::new()
            .nest(admin::PREFIX, admin::router())
            .merge(register)
            .with_state(Arc::clone(self))
    }

    /// Turns a proof-of-possession session ticket into the certificate it stands for, on
    /// every request, before the data plane sees it.
    pub(crate) fn session_layer(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(
            Arc::clone(self),
            pop::attach_session,
        ))
    }
}
