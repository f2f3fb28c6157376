//! The key as a DPAPI blob in user scope: only the account that wrote it (the service's)
//! can unprotect it on this machine. Machine scope is not used: any local process could
//! undo it. A plain PEM written before DPAPI was in use is still read, and re-protected on
//! the next write.

use std::io;
use std::path::Path;

use super::KeyStore;

/// Mixed into every blob, so a blob made by another program for this account is refused.
const ENTROPY: &[u8] = b"relay-listener identity key v1";

/// DPAPI-protected key file.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct DpapiKeyStore;

impl KeyStore for DpapiKeyStore {
    fn write(&self, path: &Path, pem: &[u8]) -> io::Result<()> {
        let blob = windows_dpapi::encrypt_data(pem, windows_dpapi::Scope::User, Some(ENTROPY))
            .map_err(|e| io::Error::other(format!("DPAPI protect: {e}")))?;
        relay_io::secure_fs::write_atomic(path, &blob, true)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let data = std::fs::read(path)?;
        if data.starts_with(b"-----BEGIN") {
            return Ok(data);
        }
        windows_dpapi::decrypt_data(&data, windows_dpapi::Scope::User, Some(ENTROPY))
            .map_err(|e| io::Error::other(format!("DPAPI unprotect (another account's key?): {e}")))
    }
}
