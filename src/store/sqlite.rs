//! The embedded store: one SQLite file in WAL mode.
//!
//! Each write is its own transaction, committed before the call returns, so a `kill -9` after
//! the user was answered loses nothing. Reserves run in `BEGIN IMMEDIATE` transactions, which
//! makes check-and-insert atomic even across processes sharing the file.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::core::quota::{
    Granted, JobRecord, JobStatus, Ledger, Limits, Platform, QuotaRejection, ReportBy, ReportRow,
    Reservation, StoreError, Unfinished, UserRef, UserSettings, Window,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    platform    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    group_id    TEXT,
    model       TEXT NOT NULL,
    cost        INTEGER NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    request_id  TEXT,
    error       TEXT,
    prompt      TEXT,
    spec        TEXT,
    result_urls TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- 0 while a failed job's user has not been told yet
    told        INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('queued','running','ready');
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (platform, user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_group ON jobs (platform, group_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_time ON jobs (created_at);
CREATE TABLE IF NOT EXISTS users (
    platform       TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    -- '' for the whole bot (operators, CLI); a group or guild id for that chat's admins
    scope          TEXT NOT NULL DEFAULT '',
    limit_override INTEGER,
    blocked        INTEGER NOT NULL DEFAULT 0,
    reset_at       INTEGER,
    PRIMARY KEY (platform, user_id, scope)
);
";

/// Brings a database made by an earlier version up to [`SCHEMA`] (which `CREATE TABLE IF NOT
/// EXISTS` leaves alone): job columns added since, and per-scope user settings.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    for (column, definition) in [
        ("result_urls", "TEXT"),
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("told", "INTEGER NOT NULL DEFAULT 1"),
    ] {
        if !has("jobs", column)? {
            conn.execute_batch(&format!(
                "ALTER TABLE jobs ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    if !has("users", "scope")? {
        // The key gains `scope`: rebuild the table; old settings become bot-wide ('').
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE users RENAME TO users_before_scope;
             CREATE TABLE users (
                 platform TEXT NOT NULL, user_id TEXT NOT NULL, scope TEXT NOT NULL DEFAULT '',
                 limit_override INTEGER, blocked INTEGER NOT NULL DEFAULT 0, reset_at INTEGER,
                 PRIMARY KEY (platform, user_id, scope));
             INSERT INTO users (platform, user_id, scope, limit_override, blocked, reset_at)
                 SELECT platform, user_id, '', limit_override, blocked, reset_at
                 FROM users_before_scope;
             DROP TABLE users_before_scope;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Statuses whose cost counts against quotas.
const CHARGED: &str = "status IN ('queued','running','ready','delivered')";

/// SQLite-backed [`Ledger`].
pub struct SqliteLedger {
    conn: Mutex<Connection>,
}

impl SqliteLedger {
    /// Opens (creating the file and its folders if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        migrate(&conn).map_err(db)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The user's settings as they apply in `group`: the bot-wide row merged with the group's.
/// A block anywhere blocks; the group's own limit wins over the bot-wide one; the later reset
/// counts.
fn settings_of(
    conn: &Connection,
    user: &UserRef,
    group: Option<&str>,
) -> rusqlite::Result<UserSettings> {
    let mut stmt = conn.prepare_cached(
        "SELECT scope, limit_override, blocked, reset_at FROM users
         WHERE platform = ?1 AND user_id = ?2 AND (scope = '' OR scope = ?3)",
    )?;
    let rows = stmt.query_map(
        params![user.platform.as_str(), user.id, group.unwrap_or("")],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                UserSettings {
                    limit_override: r.get::<_, Option<u32>>(1)?,
                    blocked: r.get::<_, bool>(2)?,
                    reset_at: r.get::<_, Option<i64>>(3)?.map(time),
                },
            ))
        },
    )?;
    let mut merged = UserSettings::default();
    let mut scoped_limit = None;
    for row in rows {
        let (scope, s) = row?;
        merged.blocked |= s.blocked;
        merged.reset_at = merged.reset_at.max(s.reset_at);
        if scope.is_empty() {
            merged.limit_override = merged.limit_override.or(s.limit_override);
        } else {
            scoped_limit = s.limit_override;
        }
    }
    merged.limit_override = scoped_limit.or(merged.limit_override);
    Ok(merged)
}

/// Writes one column of the user's row in `scope` ('' = bot-wide).
fn upsert(
    conn: &Connection,
    user: &UserRef,
    scope: Option<&str>,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO users (platform, user_id, scope, {column}) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (platform, user_id, scope) DO UPDATE SET {column} = excluded.{column}"
    );
    conn.execute(
        &sql,
        params![user.platform.as_str(), user.id, scope.unwrap_or(""), value],
    )
    .map_err(db)?;
    Ok(())
}

fn used_by_user(conn: &Connection, user: &UserRef, since: i64) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!(
            "SELECT COALESCE(SUM(cost), 0) FROM jobs
             WHERE platform = ?1 AND user_id = ?2 AND created_at >= ?3 AND {CHARGED}"
        ),
        params![user.platform.as_str(), user.id, since],
        |r| r.get(0),
    )
}

