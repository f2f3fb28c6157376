//! Registering a listener: a P-256 key made here (it never leaves this machine), its CSR
//! sent with a person's credential or a single-use enrollment token, and the key,
//! certificate chain and details written into the identity directory. Used by
//! `relay-listener register` and by an agent enrolling itself on its first start (a service
//! must make its own key, so that DPAPI binds it to the service's account).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use relay_io::proxy::ProxyRules;
use relay_io::rustls::ClientConfig;

use crate::IdentityError;
use crate::keystore::KeyStore;

/// How the registration is authorized.
#[derive(Clone)]
pub enum Enrollment {
    /// A person and their password, for these hybrid connections.
    Password {
        /// The person.
        person: String,
        /// Their password.
        password: String,
        /// Hybrid connections (patterns the person may register).
        hybrid_connections: Vec<String>,
    },
    /// A person's API token, for these hybrid connections.
    PersonToken {
        /// The token.
        token: String,
        /// Hybrid connections.
        hybrid_connections: Vec<String>,
    },
    /// A single-use token the person minted (it fixes the hybrid connections).
    Token(String),
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secret reaches a log.
        match self {
            Self::Password { person, .. } => write!(f, "Password({person})"),
            Self::PersonToken { .. } => f.write_str("PersonToken"),
            Self::Token(_) => f.write_str("Token"),
        }
    }
}

/// What was registered.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The listener id the broker assigned.
    pub listener_id: String,
    /// The hybrid connections granted.
    pub hybrid_connections: Vec<String>,
}

/// Registers with the broker at `endpoint` and writes the identity into `dir`.
pub async fn register(
    endpoint: &str,
    enrollment: &Enrollment,
    name: Option<&str>,
    dir: &Path,
    key_store: &dyn KeyStore,
    tls: &Arc<ClientConfig>,
    proxy: Option<&ProxyRules>,
) -> Result<Registered, IdentityError> {
    let mut body = request_body(enrollment);
    let transport = |e: rcgen::Error| IdentityError::Transport(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(transport)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(transport)?;
    body["csr"] = csr.into();
    if let Some(name) = name {
        body["name"] = name.into();
    }
    let url = format!(
        "{}/$register/v1/listeners",
        relay_core::connection_string::http_base(endpoint)
    );
    let reply = crate::identity::post_json(&url, &[], &body, tls, proxy).await?;
    write_identity(dir, key_store, &key, &reply, endpoint)?;
    Ok(Registered {
        listener_id: text(&reply["listener_id"]),
        hybrid_connections: reply["hybrid_connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    })
}

/// The registration request without its CSR: the proof of the right to register.
fn request_body(enrollment: &Enrollment) -> serde_json::Value {
    match enrollment {
        Enrollment::Token(token) => serde_json::json!({ "enrollment_token": token }),
        Enrollment::PersonToken {
            token,
            hybrid_connections,
        } => serde_json::json!({ "person_token": token, "hybrid_connections": hybrid_connections }),
        Enrollment::Password {
            person,
            password,
            hybrid_connections,
        } => serde_json::json!({
            "person": person, "password": password, "hybrid_connections": hybrid_connections
        }),
    }
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Writes the key, the certificate chain and `listener.json`, in that order.
fn write_identity(
    dir: &Path,
    key_store: &dyn KeyStore,
    key: &rcgen::KeyPair,
    reply: &serde_json::Value,
    endpoint: &str,
) -> Result<(), IdentityError> {
    let io = |path: PathBuf| move |source| IdentityError::Io { path, source };
    relay_io::secure_fs::create_private_dir(dir).map_err(io(dir.to_path_buf()))?;
    let key_path = dir.join("key.pem");
    key_store
        .write(&key_path, key.serialize_pem().as_bytes())
        .map_err(io(key_path.clone()))?;
    let chain = format!("{}{}", text(&reply["certificate"]), text(&reply["chain"]));
    let cert_path = dir.join("cert.pem");
    relay_io::secure_fs::write_atomic(&cert_path, chain.as_bytes(), false)
        .map_err(io(cert_path.clone()))?;
    let details = serde_json::json!({
        "listener_id": reply["listener_id"],
        "endpoint": endpoint,
        "hybrid_connections": reply["hybrid_connections"],
        "not_after_ms": reply["not_after_ms"],
    });
    // Written last: an identity directory with listener.json is complete.
    let details_path = dir.join("listener.json");
    relay_io::secure_fs::write_atomic(&details_path, details.to_string().as_bytes(), false)
        .map_err(io(details_path.clone()))
}

/// Finishes an identity directory whose registration was interrupted after the key and the
/// certificate were written but before `listener.json` (the broker has already burned the
/// token and recorded the listener): the listener id is taken back from the certificate's
/// SAN URI. Returns whether it did.
pub fn recover_interrupted(dir: &Path, endpoint: &str) -> Result<bool, IdentityError> {
    let (cert_path, details_path) = (dir.join("cert.pem"), dir.join("listener.json"));
    if details_path.exists() || !cert_path.exists() || !dir.join("key.pem").exists() {
        return Ok(false);
    }
    let io = |path: PathBuf| move |source| IdentityError::Io { path, source };
    let pem = std::fs::read(&cert_path).map_err(io(cert_path))?;
    let invalid = |why: &str| IdentityError::Invalid(dir.to_path_buf(), why.to_owned());
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| invalid("cert.pem holds no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|_| invalid("cert.pem is unreadable"))?;
    let listener_id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    uri.rsplit_once("/listener/").map(|(_, id)| id.to_owned())
                }
                _ => None,
            })
        })
        .ok_or_else(|| invalid("cert.pem names no listener"))?;
    let details = serde_json::json!({
        "listener_id": listener_id,
        "endpoint": endpoint,
        "hybrid_connections": [],
        "recovered": true,
    });
    relay_io::secure_fs::write_atomic(&details_path, details.to_string().as_bytes(), false)
        .map_err(io(details_path.clone()))?;
    Ok(true)
}

/// What to tell an operator about a refused registration.
#[must_use]
pub fn refusal_hint(status: u16) -> &'static str {
    match status {
        401 => " (the password, person token or enrollment token is wrong, used or expired)",
        409 => " (this key is already registered; run register again to make a new one)",
        403 => " (the person is disabled or lacks listener.register on these hybrid connections)",
        404 => " (the broker has no [ca] configured)",
        _ => "",
    }
}
