//! The store port: durable quotas, jobs and settings ([`Store`]) and the records it keeps, in
//! the core's words. SQLite implements it (`crate::store::sqlite`); a store several replicas
//! share implements the same trait, with real job leases, without touching callers.
//!
//! The port is async: an embedded store runs its blocking calls off the async threads itself,
//! a networked one awaits its server. The quota rules are not here but in `core::quota::policy`; a
//! store only reads a user's [`Standing`] inside its reserve transaction and asks
//! `policy::decide`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::model::{Platform, UserRef};
use crate::core::quota::policy::Standing;
use crate::core::quota::terms::{Granted, Limits, QuotaRejection, Reservation, UserSettings};

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
    /// Nothing was delivered, not because of the user; the reserve is refunded (images the
    /// backend made still count against `global_per_day`).
    Failed,
    /// The images were made but the user's chat refused them (the bot was blocked or may not
    /// post there): they are charged.
    Undelivered,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Ready => "ready",
            JobStatus::Delivered => "delivered",
            JobStatus::Failed => "failed",
            JobStatus::Undelivered => "undelivered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "ready" => JobStatus::Ready,
            "delivered" => JobStatus::Delivered,
            "failed" => JobStatus::Failed,
            "undelivered" => JobStatus::Undelivered,
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
    /// The parts of the service's answer ([`crate::core::ports::model::Answer`]) when it had
    /// answered.
    pub parts: Vec<String>,
    /// How many times a worker has started it.
    pub attempts: u32,
    /// For a failed job whose user was not told yet: why it failed.
    pub error: Option<String>,
    /// What stands for the job in its chat (JSON of
    /// [`crate::core::ports::chat::Placeholder`]), once it was posted.
    pub placeholder: Option<String>,
}

/// Grouping of the usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportBy {
    User,
    Chat,
    #[default]
    Day,
    /// The service that made the images (`backend.name`); `(no image)` for jobs that made none,
    /// and the model for images made before services were recorded.
    Service,
}

/// One line of the usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub key: String,
    /// Delivered jobs.
    pub jobs: u64,
    /// Delivered images.
    pub images: u64,
    /// Jobs that ended without a result.
    pub failed: u64,
    /// Images the backend made (what the operator pays for), delivered or not.
    pub generated: u64,
    /// Images the backend made that did not reach the chat.
    pub undelivered: u64,
    /// The same images by the service that made them (each priced at its own price), in name
    /// order.
    pub by_service: Vec<ServiceUse>,
}

/// One service's share of a report row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUse {
    /// As [`ReportBy::Service`] names it.
    pub service: String,
    pub generated: u64,
    pub undelivered: u64,
}

/// Report rows from a store's rows grouped by key and service (in key order): one row per key,
/// its counts summed and its images kept apart by service.
pub fn merge_by_service(parts: impl IntoIterator<Item = (ReportRow, String)>) -> Vec<ReportRow> {
    let mut out: Vec<ReportRow> = Vec::new();
    for (part, service) in parts {
        let share = ServiceUse {
            service,
            generated: part.generated,
            undelivered: part.undelivered,
        };
        match out.last_mut() {
            Some(row) if row.key == part.key => {
                row.jobs += part.jobs;
                row.images += part.images;
                row.failed += part.failed;
                row.generated += part.generated;
                row.undelivered += part.undelivered;
                row.by_service.push(share);
            }
            _ => out.push(ReportRow {
                by_service: vec![share],
                ..part
            }),
        }
    }
    out
}

/// The message that carries a result's 🔁 button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAt {
    pub chat: String,
    pub message: String,
}

/// What a 🔁 token leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgainSource {
    /// Where the job's result (and so its button) was posted; `None` before delivery.
    pub result_at: Option<ResultAt>,
    /// The job description.
    pub spec: String,
}

/// This process among the replicas on a shared store ([`Store::shared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// The name its jobs are held in.
    pub owner: String,
    /// How long a claim holds without renewal; renewed well within it.
    pub lease: std::time::Duration,
}

