//! Each job's conversation with its chat, owned by the core over [`Chat`]: accept → mark or
//! status → queue position (one ticker for every platform) → typing → result (fitted to the
//! chat's upload limit) or failure → commit, refund or told → the final mark. The adapters only
//! carry out the calls; every choice is made here, once.

mod finish;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use super::error::Rejection;
use super::jobs::{Accepted, Engine, JobSpec};
use super::model::{Lang, Reply};
use super::ports::chat::{Chat, ChatStyle, Mark, Shown};
use super::quota::QuotaRejection;
use crate::messages;

pub use retry::retrying;

/// Queue positions are re-told at most this often.
const POSITION_EVERY: Duration = Duration::from_secs(3);
/// Rough time one job takes, for the expected start shown while waiting.
const TYPICAL_JOB: Duration = Duration::from_secs(20);

/// What the core shows for one job until it ends.
pub(crate) struct Talk {
    reply: Reply,
    /// The status message, or the platform's own answer to the request.
    status: Option<Shown>,
    /// The status holds a text of ours (a position, "accepted"), to be changed to "working".
    written: bool,
    /// The request carries our working mark, to be turned into the final one.
    marked: bool,
    /// The position last told, while the job waits.
    last_position: Option<usize>,
    typing: Option<tokio::task::AbortHandle>,
    /// Turns true once the job was acknowledged: the final mark waits for the first.
    acked: Option<watch::Receiver<bool>>,
}

