//! The end of a conversation: the result is downloaded and fitted to the chat's upload limit in
//! its chat's turn, put into the job's placeholder and committed, or the failure told on it;
//! then the final mark is set.
//! What the money rules need from a failed delivery is [`Side`]: the user's chat refusing is
//! charged, anything else refunded.

use std::sync::Arc;

use bytes::Bytes;

use super::{MARK, Talk};
use crate::core::error::{Failure, FailureReason};
use crate::core::image::{FitLimits, InputRules, fit_upload};
use crate::core::jobs::{Delivery, Engine, JobSpec, Made, SendFailure};
use crate::core::outbox::{Priority, Send};
use crate::core::pipeline::redeem_all;
use crate::core::ports::chat::{
    Chat, ChatError, Mark, Placeholder, Posted, ResultImage, ResultPost, Shown, Side,
};
use crate::core::ports::model::Answer;
use crate::core::ports::store::ResultAt;
use crate::messages;

/// Telling a failure: as urgent as a result.
const FAILURE: Send = Send {
    priority: Priority::Result,
    cost: 1,
    on: None,
};
/// Room left in an upload for the rest of the message.
const UPLOAD_MARGIN: usize = 64 * 1024;

impl Engine {
    /// Puts the result into the job's placeholder or tells the failure there, then records
    /// what happened: committed when the result is shown, told otherwise (a restart does not
    /// tell it again).
    pub(crate) async fn finish(self: &Arc<Self>, made: Made) {
        let job_id = made.job.id.clone();
        let acked = self.talks.get(&job_id).and_then(|t| t.acked.clone());
        if let Some(mut acked) = acked {
            // However long its placeholder waits in the outbox: the result goes into it.
            let _ = acked.wait_for(|done| *done).await;
        }
        let reply = &made.job.route;
        let talk = match self.talks.remove(&job_id) {
            Some((_, talk)) => talk,
            None => {
                let mut talk = Talk::new(&made.job, None);
                // Resumed: its request carries the earlier run's mark.
                talk.marked = reply.deferred.is_none();
                talk
            }
        };
        let Some(chat) = self.chat(reply) else {
            if let Err(failure) = &made.answer {
                self.tell_observers(&made.job, made.granted, || Err(failure.clone()));
            }
            return;
        };
        let placeholder = match talk.placeholder {
            Some(placeholder) => Some(placeholder),
            None => self.kept_placeholder(&job_id).await,
        };
        let delivered = match &made.answer {
            Ok(answer) => {
                self.deliver(chat.as_ref(), &made, answer, placeholder)
                    .await
            }
            Err(failure) => {
                self.tell_observers(&made.job, made.granted, || Err(failure.clone()));
                self.tell_failure(chat.as_ref(), &made.job, placeholder.as_ref(), failure)
                    .await;
                false
            }
        };
        if talk.marked {
            let mark = if delivered { Mark::Done } else { Mark::Failed };
            let _ = self
                .outbox
                .run(reply, MARK, || chat.mark(reply, mark))
                .await;
        }
        if !delivered {
            self.told(&made.job).await;
        }
    }

    /// The job went to another replica, which answers it from here on (into the same
    /// placeholder, which the store keeps): this one's conversation ends without a word.
    pub(crate) async fn handed_over(&self, job_id: &str) {
        self.talks.remove(job_id);
    }

    /// Downloads the results and puts them into the placeholder (a new one if the job has none
    /// or its own is gone), in the chat's turn; commits on success, charges or refunds (and says
    /// so) on failure.
    async fn deliver(
        &self,
        chat: &dyn Chat,
        made: &Made,
        answer: &Answer,
        placeholder: Option<Placeholder>,
    ) -> bool {
        let job = &made.job;
        let mut held = placeholder;
        let mut filled = self
            .put(chat, job, &mut held, || {
                self.prepare(chat, made, answer, true)
            })
            .await;
        // Observers heard of the job when its results were downloaded.
        let heard = matches!(&filled, Ok((_, Some(_))));
        if let Ok((Err(ChatError::Gone(detail)), _)) = &filled {
            // Replaced once. The post is made again in the new placeholder's turn: its bytes
            // are not kept while that placeholder waits.
            tracing::info!(job_id = %job.id, detail, "the placeholder is gone; posting another");
            drop(filled);
            held = None;
            filled = self
                .put(chat, job, &mut held, || {
                    self.prepare(chat, made, answer, false)
                })
                .await;
        }
        let (result, post) = match filled {
            Ok(filled) => filled,
            Err(failure) => {
                self.tell_failure(chat, job, held.as_ref(), &failure).await;
                return false;
            }
        };
        let images = post.as_ref().map_or(0, |post| post.images.len());
        drop(post);
        let e = match result {
            Ok(posted) => {
                let at = posted.button_at.map(|message| ResultAt {
                    chat: job.route.chat.to_string(),
                    message: message.to_string(),
                });
                self.delivered(job, images, answer.request_id.clone(), at)
                    .await;
                return true;
            }
            Err(e) => e,
        };
        tracing::error!(job_id = %job.id, error = %e, "delivery failed");
        self.observer().send_failed(job.route.platform.as_str());
        let failure = self.undeliverable(job, why(e)).await;
        if !heard {
            self.tell_observers(job, made.granted, || Err(failure.clone()));
        }
        self.tell_failure(chat, job, held.as_ref(), &failure).await;
        false
    }

