//! Quotas in the PostgreSQL store: the reads behind a [`Standing`], the reserve transaction,
//! and the admins' per-user settings. The rules themselves are `core::quota::policy`'s.

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::core::model::UserRef;
use crate::core::ports::store::StoreError;
use crate::core::quota::policy::{Standing, decide, in_force};
use crate::core::quota::{Admission, Limits, QuotaRejection, Reservation, UserSettings, Window};

use super::{PgStore, Verdict, get, pg, small};
use crate::store::{CHARGED, ms};

/// What a job costs the operator's daily budget: its reserve or charge, or what the backend made
/// when that is more (a refunded job whose images were made still cost money).
const SPENT: &str =
    "GREATEST(CASE WHEN status IN ('queued','running','ready','delivered','undelivered')
                                   THEN cost ELSE 0 END, generated)";

/// The advisory lock every reserve (and reset) takes ("qeb-res"): quota decisions are made one
/// at a time across all processes sharing the database, so limits hold exactly.
const RESERVE_LOCK: i64 = 0x0071_6562_2d72_6573;

type Param<'a> = &'a (dyn ToSql + Sync);

async fn lock_quotas(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RESERVE_LOCK])
        .await
        .map_err(pg)?;
    Ok(())
}

/// The user's bot-wide settings and, in `group`, that group's own.
async fn settings_of(
    tx: &Transaction<'_>,
    user: &UserRef,
    group: Option<&str>,
) -> Result<(UserSettings, Option<UserSettings>), StoreError> {
    let rows = tx
        .query(
            "SELECT scope, limit_override, blocked, reset_seq FROM users
             WHERE platform = $1 AND user_id = $2 AND (scope = '' OR scope = $3)",
            &[&user.platform.as_str(), &user.id, &group.unwrap_or("")],
        )
        .await
        .map_err(pg)?;
    let (mut bot_wide, mut in_chat) = (UserSettings::default(), None);
    for row in &rows {
        let scope: String = get(row, 0)?;
        let limit: Option<i64> = get(row, 1)?;
        let settings = UserSettings {
            limit_override: limit.map(small),
            blocked: get(row, 2)?,
            reset_after: get(row, 3)?,
        };
        if scope.is_empty() {
            bot_wide = settings;
        } else {
            // Only bot-wide resets count (a chat's admins cannot forgive usage).
            in_chat = Some(UserSettings {
                reset_after: None,
                ..settings
            });
        }
    }
    Ok((bot_wide, in_chat))
}

/// One summed count.
async fn sum(tx: &Transaction<'_>, sql: &str, params: &[Param<'_>]) -> Result<u32, StoreError> {
    let row = tx.query_one(sql, params).await.map_err(pg)?;
    Ok(small(get(&row, 0)?))
}

async fn used_by_user(
    tx: &Transaction<'_>,
    user: &UserRef,
    group: Option<&str>,
    since: i64,
    after_seq: i64,
) -> Result<u32, StoreError> {
    let sql = format!(
        "SELECT COALESCE(SUM(cost), 0)::BIGINT FROM jobs
         WHERE platform = $1 AND user_id = $2 AND created_at >= $3 AND seq > $4
           AND ($5::TEXT IS NULL OR group_id = $5) AND {CHARGED}"
    );
    let platform = user.platform.as_str();
    sum(tx, &sql, &[&platform, &user.id, &since, &after_seq, &group]).await
}

async fn used_by_group(
    tx: &Transaction<'_>,
    user: &UserRef,
    group: &str,
    since: i64,
) -> Result<u32, StoreError> {
    let sql = format!(
        "SELECT COALESCE(SUM(cost), 0)::BIGINT FROM jobs
         WHERE platform = $1 AND group_id = $2 AND created_at >= $3 AND {CHARGED}"
    );
    let platform = user.platform.as_str();
    sum(tx, &sql, &[&platform, &group, &since]).await
}

async fn spent_globally(tx: &Transaction<'_>, since: i64) -> Result<u32, StoreError> {
    let sql = format!("SELECT COALESCE(SUM({SPENT}), 0)::BIGINT FROM jobs WHERE created_at >= $1");
    sum(tx, &sql, &[&since]).await
}

