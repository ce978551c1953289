//! The embedded store: one SQLite file in WAL mode, behind the core's [`Store`] port.
//!
//! Each write is its own transaction, committed before the call returns, so a `kill -9` after
//! the user was answered loses nothing. Reserves run in `BEGIN IMMEDIATE` transactions, which
//! makes check-and-insert atomic even across processes sharing the file. SQLite calls block, so
//! every port call runs on tokio's blocking pool; the connection is one, behind a mutex.
//!
//! One process has the file to itself (`store::lock`), so job claims keep the port's
//! single-owner defaults: [`Store::claim_unfinished`] lists every unfinished job.

mod db;
mod jobs;
mod places;
mod schema;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::core::model::{Platform, UserRef};
use crate::core::ports::store::{
    AgainSource, JobRecord, JobStatus, ReportBy, ReportRow, ResultAt, Store, StoreError, Unfinished,
};
use crate::core::quota::policy::Standing;
use crate::core::quota::{Granted, Limits, QuotaRejection, Reservation, UserSettings};

use db::Db;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
}

impl SqliteStore {
    /// Opens (creating the file and its folders if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(Db::open(path)?),
        })
    }

    /// Opens a database that must exist already and be one of ours (the admin commands: a
    /// mistyped path must not quietly create an empty database and report zeros).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Arc::new(Db::open_existing(path)?),
        })
    }

    /// Runs `f` on the database on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }
}

type Verdict = Result<Granted, QuotaRejection>;

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn reserve(
        &self,
        r: &Reservation,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let (r, limits) = (r.clone(), *limits);
        self.run(move |db| db.reserve(&r, &limits, now)).await
    }

    async fn mark_running(&self, job_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let id = job_id.to_owned();
        self.run(move |db| db.mark_running(&id, now)).await
    }

    async fn save_result(
        &self,
        job_id: &str,
        request_id: Option<&str>,
        parts: &[String],
        service: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (id, request, parts, service) = (
            job_id.to_owned(),
            request_id.map(str::to_owned),
            parts.to_vec(),
            service.map(str::to_owned),
        );
        self.run(move |db| db.save_result(&id, request.as_deref(), &parts, service.as_deref(), now))
            .await
    }

    async fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        self.run(|db| db.unfinished()).await
    }

    async fn mark_told(&self, job_id: &str) -> Result<(), StoreError> {
        let id = job_id.to_owned();
        self.run(move |db| db.mark_told(&id)).await
    }

    async fn set_placeholder(&self, job_id: &str, placeholder: &str) -> Result<(), StoreError> {
        let (id, placeholder) = (job_id.to_owned(), placeholder.to_owned());
        self.run(move |db| db.set_placeholder(&id, &placeholder))
            .await
    }

    async fn placeholder(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        let id = job_id.to_owned();
        self.run(move |db| db.placeholder(&id)).await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.run(|db| db.check_writable()).await
    }

    async fn deliver(
        &self,
        job_id: &str,
        images: u32,
        request_id: Option<&str>,
        at: Option<&ResultAt>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (id, request, at) = (
            job_id.to_owned(),
            request_id.map(str::to_owned),
            at.cloned(),
        );
        self.run(move |db| db.deliver(&id, images, request.as_deref(), at.as_ref(), now))
            .await
    }

    async fn finish(
        &self,
        job_id: &str,
        status: JobStatus,
        request_id: Option<&str>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (id, request) = (job_id.to_owned(), request_id.map(str::to_owned));
        let error = error.map(str::to_owned);
        self.run(move |db| db.finish(&id, status, request.as_deref(), error.as_deref(), now))
            .await
    }

    async fn settings(
        &self,
        user: &UserRef,
        group: Option<&str>,
    ) -> Result<UserSettings, StoreError> {
        let (user, group) = (user.clone(), group.map(str::to_owned));
        self.run(move |db| db.settings(&user, group.as_deref()))
            .await
    }

    async fn standing(
        &self,
        user: &UserRef,
        group: Option<&str>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Standing, StoreError> {
        let (user, group, limits) = (user.clone(), group.map(str::to_owned), *limits);
        self.run(move |db| db.standing(&user, group.as_deref(), &limits, now))
            .await
    }

    async fn set_limit(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        let (user, scope) = (user.clone(), scope.map(str::to_owned));
        self.run(move |db| db.set_limit(&user, scope.as_deref(), limit))
            .await
    }

    async fn set_blocked(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        let (user, scope) = (user.clone(), scope.map(str::to_owned));
        self.run(move |db| db.set_blocked(&user, scope.as_deref(), blocked))
            .await
    }

    async fn reset_usage(&self, user: &UserRef) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |db| db.reset_usage(&user)).await
    }

    async fn used(&self, user: &UserRef, since: DateTime<Utc>) -> Result<u32, StoreError> {
        let user = user.clone();
        self.run(move |db| db.used(&user, since)).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = job_id.to_owned();
        self.run(move |db| db.job(&id)).await
    }

    async fn by_token(&self, token: &str) -> Result<Option<AgainSource>, StoreError> {
        let token = token.to_owned();
        self.run(move |db| db.by_token(&token)).await
    }

    async fn prune_specs(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.run(move |db| db.prune_specs(before)).await
    }

    async fn save_album_part(
        &self,
        group: &str,
        part_id: &str,
        part: &str,
    ) -> Result<(), StoreError> {
        let (group, id, part) = (group.to_owned(), part_id.to_owned(), part.to_owned());
        self.run(move |db| db.save_album_part(&group, &id, &part))
            .await
    }

    async fn album_parts(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let group = group.to_owned();
        self.run(move |db| db.album_parts(&group)).await
    }

    async fn album_groups(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| db.album_groups()).await
    }

    async fn drop_album(&self, group: &str) -> Result<(), StoreError> {
        let group = group.to_owned();
        self.run(move |db| db.drop_album(&group)).await
    }

    async fn set_allowed(
        &self,
        platform: Platform,
        place: &str,
        allowed: bool,
    ) -> Result<bool, StoreError> {
        let place = place.to_owned();
        self.run(move |db| db.set_allowed(platform, &place, allowed))
            .await
    }

    async fn allowed_places(&self) -> Result<Vec<(Platform, String)>, StoreError> {
        self.run(|db| db.allowed_places()).await
    }

    async fn report(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: ReportBy,
        within: Option<(Platform, &str)>,
    ) -> Result<Vec<ReportRow>, StoreError> {
        let within = within.map(|(p, g)| (p, g.to_owned()));
        self.run(move |db| {
            db.report(
                since,
                until,
                by,
                within.as_ref().map(|(p, g)| (*p, g.as_str())),
            )
        })
        .await
    }
}
