//! Writing secrets to disk: atomically (temp file, fsync, rename) and, on Unix, with mode
//! 0600 from the moment the file exists, so a crash never leaves a readable or half-written key.

use std::io::Write as _;
use std::path::Path;

/// Writes `contents` to `path` atomically; `secret` files get mode 0600 on Unix.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    restrict(&mut options, secret);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a directory (and parents) that only the owner can enter, on Unix.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    set_private_dir(path)
}

#[cfg(unix)]
fn restrict(options: &mut std::fs::OpenOptions, secret: bool) {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.mode(if secret { 0o600 } else { 0o644 });
}

#[cfg(not(unix))]
fn restrict(_options: &mut std::fs::OpenOptions, _secret: bool) {}

#[cfg(unix)]
fn set_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn set_private_dir(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
