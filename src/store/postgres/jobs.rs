//! Jobs in the PostgreSQL store: their states, results, leases, and what a 🔁 token leads to.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::core::model::{Platform, UserRef};
use crate::core::ports::store::{
    AgainSource, JobRecord, JobStatus, ResultAt, StoreError, Unfinished,
};

use super::{PgStore, get, pg, small};
use crate::store::{OPEN, UNFINISHED, ms, time};

/// The columns [`unfinished_of`] reads, in its order.
const UNFINISHED_COLUMNS: &str =
    "id, status, spec, request_id, result_urls, attempts, error, placeholder";

/// A health check answers quickly rather than wait out a busy pool or a locked row.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn mark_running(
    db: &PgStore,
    job_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "UPDATE jobs SET status = 'running', started_at = $2, attempts = attempts + 1
             WHERE id = $1 AND status IN ('queued','running')",
            &[&job_id, &ms(now)],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

pub(super) async fn save_result(
    db: &PgStore,
    job_id: &str,
    request_id: Option<&str>,
    parts: &[String],
    service: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let count = i64::try_from(parts.len()).unwrap_or(i64::MAX);
    let parts = serde_json::to_string(parts).map_err(|e| StoreError(e.to_string()))?;
    db.client()
        .await?
        .execute(
            "UPDATE jobs SET status = 'ready', result_urls = $2, request_id = $3,
                started_at = COALESCE(started_at, $4), generated = $5, service = $6
             WHERE id = $1 AND status IN ('queued','running')",
            &[&job_id, &parts, &request_id, &ms(now), &count, &service],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// One row of [`UNFINISHED_COLUMNS`].
fn unfinished_of(r: &Row) -> Result<Unfinished, StoreError> {
    let status: String = get(r, 1)?;
    let parts: Option<String> = get(r, 4)?;
    let attempts: i64 = get(r, 5)?;
    Ok(Unfinished {
        id: get(r, 0)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Queued),
        spec: get(r, 2)?,
        request_id: get(r, 3)?,
        parts: parts
            .and_then(|u| serde_json::from_str(&u).ok())
            .unwrap_or_default(),
        attempts: small(attempts),
        error: get(r, 6)?,
        placeholder: get(r, 7)?,
    })
}

pub(super) async fn unfinished(db: &PgStore) -> Result<Vec<Unfinished>, StoreError> {
    let sql = format!("SELECT {UNFINISHED_COLUMNS} FROM jobs WHERE {UNFINISHED} ORDER BY seq");
    let rows = db.client().await?.query(&sql, &[]).await.map_err(pg)?;
    rows.iter().map(unfinished_of).collect()
}

/// Takes, oldest first, the unfinished jobs nobody holds a running lease on (their holder
/// stopped or died), never `owner`'s own. `SKIP LOCKED` leaves rows another replica is claiming
/// at the same moment to it, never to both.
pub(super) async fn claim_unfinished(
    db: &PgStore,
    owner: &str,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Unfinished>, StoreError> {
    let (lease, now) = (ms(lease_until), ms(Utc::now()));
    // RETURNING keeps no order: the claimed rows are listed by job sequence, as `unfinished`
    // lists them.
    let sql = format!(
        "WITH claimable AS (
             SELECT seq FROM jobs
             WHERE {UNFINISHED}
               AND owner IS DISTINCT FROM $1::TEXT
               AND (owner IS NULL OR lease_until IS NULL OR lease_until < $3::BIGINT)
             ORDER BY seq
             FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE jobs SET owner = $1::TEXT, lease_until = $2::BIGINT
             FROM claimable WHERE jobs.seq = claimable.seq
             RETURNING jobs.*
         )
         SELECT {UNFINISHED_COLUMNS} FROM claimed ORDER BY seq"
    );
    let rows = db
        .client()
        .await?
        .query(&sql, &[&owner, &lease, &now])
        .await
        .map_err(pg)?;
    rows.iter().map(unfinished_of).collect()
}

/// Marks the job running if `owner` still holds it (a job whose answer is stored stays ready:
/// it is delivered, not run); whether `owner` holds it.
pub(super) async fn start(
    db: &PgStore,
    job_id: &str,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let started = db
        .client()
        .await?
        .execute(
            "UPDATE jobs SET
                 status = CASE WHEN status = 'ready' THEN status ELSE 'running' END,
                 started_at = CASE WHEN status = 'ready' THEN started_at ELSE $3 END,
                 attempts = CASE WHEN status = 'ready' THEN attempts ELSE attempts + 1 END
             WHERE id = $1 AND owner = $2 AND status IN ('queued','running','ready')",
            &[&job_id, &owner, &ms(now)],
        )
        .await
        .map_err(pg)?;
    Ok(started == 1)
}

/// Takes jobs waiting at other replicas since before `waiting_since`, in fair order: each
/// user's oldest first, then their second, and so on. The window function is read in its own
/// step (row locks cannot be taken beside one); the rows are then locked, skipping those another
/// replica is taking or starting, and checked again once locked.
pub(super) async fn take_waiting(
    db: &PgStore,
    owner: &str,
    (lease_until, waiting_since): (DateTime<Utc>, DateTime<Utc>),
    limit: usize,
    platforms: &[&str],
) -> Result<Vec<Unfinished>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = format!(
        "WITH turns AS (
             SELECT seq, row_number() OVER (PARTITION BY platform, user_id ORDER BY seq) AS turn
             FROM jobs
             WHERE status = 'queued' AND owner IS DISTINCT FROM $1::TEXT AND created_at < $3
               AND platform = ANY($5::TEXT[])
         ), chosen AS (
             SELECT jobs.seq FROM jobs JOIN turns ON turns.seq = jobs.seq
             WHERE jobs.status = 'queued' AND jobs.owner IS DISTINCT FROM $1::TEXT
             ORDER BY turns.turn, jobs.seq
             LIMIT $4
             FOR UPDATE OF jobs SKIP LOCKED
         ), taken AS (
             UPDATE jobs SET owner = $1::TEXT, lease_until = $2::BIGINT
             FROM chosen WHERE jobs.seq = chosen.seq
             RETURNING jobs.*
         )
         SELECT {UNFINISHED_COLUMNS} FROM taken ORDER BY seq"
    );
    let rows = db
        .client()
        .await?
        .query(
            &sql,
            &[
                &owner,
                &ms(lease_until),
                &ms(waiting_since),
                &limit,
                &platforms,
            ],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(unfinished_of).collect()
}

