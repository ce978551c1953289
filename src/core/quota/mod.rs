//! Quotas (docs/PRODUCT.md §5): reserve on accept, commit on delivery, refund on failure.
//!
//! The [`Store`] port (`ports/store.rs`) is the durable store; it makes each reserve atomic and
//! persists it before returning. [`Quotas`] is what callers use: it adds the clock,
//! the configured limits and a hot cache of per-user settings (blocks, overrides) in a `DashMap`
//! so that a blocked user is turned away without touching the disk.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;

pub mod policy;
pub mod terms;

pub use terms::{
    Admission, Granted, Limits, QuotaRejection, Reservation, UserQuota, UserSettings, Window,
};

use super::clock::Clock;
use super::model::{Platform, UserRef};
use super::ports::model::Answer;
use super::ports::store::{JobStatus, ReportBy, ReportRow, ResultAt, Store, StoreError};

/// Quota operations with the clock, the limits and a hot settings cache.
pub struct Quotas {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Hot copy of per-user settings with when it was read; trusted for [`SETTINGS_TTL`], and
    /// dropped at once when the daemon sees another process write (`app::watch_store`).
    settings: DashMap<(UserRef, Option<String>), (UserSettings, std::time::Instant)>,
    /// Waits between attempts of a write that must not be lost (see [`Quotas::persist`]).
    write_backoff: Vec<std::time::Duration>,
}

/// How long a cached block is trusted without asking the store.
const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits between attempts of a job write after the backend answered (about 30 s in all).
const WRITE_BACKOFF_MS: [u64; 8] = [50, 100, 250, 500, 1000, 2000, 5000, 20000];

impl Quotas {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, limits: Limits) -> Self {
        Self {
            store,
            clock,
            limits,
            settings: DashMap::new(),
            write_backoff: WRITE_BACKOFF_MS
                .iter()
                .map(|ms| std::time::Duration::from_millis(*ms))
                .collect(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Reserves `r.cost` images for `r.user`, persisting the job before returning.
    pub async fn reserve(
        &self,
        r: Reservation,
    ) -> Result<Result<Granted, QuotaRejection>, StoreError> {
        let key = (r.user.clone(), r.group.clone());
        let cached = self.settings.get(&key).map(|e| *e.value());
        if cached.is_some_and(|(s, at)| s.blocked && at.elapsed() < SETTINGS_TTL) {
            return Ok(Err(QuotaRejection::Blocked));
        }
        let (limits, now) = (self.limits, self.clock.now());
        let verdict = self.store.reserve(&r, &limits, now).await?;
        // Remember a block (the common repeat offender) so the next refusal skips the disk.
        if verdict == Err(QuotaRejection::Blocked) {
            let settings = UserSettings {
                blocked: true,
                ..UserSettings::default()
            };
            self.settings
                .insert(key, (settings, std::time::Instant::now()));
        } else if cached.is_some() {
            self.settings.remove(&key);
        }
        Ok(verdict)
    }

    pub async fn mark_running(&self, job_id: &str) -> Result<(), StoreError> {
        self.store.mark_running(job_id, self.clock.now()).await
    }

    /// Starts the job for `owner` if it still holds it ([`Store::start`]).
    pub async fn start(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.store.start(job_id, owner, self.clock.now()).await
    }

    /// Runs a write that must not be lost, again after a failure (the store may be busy or
    /// briefly unwritable), until it succeeds or the attempts run out (about 30 s).
    async fn persist<F, Fut>(
        &self,
        what: &'static str,
        job_id: &str,
        write: F,
    ) -> Result<(), StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut waits = self.write_backoff.iter();
        loop {
            let err = match write().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(wait) = waits.next() else {
                tracing::error!(job_id, error = %err, "giving up on a store write: {what}");
                return Err(err);
            };
            tracing::warn!(job_id, error = %err, "store write failed, retrying: {what}");
            tokio::time::sleep(*wait).await;
        }
    }

    /// Sets the waits between attempts of writes that must not be lost (tests shorten them).
    pub fn set_write_backoff(&mut self, waits: Vec<std::time::Duration>) {
        self.write_backoff = waits;
    }

    /// Stores the service's answer: from here on a restart delivers without a new call, and
    /// the images count as generated (spent money) whatever happens to them.
    pub async fn save_result(&self, job_id: &str, answer: &Answer) -> Result<(), StoreError> {
        let (now, request_id) = (self.clock.now(), answer.request_id.as_deref());
        self.persist("the backend's answer", job_id, || {
            self.store.save_result(
                job_id,
                request_id,
                &answer.parts,
                answer.service.as_deref(),
                now,
            )
        })
        .await
    }

    /// Commits the job: `images` results reached the user (that many are charged), the 🔁 button
    /// sits on the message `at`.
    pub async fn commit(
        &self,
        job_id: &str,
        images: u32,
        request_id: Option<String>,
        at: Option<ResultAt>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.persist("a delivery", job_id, || {
            self.store
                .deliver(job_id, images, request_id.as_deref(), at.as_ref(), now)
        })
        .await
    }

    /// Gives the job's reserve back: nothing was delivered, and not because of the user.
    pub async fn refund(&self, job_id: &str, error: &str) -> Result<(), StoreError> {
        self.end(job_id, JobStatus::Failed, error).await
    }

    /// The images were made but the user's chat refused them (blocked bot, no right to post):
    /// they are charged.
    pub async fn charge_undelivered(&self, job_id: &str, error: &str) -> Result<(), StoreError> {
        self.end(job_id, JobStatus::Undelivered, error).await
    }

    async fn end(&self, job_id: &str, status: JobStatus, error: &str) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.persist("the end of a job", job_id, || {
            self.store.finish(job_id, status, None, Some(error), now)
        })
        .await
    }