/// Reads everything `policy` needs about `user` in `group` at `now` (the clock read once, by the
/// caller).
async fn standing_of(
    tx: &Transaction<'_>,
    user: &UserRef,
    group: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Standing, StoreError> {
    let (bot_wide, in_chat) = settings_of(tx, user, group).await?;
    let start = ms(limits.window.start(now));
    let after = bot_wide.reset_after.unwrap_or(0);
    // Only what a limit in force needs: the user's usage in this chat only under a chat limit,
    // the chat's usage only under `per_chat`.
    let chat_limited = in_chat.is_some_and(|s| s.limit_override.is_some());
    let used_in_chat = match group {
        Some(g) if chat_limited => used_by_user(tx, user, Some(g), start, after).await?,
        _ => 0,
    };
    let chat_used = match group {
        Some(g) if limits.per_chat > 0 => used_by_group(tx, user, g, start).await?,
        _ => 0,
    };
    let global_used = match limits.global_per_day {
        0 => 0,
        _ => spent_globally(tx, ms(Window::Day.start(now))).await?,
    };
    Ok(Standing {
        bot_wide,
        in_chat,
        used_total: used_by_user(tx, user, None, start, after).await?,
        used_in_chat,
        chat_used,
        global_used,
    })
}

/// Records the reserved job as queued, held by this replica for one lease.
async fn insert_job(
    db: &PgStore,
    tx: &Transaction<'_>,
    r: &Reservation,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (platform, cost, created) = (r.user.platform.as_str(), i64::from(r.cost), ms(now));
    let (owner, lease) = (&*db.owner, ms(db.lease_from(now)));
    tx.execute(
        "INSERT INTO jobs (id, platform, user_id, chat_id, group_id, model, cost, status,
                           created_at, prompt, spec, token, owner, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $12, $13)",
        &[
            &r.job_id, &platform, &r.user.id, &r.chat, &r.group, &r.model, &cost, &created,
            &r.prompt, &r.spec, &r.token, &owner, &lease,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// The queue's limits over every replica: the user's jobs waiting or running anywhere, and all
/// jobs waiting. Read under the quota lock, so replicas admitting at once cannot both pass.
async fn admission(
    tx: &Transaction<'_>,
    r: &Reservation,
) -> Result<Option<QuotaRejection>, StoreError> {
    let a = r.admission;
    if a == Admission::NONE {
        return Ok(None);
    }
    let row = tx
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE platform = $1 AND user_id = $2),
                    COUNT(*) FILTER (WHERE status = 'queued')
             FROM jobs WHERE status IN ('queued','running')",
            &[&r.user.platform.as_str(), &r.user.id],
        )
        .await
        .map_err(pg)?;
    let (mine, queued): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
    Ok(if mine >= i64::from(a.per_user) {
        Some(QuotaRejection::TooManyInFlight { max: a.per_user })
    } else if queued >= i64::from(a.queued) {
        Some(QuotaRejection::QueueFull)
    } else {
        None
    })
}

/// Check and insert in one transaction, under the quota lock.
pub(super) async fn reserve(
    db: &PgStore,
    r: &Reservation,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Verdict, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    lock_quotas(&tx).await?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)",
            &[&r.job_id],
        )
        .await
        .map_err(pg)?;
    let exists: bool = get(&row, 0)?;
    let verdict = if exists {
        Err(QuotaRejection::Duplicate)
    } else if let Some(full) = admission(&tx, r).await? {
        Err(full)
    } else {
        let standing = standing_of(&tx, &r.user, r.group.as_deref(), limits, now).await?;
        decide(limits, &standing, r.cost, r.group.is_some(), now)
    };
    if verdict.is_ok() {
        insert_job(db, &tx, r, now).await?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(verdict)
}

pub(super) async fn settings(
    db: &PgStore,
    user: &UserRef,
    group: Option<&str>,
) -> Result<UserSettings, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    let (bot_wide, in_chat) = settings_of(&tx, user, group).await?;
    tx.commit().await.map_err(pg)?;
    Ok(in_force(bot_wide, in_chat))
}

pub(super) async fn standing(
    db: &PgStore,
    user: &UserRef,
    group: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Standing, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    let standing = standing_of(&tx, user, group, limits, now).await?;
    tx.commit().await.map_err(pg)?;
    Ok(standing)
}

/// Writes one column of the user's row in `scope` ('' = bot-wide).
async fn upsert(
    tx: &Transaction<'_>,
    user: &UserRef,
    scope: Option<&str>,
    column: &str,
    value: Param<'_>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO users (platform, user_id, scope, {column}) VALUES ($1, $2, $3, $4)
         ON CONFLICT (platform, user_id, scope) DO UPDATE SET {column} = excluded.{column}"
    );
    let (platform, scope) = (user.platform.as_str(), scope.unwrap_or(""));
    tx.execute(&sql, &[&platform, &user.id, &scope, value])
        .await
        .map_err(pg)?;
    Ok(())
}

/// An admin's change to one setting (`column` is ours, never user input).
pub(super) async fn set(
    db: &PgStore,
    user: &UserRef,
    scope: Option<&str>,
    column: &str,
    value: Param<'_>,
) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    upsert(&tx, user, scope, column, value).await?;
    tx.commit().await.map_err(pg)
}

/// Forgets the user's usage so far: only jobs after the last one now count. Under the quota
/// lock, so no reserve is half-way (a job numbered before the reset but stored after it).
pub(super) async fn reset_usage(db: &PgStore, user: &UserRef) -> Result<(), StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    lock_quotas(&tx).await?;
    let row = tx
        .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM jobs", &[])
        .await
        .map_err(pg)?;
    let last: i64 = get(&row, 0)?;
    upsert(&tx, user, None, "reset_seq", &last).await?;
    tx.commit().await.map_err(pg)
}

pub(super) async fn used(
    db: &PgStore,
    user: &UserRef,
    since: DateTime<Utc>,
) -> Result<u32, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    let used = used_by_user(&tx, user, None, ms(since), 0).await?;
    tx.commit().await.map_err(pg)?;
    Ok(used)
}
