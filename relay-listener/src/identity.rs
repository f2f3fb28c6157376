//! A registered listener's certificate identity: the key made here, the certificate the
//! broker's CA issued for it, and renewal with a new key before it expires.
//!
//! The identity directory (written by `relay-listener register`) holds `key.pem` (mode
//! 0600), `cert.pem` (leaf, issuing CA, root) and `listener.json`. [`CertificateIdentity`]
//! is a rustls client-certificate resolver, so a renewed certificate is presented from the
//! next handshake on while connections already open carry on.
//!
//! Renewal writes `key.pem.new`, then `cert.pem`, then renames the key into place; a crash
//! in between leaves a certificate whose key is `key.pem.new`, which [`load`] picks up.
//!
//! [`load`]: CertificateIdentity::load

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_io::proxy::ProxyRules;
use relay_io::rustls::client::ResolvesClientCert;
use relay_io::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use relay_io::rustls::sign::CertifiedKey;
use relay_io::rustls::{ClientConfig, SignatureScheme};
use relay_io::secure_fs::write_atomic;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::keystore::{KeyStore, platform_key_store};

mod files;

use files::{load_pair, read};

/// The longest single wait before a renewal: the wall clock is read again after it.
const RENEWAL_RECHECK: Duration = Duration::from_secs(600);

/// Identity failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The files do not form a usable identity.
    #[error("identity in {0}: {1}")]
    Invalid(PathBuf, String),
    /// The broker refused the renewal; the listener must be registered again.
    #[error("renewal refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's message with its tracking id.
        message: String,
    },
    /// The renewal call failed in transit; it is retried.
    #[error("renewal failed: {0}")]
    Transport(String),
}

struct Current {
    key: Arc<CertifiedKey>,
    /// PKCS#8, for proof-of-possession signatures outside a handshake.
    key_der: Arc<PrivateKeyDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// A listener's key and certificate, swapped in place on renewal.
pub struct CertificateIdentity {
    dir: PathBuf,
    listener_id: String,
    hybrid_connections: Vec<String>,
    current: RwLock<Current>,
    /// Bumped on every renewal, so control channels move to the new certificate.
    generation: tokio::sync::watch::Sender<u64>,
    /// Prove the key by a signed login instead of in the TLS handshake (an L7 proxy in
    /// front of the broker ends TLS).
    proof_of_possession: bool,
    /// Where the private key rests.
    key_store: Arc<dyn KeyStore>,
}

impl std::fmt::Debug for CertificateIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateIdentity")
            .field("dir", &self.dir)
            .field("listener_id", &self.listener_id)
            .finish_non_exhaustive()
    }
}