/// The store failed (disk, database). Internal: logged, never shown verbatim.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Durable quota and job state. Every write is persisted before the call returns.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Atomically reads the user's [`Standing`], asks `policy::decide` and, if it allows the
    /// job, records it as queued.
    async fn reserve(
        &self,
        r: &Reservation,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Result<Granted, QuotaRejection>, StoreError>;
    async fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records the service's answer (its opaque parts) before they are redeemed for images;
    /// its images count as generated from here on, made by `service` (`backend.name`) when
    /// several are configured.
    async fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        parts: &[String],
        service: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Jobs not yet delivered or failed, and failed jobs whose user was not told yet, oldest
    /// first, with their stored description and answer.
    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError>;
    /// Claims what [`Store::unfinished`] lists for `owner`, until `lease_until`: a store that
    /// several replicas share returns only jobs no other owner holds a running lease on, and
    /// marks them `owner`'s. A store one process has to itself (SQLite, behind its lock file)
    /// has a single owner and may ignore both.
    async fn claim_unfinished(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Unfinished>, StoreError> {
        let _ = (owner, lease_until);
        self.unfinished().await
    }
    /// Extends `owner`'s lease on the jobs it claimed (or took) to `lease_until`; returns how
    /// many it holds. A single-owner store holds nothing to renew.
    async fn renew(&self, owner: &str, lease_until: DateTime<Utc>) -> Result<usize, StoreError> {
        let _ = (owner, lease_until);
        Ok(0)
    }
    /// Starts job `job_id` for `owner`: running, if `owner` still holds it (another replica may
    /// have taken it while it waited); returns whether it did. A store of one process's own
    /// always does.
    async fn start(
        &self,
        job_id: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _ = owner;
        self.mark_running(job_id, now).await.map(|()| true)
    }
    /// Takes for `owner`, until `lease_until`, up to `limit` jobs of `platforms` (those it
    /// runs) that have waited since before `waiting_since` at other replicas (busy ones), one
    /// per user in turn, oldest first. A store of one process's own has nothing to take.
    async fn take_waiting(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
        waiting_since: DateTime<Utc>,
        limit: usize,
        platforms: &[Platform],
    ) -> Result<Vec<Unfinished>, StoreError> {
        let _ = (owner, lease_until, waiting_since, limit, platforms);
        Ok(Vec::new())
    }
    /// Gives up one job `owner` cannot run (its platform does not run here): unowned, another
    /// replica takes it.
    async fn let_go(&self, owner: &str, job_id: &str) -> Result<(), StoreError> {
        let _ = (owner, job_id);
        Ok(())
    }
    /// Of the jobs `ids`, those `owner` no longer holds (another replica took them).
    async fn lost(&self, owner: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let _ = (owner, ids);
        Ok(Vec::new())
    }
    /// Who this process is to a store replicas share, and how long its claims hold; `None` for
    /// a store one process has to itself.
    fn shared(&self) -> Option<Shared> {
        None
    }
    /// Ends `owner`'s leases now (it stops, handing its unfinished jobs to the other replicas);
    /// returns how many jobs it held.
    async fn release(&self, owner: &str) -> Result<usize, StoreError> {
        let _ = owner;
        Ok(0)
    }
    /// Keeps what stands for the job in its chat (opaque JSON) until its result replaces it.
    async fn set_placeholder(&self, job_id: &str, placeholder: &str) -> Result<(), StoreError>;
    /// What [`Store::set_placeholder`] kept for the job, if anything.
    async fn placeholder(&self, job_id: &str) -> Result<Option<String>, StoreError>;
    /// The user of a failed job has been told (failed jobs are listed as unfinished until then).
    async fn mark_told(&self, job_id: &str) -> Result<(), StoreError>;
    /// Whether the store takes writes (health check).
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// `images` results were posted: the job is delivered and charged that many (at most its
    /// reserve); `at` is the message with its 🔁 button. A finished job stays finished.
    async fn deliver(
        &self,
        job_id: &str,
        images: u32,
        request_id: Option<&str>,
        at: Option<&ResultAt>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Failed refunds the reserve; Undelivered charges the images the backend made. A finished
    /// job stays finished.
    async fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The user's settings as they apply in `group`: blocked if blocked bot-wide or there, the
    /// lower of the two limits, the bot-wide reset.
    async fn settings(
        &self,
        user: &UserRef,
        group: Option<&str>,
    ) -> Result<UserSettings, StoreError>;
    /// What `policy` needs to decide about `user` in `group` at `now`.
    async fn standing(
        &self,
        user: &UserRef,
        group: Option<&str>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError>;
    /// Admin changes. `scope` `None` is bot-wide (operators, CLI); `Some(group)` applies only
    /// in that group or guild (its own admins).
    async fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError>;
    async fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError>;
    /// Forgets the user's usage so far (bot-wide; only operators reset).
    async fn reset_usage(&self, user: &UserRef) -> Result<(), StoreError>;
    /// Images reserved or committed by `user` since `since` (see
    /// [`UserSettings::counting_from`] for where a window's count starts).
    async fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError>;
    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// The job whose 🔁 token is `token`, if its description is still kept.
    async fn by_token(&self, token: &str) -> Result<Option<AgainSource>, StoreError>;
    /// Forgets job descriptions of jobs created before `before`; returns how many.
    async fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError>;
    /// Keeps one part of a chat album (`part`, opaque JSON) under `group` until the album is
    /// handled; the same `part_id` twice is kept once.
    async fn save_album_part(
        &self,
        group: &str,
        part_id: &str,
        part: &str,
    ) -> Result<(), StoreError>;
    /// The parts kept under `group`, in arrival order.
    async fn album_parts(&self, group: &str) -> Result<Vec<String>, StoreError>;
    /// Every group with parts kept (albums a previous run did not handle).
    async fn album_groups(&self) -> Result<Vec<String>, StoreError>;
    /// Forgets a handled album's parts.
    async fn drop_album(&self, group: &str) -> Result<(), StoreError>;
    /// Allows (or with `allowed` false, no longer allows) the chat or server `place` of
    /// `platform`, on top of the config's lists; returns whether that changed anything.
    async fn set_allowed(
        &self,
        platform: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError>;
    /// The places allowed with [`Store::set_allowed`].
    async fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError>;
    /// Usage since `since` (and before `until`), grouped `by`; only the jobs of one platform's
    /// group (chat or server) when `within` is given.
    async fn report(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError>;
}
