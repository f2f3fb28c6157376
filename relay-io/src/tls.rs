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
    Ok(Arc::new(client_builder(extra_ca)?.with_no_client_auth()))
}

/// Like [`client_config`], presenting whatever certificate `identity` currently holds (so a
/// renewed certificate is used from the next handshake on).
pub fn client_config_with_identity(
    extra_ca: Option<&Path>,
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
) -> Result<Arc<ClientConfig>, WsError> {
    Ok(Arc::new(
        client_builder(extra_ca)?.with_client_cert_resolver(identity),
    ))
}

fn client_builder(
    extra_ca: Option<&Path>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, WsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut pinned = Vec::new();
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots
                .add(cert.clone())
                .map_err(|e| WsError::Tls(format!("{}: {e}", path.display())))?;
            pinned.push(cert);
        }
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| WsError::Tls(e.to_string()))?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { inner, pinned })))
}

/// The web PKI check, plus pinning: a server that presents exactly a certificate given in
/// `--ca-cert` is trusted even where the web PKI refuses it. The usual
/// `openssl req -x509 -newkey ... -nodes` one-liner makes a self-signed certificate with
/// `CA:TRUE`, which webpki will not take as a server's own (`CaUsedAsEndEntity`); the person
/// who passed that very file meant to trust that very server. The handshake signature is
/// still checked, so the server holds the key.
#[derive(Debug)]
struct Pinned {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(e)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                tracing::debug!(error = %e, "the server presented the pinned --ca-cert certificate");
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The crypto provider every configuration uses, for signing keys outside a handshake.
#[must_use]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    provider()
}

/// The client-certificate check of the TLS handshake (chain to one of `client_cas`,
/// validity, clientAuth EKU), for use outside a handshake too: a proof-of-possession login
/// checks a presented chain with exactly the rules mTLS applies.
pub fn client_cert_verifier(
    client_cas: &[CertificateDer<'static>],
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, WsError> {
    client_verifier(client_cas, false)
}

fn client_verifier(
    client_cas: &[CertificateDer<'static>],
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, WsError> {
    let mut roots = RootCertStore::empty();
    for ca in client_cas {
        roots
            .add(ca.clone())
            .map_err(|e| WsError::Tls(format!("client CA: {e}")))?;
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| WsError::Tls(format!("client CA: {e}")))
}

/// A server configuration from a PEM certificate chain and key. Only HTTP/1.1 is offered:
/// WebSocket upgrades need it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, WsError> {
    server_config_with_client_ca(cert, key, &[])
}

/// Like [`server_config`], and also asks clients for a certificate issued by one of
/// `client_cas` (trust anchors: an issuing CA here trusts only what it issued, not its
/// siblings under the same root). A client certificate stays optional, so SAS clients share
/// the port; one that is presented must verify (chain, validity, clientAuth EKU) or the
/// handshake fails.
pub fn server_config_with_client_ca(
    cert: &Path,
    key: &Path,
    client_cas: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, WsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_verifier(client_cas, true)?)
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| WsError::Tls(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