    /// The post of a job's results: downloaded, then fitted to the chat's upload limit. The
    /// observers hear of the job here (`tell`). A failed download is refunded, a result that
    /// cannot fit is the platform's failure (refunded too); either is what to tell.
    async fn prepare(
        &self,
        chat: &dyn Chat,
        made: &Made,
        answer: &Answer,
        tell: bool,
    ) -> Result<ResultPost, Failure> {
        let (job, reply) = (&made.job, &made.job.route);
        let downloaded = redeem_all(
            self.backend.as_ref(),
            &answer.parts,
            self.cfg.download_timeout,
        );
        let images = match downloaded.await {
            Ok(images) => images,
            Err(reason) => {
                let failure = self.failed(job, reason).await;
                if tell {
                    self.tell_observers(job, made.granted, || Err(failure.clone()));
                }
                return Err(failure);
            }
        };
        if tell {
            self.tell_observers(job, made.granted, || {
                Ok(Delivery {
                    images: images.clone(),
                    request_id: answer.request_id.clone(),
                })
            });
        }
        let fitted = match chat.upload_limit(reply).await {
            Some(limit) => fit_to(&images, limit as usize, &self.cfg.fit).await,
            None => Ok(as_they_are(&images)),
        };
        drop(images);
        let (images, compressed) = match fitted {
            Ok(fitted) => fitted,
            Err(reason) => {
                let why = SendFailure::Platform(format!("upload_limit: {reason}"));
                let refunded = self.undeliverable(job, why).await.refunded;
                return Err(Failure { reason, refunded });
            }
        };
        let mut caption = messages::result_caption(
            reply.lang,
            &job.command.prompt,
            made.granted.remaining,
            job.command.truncated,
        );
        if compressed {
            caption.push('\n');
            caption.push_str(&messages::compressed(reply.lang));
        }
        Ok(ResultPost {
            job_id: job.id.clone(),
            images,
            caption,
            again: job.token.clone(),
        })
    }

    /// Puts the post `prepare` makes into the placeholder `held` names, else into a new one
    /// (kept), in its chat's turn: the post is made then, so its bytes are held for this
    /// delivery only. Returns the post (when it was made) with the chat's answer.
    async fn put<Prep, PFut>(
        &self,
        chat: &dyn Chat,
        job: &JobSpec,
        held: &mut Option<Placeholder>,
        prepare: Prep,
    ) -> Result<(Result<Posted, ChatError>, Option<Arc<ResultPost>>), Failure>
    where
        Prep: FnOnce() -> PFut,
        PFut: std::future::Future<Output = Result<ResultPost, Failure>>,
    {
        let placeholder = match held.take() {
            Some(placeholder) => held.insert(placeholder),
            None => match self
                .hold(chat, job, &messages::working(job.route.lang))
                .await
            {
                Ok(placeholder) => held.insert(placeholder),
                Err(e) => return Ok((Err(e), None)),
            },
        };
        let placeholder = &*placeholder;
        let send = Send {
            priority: Priority::Result,
            cost: placeholder.messages(),
            on: placeholder.images.first().copied(),
        };
        let reply = &job.route;
        let fill =
            |post: Arc<ResultPost>| async move { chat.fill(reply, placeholder, &post).await };
        self.outbox.run_prepared(reply, send, prepare, fill).await
    }

    /// Tells why there is no result: on the job's placeholder, else in place of the platform's
    /// answer to the request when it still takes edits, else as a reply.
    async fn tell_failure(
        &self,
        chat: &dyn Chat,
        job: &JobSpec,
        placeholder: Option<&Placeholder>,
        failure: &Failure,
    ) {
        let reply = &job.route;
        let text = messages::failure(reply.lang, failure);
        if let Some(placeholder) = placeholder {
            let told = messages::placeholder(&job.command.prompt, &text);
            let send = Send {
                on: placeholder.images.first().copied(),
                ..FAILURE
            };
            match self
                .outbox
                .run(reply, send, || chat.fail(reply, placeholder, &told))
                .await
            {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "the placeholder could not show the failure"),
            }
        }
        if reply.deferred.is_some() {
            let edit = || chat.edit(reply, Shown::Deferred, &text);
            match self.outbox.run(reply, FAILURE, edit).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "the request's answer could not be edited"),
            }
        }
        if let Err(e) = self
            .outbox
            .run(reply, FAILURE, || chat.say(reply, &text))
            .await
        {
            tracing::error!(error = %e, "cannot tell the user about a failure");
        }
    }
}

/// Whose side a post that failed for good is on: the user's chat refusing is charged.
fn why(e: ChatError) -> SendFailure {
    match e {
        ChatError::Final {
            side: Side::User,
            detail,
        } => SendFailure::ChatRefused(detail),
        other => SendFailure::Platform(other.to_string()),
    }
}

fn as_they_are(images: &[Bytes]) -> (Vec<ResultImage>, bool) {
    let images = images
        .iter()
        .map(|bytes| ResultImage {
            bytes: bytes.clone(),
            ext: "png",
        })
        .collect();
    (images, false)
}

/// Fits every result under the upload limit (one message's files together must fit too), within
/// the decode bounds and the one decode budget the inputs' fits use (`inputs`), without the
/// service's input rules.
async fn fit_to(
    images: &[Bytes],
    limit: usize,
    inputs: &FitLimits,
) -> Result<(Vec<ResultImage>, bool), FailureReason> {
    let each = (limit / images.len().max(1)).saturating_sub(UPLOAD_MARGIN);
    let limits = FitLimits {
        rules: InputRules::NONE,
        ..inputs.clone()
    };
    let mut fitted = Vec::with_capacity(images.len());
    let mut compressed = false;
    for bytes in images {
        let (bytes, limits) = (bytes.clone(), limits.clone());
        let upload = tokio::task::spawn_blocking(move || fit_upload(bytes, each, &limits))
            .await
            .map_err(|_| FailureReason::Internal)??;
        compressed |= upload.compressed;
        fitted.push(ResultImage {
            bytes: upload.bytes,
            ext: upload.ext,
        });
    }
    Ok((fitted, compressed))
}
