//! Jobs: accept (validate, hold a queue place, reserve quota), run (`run.rs`: fetch inputs, fit,
//! call the backend, download results) and end them through their conversation
//! (`core::conversation`), which commits, charges or refunds. Chats plug in as
//! [`Chat`] adapters, one per platform; the engine is the only owner of a job's life.

mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::access::Access;
use super::command::{EditCommand, Size};
use super::conversation::Talks;
use super::edit::{EditBackend, ModelCaps};
use super::error::{Failure, FailureReason, Rejection};
use super::image::FitLimits;
use super::model::Reply;
use super::pipeline::Observer;
use super::ports::chat::Chat;
use super::queue::FairQueue;
use super::quota::{Granted, Platform, QuotaRejection, Quotas, Reservation, ResultAt, UserRef};

/// Most input images per edit (docs/DASHSCOPE.md §1.4).
pub const MAX_INPUTS: usize = 3;

/// Times a job is started before restarts that cut it off make it fail (refunded).
const MAX_RUNS: u32 = 2;

/// A job as it waits in the queue: where to get the inputs and whom to answer, no bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub user: UserRef,
    pub chat: String,
    /// The guild or group for the per-chat limit; `None` in private chats.
    pub group: Option<String>,
    /// References of 1–3 input images, in order, as the chat adapter made them.
    pub inputs: Vec<String>,
    pub command: EditCommand,
    /// Where and how to answer.
    pub route: Reply,
    /// The unguessable id the result's 🔁 button carries; given by [`Engine::submit`] (`None`
    /// for jobs of releases before it: their results get no button).
    #[serde(default)]
    pub token: Option<String>,
}

impl JobSpec {
    /// A new job answering `route`, by its requester (no 🔁 token yet: [`Engine::submit`] gives one).
    pub fn new(id: String, route: Reply, inputs: Vec<String>, command: EditCommand) -> Self {
        JobSpec {
            id,
            user: route.user_ref(),
            chat: route.chat.to_string(),
            group: route.group.clone(),
            inputs,
            command,
            route,
            token: None,
        }
    }

    /// A job description as the store keeps it (JSON). Those of releases before typed routes,
    /// whose route was the front-end's own JSON, are read too.
    pub fn from_stored(json: &str) -> Option<JobSpec> {
        if let Ok(spec) = serde_json::from_str::<JobSpec>(json) {
            return Some(spec);
        }
        let old: LegacySpec = serde_json::from_str(json).ok()?;
        let r = old.route;
        let route = Reply {
            platform: old.user.platform,
            chat: r.chat_id.or(r.channel_id).or(old.chat.parse().ok())?,
            group: old.group.clone(),
            to: r.message_id.or(r.reply_to),
            user: old.user.id.clone(),
            lang: r.lang,
            deferred: r.interaction_token,
            upload_limit: r.upload_limit,
        };
        Some(JobSpec {
            id: old.id,
            user: old.user,
            chat: old.chat,
            group: old.group,
            inputs: old.inputs,
            command: old.command,
            route,
            token: old.token,
        })
    }
}

/// A stored job description of a release before typed routes.
#[derive(Deserialize)]
struct LegacySpec {
    id: String,
    user: UserRef,
    chat: String,
    group: Option<String>,
    inputs: Vec<String>,
    command: EditCommand,
    route: LegacyRoute,
    #[serde(default)]
    token: Option<String>,
}

/// The Telegram (`chat_id`, `message_id`) and Discord (`channel_id`, `reply_to`, …) routes of
/// those releases.
#[derive(Deserialize)]
struct LegacyRoute {
    chat_id: Option<i64>,
    message_id: Option<i64>,
    channel_id: Option<i64>,
    reply_to: Option<i64>,
    #[serde(default)]
    lang: super::model::Lang,
    interaction_token: Option<String>,
    upload_limit: Option<u64>,
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

/// What happened to a job, as told to observers ([`Engine::tap`]); nothing waits on them.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A worker took the job.
    Started(JobSpec),
    /// The job ended; its conversation posts the result or the failure.
    Finished(Outcome),
}

/// How a job ended.
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

pub(crate) struct Queued {
    spec: JobSpec,
    granted: Granted,
    /// The backend's stored answer, for a job resumed after it.
    answered: Option<Answered>,
    /// Restarts cut it off while running twice already: fail it (refunded) instead of running.
    given_up: bool,
    /// It failed before a restart (this code) and its user was not told: only tell.
    failed_before: Option<String>,
}

