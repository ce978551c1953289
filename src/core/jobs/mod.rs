//! Jobs: accept (validate, hold a queue place, reserve quota), run (`run.rs`: fetch inputs, fit,
//! call the backend, store its answer) and end them through their conversation
//! (`core::conversation`), which downloads the results in their chat's turn and commits, charges
//! or refunds. Chats plug in as
//! [`Chat`] adapters, one per platform; the engine is the only owner of a job's life.

mod accept;
mod outcome;
mod run;
mod spec;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::access::Access;
use super::command::Size;
use super::conversation::Talks;
use super::error::Failure;
use super::image::FitLimits;
use super::pipeline::Observer;
use super::ports::chat::Chat;
use super::ports::model::{Answer, EditService};
use super::queue::FairQueue;
use super::quota::{Granted, Quotas};
use crate::core::model::Platform;

/// Most input images per edit (docs/DASHSCOPE.md §1.4).
pub const MAX_INPUTS: usize = 3;

/// Times a job is started before restarts that cut it off make it fail (refunded).
const MAX_RUNS: u32 = 2;

pub use spec::JobSpec;

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
    /// The job ended: its results are downloaded (its conversation posts them next), or it
    /// failed (its conversation tells why).
    Finished(Outcome),
}

/// A job whose work ended, for its conversation: the backend's answer (its results not yet
/// downloaded) or why there is none.
pub(crate) struct Made {
    pub job: JobSpec,
    pub granted: Granted,
    pub answer: Result<Answer, Failure>,
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
    answered: Option<Answer>,
    /// Restarts cut it off while running twice already: fail it (refunded) instead of running.
    given_up: bool,
    /// It failed before a restart (this code) and its user was not told: only tell.
    failed_before: Option<String>,
}

/// The job engine shared by all chats.
pub struct Engine {
    pub(crate) quotas: Arc<Quotas>,
    pub(crate) backend: Arc<dyn EditService>,
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
    /// Every call to a chat waits its turn here.
    pub(crate) outbox: Arc<super::outbox::Outbox>,
    /// Which refusals are answered (repeats are not).
    pub(crate) refusals: super::throttle::RefusalThrottle,
    /// Every task the engine spawns (deliveries, acknowledgements, typing, the ticker).
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Who this process is to a shared store (the jobs it claims are held in its name).
    pub(crate) owner: String,
    /// Cancelled by [`Engine::close`]: the position ticker stops.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    /// Cancelled by [`Engine::release`]: leases are no longer renewed.
    pub(crate) released: tokio_util::sync::CancellationToken,
}

impl Engine {
    pub fn new(quotas: Arc<Quotas>, backend: Arc<dyn EditService>, cfg: EngineConfig) -> Self {
        Self {
            queue: FairQueue::new(cfg.max_queue, cfg.max_in_flight_per_user),
            backend,
            chats: HashMap::new(),
            taps: Vec::new(),
            cfg,
            busy: AtomicUsize::new(0),
            observer: None,
            access: Arc::new(Access::open()),
            talks: Talks::new(),
            outbox: Default::default(),
            refusals: Default::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            closing: tokio_util::sync::CancellationToken::new(),
            released: tokio_util::sync::CancellationToken::new(),
            owner: quotas.store().shared().map_or_else(
                || format!("qeb-{}", uuid::Uuid::new_v4().simple()),
                |s| s.owner,
            ),
            quotas,
        }
    }

    /// Connects a chat platform: its jobs are fetched from, and answered through, `chat`,
    /// within its limits.
    pub fn register(&mut self, chat: Arc<dyn Chat>) {
        if let Some(pace) = chat.pace() {
            self.outbox.limit(chat.platform(), pace);
        }
        self.chats.insert(chat.platform(), chat);
    }

    /// Every job's start and end from now on, as values (tests, audits). Events are dropped
    /// rather than wait for a slow observer.
    pub fn tap(&mut self) -> mpsc::Receiver<JobEvent> {
        let (tx, rx) = mpsc::channel(1024);
        self.taps.push(tx);
        rx
    }

    /// Tells observers, if there are any (`event` is built only then).
    pub(crate) fn emit(&self, event: impl FnOnce() -> JobEvent) {
        if self.taps.is_empty() {
            return;
        }
        let event = event();
        for tap in &self.taps {
            let _ = tap.try_send(event.clone());
        }
    }

    /// Jobs served before each waiting job, by job id.
    pub(crate) fn positions(&self) -> HashMap<String, usize> {
        self.queue.positions(|q| q.spec.id.clone())
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

    /// Starts `cfg.workers` workers; they end when the queue is closed and drained.
    pub fn spawn_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.spawn_position_ticker();
        self.spawn_lease_keeper();
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
}