/// Gives up `owner`'s hold on one job: unowned (so its renewals leave it alone), any other
/// replica claims it.
pub(super) async fn let_go(db: &PgStore, owner: &str, job_id: &str) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "UPDATE jobs SET owner = NULL, lease_until = 0 WHERE id = $1 AND owner = $2",
            &[&job_id, &owner],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Of `ids`, those no longer held by `owner`.
pub(super) async fn lost(
    db: &PgStore,
    owner: &str,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .client()
        .await?
        .query(
            "SELECT wanted.id FROM unnest($2::TEXT[]) AS wanted(id)
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = wanted.id AND jobs.owner = $1)",
            &[&owner, &ids],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(|r| get(r, 0)).collect()
}

/// Extends `owner`'s lease on its unfinished jobs (claimed, or reserved since it claimed).
pub(super) async fn renew(
    db: &PgStore,
    owner: &str,
    lease_until: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let lease = ms(lease_until);
    let sql = format!("UPDATE jobs SET lease_until = $2 WHERE owner = $1 AND {UNFINISHED}");
    let renewed = db
        .client()
        .await?
        .execute(&sql, &[&owner, &lease])
        .await
        .map_err(pg)?;
    Ok(usize::try_from(renewed).unwrap_or(usize::MAX))
}

/// Ends `owner`'s leases at once (it stops): another replica takes its unfinished jobs at its
/// next look instead of when the leases would have run out.
pub(super) async fn release(db: &PgStore, owner: &str) -> Result<usize, StoreError> {
    renew(db, owner, time(0)).await
}

pub(super) async fn set_placeholder(
    db: &PgStore,
    job_id: &str,
    placeholder: &str,
) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute(
            "UPDATE jobs SET placeholder = $2 WHERE id = $1",
            &[&job_id, &placeholder],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

pub(super) async fn placeholder(db: &PgStore, job_id: &str) -> Result<Option<String>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt("SELECT placeholder FROM jobs WHERE id = $1", &[&job_id])
        .await
        .map_err(pg)?;
    Ok(row.and_then(|r| r.get(0)))
}

pub(super) async fn mark_told(db: &PgStore, job_id: &str) -> Result<(), StoreError> {
    db.client()
        .await?
        .execute("UPDATE jobs SET told = TRUE WHERE id = $1", &[&job_id])
        .await
        .map_err(pg)?;
    Ok(())
}

