//! rustls configuration. One crypto provider (ring) for the whole tree, chosen explicitly so
//! nothing depends on a process-wide default being installed.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::WsError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, WsError> {
    let pem = std::fs::read(path).map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(WsError::Tls(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, WsError> {
    let pem = std::fs::read(path).map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| WsError::Tls(format!("{}: no PEM private key found", path.display())))
}

/// A client configuration trusting the public web roots plus, optionally, a private CA.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, WsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server configuration from a PEM certificate chain and key. Only HTTP/1.1 is offered:
/// WebSocket upgrades need it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, WsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| WsError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
