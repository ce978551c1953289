//! Job events → chat: typing while a job runs, queue positions while it waits, then the result
//! (photo, album or document) or a failure message. Sends are retried (429 `retry_after`
//! honoured) with the bytes in hand, so a failed delivery never calls the model again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use teloxide::RequestError;
use teloxide::prelude::*;
use teloxide::types::{
    ChatAction, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, InputMedia, InputMediaPhoto,
    MessageId, ReactionType, ReplyParameters,
};

use super::handler::{REACT_DONE, REACT_FAILED};
use super::{Route, Telegram, safe_error};
use crate::core::edit::BoxFuture;
use crate::core::jobs::{Delivery, FrontEnd, JobSpec, Outcome, SendFailure};
use crate::core::quota::ResultAt;
use crate::messages;

/// Attempts per send before the delivery is given up (and the quota refunded).
const SEND_ATTEMPTS: u32 = 5;
/// Longest `retry_after` we wait for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often the chat action is renewed (it shows for about 5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// Queue position edits happen at most this often.
const POSITION_EVERY: Duration = Duration::from_secs(3);
/// Longest wait for a job's 👀 before its result is posted anyway.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// A delivery that takes longer (retries included) is given up and refunded.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);

/// Every few seconds, tells waiting jobs their new place in the queue.
pub async fn position_ticker(tg: Arc<Telegram>) {
    let mut tick = tokio::time::interval(POSITION_EVERY);
    loop {
        tick.tick().await;
        let waiting: Vec<(String, usize, teloxide::types::MessageId, Route)> = tg
            .feedback
            .iter()
            .filter_map(|f| {
                Some((
                    f.key().clone(),
                    f.last_position?,
                    f.status?,
                    f.route.clone()?,
                ))
            })
            .collect();
        for (job_id, last, status, route) in waiting {
            let Some(now) = tg.engine.position(&job_id) else {
                continue;
            };
            if now == last {
                continue;
            }
            let text = messages::queued(route.lang, now);
            let _ = tg.bot.edit_message_text(route.chat(), status, text).await;
            if let Some(mut f) = tg.feedback.get_mut(&job_id) {
                f.last_position = Some(now);
            }
        }
    }
}

fn route(value: &serde_json::Value) -> Option<Route> {
    serde_json::from_value(value.clone()).ok()
}

impl FrontEnd for Telegram {
    fn started(&self, spec: JobSpec) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.start(&spec.id, &spec.route).await })
    }

    fn finished(self: Arc<Self>, outcome: Outcome) -> BoxFuture<'static, bool> {
        Box::pin(async move { self.finish(outcome).await })
    }
}

impl Telegram {
    async fn start(&self, job_id: &str, route_value: &serde_json::Value) {
        let Some(route) = route(route_value) else {
            return;
        };
        let bot = self.bot.clone();
        let chat = route.chat();
        let typing = tokio::spawn(async move {
            loop {
                let _ = bot.send_chat_action(chat, ChatAction::UploadPhoto).await;
                tokio::time::sleep(TYPING_EVERY).await;
            }
        });
        let status = self.feedback.get_mut(job_id).map(|mut f| {
            if let Some(old) = f.typing.replace(typing.abort_handle()) {
                old.abort();
            }
            f.last_position = None;
            f.status
        });
        match status {
            Some(Some(status)) => {
                let _ = self
                    .bot
                    .edit_message_text(chat, status, messages::working(route.lang))
                    .await;
            }
            Some(None) => {}
            // Not ours (resumed after a restart): still stop the loop when it ends, and turn the
            // previous run's reaction into the final one.
            None => {
                let f = super::Feedback {
                    typing: Some(typing.abort_handle()),
                    reacted: true,
                    ..Default::default()
                };
                self.feedback.insert(job_id.to_owned(), f);
            }
        }
    }