fn used_by_group(
    conn: &Connection,
    user: &UserRef,
    group: &str,
    since: i64,
) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!(
            "SELECT COALESCE(SUM(cost), 0) FROM jobs
             WHERE platform = ?1 AND group_id = ?2 AND created_at >= ?3 AND {CHARGED}"
        ),
        params![user.platform.as_str(), group, since],
        |r| r.get(0),
    )
}

fn used_globally(conn: &Connection, since: i64) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!("SELECT COALESCE(SUM(cost), 0) FROM jobs WHERE created_at >= ?1 AND {CHARGED}"),
        params![since],
        |r| r.get(0),
    )
}

/// Checks every limit; `Ok(Ok(granted))` when the job may be recorded.
fn check_limits(
    conn: &Connection,
    r: &Reservation,
    limits: &Limits,
    now: DateTime<Utc>,
) -> rusqlite::Result<Result<Granted, QuotaRejection>> {
    let settings = settings_of(conn, &r.user, r.group.as_deref())?;
    if settings.blocked {
        return Ok(Err(QuotaRejection::Blocked));
    }
    let limit = settings.limit_override.unwrap_or(limits.per_user);
    if limit == 0 {
        return Ok(Err(QuotaRejection::Disabled));
    }
    let resets_at = limits.window.end(now);
    let start = limits.window.start(now);
    let since = settings.counting_from(start);
    let used = used_by_user(conn, &r.user, ms(since))?;
    if used + r.cost > limit {
        return Ok(Err(QuotaRejection::User {
            used,
            limit,
            resets_at,
        }));
    }
    if let Some(group) = r.group.as_deref().filter(|_| limits.per_chat > 0) {
        let chat_used = used_by_group(conn, &r.user, group, ms(start))?;
        if chat_used + r.cost > limits.per_chat {
            return Ok(Err(QuotaRejection::Chat {
                limit: limits.per_chat,
                resets_at,
            }));
        }
    }
    if limits.global_per_day > 0 {
        let day = Window::Day.start(now);
        if used_globally(conn, ms(day))? + r.cost > limits.global_per_day {
            let resets_at = day + Duration::days(1);
            return Ok(Err(QuotaRejection::Global { resets_at }));
        }
    }
    Ok(Ok(Granted {
        remaining: limit - used - r.cost,
        limit,
        resets_at,
    }))
}

