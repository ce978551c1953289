//! Update handlers. Each returns as soon as the job is in the store (or refused): a chat's updates
//! are handled in order, and the next poll waits for the batch, so nothing here waits for
//! Telegram either. Reactions, status messages and refusals are sent by tasks of their own (a
//! slow or failing Bot API call, which teloxide follows with a 10 s pause on a 5xx, delays only
//! itself), and repeated refusals are collapsed (`core::throttle`).

use std::sync::Arc;

use teloxide::prelude::*;
use teloxide::types::{
    CallbackQuery, MaybeInaccessibleMessage, MessageId, ReactionType, ReplyParameters, User,
};
use tracing::Instrument as _;

use super::trigger::{Candidate, ImageRef, MAX_DOWNLOAD_BYTES, candidate, command_word};
use super::{Feedback, Route, Telegram, safe_error};
use crate::core::command::{ParseContext, parse};
use crate::core::error::Rejection;
use crate::core::image::ImageRejection;
use crate::core::jobs::JobSpec;
use crate::core::quota::{Platform, QuotaRejection, UserRef};
use crate::messages::{self, Lang};

type HandlerResult = Result<(), teloxide::RequestError>;

/// Reaction while a job is waiting or running (Telegram allows only a fixed set of emoji; ⏳ is
/// not among them).
pub const REACT_WORKING: &str = "👀";
pub const REACT_DONE: &str = "👌";
pub const REACT_FAILED: &str = "💔";

pub fn lang_of(user: Option<&User>) -> Lang {
    Lang::from_code(user.and_then(|u| u.language_code.as_deref()))
}

pub async fn on_message(msg: Message, tg: Arc<Telegram>) -> HandlerResult {
    let span = tracing::info_span!(
        "telegram_update",
        platform = "telegram",
        chat = msg.chat.id.0,
        user = msg.from.as_ref().map(|u| u.id.0),
        message = msg.id.0
    );
    async move {
        if msg.from.as_ref().is_some_and(|u| u.is_bot) || !tg.admitted(&msg) {
            return Ok(());
        }
        if msg.media_group_id().is_some() && super::trigger::image_of(&msg).is_some() {
            tg.collect_album(msg).await;
            return Ok(());
        }
        let text = msg.text().or(msg.caption()).unwrap_or("");
        if let Some((word, args)) = command_word(text, &tg.username)
            && super::admin::is_command(&word)
        {
            // Off the intake path: admin checks ask Telegram (getChatMember).
            let (tg, msg, args) = (Arc::clone(&tg), msg.clone(), args.to_owned());
            tokio::spawn(
                async move {
                    if let Err(e) = super::admin::handle(&tg, &msg, &word, &args).await {
                        tracing::warn!(error = %safe_error(&e), "admin command failed");
                    }
                }
                .in_current_span(),
            );
            return Ok(());
        }
        let Some(c) = candidate(&msg) else {
            if msg.chat.is_private() && super::trigger::image_of(&msg).is_some() {
                let hint = messages::caption_hint(lang_of(msg.from.as_ref()));
                let from = msg.from.as_ref().map_or(0, |u| u.id.0);
                if tg
                    .refusals
                    .allow(&msg.chat.id.0.to_string(), false, &from.to_string(), &hint)
                {
                    tg.say_later(msg.chat.id, msg.id, hint);
                }
            }
            return Ok(());
        };
        let (Some(from), lang) = (msg.from.clone(), lang_of(msg.from.as_ref())) else {
            return Ok(());
        };
        tg.request(&msg.chat, &from, c, lang).await;
        Ok(())
    }
    .instrument(span)
    .await
}

