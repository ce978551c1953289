//! The embedded store: one SQLite file in WAL mode.
//!
//! Each write is its own transaction, committed before the call returns, so a `kill -9` after
//! the user was answered loses nothing. Reserves run in `BEGIN IMMEDIATE` transactions, which
//! makes check-and-insert atomic even across processes sharing the file.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::core::policy::{Standing, decide};
use crate::core::quota::{
    AgainSource, Granted, JobRecord, JobStatus, Ledger, Limits, Platform, QuotaRejection, ReportBy,
    ReportRow, Reservation, ResultAt, StoreError, Unfinished, UserRef, UserSettings, Window,
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
    told        INTEGER NOT NULL DEFAULT 1,
    -- images the backend made for the job (spent money, delivered or not)
    generated   INTEGER NOT NULL DEFAULT 0,
    -- the unguessable id in the result's 🔁 button, and the message that carries it
    token          TEXT,
    result_chat    TEXT,
    result_message TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status) WHERE status IN ('queued','running','ready');
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at INTEGER NOT NULL);
-- parts of chat albums being collected (a message each, as JSON), until their job is stored
CREATE TABLE IF NOT EXISTS album_parts (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    group_key TEXT NOT NULL,
    part_id   TEXT NOT NULL,
    part      TEXT NOT NULL,
    UNIQUE (group_key, part_id)
);
-- chats and servers the operator allowed from the CLI (`allow add`), on top of the config's
CREATE TABLE IF NOT EXISTS allowed_places (
    platform TEXT NOT NULL,
    place    TEXT NOT NULL,
    PRIMARY KEY (platform, place)
);
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
    -- an operator's reset: only jobs with a larger seq count (bot-wide rows only)
    reset_seq      INTEGER,
    PRIMARY KEY (platform, user_id, scope)
);
";

/// Indexes on columns that [`migrate`] may have to add first.
const LATE_INDEXES: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs (token) WHERE token IS NOT NULL;";

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
        ("generated", "INTEGER NOT NULL DEFAULT 0"),
        ("token", "TEXT"),
        ("result_chat", "TEXT"),
        ("result_message", "TEXT"),
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
    if !has("users", "reset_seq")? {
        // Resets were times; they become positions in the job sequence. A chat admin's reset is
        // no longer a rule (only operators forgive usage), so only bot-wide ones carry over.
        conn.execute_batch(
            "ALTER TABLE users ADD COLUMN reset_seq INTEGER;
             UPDATE users SET reset_seq =
                 (SELECT COALESCE(MAX(seq), 0) FROM jobs WHERE jobs.created_at < users.reset_at)
             WHERE reset_at IS NOT NULL AND scope = '';",
        )?;
    }
    conn.execute_batch(LATE_INDEXES)
}

/// Statuses whose cost counts against quotas.
const CHARGED: &str = "status IN ('queued','running','ready','delivered','undelivered')";

/// What a job costs the operator's daily budget: its reserve or charge, or what the backend made
/// when that is more (a refunded job whose images were made still cost money).
const SPENT: &str = "MAX(CASE WHEN status IN ('queued','running','ready','delivered','undelivered')
                      THEN cost ELSE 0 END, generated)";

/// Statuses a job can still leave.
const OPEN: &str = "status IN ('queued','running','ready')";

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

    /// Opens a database that must exist already and be one of ours (the admin commands: a
    /// mistyped path must not quietly create an empty database and report zeros).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError(format!(
                "there is no database at {} (quota.database); the daemon creates it when it \
                 first runs: check the path and the --config file",
                path.display()
            )));
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let ours = Connection::open_with_flags(path, flags)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 1);
        if !ours {
            return Err(StoreError(format!(
                "{} is not a qwen-edit-bot database (quota.database)",
                path.display()
            )));
        }
        Self::open(path)
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

