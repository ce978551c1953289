//! Update handlers: a message or 🔁 press becomes a request to the core. Each returns as soon as
//! the job is in the store (or refused): a chat's updates are handled in order, and the next
//! poll waits for the batch, so nothing here waits for Telegram either. The core answers from
//! tasks of its own (a slow or failing Bot API call, which teloxide follows with a 10 s pause on
//! a 5xx, delays only itself) and collapses repeated refusals (`core::throttle`).

use std::sync::Arc;

use teloxide::prelude::*;
use teloxide::types::{CallbackQuery, MaybeInaccessibleMessage, User};
use tracing::Instrument as _;

use super::route::{lang_of, reply};
use super::trigger::{Candidate, ImageRef, MAX_DOWNLOAD_BYTES, candidate, command_word};
use super::{Telegram, safe_error};
use crate::core::command::{ParseContext, parse};
use crate::core::error::Rejection;
use crate::core::image::ImageRejection;
use crate::core::jobs::JobSpec;
use crate::core::model::Reply;
use crate::messages::{self, Lang};

type HandlerResult = Result<(), teloxide::RequestError>;

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
            if msg.chat.is_private()
                && super::trigger::image_of(&msg).is_some()
                && let Some(from) = &msg.from
            {
                let reply = reply(&msg.chat, from, msg.id);
                let hint = messages::caption_hint(reply.lang);
                tg.engine.tell_once(&reply, hint);
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
    /// Parses a candidate and, if it is an edit for us, hands it to the core.
    pub(super) async fn request(
        self: &Arc<Self>,
        chat: &teloxide::types::Chat,
        from: &User,
        c: Candidate,
        lang: Lang,
    ) {
        let reply = Reply {
            lang,
            ..reply(chat, from, c.reply_to)
        };
        let ctx = ParseContext {
            bot_username: Some(&self.username),
            command_optional: c.command_optional,
        };
        let command = match parse(&c.text, ctx) {
            Ok(Some(command)) => command,
            Ok(None) => return,
            Err(e) => return self.engine.refuse(&reply, &Rejection::Command(e)),
        };
        if let Err(rejection) = check_images(&c.images) {
            return self.engine.refuse(&reply, &rejection);
        }
        // Derived from the message: an update seen twice (after a crash) is one job.
        let id = format!("tg-{}-{}", chat.id.0, c.reply_to.0);
        let inputs = c.images.iter().map(|i| i.file_id.clone()).collect();
        self.engine
            .request(JobSpec::new(id, reply, inputs, command))
            .await;
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
    let route = reply(&result_msg.chat, &q.from, result_msg.id);
    let id = format!("tg-cb-{}", q.id.0);
    // Only the button under the job's own result counts: a token pressed anywhere else (copied
    // into another chat's button, or forged) finds nothing.
    let pressed = crate::core::ports::store::ResultAt {
        chat: result_msg.chat.id.0.to_string(),
        message: result_msg.id.0.to_string(),
    };
    let Some(spec) = tg.engine.again(token, &pressed, id, route).await else {
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
    tg.engine.request(spec).await;
    Ok(())
}