    /// The user of the failed job `job_id` has been told.
    pub async fn told(&self, job_id: &str) -> Result<(), StoreError> {
        self.store.mark_told(job_id).await
    }

    /// The user's standing in the current window (bot-wide settings).
    pub async fn show(&self, user: &UserRef) -> Result<UserQuota, StoreError> {
        self.show_in(user, None).await
    }

    /// The user's standing in the current window, as it applies in `group`.
    pub async fn show_in(
        &self,
        user: &UserRef,
        group: Option<&str>,
    ) -> Result<UserQuota, StoreError> {
        let (now, limits) = (self.clock.now(), self.limits);
        let standing = self.store.standing(user, group, &limits, now).await?;
        let quota = policy::view(&limits, &standing, now);
        let settings = UserSettings {
            blocked: quota.blocked,
            ..UserSettings::default()
        };
        let key = (user.clone(), group.map(str::to_owned));
        self.settings
            .insert(key, (settings, std::time::Instant::now()));
        Ok(quota)
    }

    /// Sets (or with `None` clears) the user's own limit per window, bot-wide.
    pub async fn set_limit(&self, user: &UserRef, limit: Option<u32>) -> Result<(), StoreError> {
        self.set_limit_in(user, None, limit).await
    }

    /// Like [`Quotas::set_limit`], only in `scope` when given. A chat's limit only restricts:
    /// the bot-wide one still applies there (see `policy`).
    pub async fn set_limit_in(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), StoreError> {
        self.store.set_limit(user, scope, limit).await?;
        self.forget(user);
        Ok(())
    }

    pub async fn set_blocked(&self, user: &UserRef, blocked: bool) -> Result<(), StoreError> {
        self.set_blocked_in(user, None, blocked).await
    }

    /// Blocks or unblocks, only in `scope` when given.
    pub async fn set_blocked_in(
        &self,
        user: &UserRef,
        scope: Option<&str>,
        blocked: bool,
    ) -> Result<(), StoreError> {
        self.store.set_blocked(user, scope, blocked).await?;
        self.forget(user);
        Ok(())
    }

    /// Drops every cached setting: the store was changed by another process (the CLI).
    pub fn forget_all(&self) {
        self.settings.clear();
    }

    fn forget(&self, user: &UserRef) {
        self.settings.retain(|(u, _), _| u != user);
    }

    /// Delivered images per user of `platform` in the current window, most first (at most
    /// `limit` rows), and the window's start.
    pub async fn top_users(
        &self,
        platform: Platform,
        group: Option<&str>,
        limit: usize,
    ) -> Result<(DateTime<Utc>, Vec<ReportRow>), StoreError> {
        let since = self.limits.window.start(self.clock.now());
        let within = group.map(|g| (platform, g));
        let rows = self
            .store
            .report(since, None, ReportBy::User, within)
            .await?;
        let prefix = format!("{}:", platform.as_str());
        let mut rows: Vec<ReportRow> = rows
            .into_iter()
            .filter_map(|mut r| {
                r.key = r.key.strip_prefix(&prefix)?.to_owned();
                Some(r)
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.images));
        rows.truncate(limit);
        Ok((since, rows))
    }

    /// The job behind a 🔁 `token`, if it is still kept and its button is on message `message`
    /// of chat `chat` (a button pressed anywhere else, or a forged token, finds nothing).
    pub async fn again_source(&self, token: &str, chat: &str, message: &str) -> Option<String> {
        let found = self.store.by_token(token).await.ok().flatten()?;
        let at = found.result_at?;
        (at.chat == chat && at.message == message).then_some(found.spec)
    }

    /// Forgets the user's usage so far in this window, bot-wide. Only operators may: a chat's
    /// admins cannot forgive usage (it is the operator's money).
    pub async fn reset(&self, user: &UserRef) -> Result<(), StoreError> {
        self.store.reset_usage(user).await?;
        self.forget(user);
        Ok(())
    }
}
