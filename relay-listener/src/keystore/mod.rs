//! Where the listener's private key rests, behind [`KeyStore`]: a mode-0600 file on Unix
//! ([`FileKeyStore`]), and on Windows a file holding a DPAPI blob bound to the service
//! account ([`platform_key_store`] picks it), so a copied disk or another account cannot
//! use the key. A CNG or TPM store that never exports the key is the next step; it would
//! implement this trait with signing instead of reading.

use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(windows)]
mod dpapi;

/// Keeps the listener's private key (PEM) at rest.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Stores `pem` at `path`, atomically and readable by this account only.
    fn write(&self, path: &Path, pem: &[u8]) -> io::Result<()>;
    /// Reads what [`KeyStore::write`] stored at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
}

/// A plain PEM file, mode 0600 on Unix, written atomically.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileKeyStore;

impl KeyStore for FileKeyStore {
    fn write(&self, path: &Path, pem: &[u8]) -> io::Result<()> {
        relay_io::secure_fs::write_atomic(path, pem, true)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// The store for this platform: DPAPI on Windows, a 0600 file elsewhere.
#[must_use]
pub fn platform_key_store() -> Arc<dyn KeyStore> {
    #[cfg(windows)]
    {
        Arc::new(dpapi::DpapiKeyStore)
    }
    #[cfg(not(windows))]
    {
        Arc::new(FileKeyStore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trip_is_private() {
        let dir = std::env::temp_dir().join(format!("relay-keystore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        FileKeyStore
            .write(&path, b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert_eq!(
            FileKeyStore.read(&path).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
