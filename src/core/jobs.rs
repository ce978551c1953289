//! Jobs: accept (validate, hold a queue place, reserve quota), run (fetch inputs, fit, call the
//! backend, download results) and hand the outcome back as a value.
//!
//! A front-end registers, per platform, an [`InputSource`] (how to fetch the bytes behind an
//! input locator, e.g. a Telegram file id) and a channel that receives each [`JobEvent`]. The
//! front-end then delivers and reports back with [`Engine::delivered`] (commit) or
//! [`Engine::undeliverable`] (refund). The engine never talks to a platform itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::access::Access;
use super::command::{EditCommand, Size};
use super::edit::{BackendError, BoxFuture, EditBackend, ModelCaps};
use super::error::{Failure, FailureReason, Rejection};
pub use super::frontend::{Deliveries, FrontEnd, pump};
use super::image::FitLimits;
use super::pipeline::{Observer, call, download_all, fit_all};
use super::queue::FairQueue;
use super::quota::{
    Granted, JobStatus, Platform, QuotaRejection, Quotas, Reservation, ResultAt, UserRef,
};

/// Most input images per edit (docs/DASHSCOPE.md §1.4).
pub const MAX_INPUTS: usize = 3;

/// Times a job is started before restarts that cut it off make it fail (refunded).
const MAX_RUNS: u32 = 2;

/// Fetches the bytes behind an input locator. Implemented by each front-end.
pub trait InputSource: Send + Sync + 'static {
    fn fetch<'a>(&'a self, locator: &'a str) -> BoxFuture<'a, Result<Bytes, String>>;
}

/// A job as it waits in the queue: where to get the inputs and whom to answer, no bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub user: UserRef,
    pub chat: String,
    /// The guild or group for the per-chat limit; `None` in private chats.
    pub group: Option<String>,
    /// Platform locators of 1–3 input images, in order.
    pub inputs: Vec<String>,
    pub command: EditCommand,
    /// Whatever the front-end needs to answer (message ids, language…).
    pub route: serde_json::Value,
    /// The unguessable id the result's 🔁 button carries; given by [`Engine::submit`] (`None`
    /// for jobs of releases before it: their results get no button).
    #[serde(default)]
    pub token: Option<String>,
}

/// Why a chat did not take a result, as its adapter classifies the platform's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The user's side: the bot was blocked, kicked, or may not post there. The images were
    /// made, so they are charged.
    ChatRefused(String),
    /// Our or the platform's side (5xx, timeouts, network, a file it would not take): refunded.
    Platform(String),
}

/// A job that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Jobs that will be served before this one.
    pub position: usize,
    /// No worker was free when it was queued: it has to wait.
    pub waits: bool,
    pub granted: Granted,
}

/// The edited images, ready to post.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub images: Vec<Bytes>,
    pub request_id: Option<String>,
}

/// What a front-end hears about its jobs.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A worker took the job (show "working", typing indicators…).
    Started(JobSpec),
    /// The job ended; post the result or the failure.
    Finished(Outcome),
}

/// How a job ended, for the front-end to post.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub job: JobSpec,
    pub granted: Granted,
    pub result: Result<Delivery, Failure>,
}

/// Engine settings (from `[quota]` and `[backend]`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_queue: usize,
    pub max_in_flight_per_user: u32,
    pub workers: usize,
    pub fit: FitLimits,
    pub store_prompts: bool,
    pub default_negative: String,
    pub fetch_timeout: Duration,
    /// All of one job's result downloads must end within this.
    pub download_timeout: Duration,
    /// Output size of requests that name none (`backend.default_size`).
    pub default_size: Option<Size>,
}

struct Queued {
    spec: JobSpec,
    granted: Granted,
    /// The backend's stored answer, for a job resumed after it.
    answered: Option<Answered>,
    /// Restarts cut it off while running twice already: fail it (refunded) instead of running.
    given_up: bool,
    /// It failed before a restart (this code) and its user was not told: only tell.
    failed_before: Option<String>,
}

struct Answered {
    request_id: Option<String>,
    urls: Vec<String>,
}

/// The job engine shared by all front-ends.
pub struct Engine {
    quotas: Arc<Quotas>,
    backend: Arc<dyn EditBackend>,
    queue: Arc<FairQueue<Queued>>,
    sources: HashMap<Platform, Arc<dyn InputSource>>,
    sinks: HashMap<Platform, mpsc::Sender<JobEvent>>,
    cfg: EngineConfig,
    /// Workers running a job right now.
    busy: AtomicUsize,
    observer: Option<Arc<dyn Observer>>,
    /// Where requests are served (operator allowlists).
    access: Arc<Access>,
}

