//! Jobs in the SQLite store: their states, results, and what a 🔁 token leads to.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use crate::core::model::{Platform, UserRef};
use crate::core::ports::store::{
    AgainSource, JobRecord, JobStatus, ResultAt, StoreError, Unfinished,
};

use super::db::{Db, db, ms, time};
use crate::store::{OPEN, UNFINISHED};

impl Db {
    pub(super) fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'running', started_at = ?2, attempts = attempts + 1
                 WHERE id = ?1 AND status IN ('queued','running')",
                params![job_id, ms(now)],
            )
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        parts: &[String],
        service: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let count = parts.len() as i64;
        let parts = serde_json::to_string(parts).map_err(|e| StoreError(e.to_string()))?;
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'ready', result_urls = ?2, request_id = ?3,
                    started_at = COALESCE(started_at, ?4), generated = ?5, service = ?6
                 WHERE id = ?1 AND status IN ('queued','running')",
                params![job_id, parts, request_id, ms(now), count, service],
            )
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, status, spec, request_id, result_urls, attempts, error, placeholder FROM jobs
                 WHERE {UNFINISHED} ORDER BY seq"
            ))
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                let status: String = r.get(1)?;
                let parts: Option<String> = r.get(4)?;
                Ok(Unfinished {
                    id: r.get(0)?,
                    status: JobStatus::parse(&status).unwrap_or(JobStatus::Queued),
                    spec: r.get(2)?,
                    request_id: r.get(3)?,
                    parts: parts
                        .and_then(|u| serde_json::from_str(&u).ok())
                        .unwrap_or_default(),
                    attempts: r.get(5)?,
                    error: r.get(6)?,
                    placeholder: r.get(7)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }

    pub(super) fn check_writable(&self) -> Result<(), StoreError> {
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

    pub(super) fn deliver(
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

    pub(super) fn finish(
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

    pub(super) fn set_placeholder(
        &self,
        job_id: &str,
        placeholder: &str,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET placeholder = ?2 WHERE id = ?1",
                params![job_id, placeholder],
            )
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn placeholder(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT placeholder FROM jobs WHERE id = ?1",
                params![job_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db)
    }

    pub(super) fn mark_told(&self, job_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE jobs SET told = 1 WHERE id = ?1", params![job_id])
            .map_err(db)?;
        Ok(())
    }

    pub(super) fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
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
                            platform.parse().unwrap_or(Platform::Cli),
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

    pub(super) fn by_token(&self, token: &str) -> Result<Option<AgainSource>, StoreError> {
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

    pub(super) fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.conn()
            .execute(
                "UPDATE jobs SET spec = NULL
                 WHERE spec IS NOT NULL AND created_at < ?1 AND status IN ('delivered','failed')",
                params![ms(before)],
            )
            .map_err(db)
    }
}