/// A real write (a read-only standby or a full disk fails it), bounded in time.
pub(super) async fn check_writable(db: &PgStore) -> Result<(), StoreError> {
    match tokio::time::timeout(HEALTH_TIMEOUT, write_health(db)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError(format!(
            "{}: no write within {} s",
            db.target,
            HEALTH_TIMEOUT.as_secs()
        ))),
    }
}

/// Stamps the health row, not waiting long for its lock (another replica checking).
async fn write_health(db: &PgStore) -> Result<(), StoreError> {
    let now = ms(Utc::now());
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute("SET LOCAL lock_timeout = '300ms'")
        .await
        .map_err(pg)?;
    tx.execute(
        "INSERT INTO health (id, checked_at) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        &[&now],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)
}

pub(super) async fn deliver(
    db: &PgStore,
    job_id: &str,
    images: u32,
    request_id: Option<&str>,
    at: Option<&ResultAt>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE jobs SET status = 'delivered', finished_at = $3, cost = LEAST(cost, $2),
            request_id = COALESCE($4, request_id), told = TRUE,
            result_chat = $5, result_message = $6
         WHERE id = $1 AND {OPEN}"
    );
    let (images, chat, message) = (
        i64::from(images),
        at.map(|a| a.chat.as_str()),
        at.map(|a| a.message.as_str()),
    );
    db.client()
        .await?
        .execute(
            &sql,
            &[&job_id, &images, &ms(now), &request_id, &chat, &message],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Failed refunds (the user is still to be told); an undelivered job is charged what the
/// backend made (at most its reserve).
pub(super) async fn finish(
    db: &PgStore,
    job_id: &str,
    status: JobStatus,
    request_id: Option<&str>,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE jobs SET status = $2::TEXT, finished_at = $3,
            request_id = COALESCE($4, request_id), error = $5, told = ($2::TEXT <> 'failed'),
            cost = CASE WHEN $2::TEXT = 'undelivered' AND generated > 0
                        THEN LEAST(cost, generated) ELSE cost END
         WHERE id = $1 AND {OPEN}"
    );
    let status = status.as_str();
    db.client()
        .await?
        .execute(&sql, &[&job_id, &status, &ms(now), &request_id, &error])
        .await
        .map_err(pg)?;
    Ok(())
}

fn record_of(r: &Row) -> Result<JobRecord, StoreError> {
    let (platform, status): (String, String) = (get(r, 1)?, get(r, 6)?);
    let (cost, user_id): (i64, String) = (get(r, 5)?, get(r, 2)?);
    let (started, finished): (Option<i64>, Option<i64>) = (get(r, 8)?, get(r, 9)?);
    Ok(JobRecord {
        id: get(r, 0)?,
        user: UserRef::new(platform.parse().unwrap_or(Platform::Cli), user_id),
        chat: get(r, 3)?,
        model: get(r, 4)?,
        cost: small(cost),
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        created_at: time(get(r, 7)?),
        started_at: started.map(time),
        finished_at: finished.map(time),
        request_id: get(r, 10)?,
        error: get(r, 11)?,
        prompt: get(r, 12)?,
    })
}

pub(super) async fn job(db: &PgStore, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "SELECT id, platform, user_id, chat_id, model, cost, status, created_at,
                    started_at, finished_at, request_id, error, prompt
             FROM jobs WHERE id = $1",
            &[&job_id],
        )
        .await
        .map_err(pg)?;
    row.as_ref().map(record_of).transpose()
}

pub(super) async fn by_token(db: &PgStore, token: &str) -> Result<Option<AgainSource>, StoreError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "SELECT result_chat, result_message, spec FROM jobs
             WHERE token = $1 AND spec IS NOT NULL",
            &[&token],
        )
        .await
        .map_err(pg)?;
    let Some(r) = row else {
        return Ok(None);
    };
    let (chat, message): (Option<String>, Option<String>) = (get(&r, 0)?, get(&r, 1)?);
    Ok(Some(AgainSource {
        result_at: chat
            .zip(message)
            .map(|(chat, message)| ResultAt { chat, message }),
        spec: get(&r, 2)?,
    }))
}

pub(super) async fn prune_specs(db: &PgStore, before: DateTime<Utc>) -> Result<usize, StoreError> {
    let pruned = db
        .client()
        .await?
        .execute(
            "UPDATE jobs SET spec = NULL
             WHERE spec IS NOT NULL AND created_at < $1 AND status IN ('delivered','failed')",
            &[&ms(before)],
        )
        .await
        .map_err(pg)?;
    Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
}
