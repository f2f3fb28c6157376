use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-ca-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A CSR asking for things it must not get: another CN, a SAN, certificate signing,
/// serverAuth.
fn greedy_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "admin");
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

fn der(pem_text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// DER of the first certificate in a PEM chain (the issuing CA in `chain_pem`).
fn first_cert_der(chain: &str) -> Vec<u8> {
    der(chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap())
}

#[test]
fn issues_the_profile_and_nothing_from_the_csr() {
    let dir = temp_dir("profile");
    let ca = CertificateAuthority::load_or_create(&dir, "relay.test", now()).unwrap();
    let key = KeyPair::generate().unwrap();
    let lifetime = Duration::from_secs(7 * 86_400);
    let issued = ca.issue(&greedy_csr(&key), "l-1", lifetime, now()).unwrap();
    let leaf_der = der(&issued.pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();

    assert_eq!(cert.subject().to_string(), "CN=l-1");
    assert_eq!(cert.validity().not_before.timestamp(), 1_800_000_000 - 3600);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        1_800_000_000 + 7 * 86_400
    );
    assert_eq!(cert.raw_serial().len(), 16);
    assert_eq!(cert.raw_serial_as_string().replace(':', ""), issued.serial);
    let mut uris = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => assert!(!bc.ca),
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
            }
            ParsedExtension::KeyUsage(ku) => assert!(ku.digital_signature() && !ku.key_cert_sign()),
            _ => {}
        }
    }
    assert_eq!(uris, ["spiffe://relay.test/listener/l-1"]);
    assert!(
        cert.get_extension_unique(
            &x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
        )
        .unwrap()
        .is_some()
    );

    // Signed by the issuing CA, whose own signature comes from the root.
    let chain = ca.chain_pem();
    let issuing_der = first_cert_der(&chain);
    let (_, issuing) = X509Certificate::from_der(&issuing_der).unwrap();
    cert.verify_signature(Some(issuing.public_key())).unwrap();
    let root_der = der(ca.root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    issuing.verify_signature(Some(root.public_key())).unwrap();

    // Same key twice: different serials (never rcgen's key-derived default).
    let again = ca.issue(&greedy_csr(&key), "l-1", lifetime, now()).unwrap();
    assert_ne!(again.serial, issued.serial);
    assert_eq!(again.key_fingerprint, issued.key_fingerprint);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_csrs_are_refused() {
    let dir = temp_dir("bad");
    let ca = CertificateAuthority::load_or_create(&dir, "relay.test", now()).unwrap();
    let lifetime = Duration::from_secs(3600);
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert!(matches!(
        ca.issue(&greedy_csr(&p384), "x", lifetime, now()),
        Err(CaError::KeyNotAllowed(_))
    ));
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(ca.issue(&greedy_csr(&ed), "x", lifetime, now()).is_ok());

    // Flip a byte inside the signed part: the self-signature no longer verifies.
    let good = greedy_csr(&KeyPair::generate().unwrap());
    let mut bytes = der(&good);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    use base64::Engine as _;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    assert!(matches!(
        ca.issue(&tampered, "x", lifetime, now()),
        Err(CaError::InvalidCsr(_))
    ));
    assert!(matches!(
        ca.issue("not a csr", "x", lifetime, now()),
        Err(CaError::InvalidCsr(_))
    ));
    // §4.10 #13: one CSR block, nothing more, nothing else.
    let one = der(&good);
    for (what, pem) in [
        ("two blocks", format!("{good}{good}")),
        ("a certificate", pem_block("CERTIFICATE", &one)),
        (
            "trailing DER",
            pem_block("CERTIFICATE REQUEST", &[one.clone(), vec![0]].concat()),
        ),
        (
            "garbage base64",
            "-----BEGIN CERTIFICATE REQUEST-----\n%%%\n-----END CERTIFICATE REQUEST-----\n".into(),
        ),
        (
            "truncated DER",
            pem_block("CERTIFICATE REQUEST", &one[..one.len() - 8]),
        ),
    ] {
        assert!(
            matches!(
                ca.issue(&pem, "x", lifetime, now()),
                Err(CaError::InvalidCsr(_))
            ),
            "{what}"
        );
    }
    // §4.10 #15: CA:true, or an extension the profile does not know, is refused (rcgen's
    // parser allows only SAN, KU and EKU), so misuse is visible rather than ignored.
    for (what, oid, content) in [
        (
            "CA:true",
            &[2u64, 5, 29, 19][..],
            vec![0x30, 0x03, 0x01, 0x01, 0xff],
        ),
        (
            "unknown extension",
            &[1, 3, 6, 1, 4, 1, 99_999, 1][..],
            vec![0x05, 0x00],
        ),
    ] {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(oid, content)];
        let asked = params
            .serialize_request(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
            .unwrap();
        assert!(
            matches!(
                ca.issue(&asked, "x", lifetime, now()),
                Err(CaError::InvalidCsr(_))
            ),
            "{what}"
        );
    }
    let huge = "A".repeat(MAX_CSR_BYTES + 1);
    assert!(matches!(
        ca.issue(&huge, "x", lifetime, now()),
        Err(CaError::InvalidCsr(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn created_once_then_loaded_with_private_keys() {
    let dir = temp_dir("persist");
    let first = CertificateAuthority::load_or_create(&dir, "relay.test", now()).unwrap();
    let second = CertificateAuthority::load_or_create(&dir, "relay.test", now()).unwrap();
    assert_eq!(first.root_pem(), second.root_pem());
    assert_eq!(first.chain_pem(), second.chain_pem());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for key in ["root.key", "issuing.key"] {
            let mode = std::fs::metadata(dir.join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    // A certificate issued after reloading chains to the same root.
    let key = KeyPair::generate().unwrap();
    let issued = second
        .issue(&greedy_csr(&key), "l-2", Duration::from_secs(60), now())
        .unwrap();
    let leaf_der = der(&issued.pem);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    let chain = first.chain_pem();
    let issuing_der = first_cert_der(&chain);
    let (_, issuing) = X509Certificate::from_der(&issuing_der).unwrap();
    cert.verify_signature(Some(issuing.public_key())).unwrap();

    std::fs::remove_file(dir.join("issuing.pem")).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&dir, "relay.test", now()),
        Err(CaError::Corrupt(..))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn san_type_is_uri() {
    assert!(matches!(
        SanType::URI("spiffe://a/b".try_into().unwrap()),
        SanType::URI(_)
    ));
}

#[test]
fn nodes_starting_at_once_on_an_empty_folder_share_one_ca() {
    let dir = temp_dir("cluster-start");
    let roots: Vec<String> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..4)
            .map(|_| s.spawn(|| CertificateAuthority::load_or_create(&dir, "relay", now())))
            .collect();
        starting
            .into_iter()
            .map(|h| h.join().unwrap().unwrap().root_pem)
            .collect()
    });
    assert!(
        roots.windows(2).all(|w| w[0] == w[1]),
        "one CA, not one per node"
    );
    assert!(
        !dir.join(CREATE_LOCK).exists(),
        "the lock is gone once created"
    );
    let reloaded = CertificateAuthority::load_or_create(&dir, "relay", now()).unwrap();
    assert_eq!(reloaded.root_pem, roots[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