/// The user's bot-wide settings and, in `group`, that group's own.
fn settings_of(
    conn: &Connection,
    user: &UserRef,
    group: Option<&str>,
) -> rusqlite::Result<(UserSettings, Option<UserSettings>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT scope, limit_override, blocked, reset_seq FROM users
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
                    reset_after: r.get::<_, Option<i64>>(3)?,
                },
            ))
        },
    )?;
    let (mut bot_wide, mut in_chat) = (UserSettings::default(), None);
    for row in rows {
        match row? {
            (scope, s) if scope.is_empty() => bot_wide = s,
            (_, s) => {
                in_chat = Some(UserSettings {
                    reset_after: None,
                    ..s
                })
            }
        }
    }
    Ok((bot_wide, in_chat))
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

fn used_by_user(
    conn: &Connection,
    user: &UserRef,
    group: Option<&str>,
    since: i64,
    after_seq: i64,
) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!(
            "SELECT COALESCE(SUM(cost), 0) FROM jobs
             WHERE platform = ?1 AND user_id = ?2 AND created_at >= ?3 AND seq > ?4
               AND (?5 IS NULL OR group_id = ?5) AND {CHARGED}"
        ),
        params![user.platform.as_str(), user.id, since, after_seq, group],
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

fn spent_globally(conn: &Connection, since: i64) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!("SELECT COALESCE(SUM({SPENT}), 0) FROM jobs WHERE created_at >= ?1"),
        params![since],
        |r| r.get(0),
    )
}

