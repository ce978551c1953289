//! Each job's conversation with its chat, owned by the core over [`Chat`]: accept → mark and
//! placeholder (the request's input with the prompt and the state) → queue position and
//! progress on the placeholder (one ticker for every platform) → result put into the
//! placeholder (fitted to the chat's upload limit) or the failure told on it → commit, refund or
//! told → the final mark. The adapters only carry out the calls; every choice is made here, once.
//!
//! A result is shown exactly once: the placeholder's messages are kept with the job before the
//! result exists, and the result goes into them by an edit, which a retry or a restart after a
//! crash repeats without showing anything twice (docs/PLATFORMS.md, "Exactly once").

mod finish;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use super::error::Rejection;
use super::jobs::{Accepted, Engine, JobSpec};
use super::model::{Lang, Reply};
use super::outbox::{Priority, Send};
use super::ports::chat::{Chat, ChatError, ChatStyle, Hold, Mark, Placeholder, Shown, Side};
use super::quota::QuotaRejection;
use crate::messages;

pub use retry::{retrying, wait_before_retry};

/// A reaction: sent among placeholders, counted against no limit.
pub(crate) const MARK: Send = Send {
    priority: Priority::Placeholder,
    cost: 0,
    on: None,
};
/// A reply or an edit of the platform's answer that tells the user something.
const REPLY: Send = Send {
    priority: Priority::Placeholder,
    cost: 1,
    on: None,
};

/// Queue positions (and progress) are re-told at most this often.
const POSITION_EVERY: Duration = Duration::from_secs(3);
/// Rough time one job takes, for the expected start shown while waiting.
const TYPICAL_JOB: Duration = Duration::from_secs(20);

/// What the core shows for one job until it ends.
pub(crate) struct Talk {
    job: JobSpec,
    /// The messages standing for the job, once posted (and kept by the store).
    placeholder: Option<Placeholder>,
    /// A worker took the job.
    started: bool,
    /// The request carries our working mark, to be turned into the final one.
    marked: bool,
    /// The position last told, while the job waits (its placeholder shows a position, to
    /// become "working" at start).
    last_position: Option<usize>,
    /// Turns true once the job was acknowledged (its placeholder posted or given up): the
    /// result waits for it.
    acked: Option<watch::Receiver<bool>>,
}

impl Talk {
    fn new(job: &JobSpec, acked: Option<watch::Receiver<bool>>) -> Self {
        Talk {
            job: job.clone(),
            placeholder: None,
            started: false,
            marked: false,
            last_position: None,
            acked,
        }
    }

    /// Its acknowledgement is still under way (it posts the placeholder).
    fn acking(&self) -> bool {
        self.acked.as_ref().is_some_and(|a| !*a.borrow())
    }
}

/// The conversations of the jobs in progress, by job id.
pub(crate) type Talks = DashMap<String, Talk>;

impl Engine {
    fn chat(&self, reply: &Reply) -> Option<Arc<dyn Chat>> {
        let chat = self.chats.get(&reply.platform).cloned();
        if chat.is_none() {
            tracing::error!(
                platform = reply.platform.as_str(),
                "no chat adapter for this platform"
            );
        }
        chat
    }

