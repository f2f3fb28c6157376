//! Secrets the identity plane mints and checks: random tokens, their digests, passwords.

use argon2::password_hash::{PasswordHasher as _, SaltString};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::store::StoreError;

/// A 256-bit random secret, base64url.
pub(crate) fn new_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
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
