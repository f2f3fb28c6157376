//! The broker's certificate authority for listener identities.
//!
//! Two levels: a root, and an online issuing CA (path length 0, clientAuth) that is the only
//! issuer the mTLS verifier will trust for listeners. Both are created on first start, or
//! loaded from `[ca].dir`; private keys are written atomically with mode 0600. The server's
//! own TLS chain is separate (`[server].tls_cert`).
//!
//! Listener certificates follow the registration design's profile: nothing is copied from
//! the CSR except its (signature-checked) public key; a random 128-bit serial; valid from
//! five minutes ago (clock skew) for the configured lifetime; one SAN URI naming the
//! listener; `CA:false`, digitalSignature, clientAuth only, AKI and SKI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use relay_io::secure_fs::{create_private_dir, write_atomic};

/// How far `notBefore` is backdated: a broker whose clock is stepped back by up to an hour
/// (or a peer whose clock runs that far behind) still accepts what it issued just before.
/// An hour, as public CAs backdate; it widens nothing a relying party checks forwards.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// Lifetime of the root created on first start.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of the issuing CA created on first start.
const ISSUING_LIFETIME: Duration = Duration::from_secs(2 * 365 * 86_400);
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// The file that marks a CA being created; its creator removes it when done.
const CREATE_LOCK: &str = ".creating";

/// How long a node waits for another one to finish creating the CA.
pub const CREATE_WAIT: Duration = Duration::from_secs(10);

/// Certificate authority failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing the CA files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA files exist but do not form a usable CA (or only some of them exist).
    #[error("CA files in {0}: {1}")]
    Corrupt(PathBuf, String),
    /// The CSR is malformed, too large, or its self-signature does not verify.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR's key type or size is not allowed.
    #[error("key type not allowed: {0} (use ECDSA P-256 or Ed25519)")]
    KeyNotAllowed(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
}

/// A listener certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// The serial as lower-case hex (what revocation lists name).
    pub serial: String,
    /// SHA-256 of the subject public key, hex: the fingerprint recorded against the person.
    pub key_fingerprint: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
}

pub use crate::seams::authority::PeerCertificate;