impl Engine {
    pub fn new(quotas: Arc<Quotas>, backend: Arc<dyn EditBackend>, cfg: EngineConfig) -> Self {
        Self {
            queue: FairQueue::new(cfg.max_queue, cfg.max_in_flight_per_user),
            quotas,
            backend,
            sources: HashMap::new(),
            sinks: HashMap::new(),
            cfg,
            busy: AtomicUsize::new(0),
            observer: None,
            access: Arc::new(Access::open()),
        }
    }

    /// Connects a front-end: its input source and the channel its job events go to.
    pub fn register(
        &mut self,
        platform: Platform,
        source: Arc<dyn InputSource>,
        events: mpsc::Sender<JobEvent>,
    ) {
        self.sources.insert(platform, source);
        self.sinks.insert(platform, events);
    }

    /// Jobs served before `job_id`, if it is still waiting.
    pub fn position(&self, job_id: &str) -> Option<usize> {
        self.queue.position(|q| q.spec.id == job_id)
    }

    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Jobs waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the engine stopped taking jobs (shutdown).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// How many jobs can run at once.
    pub fn workers(&self) -> usize {
        self.cfg.workers.max(1)
    }

    /// Jobs being worked on right now.
    pub fn in_flight(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Validates, holds a queue place, reserves quota (persisted) and queues the job.
    /// Returns quickly: nothing here waits for the model.
    pub async fn submit(&self, mut spec: JobSpec) -> Result<Accepted, Rejection> {
        spec.command.size = spec.command.size.or(self.cfg.default_size);
        validate(&spec, self.backend.caps())?;
        spec.token = Some(uuid::Uuid::new_v4().simple().to_string());
        let hold = self.queue.hold(&spec.user)?;
        let reservation = Reservation {
            job_id: spec.id.clone(),
            user: spec.user.clone(),
            chat: spec.chat.clone(),
            group: spec.group.clone(),
            model: self.backend.model().to_owned(),
            cost: u32::from(spec.command.count()),
            prompt: self.cfg.store_prompts.then(|| spec.command.prompt.clone()),
            spec: serde_json::to_string(&spec).ok(),
            token: spec.token.clone(),
        };
        let granted = match self.quotas.reserve(reservation).await {
            Ok(Ok(granted)) => granted,
            Ok(Err(no)) => {
                self.queue.release(hold);
                if no != QuotaRejection::Duplicate {
                    self.observer().quota_rejected(quota_reason(&no));
                }
                return Err(Rejection::Quota(no));
            }
            Err(e) => {
                self.queue.release(hold);
                tracing::error!(error = %e, "quota reserve failed");
                return Err(Rejection::Internal);
            }
        };
        let position = self.queue.push(
            hold,
            Queued {
                spec,
                granted,
                answered: None,
                given_up: false,
                failed_before: None,
            },
        );
        let waits = position > 0 || self.busy.load(Ordering::SeqCst) >= self.workers();
        Ok(Accepted {
            position,
            waits,
            granted,
        })
    }

    /// For 🔁 pressed on message `pressed` of a chat: the job whose button `token` is — if its
    /// result is that very message — again: same inputs, chat and prompt, a new random seed, as
    /// job `new_id` of `user` (who pays), answered through `route`. `None` when the job is not
    /// known (any more), or the button was not pressed on its result (a forged or copied token).
    pub async fn again(
        &self,
        token: &str,
        pressed: &ResultAt,
        new_id: String,
        user: UserRef,
        route: serde_json::Value,
    ) -> Option<JobSpec> {
        let stored = self
            .quotas
            .again_source(token, &pressed.chat, &pressed.message)
            .await?;
        let old: JobSpec = serde_json::from_str(&stored).ok()?;
        let seed = rand::random_range(0..=super::command::MAX_SEED);
        let command = EditCommand {
            seed: Some(seed),
            ..old.command
        };
        Some(JobSpec {
            id: new_id,
            user,
            chat: old.chat,
            group: old.group,
            inputs: old.inputs,
            command,
            route,
            token: None,
        })
    }

    /// Starts `cfg.workers` workers; they end when the queue is closed and drained.
    pub fn spawn_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.workers())
            .map(|_| {
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    while let Some(job) = me.queue.pop().await {
                        me.busy.fetch_add(1, Ordering::SeqCst);
                        me.run(job).await;
                        me.busy.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect()
    }

    /// Stops accepting and starting jobs. Waiting jobs are handed back (they stay queued in the
    /// store and resume at the next start); workers stop after their current job. Returns how
    /// many were handed back.
    pub fn close(&self) -> usize {
        self.queue.close()
    }

    /// Serves requests only where `access` allows.
    pub fn set_access(&mut self, access: Arc<Access>) {
        self.access = access;
    }

    /// Where requests are served.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// Reports to `observer` (metrics, health).
    pub fn set_observer(&mut self, observer: Arc<dyn Observer>) {
        self.observer = Some(observer);
    }

    /// Where front-ends report deliveries and send failures.
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_deref().unwrap_or(&())
    }

    /// The front-end posted the result (its 🔁 button on message `at`): commit the images.
    pub async fn delivered(&self, job: &JobSpec, delivery: &Delivery, at: Option<ResultAt>) {
        self.observer().job_finished(true);
        let images = delivery.images.len();
        self.observer()
            .images_delivered(job.user.platform.as_str(), images);
        let request_id = delivery.request_id.clone();
        let committed = self
            .quotas
            .commit(&job.id, images as u32, request_id, at)
            .await;
        if let Err(e) = committed {
            tracing::error!(job_id = %job.id, error = %e, "cannot commit a delivered job");
        }
    }

    /// The front-end has told the user why `job` failed (or tried to): it is not told again
    /// after a restart.
    pub async fn told(&self, job: &JobSpec) {
        if let Err(e) = self.quotas.told(&job.id).await {
            tracing::error!(job_id = %job.id, error = %e, "cannot record that the user was told");
        }
    }

    /// The front-end could not post the result. Refused by the user's chat, the images are
    /// charged (the model was paid); failed on our or the platform's side, they are refunded.
    /// Returns what to tell the user.
    pub async fn undeliverable(&self, job: &JobSpec, why: SendFailure) -> Failure {
        self.observer().job_finished(false);
        let (reason, written) = match why {
            SendFailure::ChatRefused(detail) => {
                let written = self
                    .quotas
                    .charge_undelivered(&job.id, "chat_refused")
                    .await;
                (FailureReason::ChatRefused(detail), written)
            }
            SendFailure::Platform(detail) => {
                let written = self.quotas.refund(&job.id, "delivery").await;
                (FailureReason::Delivery(detail), written)
            }
        };
        if let Err(e) = &written {
            tracing::error!(job_id = %job.id, error = %e, "cannot record an undelivered job");
        }
        let refunded = matches!(reason, FailureReason::Delivery(_)) && written.is_ok();
        Failure { reason, refunded }
    }

    async fn run(&self, q: Queued) {
        let span = tracing::info_span!("job", platform = q.spec.user.platform.as_str(), job_id = %q.spec.id, user = %q.spec.user,
            chat = %q.spec.chat);
        async {
            if let Some(code) = q.failed_before {
                // Failed (and refunded) before a restart; the user still has to hear of it.
                tracing::info!(code = %code, "telling the user of a failure from before the restart");
                self.queue.done(&q.spec.user);
                let failure = Failure {
                    reason: FailureReason::Earlier(code),
                    refunded: true,
                };
                let outcome = Outcome {
                    job: q.spec,
                    granted: q.granted,
                    result: Err(failure),
                };
                self.emit(JobEvent::Finished(outcome)).await;
                return;
            }
            let started = Instant::now();
            if let Err(e) = self.quotas.mark_running(&q.spec.id).await {
                tracing::error!(error = %e, "cannot mark the job running");
            }
            self.emit(JobEvent::Started(q.spec.clone())).await;
            let result = self.produce(&q).await;
            let result = match result {
                Ok(delivery) => Ok(delivery),
                Err(reason) => {
                    if let FailureReason::Backend(BackendError::Operator { .. }) = &reason {
                        tracing::error!(code = %reason.code(), error = %reason, "job failed: the backend needs the operator");
                    } else {
                        tracing::warn!(code = %reason.code(), error = %reason, "job failed");
                    }
                    let refunded = self.quotas.refund(&q.spec.id, &reason.code()).await.is_ok();
                    self.observer().job_finished(false);
                    Err(Failure { reason, refunded })
                }
            };
            tracing::info!(
                ok = result.is_ok(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "job finished"
            );
            self.queue.done(&q.spec.user);
            let outcome = Outcome {
                job: q.spec,
                granted: q.granted,
                result,
            };
            self.emit(JobEvent::Finished(outcome)).await;
        }
        .instrument(span)
        .await
    }

    async fn emit(&self, event: JobEvent) {
        let platform = match &event {
            JobEvent::Started(spec) => spec.user.platform,
            JobEvent::Finished(o) => o.job.user.platform,
        };
        match self.sinks.get(&platform) {
            Some(sink) => {
                if sink.send(event).await.is_err() {
                    tracing::error!("the front-end is gone; job event dropped");
                }
            }
            None => tracing::error!(
                platform = platform.as_str(),
                "no front-end for this platform"
            ),
        }
    }

    async fn produce(&self, q: &Queued) -> Result<Delivery, FailureReason> {
        let spec = &q.spec;
        if q.given_up {
            return Err(FailureReason::Interrupted);
        }
        if let Some(done) = &q.answered {
            // The backend answered before a restart: deliver its results, no new call.
            let images =
                download_all(self.backend.as_ref(), &done.urls, self.cfg.download_timeout).await?;
            return Ok(Delivery {
                images,
                request_id: done.request_id.clone(),
            });
        }
        let source = self
            .sources
            .get(&spec.user.platform)
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
        let mut resp = call(
            self.backend.as_ref(),
            self.observer(),
            images,
            &spec.command,
            negative,
        )
        .await?;
        // More than asked for is not delivered (nor charged); fewer is charged as delivered.
        resp.urls.truncate(usize::from(spec.command.count()));
        if let Err(e) = self
            .quotas
            .save_result(&spec.id, resp.request_id.clone(), resp.urls.clone())
            .await
        {
            tracing::error!(error = %e, "cannot store the backend's answer");
        }
        let images =
            download_all(self.backend.as_ref(), &resp.urls, self.cfg.download_timeout).await?;
        Ok(Delivery {
            images,
            request_id: resp.request_id,
        })
    }

    /// Queues again what a previous run left unfinished, oldest first: waiting and running
    /// jobs run (again); jobs whose backend answer is stored are delivered from it. Jobs of
    /// platforms not running now stay in the store. Returns how many were queued.
    pub async fn resume(&self) -> usize {
        let ledger = self.quotas.ledger().clone();
        let unfinished = match tokio::task::spawn_blocking(move || ledger.unfinished()).await {
            Ok(Ok(list)) => list,
            other => {
                tracing::error!(?other, "cannot list unfinished jobs");
                return 0;
            }
        };
        let mut queued = 0;
        for u in unfinished {
            let Some(spec) = u
                .spec
                .as_deref()
                .and_then(|s| serde_json::from_str::<JobSpec>(s).ok())
            else {
                // Nobody to tell: the description (with the chat) is gone.
                tracing::warn!(job_id = %u.id, "unfinished job without its description; refunded");
                let _ = self.quotas.refund(&u.id, "lost").await;
                let _ = self.quotas.told(&u.id).await;
                continue;
            };
            if !self.sinks.contains_key(&spec.user.platform) {
                continue;
            }
            let answered = (u.status == JobStatus::Ready && !u.urls.is_empty()).then(|| Answered {
                request_id: u.request_id.clone(),
                urls: u.urls.clone(),
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
                    .show(&spec.user)
                    .await
                    .map_or(0, |q| q.remaining()),
            };
            let granted = Granted {
                remaining,
                limit: 0,
                resets_at: self.quotas.now(),
            };
            tracing::info!(job_id = %spec.id, status = u.status.as_str(), "resuming job");
            let user = spec.user.clone();
            self.queue.requeue(
                &user,
                Queued {
                    spec,
                    granted,
                    answered,
                    given_up,
                    failed_before,
                },
            );
            queued += 1;
        }
        queued
    }
}

/// Metric label of a quota refusal.
fn quota_reason(q: &QuotaRejection) -> &'static str {
    match q {
        QuotaRejection::Duplicate => "duplicate",
        QuotaRejection::Blocked => "blocked",
        QuotaRejection::Disabled => "disabled",
        QuotaRejection::User { .. } => "user",
        QuotaRejection::Chat { .. } => "chat",
        QuotaRejection::Global { .. } => "global",
    }
}

fn validate(spec: &JobSpec, caps: ModelCaps) -> Result<(), Rejection> {
    match spec.inputs.len() {
        0 => return Err(Rejection::NoImage),
        n if n > MAX_INPUTS => return Err(Rejection::TooManyImages(n)),
        _ => {}
    }
    if spec.command.count() > caps.max_n {
        return Err(Rejection::CountNotSupported { max: caps.max_n });
    }
    if let Some(size) = spec.command.size {
        caps.check_size(size)?;
    }
    Ok(())
}