impl Telegram {
    /// Parses a candidate and, if it is an edit for us, submits it and gives feedback.
    pub(super) async fn request(
        self: &Arc<Self>,
        chat: &teloxide::types::Chat,
        from: &User,
        c: Candidate,
        lang: Lang,
    ) {
        let ctx = ParseContext {
            bot_username: Some(&self.username),
            command_optional: c.command_optional,
        };
        let command = match parse(&c.text, ctx) {
            Ok(Some(command)) => command,
            Ok(None) => return,
            Err(e) => {
                return self.refuse(chat.id, c.reply_to, from.id.0, lang, &Rejection::Command(e));
            }
        };
        if let Err(rejection) = check_images(&c.images) {
            return self.refuse(chat.id, c.reply_to, from.id.0, lang, &rejection);
        }
        let route = Route {
            chat_id: chat.id.0,
            message_id: c.reply_to.0,
            lang,
        };
        let group = (!chat.is_private()).then(|| chat.id.0.to_string());
        let spec = JobSpec {
            // Derived from the message: an update seen twice (after a crash) is one job.
            id: format!("tg-{}-{}", chat.id.0, c.reply_to.0),
            user: UserRef::new(Platform::Telegram, from.id.0.to_string()),
            chat: chat.id.0.to_string(),
            group,
            inputs: c.images.iter().map(|i| i.file_id.clone()).collect(),
            command,
            route: serde_json::to_value(&route).unwrap_or_default(),
            token: None,
        };
        self.submit(spec, &route).await;
    }

    /// Submits a job and shows that it was taken (or why not).
    pub(super) async fn submit(self: &Arc<Self>, spec: JobSpec, route: &Route) {
        let job_id = spec.id.clone();
        tracing::info!(job_id = %job_id, user = %spec.user, inputs = spec.inputs.len(), "edit request");
        // Before submitting: a worker may start (and even finish) the job at once. An update
        // seen again while its job runs must not touch that job's feedback (typing, reaction).
        let (acked, acked_rx) = tokio::sync::watch::channel(false);
        let fresh = match self.feedback.entry(job_id.clone()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Feedback {
                    acked: Some(acked_rx),
                    ..Feedback::default()
                });
                true
            }
        };
        let user: u64 = spec.user.id.parse().unwrap_or(0);
        let result = self.engine.submit(spec).await;
        if result.is_err() && fresh {
            self.feedback.remove(&job_id);
        }
        match result {
            Ok(accepted) => {
                let waiting = accepted.waits.then_some(accepted.position);
                let (tg, route) = (Arc::clone(self), route.clone());
                tokio::spawn(async move {
                    tg.acknowledge(&job_id, &route, waiting).await;
                    let _ = acked.send(true);
                });
            }
            Err(Rejection::Quota(QuotaRejection::Duplicate)) => {
                tracing::info!(job_id = %job_id, "update seen again; the job exists already");
            }
            Err(rejection) => {
                self.refuse(route.chat(), route.message(), user, route.lang, &rejection)
            }
        }
    }

    /// Reacts 👀 and, when the job must wait (or reactions are refused), posts a status message.
    async fn acknowledge(&self, job_id: &str, route: &Route, waiting: Option<usize>) {
        let reacted = self
            .bot
            .set_message_reaction(route.chat(), route.message())
            .reaction(vec![ReactionType::Emoji {
                emoji: REACT_WORKING.into(),
            }])
            .await
            .is_ok();
        let text = match (waiting, reacted) {
            (None, true) => None,
            (None, false) => Some(messages::accepted(route.lang)),
            (Some(ahead), _) => Some(messages::queued(route.lang, ahead)),
        };
        let status = match text {
            Some(text) => send_reply(&self.bot, route.chat(), route.message(), &text).await,
            None => None,
        };
        let Some(mut f) = self.feedback.get_mut(job_id) else {
            // The job finished meanwhile: nothing will clean the status message up later.
            if let Some(status) = status {
                let _ = self.bot.delete_message(route.chat(), status).await;
            }
            return;
        };
        {
            f.reacted = reacted;
            f.status = status;
            f.last_position = waiting;
            f.route = Some(route.clone());
        }
    }

    /// Answers a refusal in the background, unless the user (or the chat) was answered one
    /// just now.
    pub(super) fn refuse(
        self: &Arc<Self>,
        chat: ChatId,
        to: MessageId,
        user: u64,
        lang: Lang,
        r: &Rejection,
    ) {
        let text = messages::rejection(lang, r);
        let group = chat.0 < 0;
        if !self
            .refusals
            .allow(&chat.0.to_string(), group, &user.to_string(), &text)
        {
            tracing::debug!(reason = %r, "request refused; not answered (answered just now)");
            return;
        }
        tracing::info!(reason = %r, "request refused");
        self.say_later(chat, to, text);
    }

    /// Sends a reply from a task of its own, off the intake path.
    pub(super) fn say_later(self: &Arc<Self>, chat: ChatId, to: MessageId, text: String) {
        let bot = self.bot.clone();
        tokio::spawn(async move {
            send_reply(&bot, chat, to, &text).await;
        });
    }
}

