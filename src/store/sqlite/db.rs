//! The synchronous database under [`super::SqliteStore`]: the connection, the quota reads
//! and the reserve transaction. Jobs are in `jobs.rs`, albums, places and reports in `places.rs`.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior, params};

use crate::core::model::UserRef;
use crate::core::ports::store::StoreError;
use crate::core::quota::policy::{Standing, decide, in_force};
use crate::core::quota::{Granted, Limits, QuotaRejection, Reservation, UserSettings, Window};

use super::schema::{SCHEMA, migrate};

/// What a job costs the operator's daily budget: its reserve or charge, or what the backend made
/// when that is more (a refunded job whose images were made still cost money).
pub(super) const SPENT: &str =
    "MAX(CASE WHEN status IN ('queued','running','ready','delivered','undelivered')
                      THEN cost ELSE 0 END, generated)";

/// One SQLite connection, used by one blocking call at a time.
pub(super) struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating the file and its folders if needed) and migrates the database.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
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
    pub(super) fn open_existing(path: &Path) -> Result<Self, StoreError> {
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

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn db(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

pub(super) use crate::store::{CHARGED, ms, time};

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

impl Db {
    pub(super) fn reserve(
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
        let standing = standing_of(&tx, &r.user, r.group.as_deref(), limits, now).map_err(db)?;
        let verdict = decide(limits, &standing, r.cost, r.group.is_some(), now);
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

    pub(super) fn settings(
        &self,
        user: &UserRef,
        group: Option<&str>,
    ) -> Result<UserSettings, StoreError> {
        let (bot_wide, in_chat) = settings_of(&self.conn(), user, group).map_err(db)?;
        Ok(in_force(bot_wide, in_chat))
    }

    pub(super) fn standing(
        &self,
        user: &UserRef,
        group: Option<&str>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError> {
        standing_of(&self.conn(), user, group, limits, now).map_err(db)
    }

    pub(super) fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        upsert(&self.conn(), user, scope, "limit_override", &limit)
    }

    pub(super) fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        upsert(&self.conn(), user, scope, "blocked", &blocked)
    }

    pub(super) fn reset_usage(&self, user: &UserRef) -> Result<(), StoreError> {
        let conn = self.conn();
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM jobs", [], |r| r.get(0))
            .map_err(db)?;
        upsert(&conn, user, None, "reset_seq", &last)
    }

    pub(super) fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        used_by_user(&self.conn(), user, None, ms(since), 0).map_err(db)
    }
}
