//! Running a job: fetch its inputs, fit them, call the backend, store its answer, and hand it
//! to the job's conversation (which downloads the results in their chat's turn); and resuming
//! what a previous run left unfinished.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;

use super::{Engine, JobEvent, JobSpec, MAX_RUNS, Made, Outcome, Queued};
use crate::core::error::{Failure, FailureReason};
use crate::core::pipeline::{call, fit_all};
use crate::core::ports::model::{Answer, BackendError, Progress};
use crate::core::ports::store::{JobStatus, Unfinished};
use crate::core::quota::Granted;

/// How often a replica on a shared store looks for waiting jobs to take and for its own that
/// were taken.
const SHARE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a job waits at a busy replica before an idle one may take it (a job that waits
/// only until its own replica's next worker is free stays there).
const WAITED: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a claim on unfinished jobs holds on a store that does not say (one process has it
/// to itself, so nobody else takes them over anyway).
const LEASE: std::time::Duration = std::time::Duration::from_secs(600);

impl Engine {
    /// A job's work ended: its conversation ends it (alongside others), and observers hear of
    /// it there.
    fn ended(self: &Arc<Self>, made: Made) {
        let me = Arc::clone(self);
        self.tasks.spawn(async move { me.finish(made).await });
    }

    /// `job` failed for `reason`: refunded; returns what to tell.
    pub(crate) async fn failed(&self, job: &JobSpec, reason: FailureReason) -> Failure {
        if let FailureReason::Backend(BackendError::Operator { .. }) = &reason {
            tracing::error!(code = %reason.code(), error = %reason, "job failed: the backend needs the operator");
        } else {
            tracing::warn!(code = %reason.code(), error = %reason, "job failed");
        }
        let refunded = self.quotas.refund(&job.id, &reason.code()).await.is_ok();
        self.observer().job_finished(false);
        Failure { reason, refunded }
    }

    /// Observers hear how `job` ended.
    pub(crate) fn tell_observers(
        &self,
        job: &JobSpec,
        granted: Granted,
        result: impl FnOnce() -> Result<super::Delivery, Failure>,
    ) {
        self.emit(|| {
            JobEvent::Finished(Outcome {
                job: job.clone(),
                granted,
                result: result(),
            })
        });
    }

    pub(crate) async fn run(self: &Arc<Self>, q: Queued) {
        let span = tracing::info_span!("job", platform = q.spec.route.platform.as_str(), job_id = %q.spec.id,
            user = %q.spec.user(), chat = q.spec.route.chat);
        async {
            if let Some(code) = q.failed_before {
                // Failed (and refunded) before a restart; the user still has to hear of it.
                tracing::info!(code = %code, "telling the user of a failure from before the restart");
                self.queue.done(&q.spec.user());
                let failure = Failure {
                    reason: FailureReason::Earlier(code),
                    refunded: true,
                };
                let made = Made {
                    job: q.spec,
                    granted: q.granted,
                    answer: Err(failure),
                };
                self.ended(made);
                return;
            }
            let started = Instant::now();
            match self.quotas.start(&q.spec.id, &self.owner).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another replica took it while it waited here: it is that one's now.
                    tracing::info!("job taken over by another replica");
                    self.queue.done(&q.spec.user());
                    self.handed_over(&q.spec.id).await;
                    return;
                }
                Err(e) if self.quotas.store().shared().is_some() => {
                    // Not known to be this replica's: running it could run it twice. It waits
                    // here again (held by lease) until the store answers.
                    tracing::error!(error = %e, "cannot start the job; it waits");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let user = q.spec.user();
                    self.queue.done(&user);
                    self.queue.requeue(&user, q);
                    return;
                }
                Err(e) => tracing::error!(error = %e, "cannot mark the job running"),
            }
            self.emit(|| JobEvent::Started(q.spec.clone()));
            self.started(&q.spec).await;
            let answer = match self.produce(&q).await {
                Ok(answer) => Ok(answer),
                Err(reason) => Err(self.failed(&q.spec, reason).await),
            };
            tracing::info!(
                ok = answer.is_ok(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "job finished"
            );
            self.queue.done(&q.spec.user());
            let made = Made {
                job: q.spec,
                granted: q.granted,
                answer,
            };
            self.ended(made);
        }
        .instrument(span)
        .await
    }

    /// The backend's answer to the job: made now, or kept from before a restart (no new call).
    async fn produce(self: &Arc<Self>, q: &Queued) -> Result<Answer, FailureReason> {
        let spec = &q.spec;
        if q.given_up {
            return Err(FailureReason::Interrupted);
        }
        if let Some(done) = &q.answered {
            return Ok(done.clone());
        }
        let source = self
            .chats
            .get(&spec.route.platform)
            .ok_or(FailureReason::Internal)?;
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for locator in &spec.inputs {
            let bytes = tokio::time::timeout(self.cfg.fetch_timeout, source.fetch(locator))
                .await
                .map_err(|_| FailureReason::Fetch("timed out".into()))?
                .map_err(FailureReason::Fetch)?;
            inputs.push(bytes);
        }
        let negative =
            spec.command.negative.clone().or_else(|| {
                Some(self.cfg.default_negative.clone()).filter(|s| !s.trim().is_empty())
            });
        let images = fit_all(inputs, &self.cfg.fit).await?;
        let (told, progress) = tokio::sync::watch::channel(None);
        let told = Progress::new(move |percent| {
            told.send_replace(Some(percent));
        });
        let answered = call(
            self.backend.as_ref(),
            self.observer(),
            images,
            &spec.command,
            negative,
            Some(told),
        );
        // The call owns the only sender: when it returns, the progress display ends too.
        let (answered, ()) = tokio::join!(answered, self.show_progress(spec, progress));
        let mut resp = answered?;
        // More than asked for is not delivered (nor charged); fewer is charged as delivered.
        resp.parts.truncate(usize::from(spec.command.count()));
        if let Err(e) = self.quotas.save_result(&spec.id, &resp).await {
            tracing::error!(error = %e, "cannot store the backend's answer");
        }
        Ok(resp)
    }

    /// Queues again what a previous run left unfinished, oldest first: waiting and running
    /// jobs run (again); jobs whose backend answer is stored are delivered from it. Jobs of
    /// platforms not running now stay in the store. Returns how many were queued.
    pub async fn resume(&self) -> usize {
        let lease_until = self.quotas.now() + self.lease();
        let claimed = self
            .quotas
            .store()
            .claim_unfinished(&self.owner, lease_until);
        let unfinished = match claimed.await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot list unfinished jobs");
                return 0;
            }
        };
        let mut queued = 0;
        for u in unfinished {
            if let Some(job) = self.resumed(u).await {
                self.queue.requeue(&job.spec.user(), job);
                queued += 1;
            }
        }
        queued
    }

    /// The platforms this replica runs.
    fn platforms(&self) -> Vec<crate::core::model::Platform> {
        self.chats.keys().copied().collect()
    }

    /// How long this replica's claims hold.
    fn lease(&self) -> chrono::Duration {
        let lease = self.quotas.store().shared().map_or(LEASE, |s| s.lease);
        chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
    }

    /// On a store replicas share, two tasks. One renews the leases of the jobs this replica
    /// holds (waiting, running or being delivered) every third of a lease, on its own so that
    /// nothing slow delays it, until [`Engine::release`] (after the drain at shutdown: a job
    /// still running then is still this replica's). The other, until the engine closes, takes
    /// over the jobs of replicas that stopped renewing theirs (they died) or handed them back
    /// (they stopped), every third of a lease, and every [`SHARE_EVERY`] shares waiting work
    /// ([`Engine::share_work`]).
    pub(crate) fn spawn_lease_keeper(self: &Arc<Self>) {
        let Some(shared) = self.quotas.store().shared() else {
            return;
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(shared.lease / 3);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = me.released.cancelled() => return,
                    _ = every.tick() => {}
                }
                let until = me.quotas.now() + me.lease();
                if let Err(e) = me.quotas.store().renew(&me.owner, until).await {
                    tracing::warn!(error = %e, "cannot renew this replica's job leases");
                }
            }
        });
        let me = Arc::clone(self);
        self.tasks.spawn(async move {
            let mut every = tokio::time::interval(SHARE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut looked = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = me.closing.cancelled() => return,
                    _ = every.tick() => {}
                }
                if looked.elapsed() >= shared.lease / 3 {
                    looked = tokio::time::Instant::now();
                    let taken = me.resume().await;
                    if taken > 0 {
                        tracing::info!(taken, "took over jobs another replica left");
                    }
                }
                me.share_work().await;
            }
        });
    }

    /// Lets go of waiting jobs another replica took, and takes waiting jobs of busy replicas
    /// for the workers that are free here.
    async fn share_work(&self) {
        self.let_go_of_taken().await;
        self.take_from_busy().await;
    }

    /// Drops the waiting jobs another replica took from the queue, ending their conversations.
    async fn let_go_of_taken(&self) {
        let waiting: Vec<String> = self.positions().into_keys().collect();
        let lost = match self.quotas.store().lost(&self.owner, &waiting).await {
            Ok(lost) => lost,
            Err(e) => return tracing::warn!(error = %e, "cannot check this replica's waiting jobs"),
        };
        if lost.is_empty() {
            return;
        }
        for q in self.queue.remove(|q| lost.contains(&q.spec.id)) {
            tracing::info!(job_id = %q.spec.id, "job taken over by another replica");
            self.handed_over(&q.spec.id).await;
        }
    }

    /// Takes jobs waiting at busy replicas, as many as this one has workers free.
    async fn take_from_busy(&self) {
        let free = self
            .workers()
            .saturating_sub(self.in_flight() + self.queue_len());
        if free == 0 || self.is_closed() {
            return;
        }
        let now = self.quotas.now();
        let since = now - chrono::Duration::from_std(WAITED).unwrap_or_default();
        let taken = self
            .quotas
            .store()
            .take_waiting(
                &self.owner,
                now + self.lease(),
                since,
                free,
                &self.platforms(),
            )
            .await;
        let taken = match taken {
            Ok(list) => list,
            Err(e) => return tracing::warn!(error = %e, "cannot take waiting jobs"),
        };
        for u in taken {
            if let Some(job) = self.resumed(u).await {
                tracing::info!(job_id = %job.spec.id, "took a job waiting at a busy replica");
                self.queue.requeue(&job.spec.user(), job);
            }
        }
    }

    /// Hands the jobs this replica still holds to the others (it stops): they take them at
    /// their next look rather than when the leases would have run out.
    pub async fn release(&self) {
        self.released.cancel();
        match self.quotas.store().release(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "handed unfinished jobs to the other replicas"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand unfinished jobs back; they are taken over when their leases end")
            }
        }
    }

    /// One unfinished job as it goes back in the queue; `None` when it stays in the store (its
    /// platform is not running) or cannot be resumed (its description is lost: refunded).
    async fn resumed(&self, u: Unfinished) -> Option<Queued> {
        let Some(spec) = u.spec.as_deref().and_then(JobSpec::from_stored) else {
            // Nobody to tell: the description (with the chat) is gone.
            tracing::warn!(job_id = %u.id, "unfinished job without its description; refunded");
            let _ = self.quotas.refund(&u.id, "lost").await;
            let _ = self.quotas.told(&u.id).await;
            return None;
        };
        if !self.chats.contains_key(&spec.route.platform) {
            // A replica that runs its platform takes it (on a store of this process's own, it
            // waits for a run that does).
            if let Err(e) = self.quotas.store().let_go(&self.owner, &u.id).await {
                tracing::warn!(job_id = %u.id, error = %e, "cannot hand back a job of a platform not running here");
            }
            return None;
        }
        let answered = (u.status == JobStatus::Ready && !u.parts.is_empty()).then(|| Answer {
            request_id: u.request_id.clone(),
            parts: u.parts.clone(),
            service: None,
        });
        // A running job is run once more after a restart; cut off again, it is given up
        // (it may be what brings the process down).
        let given_up = answered.is_none() && u.attempts >= MAX_RUNS;
        let failed_before = (u.status == JobStatus::Failed)
            .then(|| u.error.clone().unwrap_or_else(|| "failed".into()));
        // What is left is said under a result; a job that only fails needs no store read.
        let remaining = match given_up || failed_before.is_some() {
            true => 0,
            false => self
                .quotas
                .show(&spec.user())
                .await
                .map_or(0, |q| q.remaining()),
        };
        let granted = Granted {
            remaining,
            limit: 0,
            resets_at: self.quotas.now(),
        };
        tracing::info!(job_id = %spec.id, status = u.status.as_str(), "resuming job");
        Some(Queued {
            spec,
            granted,
            answered,
            given_up,
            failed_before,
        })
    }
}
