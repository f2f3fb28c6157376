//! Signing a proof-of-possession login (`relay_core::pop`) with the listener's key, for a
//! broker behind an L7 proxy that ends TLS.

use relay_core::pop::{self, Algorithm, Claims};
use relay_io::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};

/// How long a proof is valid; the broker allows at most [`pop::MAX_LIFETIME_SECS`].
const LIFETIME_SECS: u64 = 30;

/// A compact JWS over `nonce` for the broker at `aud`, carrying `chain` (leaf first).
pub(crate) fn sign(
    key: &PrivateKeyDer<'_>,
    chain: &[CertificateDer<'_>],
    aud: &str,
    nonce: &str,
) -> Result<String, String> {
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err("the identity key is not PKCS#8".into());
    };
    let der = pkcs8.secret_pkcs8_der();
    let rng = ring::rand::SystemRandom::new();
    let now = crate::token::unix_now();
    let claims = Claims {
        aud: aud.to_owned(),
        nonce: nonce.to_owned(),
        iat: now,
        exp: now + LIFETIME_SECS,
        jti: hex(&rand::random::<[u8; 16]>()),
    };
    let chain: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
    if let Ok(ec) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
        let input = pop::signing_input(Algorithm::Es256, &chain, &claims);
        let sig = ec
            .sign(&rng, input.as_bytes())
            .map_err(|_| "signing failed".to_owned())?;
        return Ok(pop::compact(&input, sig.as_ref()));
    }
    let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| "the identity key is neither P-256 nor Ed25519".to_owned())?;
    let input = pop::signing_input(Algorithm::EdDsa, &chain, &claims);
    Ok(pop::compact(&input, ed.sign(input.as_bytes()).as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