/// The root and issuing CA.
pub struct CertificateAuthority {
    dir: PathBuf,
    root_pem: String,
    issuing_pem: String,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates it there on first start. Safe when several
    /// nodes of a cluster start at once on the same empty folder: one creates it under a
    /// lock file, the others wait (at most [`CREATE_WAIT`]) and load what it made, so there
    /// is one CA, never one per node.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let files = ["root.pem", "root.key", "issuing.pem", "issuing.key"].map(|f| dir.join(f));
        let lock = dir.join(CREATE_LOCK);
        let deadline = std::time::Instant::now() + CREATE_WAIT;
        let count = || files.iter().filter(|f| f.exists()).count();
        loop {
            if lock.exists() {
                // Another node is creating it.
                if std::time::Instant::now() > deadline {
                    return Err(CaError::Corrupt(
                        dir.into(),
                        format!(
                            "another broker has been creating the CA for {} s, or died doing so: if no broker is starting, remove {} and the partial CA files",
                            CREATE_WAIT.as_secs(),
                            lock.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let present = count();
            match present {
                4 => return Self::load(dir, trust_domain),
                0 => {
                    create_private_dir(dir).map_err(|source| CaError::Io {
                        path: dir.into(),
                        source,
                    })?;
                    let claimed = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&lock);
                    match claimed {
                        Ok(_) => {
                            let created = Self::create(dir, trust_domain, now);
                            let _ = std::fs::remove_file(&lock);
                            return created;
                        }
                        // Another node claimed it first: wait for its CA.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(source) => return Err(CaError::Io { path: lock, source }),
                    }
                }
                // A node may have claimed the lock since it was looked at, or finished and
                // let go of it: only a partial set that stays so is corrupt.
                _ if lock.exists() || count() != present => {}
                _ => {
                    return Err(CaError::Corrupt(
                        dir.into(),
                        "some CA files are missing; restore them or remove all four".into(),
                    ));
                }
            }
        }
    }

    fn create(dir: &Path, trust_domain: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        create_private_dir(dir).map_err(io(dir))?;
        let root_key = KeyPair::generate()?;
        let mut root = ca_params("Relay Root", now, ROOT_LIFETIME, None);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = root.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root, root_key);

        let issuing_key = KeyPair::generate()?;
        let mut issuing = ca_params("Relay Listener Client CA", now, ISSUING_LIFETIME, Some(0));
        issuing.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        issuing.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issuing.use_authority_key_identifier_extension = true;
        let issuing_cert = issuing.signed_by(&issuing_key, &root_issuer)?;

        // Keys first: a crash in between leaves a partial set, which load refuses loudly.
        for (name, body, secret) in [
            ("root.key", root_issuer_key_pem(&root_issuer), true),
            ("issuing.key", issuing_key.serialize_pem(), true),
            ("root.pem", root_cert.pem(), false),
            ("issuing.pem", issuing_cert.pem(), false),
        ] {
            let path = dir.join(name);
            write_atomic(&path, body.as_bytes(), secret).map_err(io(&path))?;
        }
        Ok(Self {
            dir: dir.into(),
            root_pem: root_cert.pem(),
            issuing_pem: issuing_cert.pem(),
            issuer: Issuer::new(issuing, issuing_key),
            trust_domain: trust_domain.into(),
        })
    }

    fn load(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
        };
        let (root_pem, issuing_pem, issuing_key) = (
            read("root.pem")?,
            read("issuing.pem")?,
            read("issuing.key")?,
        );
        let corrupt = |e: rcgen::Error| CaError::Corrupt(dir.into(), e.to_string());
        let key = KeyPair::from_pem(&issuing_key).map_err(corrupt)?;
        let issuer = Issuer::from_ca_cert_pem(&issuing_pem, key).map_err(corrupt)?;
        Ok(Self {
            dir: dir.into(),
            root_pem,
            issuing_pem,
            issuer,
            trust_domain: trust_domain.into(),
        })
    }

    /// The chain a listener presents after its leaf: issuing CA then root.
    #[must_use]
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.issuing_pem, self.root_pem)
    }

    /// The root, for trust stores.
    #[must_use]
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The issuing CA, DER: the only trust anchor for listener client certificates.
    pub fn issuing_der(&self) -> Result<rustls_pki_types::CertificateDer<'static>, CaError> {
        rustls_pemfile::certs(&mut self.issuing_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                CaError::Corrupt(self.dir.clone(), "issuing.pem holds no certificate".into())
            })
    }

    /// Who a verified client certificate names: its listener id (from the SAN URI this CA
    /// writes), serial and expiry. `None` for a certificate this CA's profile did not make.
    #[must_use]
    pub fn identify(&self, der: &[u8]) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let prefix = self.listener_uri("");
        let san = cert.subject_alternative_name().ok()??;
        let listener_id = san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(prefix.as_str()),
            _ => None,
        })?;
        Some(PeerCertificate {
            listener_id: listener_id.to_owned(),
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp().max(0) as u64,
        })
    }

    /// The SAN URI that names a listener.
    #[must_use]
    pub fn listener_uri(&self, listener_id: &str) -> String {
        format!("spiffe://{}/listener/{listener_id}", self.trust_domain)
    }

    /// Issues a listener certificate for the key in `csr_pem`.
    pub fn issue(
        &self,
        csr_pem: &str,
        listener_id: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CaError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::InvalidCsr(format!(
                "larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let der = csr_der(csr_pem)?;
        // Parsing checks the CSR's self-signature: the requester holds the private key.
        let csr = CertificateSigningRequestParams::from_der(&der.into())
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(CaError::KeyNotAllowed(format!("{alg:?}")));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, listener_id);
        params.distinguished_name = dn;
        let uri = self.listener_uri(listener_id);
        params.subject_alt_names = vec![SanType::URI(
            uri.try_into()
                .map_err(|e: rcgen::Error| CaError::InvalidCsr(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        // The serial as encoded (DER drops a leading zero byte): what TLS peers present.
        let serial = x509_parser::parse_x509_certificate(cert.der())
            .map(|(_, c)| hex(c.raw_serial()))
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial,
            key_fingerprint: hex(&Sha256::digest(csr.public_key.der_bytes())),
            not_after: params.not_after,
        })
    }
}

/// The DER of a PEM CSR that holds exactly one `CERTIFICATE REQUEST` block, whose DER has
/// no trailing bytes: anything looser would let a second, unchecked object ride along.
fn csr_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    use x509_parser::prelude::FromDer as _;
    let invalid = |why: &str| CaError::InvalidCsr(why.into());
    let mut sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes());
    let (kind, der) = match (sections.next(), sections.next()) {
        (Some(Ok(first)), None) => first,
        (None, _) => return Err(invalid("no PEM block")),
        (Some(Err(_)), _) | (Some(Ok(_)), Some(Err(_))) => return Err(invalid("bad PEM")),
        (Some(Ok(_)), Some(Ok(_))) => return Err(invalid("more than one PEM block")),
    };
    if kind != SectionKind::Csr {
        return Err(invalid("the PEM block is not a CERTIFICATE REQUEST"));
    }
    let parsed = x509_parser::certification_request::X509CertificationRequest::from_der(&der);
    match parsed {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err(invalid("trailing bytes after the DER")),
        Err(e) => Err(CaError::InvalidCsr(e.to_string())),
    }
}

fn ca_params(
    name: &str,
    now: OffsetDateTime,
    lifetime: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params
}

fn root_issuer_key_pem(issuer: &Issuer<'_, KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// 128 random bits with the top bit cleared, so the DER integer stays positive.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial
}

/// Lower-case hex, as serials and fingerprints are shown and stored.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