impl Talk {
    fn new(reply: &Reply, acked: Option<watch::Receiver<bool>>) -> Self {
        Talk {
            reply: reply.clone(),
            status: reply.deferred.as_ref().map(|_| Shown::Deferred),
            written: false,
            marked: false,
            last_position: None,
            typing: None,
            acked,
        }
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
        let (job_id, reply) = (spec.id.clone(), spec.route.clone());
        tracing::info!(job_id = %job_id, user = %spec.user(), inputs = spec.inputs.len(), "edit request");
        let (acked, acked_rx) = watch::channel(false);
        // Before submitting: a worker may start (and even finish) the job at once.
        let fresh = match self.talks.entry(job_id.clone()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Talk::new(&reply, Some(acked_rx)));
                true
            }
        };
        let result = self.submit(spec).await;
        if result.is_err() && fresh {
            self.talks.remove(&job_id);
        }
        match result {
            Ok(accepted) => {
                tracing::info!(job_id = %job_id, position = accepted.position, "edit request accepted");
                let me = Arc::clone(self);
                self.tasks.spawn(async move {
                    me.acknowledge(&job_id, &reply, accepted).await;
                    let _ = acked.send(true);
                });
            }
            Err(Rejection::Quota(QuotaRejection::Duplicate)) => {
                tracing::info!(job_id = %job_id, "request seen again; the job exists already");
            }
            Err(rejection) => self.refuse(&reply, &rejection),
        }
    }

    /// Marks the request and, when the job must wait (or the mark was refused), shows a status.
    async fn acknowledge(&self, job_id: &str, reply: &Reply, accepted: Accepted) {
        let Some(chat) = self.chat(reply) else { return };
        let deferred = reply.deferred.is_some();
        let marked = !deferred && chat.mark(reply, Mark::Working).await.is_ok();
        let waiting = accepted.waits.then_some(accepted.position);
        let text = match (waiting, marked || deferred) {
            (None, true) => None,
            (None, false) => Some(messages::accepted(reply.lang)),
            (Some(ahead), _) => Some(self.position_text(chat.style(), reply.lang, ahead)),
        };
        let status = match text {
            None => None,
            Some(text) if deferred => {
                let _ = chat.edit(reply, Shown::Deferred, &text).await;
                Some(Shown::Deferred)
            }
            Some(text) => chat.say(reply, &text).await.ok().map(Shown::Message),
        };
        let Some(mut talk) = self.talks.get_mut(job_id) else {
            // The job ended meanwhile: nothing will clean the status message up later.
            if let Some(Shown::Message(message)) = status {
                let _ = chat.delete(reply, message).await;
            }
            return;
        };
        talk.marked = marked;
        if status.is_some() {
            talk.status = status;
            talk.written = true;
        }
        talk.last_position = waiting;
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
            let reply = reply.clone();
            self.tasks.spawn(async move {
                if let Err(e) = chat.edit(&reply, Shown::Deferred, &text).await {
                    tracing::warn!(error = %e, "cannot answer the request");
                }
            });
            return;
        }
        self.tell_once(reply, text);
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
        let reply = reply.clone();
        self.tasks.spawn(async move {
            if let Err(e) = chat.say(&reply, &text).await {
                tracing::warn!(error = %e, "cannot answer the request");
            }
        });
    }

    /// A worker took the job: typing until it ends, "working" in place of a status of ours.
    pub(crate) async fn started(&self, spec: &JobSpec) {
        let reply = &spec.route;
        let Some(chat) = self.chat(reply) else { return };
        let every = chat.style().typing_every;
        let (typer, to) = (Arc::clone(&chat), reply.clone());
        let typing = self.tasks.spawn(async move {
            loop {
                let _ = typer.typing(&to).await;
                tokio::time::sleep(every).await;
            }
        });
        let mut talk = self.talks.entry(spec.id.clone()).or_insert_with(|| {
            // Not taken by this run (resumed after a restart): its request carries the previous
            // run's mark.
            let mut talk = Talk::new(reply, None);
            talk.marked = reply.deferred.is_none();
            talk
        });
        if let Some(old) = talk.typing.replace(typing.abort_handle()) {
            old.abort();
        }
        talk.last_position = None;
        let working = talk.written.then_some(talk.status).flatten();
        drop(talk);
        if let Some(shown) = working {
            let _ = chat
                .edit(reply, shown, &messages::working(reply.lang))
                .await;
        }
    }

    /// Shows a running job's progress (from services that report it) in place of its status
    /// text, at most once per [`POSITION_EVERY`] per message, while `progress` has a sender.
    /// Jobs without a status message of ours (only a mark) get no new message for it.
    pub(crate) async fn show_progress(
        &self,
        spec: &JobSpec,
        mut progress: watch::Receiver<Option<u8>>,
    ) {
        let reply = &spec.route;
        let mut shown_at: Option<tokio::time::Instant> = None;
        let mut last = None;
        while progress.changed().await.is_ok() {
            let Some(percent) = *progress.borrow_and_update() else {
                continue;
            };
            if last == Some(percent) || shown_at.is_some_and(|t| t.elapsed() < POSITION_EVERY) {
                continue;
            }
            let status = self
                .talks
                .get(&spec.id)
                .and_then(|t| t.written.then_some(t.status).flatten());
            let (Some(shown), Some(chat)) = (status, self.chat(reply)) else {
                continue;
            };
            shown_at = Some(tokio::time::Instant::now());
            last = Some(percent);
            let text = messages::working_progress(reply.lang, percent);
            let _ = chat.edit(reply, shown, &text).await;
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

    async fn tell_positions(&self) {
        let waiting: Vec<(String, usize, Shown, Reply)> = self
            .talks
            .iter()
            .filter_map(|t| {
                Some((
                    t.key().clone(),
                    t.last_position?,
                    t.status?,
                    t.reply.clone(),
                ))
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        let positions = self.positions();
        for (job_id, last, shown, reply) in waiting {
            let Some(&now) = positions.get(&job_id) else {
                continue;
            };
            if now == last {
                continue;
            }
            let Some(chat) = self.chat(&reply) else {
                continue;
            };
            let text = self.position_text(chat.style(), reply.lang, now);
            let _ = chat.edit(&reply, shown, &text).await;
            if let Some(mut talk) = self.talks.get_mut(&job_id) {
                talk.last_position = Some(now);
            }
        }
    }
}
