//! Secrets the identity plane mints and checks: random tokens, their digests, passwords.

use argon2::password_hash::{PasswordHasher as _, SaltString};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::store::StoreError;

/// A 256-bit random secret, base64url, never starting with `-`: people paste secrets after
/// a flag, and a leading `-` makes every command-line parser read a flag (about one secret
/// in 64 would). Drawing again costs under 0.03 bits of the 256.
pub(crate) fn new_secret() -> String {
    loop {
        let secret =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        if !secret.starts_with('-') {
            return secret;
        }
    }
}

pub(crate) fn sha256_hex(text: &str) -> String {
    super::ca::hex(&Sha256::digest(text.as_bytes()))
}

/// argon2id with the crate's default (OWASP-recommended) parameters, as a PHC string.
pub(crate) fn hash_password(password: &str) -> std::result::Result<String, StoreError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Database(format!("hashing: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_secret_reads_as_a_flag() {
        // One in 64 would start with '-' if drawn plainly: 2,000 draws miss that with odds
        // of about 1 in 10^13.
        for _ in 0..2_000 {
            let secret = super::new_secret();
            assert!(!secret.starts_with('-'), "{secret}");
            assert_eq!(secret.len(), 43);
        }
    }
}