impl CertificateIdentity {
    /// Loads the identity written by `relay-listener register`, its key from the
    /// platform's store.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        Self::load_with(dir, platform_key_store())
    }

    /// Like [`load`](Self::load), with the key in `key_store`.
    pub fn load_with(dir: &Path, key_store: Arc<dyn KeyStore>) -> Result<Self, IdentityError> {
        let invalid = |why: String| IdentityError::Invalid(dir.to_path_buf(), why);
        let details: serde_json::Value = serde_json::from_slice(&read(&dir.join("listener.json"))?)
            .map_err(|e| invalid(format!("listener.json: {e}")))?;
        let listener_id = details["listener_id"]
            .as_str()
            .ok_or_else(|| invalid("listener.json has no listener_id".into()))?
            .to_owned();
        let hybrid_connections = details["hybrid_connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let current = load_pair(dir, &*key_store)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            listener_id,
            hybrid_connections,
            current: RwLock::new(current),
            generation: tokio::sync::watch::Sender::new(0),
            proof_of_possession: false,
            key_store,
        })
    }

    /// Proves the key with a signed login before each connect and renewal, for a broker
    /// behind an L7 proxy that ends TLS; the TLS handshake then presents no certificate.
    #[must_use]
    pub fn with_proof_of_possession(mut self, on: bool) -> Self {
        self.proof_of_possession = on;
        self
    }

    /// Whether logins prove the key by signature rather than in the handshake.
    #[must_use]
    pub fn uses_proof_of_possession(&self) -> bool {
        self.proof_of_possession
    }

    /// A proof-of-possession login: a nonce from the broker, signed with the current key
    /// together with the certificate chain. Returns the single-use session ticket for the
    /// next request.
    pub async fn login(
        &self,
        endpoint: &str,
        tls: &Arc<ClientConfig>,
    ) -> Result<String, IdentityError> {
        self.login_via(endpoint, tls, None).await
    }

    /// Like [`login`](Self::login), through the proxy `proxy` picks for the broker.
    pub async fn login_via(
        &self,
        endpoint: &str,
        tls: &Arc<ClientConfig>,
        proxy: Option<&ProxyRules>,
    ) -> Result<String, IdentityError> {
        let base = relay_core::connection_string::http_base(endpoint);
        let challenge = format!("{base}/$register/v1/pop/challenge");
        let reply = post_json(&challenge, &[], &serde_json::json!({}), tls, proxy).await?;
        let nonce = reply["nonce"]
            .as_str()
            .ok_or_else(|| IdentityError::Transport("the challenge has no nonce".into()))?;
        let proof = {
            let current = self.read();
            crate::pop::sign(&current.key_der, &current.key.cert, &base, nonce)
        }
        .map_err(IdentityError::Transport)?;
        let session = format!("{base}/$register/v1/pop/session");
        let proof = serde_json::json!({ "proof": proof });
        let reply = post_json(&session, &[], &proof, tls, proxy).await?;
        reply["session"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| IdentityError::Transport("the login reply has no session".into()))
    }

    /// Changes whenever the certificate is renewed.
    #[must_use]
    pub fn renewals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The listener id the broker assigned.
    #[must_use]
    pub fn listener_id(&self) -> &str {
        &self.listener_id
    }

    /// The hybrid connections granted at registration.
    #[must_use]
    pub fn hybrid_connections(&self) -> &[String] {
        &self.hybrid_connections
    }

    /// When the current certificate expires.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.read().not_after
    }

    /// When to renew: two thirds into the current certificate's lifetime, give or take 10 %
    /// of it, so a fleet registered together does not renew together.
    #[must_use]
    pub fn renew_at(&self) -> SystemTime {
        let current = self.read();
        let life = current
            .not_after
            .duration_since(current.not_before)
            .unwrap_or_default();
        let factor = 2.0 / 3.0 + (rand::random::<f64>() - 0.5) * 0.2;
        current.not_before + life.mul_f64(factor)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A TLS client configuration presenting this identity and trusting the public roots
    /// plus `extra_ca`.
    pub fn client_config(
        self: &Arc<Self>,
        extra_ca: Option<&Path>,
    ) -> Result<Arc<ClientConfig>, relay_io::WsError> {
        if self.proof_of_possession {
            return relay_io::tls::client_config(extra_ca);
        }
        relay_io::tls::client_config_with_identity(extra_ca, Arc::clone(self) as _)
    }

    /// Renews once: a new key made here, its CSR sent over mTLS with the current
    /// certificate, the result written to disk and used from the next handshake on.
    pub async fn renew(
        &self,
        endpoint: &str,
        tls: &Arc<ClientConfig>,
    ) -> Result<(), IdentityError> {
        self.renew_via(endpoint, tls, None).await
    }

    /// Like [`renew`](Self::renew), through the proxy `proxy` picks for the broker.
    pub async fn renew_via(
        &self,
        endpoint: &str,
        tls: &Arc<ClientConfig>,
        proxy: Option<&ProxyRules>,
    ) -> Result<(), IdentityError> {
        let key =
            rcgen::KeyPair::generate().map_err(|e| IdentityError::Transport(e.to_string()))?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(|e| IdentityError::Transport(e.to_string()))?;
        let url = format!(
            "{}/$register/v1/renew",
            relay_core::connection_string::http_base(endpoint)
        );
        let ticket = match self.proof_of_possession {
            true => Some(self.login_via(endpoint, tls, proxy).await?),
            false => None,
        };
        let headers: Vec<(&str, &str)> = ticket
            .iter()
            .map(|t| (relay_core::pop::SESSION_HEADER, t.as_str()))
            .collect();
        let body = serde_json::json!({ "csr": csr });
        let reply = post_json(&url, &headers, &body, tls, proxy).await?;
        let chain = format!(
            "{}{}",
            reply["certificate"].as_str().unwrap_or_default(),
            reply["chain"].as_str().unwrap_or_default()
        );
        let io = |path: PathBuf| move |source| IdentityError::Io { path, source };
        let pending = self.dir.join("key.pem.new");
        self.key_store
            .write(&pending, key.serialize_pem().as_bytes())
            .map_err(io(pending.clone()))?;
        let cert_path = self.dir.join("cert.pem");
        write_atomic(&cert_path, chain.as_bytes(), false).map_err(io(cert_path.clone()))?;
        let key_path = self.dir.join("key.pem");
        std::fs::rename(&pending, &key_path).map_err(io(key_path))?;
        let renewed = load_pair(&self.dir, &*self.key_store)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = renewed;
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(listener = %self.listener_id, not_after = ?self.not_after(), "certificate renewed with a new key");
        Ok(())
    }

    /// Renews at [`renew_at`](Self::renew_at) until `shutdown`, retrying failures in transit
    /// with backoff. Returns the refusal when the broker will not renew (revoked, or the
    /// person lost the right): the listener must be registered again.
    pub async fn keep_renewed(
        self: Arc<Self>,
        endpoint: String,
        tls: Arc<ClientConfig>,
        proxy: Option<Arc<ProxyRules>>,
        shutdown: CancellationToken,
    ) -> Result<(), IdentityError> {
        let mut backoff = Backoff::default();
        loop {
            // The renewal time is a wall-clock time: sleep in bounded steps and read the
            // clock again, so that a clock stepped forward or back is noticed within one step.
            let wait = self
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait.min(RENEWAL_RECHECK)) => {}
            }
            if wait > RENEWAL_RECHECK {
                continue;
            }
            loop {
                match self.renew_via(&endpoint, &tls, proxy.as_deref()).await {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e @ IdentityError::Refused { .. }) => return Err(e),
                    Err(e) if SystemTime::now() >= self.not_after() => {
                        return Err(IdentityError::Refused {
                            status: 0,
                            message: format!(
                                "the certificate expired before renewal succeeded: {e}"
                            ),
                        });
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "certificate renewal failed");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}

impl ResolvesClientCert for CertificateIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// POSTs JSON to the broker: a 4xx is a refusal (not retried), anything else that is not
/// 200 a failure in transit.
pub(crate) async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
    tls: &Arc<ClientConfig>,
    proxy: Option<&ProxyRules>,
) -> Result<serde_json::Value, IdentityError> {
    let body = body.to_string();
    let (status, reply) =
        relay_io::http1::call_via(url, "POST", headers, body.as_bytes(), Some(tls), proxy)
            .await
            .map_err(|e| IdentityError::Transport(e.to_string()))?;
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
    if status == 200 {
        return Ok(reply);
    }
    let message = reply["error"]["message"]
        .as_str()
        .map_or_else(|| reply.to_string(), str::to_owned);
    Err(if (400..500).contains(&status) {
        IdentityError::Refused { status, message }
    } else {
        IdentityError::Transport(format!("{status}: {message}"))
    })
}