    /// Posts the result or the failure; returns whether the result was delivered.
    async fn finish(&self, outcome: Outcome) -> bool {
        let job_id = outcome.job.id.clone();
        // The 👀 is sent in the background; the final reaction must come after it.
        let acked = self.feedback.get(&job_id).and_then(|f| f.acked.clone());
        if let Some(mut acked) = acked {
            let _ = tokio::time::timeout(ACK_WAIT, acked.wait_for(|done| *done)).await;
        }
        let feedback = self
            .feedback
            .remove(&job_id)
            .map(|(_, f)| f)
            .unwrap_or_default();
        if let Some(typing) = &feedback.typing {
            typing.abort();
        }
        let Some(route) = route(&outcome.job.route) else {
            tracing::error!(job_id = %job_id, "job without a Telegram route");
            return false; // nobody to tell
        };
        let delivered = match &outcome.result {
            Ok(delivery) => self.deliver(&outcome, delivery, &route).await,
            Err(failure) => {
                self.tell_failure(&route, failure).await;
                false
            }
        };
        if let Some(status) = feedback.status {
            let _ = self.bot.delete_message(route.chat(), status).await;
        }
        let emoji = if delivered { REACT_DONE } else { REACT_FAILED };
        if feedback.reacted {
            let _ = self
                .bot
                .set_message_reaction(route.chat(), route.message())
                .reaction(vec![ReactionType::Emoji {
                    emoji: emoji.into(),
                }])
                .await;
        }
        delivered
    }

    /// Posts the result; commits on success, refunds and says so on failure.
    async fn deliver(&self, outcome: &Outcome, delivery: &Delivery, route: &Route) -> bool {
        let command = &outcome.job.command;
        let caption = messages::result_caption(
            route.lang,
            &command.prompt,
            outcome.granted.remaining,
            command.truncated,
        );
        // The button names the job by its unguessable token (none for jobs of older releases).
        let again = InlineKeyboardMarkup::new(outcome.job.token.as_ref().map(|token| {
            vec![InlineKeyboardButton::callback(
                "🔁",
                format!("again:{token}"),
            )]
        }));
        let sending = self.send_result(route, &delivery.images, &caption, again);
        let sent = match tokio::time::timeout(DELIVERY_TIMEOUT, sending).await {
            Ok(sent) => sent,
            Err(_) => Err(RequestError::Io(Arc::new(std::io::Error::other(
                "delivery timed out",
            )))),
        };
        match sent {
            Ok(button) => {
                let at = button.map(|m| ResultAt {
                    chat: route.chat_id.to_string(),
                    message: m.0.to_string(),
                });
                self.engine.delivered(&outcome.job, delivery, at).await;
                true
            }
            Err(e) => {
                tracing::error!(job_id = %outcome.job.id, error = %safe_error(&e), "delivery failed");
                self.engine.observer().send_failed("telegram");
                let failure = self.engine.undeliverable(&outcome.job, classify(&e)).await;
                self.tell_failure(route, &failure).await;
                false
            }
        }
    }

