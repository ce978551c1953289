//! Durable stores behind [`crate::core::quota::Ledger`]. SQLite is embedded; a Redis store for
//! several replicas can be added here without touching callers.

pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use crate::core::quota::{Ledger, StoreError};

/// Opens the store named by `quota.database`.
pub fn open(database: &str) -> Result<Arc<dyn Ledger>, StoreError> {
    if database.contains("://") {
        return Err(StoreError(format!(
            "{database}: only a SQLite file path is supported in this version"
        )));
    }
    Ok(Arc::new(sqlite::SqliteLedger::open(Path::new(database))?))
}

/// Opens the store named by `quota.database` only if it exists (admin commands).
pub fn open_existing(database: &str) -> Result<Arc<dyn Ledger>, StoreError> {
    Ok(Arc::new(sqlite::SqliteLedger::open_existing(Path::new(
        database,
    ))?))
}

/// Held while a daemon runs on a store; dropping it (or the process ending, however it ends)
/// lets the next daemon in.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

/// Takes the one-daemon-per-store lock: an exclusive lock on `<database>.lock`. Another daemon
/// holding it is an error naming the file. Report commands (`usage`, `quota`) do not take it.
pub fn lock(database: &str) -> anyhow::Result<StoreLock> {
    let path = Path::new(database).with_extension(match Path::new(database).extension() {
        Some(ext) => format!("{}.lock", ext.to_string_lossy()),
        None => "lock".into(),
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(StoreLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another qwen-edit-bot is already running on the store {database} (it holds {}); \
             stop it first, or give this one its own quota.database",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display())
        }
    }
}