/// Reads everything `policy` needs about `user` in `group` at `now` (the clock read once, by the
/// caller).
fn standing_of(
    conn: &Connection,
    user: &UserRef,
    group: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> rusqlite::Result<Standing> {
    let (bot_wide, in_chat) = settings_of(conn, user, group)?;
    let start = ms(limits.window.start(now));
    let after = bot_wide.reset_after.unwrap_or(0);
    // Only what a limit in force needs: the user's usage in this chat only under a chat limit,
    // the chat's usage only under `per_chat`.
    let chat_limited = in_chat.is_some_and(|s| s.limit_override.is_some());
    let used_in_chat = match group {
        Some(g) if chat_limited => used_by_user(conn, user, Some(g), start, after)?,
        _ => 0,
    };
    let chat_used = match group {
        Some(g) if limits.per_chat > 0 => used_by_group(conn, user, g, start)?,
        _ => 0,
    };
    Ok(Standing {
        bot_wide,
        in_chat,
        used_total: used_by_user(conn, user, None, start, after)?,
        used_in_chat,
        chat_used,
        global_used: match limits.global_per_day {
            0 => 0,
            _ => spent_globally(conn, ms(Window::Day.start(now)))?,
        },
    })
}

/// Checks every limit; `Ok(Ok(granted))` when the job may be recorded.
fn check_limits(
    conn: &Connection,
    r: &Reservation,
    limits: &Limits,
    now: DateTime<Utc>,
) -> rusqlite::Result<Result<Granted, QuotaRejection>> {
    let standing = standing_of(conn, &r.user, r.group.as_deref(), limits, now)?;
    Ok(decide(limits, &standing, r.cost, r.group.is_some(), now))
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
                                   created_at, prompt, spec, token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?10, ?11)",
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
                    r.spec,
                    r.token
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
        let count = urls.len() as i64;
        let urls = serde_json::to_string(urls).map_err(|e| StoreError(e.to_string()))?;
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'ready', result_urls = ?2, request_id = ?3,
                    started_at = COALESCE(started_at, ?4), generated = ?5
                 WHERE id = ?1 AND status IN ('queued','running')",
                params![job_id, urls, request_id, ms(now), count],
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

    fn deliver(
        &self,
        job_id: &str,
        images: u32,
        request_id: Option<&str>,
        at: Option<&ResultAt>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "UPDATE jobs SET status = 'delivered', finished_at = ?3, cost = MIN(cost, ?2),
                        request_id = COALESCE(?4, request_id), told = 1,
                        result_chat = ?5, result_message = ?6
                     WHERE id = ?1 AND {OPEN}"
                ),
                params![
                    job_id,
                    images,
                    ms(now),
                    request_id,
                    at.map(|a| &a.chat),
                    at.map(|a| &a.message)
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // An undelivered job is charged what the backend made (at most its reserve).
        self.conn()
            .execute(
                &format!(
                    "UPDATE jobs SET status = ?2, finished_at = ?3,
                        request_id = COALESCE(?4, request_id), error = ?5, told = (?2 != 'failed'),
                        cost = CASE WHEN ?2 = 'undelivered' AND generated > 0
                                    THEN MIN(cost, generated) ELSE cost END
                     WHERE id = ?1 AND {OPEN}"
                ),
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
        let (bot_wide, in_chat) = settings_of(&self.conn(), user, group).map_err(db)?;
        let Some(chat) = in_chat else {
            return Ok(bot_wide);
        };
        let limit_override = match (bot_wide.limit_override, chat.limit_override) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(UserSettings {
            limit_override,
            blocked: bot_wide.blocked || chat.blocked,
            reset_after: bot_wide.reset_after,
        })
    }

    fn standing(
        &self,
        user: &UserRef,
        group: Option<&str>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError> {
        standing_of(&self.conn(), user, group, limits, now).map_err(db)
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

    fn reset_usage(&self, user: &UserRef) -> Result<(), StoreError> {
        let conn = self.conn();
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM jobs", [], |r| r.get(0))
            .map_err(db)?;
        upsert(&conn, user, None, "reset_seq", &last)
    }

    fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        used_by_user(&self.conn(), user, None, ms(since), 0).map_err(db)
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

    fn by_token(&self, token: &str) -> Result<Option<AgainSource>, StoreError> {
        self.conn()
            .query_row(
                "SELECT result_chat, result_message, spec FROM jobs
                 WHERE token = ?1 AND spec IS NOT NULL",
                params![token],
                |r| {
                    let (chat, message): (Option<String>, Option<String>) = (r.get(0)?, r.get(1)?);
                    Ok(AgainSource {
                        result_at: chat
                            .zip(message)
                            .map(|(chat, message)| ResultAt { chat, message }),
                        spec: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn save_album_part(&self, group: &str, part_id: &str, part: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO album_parts (group_key, part_id, part) VALUES (?1, ?2, ?3)",
                params![group, part_id, part],
            )
            .map_err(db)?;
        Ok(())
    }

    fn album_parts(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT part FROM album_parts WHERE group_key = ?1 ORDER BY seq")
            .map_err(db)?;
        let rows = stmt.query_map([group], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn album_groups(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT group_key FROM album_parts GROUP BY group_key ORDER BY MIN(seq)")
            .map_err(db)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    fn drop_album(&self, group: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM album_parts WHERE group_key = ?1", [group])
            .map_err(db)?;
        Ok(())
    }

    fn set_allowed(
        &self,
        platform: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let sql = if allowed {
            "INSERT OR IGNORE INTO allowed_places (platform, place) VALUES (?1, ?2)"
        } else {
            "DELETE FROM allowed_places WHERE platform = ?1 AND place = ?2"
        };
        let changed = self
            .conn()
            .execute(sql, params![platform.as_str(), place])
            .map_err(db)?;
        Ok(changed > 0)
    }

    fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT platform, place FROM allowed_places ORDER BY platform, place")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(p, place)| Some((p.parse().ok()?, place)))
            .collect())
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
        until: Option<DateTime<Utc>>,
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
                    SUM(status IN ('failed','undelivered')),
                    COALESCE(SUM(MAX(generated, CASE WHEN status = 'delivered' THEN cost ELSE 0 END)), 0)
             FROM jobs WHERE created_at >= ?1 AND (?4 IS NULL OR created_at < ?4)
                 AND (?2 IS NULL OR (platform = ?2 AND group_id = ?3))
             GROUP BY k ORDER BY k"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(db)?;
        let rows = stmt
            .query_map(
                params![
                    ms(since),
                    within.map(|(p, _)| p.as_str()),
                    within.map(|(_, g)| g),
                    until.map(ms)
                ],
                |r| {
                    let (images, generated): (u64, u64) = (r.get(2)?, r.get(4)?);
                    Ok(ReportRow {
                        key: r.get(0)?,
                        jobs: r.get(1)?,
                        images,
                        failed: r.get(3)?,
                        generated,
                        undelivered: generated.saturating_sub(images),
                    })
                },
            )
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }
}
