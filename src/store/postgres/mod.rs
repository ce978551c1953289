//! The shared store: PostgreSQL behind the core's [`Store`] port, for several replicas of the
//! bot on one database. A faithful port of `store::sqlite`: the same tables, statuses and rules
//! (times as BIGINT milliseconds, JSON as TEXT), with what sharing needs on top:
//!
//! - Reserves take one transaction-scoped advisory lock, so quota decisions are serialized
//!   across every process on the database and per-user, per-chat and global limits stay exact.
//! - Jobs are leased (`owner`, `lease_until`): the replica that reserves a job holds it and
//!   renews its lease while it works ([`Store::renew`]); another replica takes over only jobs
//!   whose lease ran out, its holder gone ([`Store::claim_unfinished`]), and a replica that
//!   stops hands its waiting jobs back at once ([`Store::release`]).
//! - Migrations are versioned and run under an advisory lock, so replicas may start together.
//!
//! Every call takes a pooled connection and commits before it returns.

mod connect;
mod jobs;
mod places;
mod quota;
mod schema;
mod session;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::core::model::{Platform, UserRef};
use crate::core::ports::store::{
    AgainSource, JobRecord, JobStatus, ReportBy, ReportRow, ResultAt, Shared, Store, StoreError,
    Unfinished,
};
use crate::core::quota::policy::Standing;
use crate::core::quota::{Granted, Limits, QuotaRejection, Reservation, UserSettings};

pub use connect::{DEFAULT_LEASE, open, open_existing, problems};
pub use session::{ReplicaLock, elect, listen_for_changes, notify_changed, refuse_beside_older};

use connect::{pg, pool_error};

/// The PostgreSQL implementation of [`Store`]. Clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The server and database, for messages (never the password).
    target: Arc<str>,
    /// Who this process is among the replicas: the jobs it reserves or claims are held in this
    /// name, for [`PgStore::lease`] at a time.
    owner: Arc<str>,
    lease: std::time::Duration,
}

impl PgStore {
    /// The same store with claims held `lease` at a time (`quota.job_lease_secs`).
    pub fn with_lease(self, lease: std::time::Duration) -> Self {
        Self { lease, ..self }
    }

    /// Until when a claim made at `now` holds.
    fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// A pooled connection; failing to get one names the server.
    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(&self.target, e))
    }
}

/// Column `idx` of `row`; a type mismatch is an error, not a panic.
fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, StoreError> {
    row.try_get(idx).map_err(pg)
}

use crate::store::ms;

/// A count or an image number as the port has it (the columns are BIGINT).
fn small(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

type Verdict = Result<Granted, QuotaRejection>;

#[async_trait::async_trait]
impl Store for PgStore {
    async fn reserve(
        &self,
        r: &Reservation,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        quota::reserve(self, r, limits, now).await
    }

    async fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        jobs::mark_running(self, job_id, now).await
    }

    async fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        parts: &[String],
        service: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        jobs::save_result(self, job_id, request_id, parts, service, now).await
    }

    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        jobs::unfinished(self).await
    }

    async fn claim_unfinished(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Unfinished>, StoreError> {
        jobs::claim_unfinished(self, owner, lease_until).await
    }

    async fn renew(&self, owner: &str, lease_until: DateTime<Utc>) -> Result<usize, StoreError> {
        jobs::renew(self, owner, lease_until).await
    }

    async fn start(
        &self,
        job_id: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        jobs::start(self, job_id, owner, now).await
    }

    async fn take_waiting(
        &self,
        owner: &str,
        lease_until: DateTime<Utc>,
        waiting_since: DateTime<Utc>,
        limit: usize,
        platforms: &[Platform],
    ) -> Result<Vec<Unfinished>, StoreError> {
        let platforms: Vec<&str> = platforms.iter().map(|p| p.as_str()).collect();
        jobs::take_waiting(self, owner, (lease_until, waiting_since), limit, &platforms).await
    }

    async fn let_go(&self, owner: &str, job_id: &str) -> Result<(), StoreError> {
        jobs::let_go(self, owner, job_id).await
    }

    async fn lost(&self, owner: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        jobs::lost(self, owner, ids).await
    }

    fn shared(&self) -> Option<Shared> {
        Some(Shared {
            owner: self.owner.to_string(),
            lease: self.lease,
        })
    }

    async fn release(&self, owner: &str) -> Result<usize, StoreError> {
        jobs::release(self, owner).await
    }

    async fn mark_told(&self, job_id: &str) -> Result<(), StoreError> {
        jobs::mark_told(self, job_id).await
    }

    async fn set_placeholder(&self, job_id: &str, placeholder: &str) -> Result<(), StoreError> {
        jobs::set_placeholder(self, job_id, placeholder).await
    }

    async fn placeholder(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        jobs::placeholder(self, job_id).await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        jobs::check_writable(self).await
    }

    async fn deliver(
        &self,
        job_id: &str,
        images: u32,
        request_id: Option<&str>,
        at: Option<&ResultAt>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        jobs::deliver(self, job_id, images, request_id, at, now).await
    }

    async fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        jobs::finish(self, job_id, status, request_id, error, now).await
    }

    async fn settings(
        &self,
        user: &UserRef,
        group: Option<&str>,
    ) -> Result<UserSettings, StoreError> {
        quota::settings(self, user, group).await
    }

    async fn standing(
        &self,
        user: &UserRef,
        group: Option<&str>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError> {
        quota::standing(self, user, group, limits, now).await
    }

    async fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        let limit = limit.map(i64::from);
        quota::set(self, user, scope, "limit_override", &limit).await
    }

    async fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        quota::set(self, user, scope, "blocked", &blocked).await
    }

    async fn reset_usage(&self, user: &UserRef) -> Result<(), StoreError> {
        quota::reset_usage(self, user).await
    }

    async fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        quota::used(self, user, since).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        jobs::job(self, job_id).await
    }

    async fn by_token(&self, token: &str) -> Result<Option<AgainSource>, StoreError> {
        jobs::by_token(self, token).await
    }

    async fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        jobs::prune_specs(self, before).await
    }

    async fn save_album_part(
        &self,
        group: &str,
        part_id: &str,
        part: &str,
    ) -> Result<(), StoreError> {
        places::save_album_part(self, group, part_id, part).await
    }

    async fn album_parts(&self, group: &str) -> Result<Vec<String>, StoreError> {
        places::album_parts(self, group).await
    }

    async fn album_groups(&self) -> Result<Vec<String>, StoreError> {
        places::album_groups(self).await
    }

    async fn drop_album(&self, group: &str) -> Result<(), StoreError> {
        places::drop_album(self, group).await
    }

    async fn set_allowed(
        &self,
        platform: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        places::set_allowed(self, platform, place, allowed).await
    }

    async fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError> {
        places::allowed_places(self).await
    }

    async fn report(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        places::report(self, since, until, by, within).await
    }
}