/// Refusals that can be made before anything is downloaded.
fn check_images(images: &[ImageRef]) -> Result<(), Rejection> {
    // Counts (none, more than 3) are `Engine::submit`'s to check; the download limit is ours.
    // teloxide reports an unknown size as u32::MAX; getFile tells the truth later.
    if images
        .iter()
        .any(|i| i.size != u32::MAX && i.size > MAX_DOWNLOAD_BYTES)
    {
        return Err(Rejection::Image(ImageRejection::FileTooBig {
            limit_mb: 20,
        }));
    }
    Ok(())
}

pub(super) async fn send_reply(
    bot: &Bot,
    chat: ChatId,
    to: MessageId,
    text: &str,
) -> Option<MessageId> {
    match bot
        .send_message(chat, text)
        .reply_parameters(ReplyParameters::new(to).allow_sending_without_reply())
        .await
    {
        Ok(m) => Some(m.id),
        Err(e) => {
            tracing::warn!(error = %safe_error(&e), "sendMessage failed");
            None
        }
    }
}

/// 🔁 under a result: the same inputs and prompt with a new seed, charged to whoever pressed.
pub async fn on_callback(q: CallbackQuery, tg: Arc<Telegram>) -> HandlerResult {
    let lang = lang_of(Some(&q.from));
    let Some(token) = q.data.as_deref().and_then(|d| d.strip_prefix("again:")) else {
        tg.bot.answer_callback_query(q.id.clone()).await?;
        return Ok(());
    };
    let Some(MaybeInaccessibleMessage::Regular(result_msg)) = q.message.as_ref() else {
        tg.bot.answer_callback_query(q.id.clone()).await?;
        return Ok(());
    };
    if let Some(text) = tg.closed_for(&result_msg.chat, q.from.id.0, lang) {
        tg.bot
            .answer_callback_query(q.id.clone())
            .text(text)
            .show_alert(true)
            .await?;
        return Ok(());
    }
    let route = Route {
        chat_id: result_msg.chat.id.0,
        message_id: result_msg.id.0,
        lang,
    };
    let user = UserRef::new(Platform::Telegram, q.from.id.0.to_string());
    let route_value = serde_json::to_value(&route).unwrap_or_default();
    let id = format!("tg-cb-{}", q.id.0);
    // Only the button under the job's own result counts: a token pressed anywhere else (copied
    // into another chat's button, or forged) finds nothing.
    let pressed = crate::core::quota::ResultAt {
        chat: result_msg.chat.id.0.to_string(),
        message: result_msg.id.0.to_string(),
    };
    let Some(spec) = tg
        .engine
        .again(token, &pressed, id, user, route_value)
        .await
    else {
        tg.bot
            .answer_callback_query(q.id.clone())
            .text(messages::again_expired(lang))
            .show_alert(true)
            .await?;
        return Ok(());
    };
    tg.bot
        .answer_callback_query(q.id.clone())
        .text(messages::again_started(lang))
        .await?;
    tg.submit(spec, &route).await;
    Ok(())
}
