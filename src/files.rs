//! File modes in the data dir: it holds the SQLite database (customers' data, the API key, the
//! web chat signing key), the service key and attachments, so the dir is the owner's only (0700)
//! and the database files and keys are 0600, whatever the umask. A wrong mode found at start is
//! fixed and logged.

use std::path::Path;

use anyhow::Context;

/// The file in the data dir holding the service's Ed25519 key (PKCS#8 PEM, mode 0600).
pub const SERVICE_KEY_FILE: &str = "service_key.pem";

/// Files in the data dir that hold secrets or customers' data.
const PRIVATE_FILES: &[&str] = &[
    "concierge.db",
    "concierge.db-wal",
    "concierge.db-shm",
    "concierge.db-journal",
    SERVICE_KEY_FILE,
];

/// Creates the data dir 0700 (or fixes its mode) and, for SQLite, creates the database file
/// 0600 before SQLite does (SQLite gives its WAL and shared-memory files the database's mode).
pub fn secure_data_dir(dir: &Path, sqlite: bool) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        }
        fix_mode(dir, 0o700)?;
        let db = dir.join("concierge.db");
        if sqlite && !db.exists() {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", db.display()));
                }
            }
        }
        secure_files(dir)
    }
    #[cfg(not(unix))]
    {
        let _ = sqlite;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))
    }
}

/// Sets the database files and keys present in the data dir to 0600.
pub fn secure_files(dir: &Path) -> anyhow::Result<()> {
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        if path.exists() {
            fix_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn fix_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let current = meta.permissions().mode() & 0o777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {} to {mode:o}", path.display()))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{current:o}"),
            now = format!("{mode:o}"),
            "fixed the mode of a private file in the data dir"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn fix_mode(_path: &Path, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}