impl Ledger for SqliteLedger {
    fn reserve(
        &self,
        r: &Reservation,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Result<Granted, QuotaRejection>, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)",
                params![r.job_id],
                |row| row.get(0),
            )
            .map_err(db)?;
        if exists {
            return Ok(Err(QuotaRejection::Duplicate));
        }
        let verdict = check_limits(&tx, r, limits, now).map_err(db)?;
        if verdict.is_ok() {
            tx.execute(
                "INSERT INTO jobs (id, platform, user_id, chat_id, group_id, model, cost, status,
                                   created_at, prompt, spec)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?10)",
                params![
                    r.job_id,
                    r.user.platform.as_str(),
                    r.user.id,
                    r.chat,
                    r.group,
                    r.model,
                    r.cost,
                    ms(now),
                    r.prompt,
                    r.spec
                ],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(verdict)
    }

    fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'running', started_at = ?2, attempts = attempts + 1
                 WHERE id = ?1 AND status IN ('queued','running')",
                params![job_id, ms(now)],
            )
            .map_err(db)?;
        Ok(())
    }

    fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let urls = serde_json::to_string(urls).map_err(|e| StoreError(e.to_string()))?;
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'ready', result_urls = ?2, request_id = ?3,
                    started_at = COALESCE(started_at, ?4)
                 WHERE id = ?1 AND status IN ('queued','running')",
                params![job_id, urls, request_id, ms(now)],
            )
            .map_err(db)?;
        Ok(())
    }

    fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, status, spec, request_id, result_urls, attempts, error FROM jobs
                 WHERE status IN ('queued','running','ready') OR (status = 'failed' AND told = 0)
                 ORDER BY seq",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                let status: String = r.get(1)?;
                let urls: Option<String> = r.get(4)?;
                Ok(Unfinished {
                    id: r.get(0)?,
                    status: JobStatus::parse(&status).unwrap_or(JobStatus::Queued),
                    spec: r.get(2)?,
                    request_id: r.get(3)?,
                    urls: urls
                        .and_then(|u| serde_json::from_str(&u).ok())
                        .unwrap_or_default(),
                    attempts: r.get(5)?,
                    error: r.get(6)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis();
        let conn = self.conn();
        // A health check must answer quickly, not wait out the usual lock timeout.
        conn.busy_timeout(std::time::Duration::from_millis(300))
            .map_err(db)?;
        let result = conn.execute(
            "INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?1)",
            params![now],
        );
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        result.map(|_| ()).map_err(db)
    }

    fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET status = ?2, finished_at = ?3,
                    request_id = COALESCE(?4, request_id), error = ?5, told = (?2 != 'failed')
                 WHERE id = ?1 AND status IN ('queued','running','ready')",
                params![job_id, status.as_str(), ms(now), request_id, error],
            )
            .map_err(db)?;
        Ok(())
    }

    fn mark_told(&self, job_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE jobs SET told = 1 WHERE id = ?1", params![job_id])
            .map_err(db)?;
        Ok(())
    }

    fn settings(&self, user: &UserRef, group: Option<&str>) -> Result<UserSettings, StoreError> {
        settings_of(&self.conn(), user, group).map_err(db)
    }

    fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        upsert(&self.conn(), user, scope, "limit_override", &limit)
    }

    fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        upsert(&self.conn(), user, scope, "blocked", &blocked)
    }

    fn reset_usage(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        upsert(&self.conn(), user, scope, "reset_at", &(ms(now) + 1))
    }

    fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        used_by_user(&self.conn(), user, ms(since)).map_err(db)
    }

    fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, platform, user_id, chat_id, model, cost, status, created_at,
                        started_at, finished_at, request_id, error, prompt
                 FROM jobs WHERE id = ?1",
                params![job_id],
                |r| {
                    let platform: String = r.get(1)?;
                    let status: String = r.get(6)?;
                    Ok(JobRecord {
                        id: r.get(0)?,
                        user: UserRef::new(
                            platform
                                .parse()
                                .unwrap_or(crate::core::quota::Platform::Cli),
                            r.get::<_, String>(2)?,
                        ),
                        chat: r.get(3)?,
                        model: r.get(4)?,
                        cost: r.get(5)?,
                        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
                        created_at: time(r.get(7)?),
                        started_at: r.get::<_, Option<i64>>(8)?.map(time),
                        finished_at: r.get::<_, Option<i64>>(9)?.map(time),
                        request_id: r.get(10)?,
                        error: r.get(11)?,
                        prompt: r.get(12)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn job_spec(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT spec FROM jobs WHERE id = ?1",
                params![job_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db)
    }

    fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET spec = NULL
                 WHERE spec IS NOT NULL AND created_at < ?1 AND status IN ('delivered','failed')",
                params![ms(before)],
            )
            .map_err(db)
    }

    fn report(
        &self,
        since: DateTime<Utc>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let key = match by {
            ReportBy::User => "platform || ':' || user_id",
            ReportBy::Chat => "platform || ':' || chat_id",
            ReportBy::Day => "strftime('%Y-%m-%d', created_at / 1000, 'unixepoch')",
        };
        let sql = format!(
            "SELECT {key} AS k,
                    SUM(status = 'delivered'),
                    COALESCE(SUM(CASE WHEN status = 'delivered' THEN cost END), 0),
                    SUM(status = 'failed')
             FROM jobs WHERE created_at >= ?1 AND (?2 IS NULL OR (platform = ?2 AND group_id = ?3))
             GROUP BY k ORDER BY k"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map(
                params![
                    ms(since),
                    within.map(|(p, _)| p.as_str()),
                    within.map(|(_, g)| g)
                ],
                |r| {
                    Ok(ReportRow {
                        key: r.get(0)?,
                        jobs: r.get(1)?,
                        images: r.get(2)?,
                        failed: r.get(3)?,
                    })
                },
            )
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }
}
