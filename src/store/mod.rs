//! Durable stores behind the core's [`Store`] port. SQLite is embedded; a store several replicas
//! share is added here, beside it, without touching callers.

pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::ports::store::{Store, StoreError};

/// What makes `quota.database` unusable, one line each.
pub fn problems(database: &str, out: &mut Vec<String>) {
    if database.trim().is_empty() {
        out.push("quota.database is empty".into());
    } else if database.contains("://") {
        out.push(format!(
            "quota.database = {database:?}: only a SQLite file path is supported in this version"
        ));
    }
}

/// Opens the store named by `quota.database`.
pub fn open(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    if database.contains("://") {
        return Err(StoreError(format!(
            "{database}: only a SQLite file path is supported in this version"
        )));
    }
    Ok(Arc::new(sqlite::SqliteStore::open(Path::new(database))?))
}

/// Opens the store named by `quota.database` only if it exists (admin commands).
pub fn open_existing(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(sqlite::SqliteStore::open_existing(Path::new(
        database,
    ))?))
}

/// `<database>.<suffix>`: the lock and the change stamp live beside the database.
fn beside(database: &str, suffix: &str) -> PathBuf {
    let db = Path::new(database);
    db.with_extension(match db.extension() {
        Some(ext) => format!("{}.{suffix}", ext.to_string_lossy()),
        None => suffix.into(),
    })
}

/// What the admin commands stamp after they changed the store (`<database>.changed`), and
/// the daemon reads four times a second, instead of asking the store.
pub fn change_stamp(database: &str) -> PathBuf {
    beside(database, "changed")
}

/// Stamps the store as changed by an admin command; a running daemon reloads within a second.
pub fn mark_changed(database: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Always forward, even when the clock is not (two changes in one tick, a clock step).
    let nanos = now.max(stamp_of(database).map_or(0, |s| s + 1));
    if let Err(e) = std::fs::write(change_stamp(database), nanos.to_string()) {
        tracing::warn!(error = %e, "cannot stamp the store as changed; a running daemon sees the change within 10 s");
    }
}

/// The stamp (the time of the last change, in nanoseconds), if there is one. Its content, not
/// the file's modification time, which the kernel keeps only to a few milliseconds.
pub fn stamp_of(database: &str) -> Option<u128> {
    std::fs::read_to_string(change_stamp(database))
        .ok()?
        .trim()
        .parse()
        .ok()
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
    let path = beside(database, "lock");
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