    /// Posts the images and the caption; returns the message that carries the 🔁 button.
    async fn send_result(
        &self,
        route: &Route,
        images: &[Bytes],
        caption: &str,
        again: InlineKeyboardMarkup,
    ) -> Result<Option<MessageId>, RequestError> {
        let reply = ReplyParameters::new(route.message()).allow_sending_without_reply();
        if let [image] = images {
            return self.send_one(route, image, caption, again, reply).await;
        }
        let media = || -> Vec<InputMedia> {
            images
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let file =
                        InputFile::memory(bytes.clone()).file_name(format!("edited-{}.png", i + 1));
                    InputMedia::Photo(InputMediaPhoto::new(file))
                })
                .collect()
        };
        if images.iter().all(|b| fits_photo(b)) {
            retrying(|| {
                self.bot
                    .send_media_group(route.chat(), media())
                    .reply_parameters(reply.clone())
                    .send()
            })
            .await?;
        } else {
            for bytes in images {
                let file = InputFile::memory(bytes.clone()).file_name("edited.png");
                retrying(|| {
                    self.bot
                        .send_document(route.chat(), file.clone())
                        .reply_parameters(reply.clone())
                        .send()
                })
                .await?;
            }
        }
        // Albums cannot carry buttons: the caption and 🔁 follow in a message of their own. The
        // images are delivered by now, so a failure here does not undo the delivery.
        let caption_sent = retrying(|| {
            self.bot
                .send_message(route.chat(), caption)
                .reply_parameters(reply.clone())
                .reply_markup(again.clone())
                .send()
        })
        .await;
        match caption_sent {
            Ok(m) => Ok(Some(m.id)),
            Err(e) => {
                tracing::warn!(error = %safe_error(&e), "the caption after an album could not be sent");
                Ok(None)
            }
        }
    }

    async fn send_one(
        &self,
        route: &Route,
        image: &Bytes,
        caption: &str,
        again: InlineKeyboardMarkup,
        reply: ReplyParameters,
    ) -> Result<Option<MessageId>, RequestError> {
        let file = InputFile::memory(image.clone()).file_name("edited.png");
        let sent = if fits_photo(image) {
            retrying(|| {
                self.bot
                    .send_photo(route.chat(), file.clone())
                    .caption(caption)
                    .reply_parameters(reply.clone())
                    .reply_markup(again.clone())
                    .send()
            })
            .await?
        } else {
            retrying(|| {
                self.bot
                    .send_document(route.chat(), file.clone())
                    .caption(caption)
                    .reply_parameters(reply.clone())
                    .reply_markup(again.clone())
                    .send()
            })
            .await?
        };
        Ok(Some(sent.id))
    }

    async fn tell_failure(&self, route: &Route, failure: &crate::core::error::Failure) {
        let text = messages::failure(route.lang, failure);
        let reply = ReplyParameters::new(route.message()).allow_sending_without_reply();
        let sent = retrying(|| {
            self.bot
                .send_message(route.chat(), text.clone())
                .reply_parameters(reply.clone())
                .send()
        })
        .await;
        if let Err(e) = sent {
            tracing::error!(error = %safe_error(&e), "cannot tell the user about a failure");
        }
    }
}

/// Whose side a failed send is on. The user's chat refusing the bot (blocked, kicked, no right
/// to post) is the user's: the images are charged. Everything else is ours or Telegram's.
fn classify(e: &RequestError) -> SendFailure {
    use teloxide::ApiError as A;
    let detail = safe_error(e);
    let refused = match e {
        RequestError::Api(api) => match api {
            A::BotBlocked
            | A::BotKicked
            | A::BotKickedFromSupergroup
            | A::BotKickedFromChannel
            | A::UserDeactivated
            | A::CantInitiateConversation
            | A::CantTalkWithBots
            | A::NotEnoughRightsToPostMessages
            | A::ChatNotFound
            | A::GroupDeactivated => true,
            A::Unknown(text) => {
                let text = text.to_ascii_lowercase();
                [
                    "forbidden",
                    "not enough rights",
                    "have no rights",
                    "chat_write_forbidden",
                ]
                .iter()
                .any(|needle| text.contains(needle))
            }
            _ => false,
        },
        _ => false,
    };
    match refused {
        true => SendFailure::ChatRefused(detail),
        false => SendFailure::Platform(detail),
    }
}

/// Whether Telegram takes the image as a photo: ≤ 10 MB, width + height ≤ 10 000, ratio ≤ 20.
pub fn fits_photo(bytes: &[u8]) -> bool {
    let Ok(p) = crate::core::image::probe(bytes) else {
        return false;
    };
    let (w, h) = (u64::from(p.width), u64::from(p.height));
    bytes.len() <= 10 * 1024 * 1024 && w + h <= 10_000 && w.max(h) <= 20 * w.min(h)
}

/// Runs a send until it succeeds, waiting out 429s (`retry_after`) and retrying network and
/// server errors with backoff. Client errors (400, 403) are final.
async fn retrying<T, F, Fut>(mut send: F) -> Result<T, RequestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match send().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let wait = match &err {
            RequestError::RetryAfter(s) => s.duration().min(MAX_RETRY_AFTER),
            RequestError::Network(_) | RequestError::Io(_) => {
                Duration::from_millis(500 << attempt.min(6))
            }
            RequestError::Api(teloxide::ApiError::Unknown(text))
                if text.contains("Internal") || text.contains("Gateway") =>
            {
                Duration::from_millis(500 << attempt.min(6))
            }
            _ => return Err(err),
        };
        if attempt >= SEND_ATTEMPTS {
            return Err(err);
        }
        tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %safe_error(&err), "send failed, retrying");
        tokio::time::sleep(wait).await;
    }
}