pub(crate) struct Answered {
    request_id: Option<String>,
    urls: Vec<String>,
}

/// The job engine shared by all chats.
pub struct Engine {
    pub(crate) quotas: Arc<Quotas>,
    pub(crate) backend: Arc<dyn EditBackend>,
    pub(crate) queue: Arc<FairQueue<Queued>>,
    pub(crate) chats: HashMap<Platform, Arc<dyn Chat>>,
    /// Observers of job events ([`Engine::tap`]).
    taps: Vec<mpsc::Sender<JobEvent>>,
    pub(crate) cfg: EngineConfig,
    /// Workers running a job right now.
    busy: AtomicUsize,
    observer: Option<Arc<dyn Observer>>,
    /// Where requests are served (operator allowlists).
    access: Arc<Access>,
    /// The conversations of jobs in progress.
    pub(crate) talks: Talks,
    /// Which refusals are answered (repeats are not).
    pub(crate) refusals: super::throttle::RefusalThrottle,
    /// Every task the engine spawns (deliveries, acknowledgements, typing, the ticker).
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Who this process is to a shared store (the jobs it claims are held in its name).
    pub(crate) owner: String,
    /// Cancelled by [`Engine::close`]: the position ticker stops.
    pub(crate) closing: tokio_util::sync::CancellationToken,
}

impl Engine {
    pub fn new(quotas: Arc<Quotas>, backend: Arc<dyn EditBackend>, cfg: EngineConfig) -> Self {
        Self {
            queue: FairQueue::new(cfg.max_queue, cfg.max_in_flight_per_user),
            quotas,
            backend,
            chats: HashMap::new(),
            taps: Vec::new(),
            cfg,
            busy: AtomicUsize::new(0),
            observer: None,
            access: Arc::new(Access::open()),
            talks: Talks::default(),
            refusals: Default::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            closing: tokio_util::sync::CancellationToken::new(),
            owner: format!("qeb-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Connects a chat platform: its jobs are fetched from, and answered through, `chat`.
    pub fn register(&mut self, chat: Arc<dyn Chat>) {
        self.chats.insert(chat.platform(), chat);
    }

    /// Every job's start and end from now on, as values (tests, audits). Events are dropped
    /// rather than wait for a slow observer.
    pub fn tap(&mut self) -> mpsc::Receiver<JobEvent> {
        let (tx, rx) = mpsc::channel(1024);
        self.taps.push(tx);
        rx
    }

    pub(crate) fn emit(&self, event: JobEvent) {
        for tap in &self.taps {
            let _ = tap.try_send(event.clone());
        }
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
        route: Reply,
    ) -> Option<JobSpec> {
        let stored = self
            .quotas
            .again_source(token, &pressed.chat, &pressed.message)
            .await?;
        let old = JobSpec::from_stored(&stored)?;
        let seed = rand::random_range(0..=super::command::MAX_SEED);
        let command = EditCommand {
            seed: Some(seed),
            ..old.command
        };
        Some(JobSpec {
            id: new_id,
            user: route.user_ref(),
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
        self.spawn_position_ticker();
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
        self.closing.cancel();
        self.queue.close()
    }

    /// Waits until every task the engine started (deliveries above all) has ended, or until
    /// `deadline`; returns whether they all ended. Call after the workers stopped.
    pub async fn settle(&self, deadline: tokio::time::Instant) -> bool {
        self.tasks.close();
        tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
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

    /// Where deliveries and send failures are reported.
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_deref().unwrap_or(&())
    }

    /// The result was posted (its 🔁 button on message `at`): commit the images.
    pub(crate) async fn delivered(&self, job: &JobSpec, delivery: &Delivery, at: Option<ResultAt>) {
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

    /// The user was told why `job` failed (or the bot tried to): it is not told again after a
    /// restart.
    pub(crate) async fn told(&self, job: &JobSpec) {
        if let Err(e) = self.quotas.told(&job.id).await {
            tracing::error!(job_id = %job.id, error = %e, "cannot record that the user was told");
        }
    }

    /// The result could not be posted. Refused by the user's chat, the images are charged (the
    /// model was paid); failed on our or the platform's side, they are refunded. Returns what
    /// to tell the user.
    pub(crate) async fn undeliverable(&self, job: &JobSpec, why: SendFailure) -> Failure {
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
