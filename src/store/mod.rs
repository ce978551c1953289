//! Durable stores behind the core's [`Store`] port: SQLite (a file path, the embedded default)
//! or PostgreSQL (`quota.database = "postgres://…"`), chosen here from `quota.database`.

pub mod copy;
pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::ports::store::{Store, StoreError};

/// The service a job's images are counted under in reports (the same SQL in both stores): its
/// recorded service; jobs that made no image belong to none; images made before services were
/// recorded are listed under their model.
pub(crate) const SERVICE_OF_JOB: &str = "COALESCE(service, CASE WHEN generated > 0 OR status = 'delivered' \
     THEN model ELSE '(no image)' END)";

/// Statuses whose cost counts against quotas (SQL shared by both stores).
pub(crate) const CHARGED: &str = "status IN ('queued','running','ready','delivered','undelivered')";

/// Statuses a job can still leave.
pub(crate) const OPEN: &str = "status IN ('queued','running','ready')";

/// What `Store::unfinished` lists: open jobs, and failed ones whose user was not told yet.
pub(crate) const UNFINISHED: &str =
    "(status IN ('queued','running','ready') OR (status = 'failed' AND NOT told))";

/// A time as both stores keep it: milliseconds since the epoch.
pub(crate) fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored time back (a value out of range reads as the epoch).
pub(crate) fn time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone as _;
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
}

/// Whether `quota.database` names a PostgreSQL server rather than a SQLite file.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// What makes `quota.database` unusable, one line each.
pub fn problems(database: &str, out: &mut Vec<String>) {
    if database.trim().is_empty() {
        out.push("quota.database is empty".into());
    } else if is_postgres(database) {
        postgres::problems(database, out);
    } else if database.contains("://") {
        out.push(format!(
            "quota.database = {:?}: use a SQLite file path or a postgres:// URL",
            crate::config::without_password(database)
        ));
    }
}

/// Opens the store named by `quota.database` (creating or migrating its schema).
pub fn open(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_leased(database, postgres::DEFAULT_LEASE)
}

/// [`open`], with the jobs a replica holds on a shared store leased `lease` at a time
/// (`quota.job_lease_secs`; a store of one process's own holds no leases).
pub fn open_leased(
    database: &str,
    lease: std::time::Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres(database) {
        return Ok(Arc::new(postgres::open(database)?.with_lease(lease)));
    }
    if database.contains("://") {
        return Err(StoreError(format!(
            "{}: use a SQLite file path or a postgres:// URL",
            crate::config::without_password(database)
        )));
    }
    Ok(Arc::new(sqlite::SqliteStore::open(Path::new(database))?))
}

/// Opens the store named by `quota.database` only if it exists (admin commands).
pub fn open_existing(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres(database) {
        return Ok(Arc::new(postgres::open_existing(database)?));
    }
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

/// Tells running daemons that an admin command changed the store: a stamp file beside a SQLite
/// database (read four times a second), a `NOTIFY` on PostgreSQL (heard at once by every
/// replica).
pub async fn mark_changed(database: &str) {
    if is_postgres(database) {
        if let Err(e) = postgres::notify_changed(database).await {
            tracing::warn!(error = %e, "cannot notify running daemons of the change; they see it within 10 s");
        }
        return;
    }
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
pub enum StoreLock {
    /// An exclusive lock on `<database>.lock`.
    File(std::fs::File),
    /// A PostgreSQL store is shared: replicas run side by side, each holding its jobs by lease
    /// (and together keeping daemons of earlier versions out).
    Shared(postgres::ReplicaLock),
}

/// Takes the one-daemon-per-store lock of a SQLite store: an exclusive lock on
/// `<database>.lock`; another daemon holding it is an error naming the store. A PostgreSQL
/// store takes any number of replicas. Report commands (`usage`, `quota`) do not take it.
pub async fn lock(database: &str) -> anyhow::Result<StoreLock> {
    if is_postgres(database) {
        return Ok(StoreLock::Shared(
            postgres::refuse_beside_older(database).await?,
        ));
    }
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
        Ok(()) => Ok(StoreLock::File(file)),
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

/// A role one replica plays at a time (polling Telegram, where a second poller would be
/// refused).
#[derive(Debug, Clone, Copy)]
pub enum Role {
    TelegramPolling,
}

impl Role {
    /// Its advisory lock key on PostgreSQL ("qeb-tgpo").
    fn key(self) -> i64 {
        match self {
            Role::TelegramPolling => 0x7165_622d_7467_706f,
        }
    }
}

/// Whether this process plays `role`: always on a SQLite store (one daemon per file); on
/// PostgreSQL elected among the replicas ([`postgres::elect`]), and taken over by another
/// replica within seconds when the one playing it dies.
pub fn leader(database: &str, role: Role) -> tokio::sync::watch::Receiver<bool> {
    if is_postgres(database) {
        return postgres::elect(database.to_owned(), role.key());
    }
    let (tx, rx) = tokio::sync::watch::channel(true);
    // Nothing ever changes it; the receiver reads `true` after the sender is gone.
    drop(tx);
    rx
}
