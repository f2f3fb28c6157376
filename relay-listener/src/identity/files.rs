//! The identity's files: the certificate chain and the key (through the key store), read
//! and checked together.

use super::*;

pub(super) fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `cert.pem` with `key.pem`, or with `key.pem.new` when a renewal was interrupted
/// after writing the certificate (and then finishes it).
pub(super) fn load_pair(dir: &Path, key_store: &dyn KeyStore) -> Result<Current, IdentityError> {
    let invalid = |why: String| IdentityError::Invalid(dir.to_path_buf(), why);
    let cert_pem = read(&dir.join("cert.pem"))?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile_certs(&cert_pem).map_err(|e| invalid(format!("cert.pem: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid("cert.pem holds no certificate".into()))?;
    let (not_before, not_after) =
        validity(leaf).ok_or_else(|| invalid("cert.pem: unreadable validity".into()))?;
    let provider = relay_io::tls::crypto_provider();
    let pair = |key_path: &Path| -> Result<(CertifiedKey, PrivateKeyDer<'static>), IdentityError> {
        let pem = key_store
            .read(key_path)
            .map_err(|source| IdentityError::Io {
                path: key_path.to_path_buf(),
                source,
            })?;
        let key = private_key(&pem)
            .ok_or_else(|| invalid(format!("{}: no private key", key_path.display())))?;
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|e| invalid(format!("{}: {e}", key_path.display())))?;
        Ok((certified, key))
    };
    let (key_path, pending) = (dir.join("key.pem"), dir.join("key.pem.new"));
    let key = match pair(&key_path) {
        Ok(key) => {
            let _ = std::fs::remove_file(&pending);
            key
        }
        Err(first) if pending.exists() => {
            let key = pair(&pending).map_err(|_| first)?;
            std::fs::rename(&pending, &key_path).map_err(|source| IdentityError::Io {
                path: key_path,
                source,
            })?;
            key
        }
        Err(e) => return Err(e),
    };
    let (key, key_der) = key;
    Ok(Current {
        key: Arc::new(key),
        key_der: Arc::new(key_der),
        not_before,
        not_after,
    })
}

pub(super) fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    rustls_pemfile::certs(&mut &pem[..]).collect()
}

pub(super) fn private_key(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..]).ok().flatten()
}

/// notBefore and notAfter of a DER certificate.
pub(super) fn validity(der: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}
