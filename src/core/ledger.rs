//! The durable store's interface ([`Ledger`]) and the records it keeps. SQLite implements it
//! today (`crate::store::sqlite`); a Redis store for several replicas would implement the same
//! trait without touching callers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::quota::{Granted, Limits, Platform, QuotaRejection, Reservation, UserRef, UserSettings};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, quota reserved, waiting for a worker.
    Queued,
    Running,
    /// The backend answered; its result URLs (valid 24 h) are stored, delivery pending.
    Ready,
    /// The result reached the chat; the reserve is committed.
    Delivered,
    /// Nothing was delivered; the reserve is refunded.
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Ready => "ready",
            JobStatus::Delivered => "delivered",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "ready" => JobStatus::Ready,
            "delivered" => JobStatus::Delivered,
            "failed" => JobStatus::Failed,
            _ => return None,
        })
    }
}

/// The ledger's record of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub user: UserRef,
    pub chat: String,
    pub model: String,
    pub cost: u32,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    pub error: Option<String>,
    pub prompt: Option<String>,
}

/// A job to resume after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    pub id: String,
    pub status: JobStatus,
    /// The job description JSON (`None` when lost: the job is then failed and refunded).
    pub spec: Option<String>,
    pub request_id: Option<String>,
    /// Result URLs when the backend had answered.
    pub urls: Vec<String>,
    /// How many times a worker has started it.
    pub attempts: u32,
    /// For a failed job whose user was not told yet: why it failed.
    pub error: Option<String>,
}

/// Grouping of the usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportBy {
    User,
    Chat,
    Day,
}

/// One line of the usage report: delivered jobs and images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub key: String,
    pub jobs: u64,
    pub images: u64,
    pub failed: u64,
}

/// The store failed (disk, database). Internal: logged, never shown verbatim.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Durable quota and job state. Every write is persisted before the call returns.
pub trait Ledger: Send + Sync + 'static {
    /// Atomically checks every limit for `r` and, if all allow it, records the job as queued.
    fn reserve(
        &self,
        r: &Reservation,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Result<Granted, QuotaRejection>, StoreError>;
    fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records the backend's answer (result URLs as JSON) before the results are downloaded.
    fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Jobs not yet delivered or failed, and failed jobs whose user was not told yet, oldest
    /// first, with their stored description and result URLs.
    fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError>;
    /// The user of a failed job has been told (failed jobs are listed as unfinished until then).
    fn mark_told(&self, job_id: &str) -> Result<(), StoreError>;
    /// Whether the store takes writes (health check).
    fn check_writable(&self) -> Result<(), StoreError>;
    /// Delivered commits the reserve, Failed refunds it. A finished job stays finished.
    fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The user's settings as they apply in `group` (bot-wide merged with the group's own).
    fn settings(&self, user: &UserRef, group: Option<&str>) -> Result<UserSettings, StoreError>;
    /// Admin changes. `scope` `None` is bot-wide (operators, CLI); `Some(group)` applies only
    /// in that group or guild (its own admins).
    fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError>;
    fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError>;
    fn reset_usage(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Images reserved or committed by `user` since `since` (see
    /// [`UserSettings::counting_from`] for where a window's count starts).
    fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError>;
    fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// The job description saved with the reserve, if not pruned.
    fn job_spec(&self, job_id: &str) -> Result<Option<String>, StoreError>;
    /// Forgets job descriptions of jobs created before `before`; returns how many.
    fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;
    /// Usage since `since`, grouped `by`; only the jobs of one platform's group (chat or
    /// server) when `within` is given.
    fn report(
        &self,
        since: DateTime<Utc>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError>;
}