    /// Takes a request: submits its job and shows that it was taken, or tells why not. An
    /// update seen again leaves its running job's conversation alone.
    pub async fn request(self: &Arc<Self>, spec: JobSpec) {
        let job_id = spec.id.clone();
        tracing::info!(job_id = %job_id, user = %spec.user(), inputs = spec.inputs.len(), "edit request");
        let (acked, acked_rx) = watch::channel(false);
        // Before submitting: a worker may start (and even finish) the job at once.
        let fresh = match self.talks.entry(job_id.clone()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Talk::new(&spec, Some(acked_rx)));
                true
            }
        };
        let job = spec.clone();
        let result = self.submit(spec).await;
        if result.is_err() && fresh {
            self.talks.remove(&job_id);
        }
        match result {
            Ok(accepted) => {
                tracing::info!(job_id = %job_id, position = accepted.position, "edit request accepted");
                let me = Arc::clone(self);
                self.tasks.spawn(async move {
                    me.acknowledge(&job, accepted, acked).await;
                });
            }
            Err(Rejection::Quota(QuotaRejection::Duplicate)) => {
                tracing::info!(job_id = %job_id, "request seen again; the job exists already");
            }
            Err(rejection) => self.refuse(&job.route, &rejection),
        }
    }

    /// Marks the request and posts the job's placeholder, showing its place in the queue when
    /// it must wait.
    async fn acknowledge(
        self: &Arc<Self>,
        job: &JobSpec,
        accepted: Accepted,
        acked: watch::Sender<bool>,
    ) {
        let reply = &job.route;
        let Some(chat) = self.chat(reply) else { return };
        let marked = reply.deferred.is_none()
            && self
                .outbox
                .run(reply, MARK, || chat.mark(reply, Mark::Working))
                .await
                .is_ok();
        let waiting = accepted.waits.then_some(accepted.position);
        let state = match waiting {
            Some(ahead) => self.position_text(chat.style(), reply.lang, ahead),
            None => messages::working(reply.lang),
        };
        let placeholder = match self.hold(chat.as_ref(), job, &state).await {
            Ok(placeholder) => Some(placeholder),
            Err(ChatError::Final {
                side: Side::User,
                detail,
            }) if self.withdraw(job, &detail).await => {
                self.talks.remove(&job.id);
                if marked {
                    let failed = || chat.mark(reply, Mark::Failed);
                    let _ = self.outbox.run(reply, MARK, failed).await;
                }
                return;
            }
            Err(_) => None,
        };
        let Some(mut talk) = self.talks.get_mut(&job.id) else {
            return;
        };
        talk.marked = marked;
        talk.placeholder = placeholder;
        // Started while the placeholder was posted: it says "working" now.
        let overtaken = talk.started && waiting.is_some();
        talk.last_position = waiting.filter(|_| !overtaken);
        drop(talk);
        // The result may go into the placeholder from now on.
        let _ = acked.send(true);
        if overtaken {
            self.show_state(&job.id, |r| messages::working(r.lang));
        }
    }

    /// Posts the job's placeholder showing `state`, and keeps it with the job.
    pub(crate) async fn hold(
        &self,
        chat: &dyn Chat,
        job: &JobSpec,
        state: &str,
    ) -> Result<Placeholder, ChatError> {
        let reply = &job.route;
        let text = messages::placeholder(&job.command.prompt, state);
        let hold = Hold {
            job_id: &job.id,
            input: job.inputs.first().map(String::as_str),
            n: job.command.count(),
            text: &text,
        };
        let send = Send {
            priority: Priority::Placeholder,
            cost: chat.hold_cost(hold.n),
            on: None,
        };
        let placeholder = self
            .outbox
            .run(reply, send, || chat.hold(reply, &hold))
            .await
            .inspect_err(|e| {
                tracing::warn!(job_id = %job.id, error = %e, "cannot post the job's placeholder");
            })?;
        let kept = match serde_json::to_string(&placeholder) {
            Ok(json) => self.quotas.store().set_placeholder(&job.id, &json).await,
            Err(e) => Err(crate::core::ports::store::StoreError(e.to_string())),
        };
        if let Err(e) = kept {
            tracing::error!(job_id = %job.id, error = %e, "cannot keep the job's placeholder");
        }
        Ok(placeholder)
    }

    /// The placeholder a run of this job posted (this run's, or one before a restart or at
    /// another replica), as the store keeps it.
    pub(crate) async fn kept_placeholder(&self, job_id: &str) -> Option<Placeholder> {
        match self.quotas.store().placeholder(job_id).await {
            Ok(json) => json.and_then(|j| serde_json::from_str(&j).ok()),
            Err(e) => {
                tracing::warn!(job_id, error = %e, "cannot read the job's placeholder");
                None
            }
        }
    }

    /// Shows `state` on the job's placeholder, if it has one.
    fn show_state(self: &Arc<Self>, job_id: &str, state: impl FnOnce(&Reply) -> String) {
        let Some((job, placeholder)) = self
            .talks
            .get(job_id)
            .and_then(|t| Some((t.job.clone(), t.placeholder.clone()?)))
        else {
            return;
        };
        let Some(chat) = self.chat(&job.route) else {
            return;
        };
        let text = messages::placeholder(&job.command.prompt, &state(&job.route));
        let send = Send {
            priority: Priority::Status,
            cost: 1,
            on: placeholder.images.first().copied(),
        };
        // Its own task: a status waits behind every result and placeholder of its chat, and
        // nobody waits for it.
        let me = Arc::clone(self);
        self.tasks.spawn(async move {
            let reply = &job.route;
            let show = || async {
                // A job that ended shows its result or failure: no state over it.
                if !me.talks.contains_key(&job.id) {
                    return Err(ChatError::Superseded);
                }
                chat.show(reply, &placeholder, &text).await
            };
            if let Err(e) = me.outbox.run(reply, send, show).await {
                tracing::debug!(job_id = %job.id, error = %e, "cannot show the job's state");
            }
        });
    }

    /// Where a waiting job stands, as its chat shows it.
    fn position_text(&self, style: ChatStyle, lang: Lang, ahead: usize) -> String {
        if !style.eta {
            return messages::queued(lang, ahead);
        }
        let workers = self.workers() as u32;
        let wait = TYPICAL_JOB * (ahead as u32 + 1) / workers;
        let eta = self.quotas().now() + chrono::Duration::from_std(wait).unwrap_or_default();
        messages::queued_eta(lang, ahead, eta, style.time)
    }

    /// Tells why a request was refused: in place of the platform's answer when there is one
    /// (always), else as a reply unless the user or chat was answered one just now.
    pub fn refuse(&self, reply: &Reply, rejection: &Rejection) {
        let Some(chat) = self.chat(reply) else { return };
        let text = messages::rejection_with(reply.lang, rejection, &chat.style().time);
        tracing::info!(reason = %rejection, "request refused");
        if reply.deferred.is_some() {
            let (reply, outbox) = (reply.clone(), Arc::clone(&self.outbox));
            self.tasks.spawn(async move {
                let edit = || chat.edit(&reply, Shown::Deferred, &text);
                if let Err(e) = outbox.run(&reply, REPLY, edit).await {
                    tracing::warn!(error = %e, "cannot answer the request");
                }
            });
            return;
        }
        self.tell_once(reply, text);
    }

    /// Says `text` answering the request, in its turn in the chat's outbox: the answers the
    /// adapters write themselves (commands, "not enabled here").
    pub async fn say(&self, reply: &Reply, text: &str) -> Result<i64, ChatError> {
        let chat = self
            .chat(reply)
            .ok_or_else(|| ChatError::platform("no chat adapter for this platform"))?;
        self.outbox
            .run(reply, REPLY, || chat.say(reply, text))
            .await
    }

    /// Says `text` answering the request from a task of its own, unless the user (or the
    /// chat) was told the same just now (`core::throttle`).
    pub fn tell_once(&self, reply: &Reply, text: String) {
        let group = reply.group.is_some();
        if !self
            .refusals
            .allow(&reply.chat.to_string(), group, &reply.user, &text)
        {
            tracing::debug!("not answered: answered just now");
            return;
        }
        let Some(chat) = self.chat(reply) else { return };
        let (reply, outbox) = (reply.clone(), Arc::clone(&self.outbox));
        self.tasks.spawn(async move {
            if let Err(e) = outbox.run(&reply, REPLY, || chat.say(&reply, &text)).await {
                tracing::warn!(error = %e, "cannot answer the request");
            }
        });
    }

    /// A worker took the job: its placeholder says "working" (a job resumed without one gets
    /// one now).
    pub(crate) async fn started(self: &Arc<Self>, spec: &JobSpec) {
        let reply = &spec.route;
        let Some(chat) = self.chat(reply) else { return };
        let (was_waiting, missing) = {
            let mut talk = self.talks.entry(spec.id.clone()).or_insert_with(|| {
                // Not taken by this run (resumed after a restart, or taken from another
                // replica): its request carries the earlier run's mark.
                let mut talk = Talk::new(spec, None);
                talk.marked = reply.deferred.is_none();
                talk
            });
            talk.started = true;
            let was_waiting = talk.last_position.take().is_some();
            (was_waiting, talk.placeholder.is_none() && !talk.acking())
        };
        if missing {
            let kept = self.kept_placeholder(&spec.id).await;
            // One kept by an earlier run is told the job runs; a new one says so already.
            let (placeholder, kept) = match kept {
                Some(kept) => (Some(kept), true),
                None => {
                    let working = messages::working(reply.lang);
                    (self.hold(chat.as_ref(), spec, &working).await.ok(), false)
                }
            };
            if let Some(mut talk) = self.talks.get_mut(&spec.id) {
                talk.placeholder = placeholder;
            }
            if kept {
                self.show_state(&spec.id, |r| messages::working(r.lang));
            }
        } else if was_waiting {
            self.show_state(&spec.id, |r| messages::working(r.lang));
        }
    }

    /// Shows a running job's progress (from services that report it) on its placeholder, at
    /// most once per [`POSITION_EVERY`], while `progress` has a sender.
    pub(crate) async fn show_progress(
        self: &Arc<Self>,
        spec: &JobSpec,
        mut progress: watch::Receiver<Option<u8>>,
    ) {
        let mut shown_at: Option<tokio::time::Instant> = None;
        let mut last = None;
        while progress.changed().await.is_ok() {
            let Some(percent) = *progress.borrow_and_update() else {
                continue;
            };
            if last == Some(percent) || shown_at.is_some_and(|t| t.elapsed() < POSITION_EVERY) {
                continue;
            }
            shown_at = Some(tokio::time::Instant::now());
            last = Some(percent);
            self.show_state(&spec.id, |r| messages::working_progress(r.lang, percent));
        }
    }

    /// Every few seconds, tells waiting jobs their new place in the queue (one ticker for all
    /// platforms). Ends when the engine is dropped.
    pub fn spawn_position_ticker(self: &Arc<Self>) {
        let (me, closing) = (Arc::downgrade(self), self.closing.clone());
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(POSITION_EVERY);
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(engine) = me.upgrade() else { return };
                engine.tell_positions().await;
            }
        });
    }

    async fn tell_positions(self: &Arc<Self>) {
        let waiting: Vec<(String, usize)> = self
            .talks
            .iter()
            .filter(|t| t.placeholder.is_some())
            .filter_map(|t| Some((t.key().clone(), t.last_position?)))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let positions = self.positions();
        for (job_id, last) in waiting {
            let Some(&now) = positions.get(&job_id) else {
                continue;
            };
            if now == last {
                continue;
            }
            let Some(style) = self
                .talks
                .get(&job_id)
                .and_then(|t| self.chats.get(&t.job.route.platform).map(|c| c.style()))
            else {
                continue;
            };
            self.show_state(&job_id, |r| self.position_text(style, r.lang, now));
            if let Some(mut talk) = self.talks.get_mut(&job_id) {
                talk.last_position = Some(now);
            }
        }
    }
}
