//! Messages from chats the operator has not enabled (`core::access`): no job and nothing spent;
//! a request there gets one short answer per chat per hour, anything else none; with
//! `leave_unlisted` the bot says why once and leaves the group.

use std::sync::Arc;

use teloxide::prelude::*;
use teloxide::types::Message;

use super::Telegram;
use super::route::answer_to;
use super::trigger::{candidate, command_word};
use crate::core::access::Spot;
use crate::core::command::{ParseContext, parse};
use crate::core::model::Platform;
use crate::messages;

impl Telegram {
    /// Where a message from `user` in `chat` stands.
    fn spot(chat: &teloxide::types::Chat, user: u64) -> Spot<'static> {
        Spot::Telegram {
            chat: chat.id.0,
            private: chat.is_private(),
            user: i64::try_from(user).unwrap_or(i64::MAX),
        }
    }

    /// Whether `msg` may be handled; when not, answers (at most once an hour) and leaves an
    /// unlisted group if so configured.
    pub(super) fn admitted(self: &Arc<Self>, msg: &Message) -> bool {
        let access = self.engine.access();
        let spot = Self::spot(&msg.chat, msg.from.as_ref().map_or(0, |u| u.id.0));
        let Err(closed) = access.check(spot) else {
            return true;
        };
        let leave = !msg.chat.is_private() && access.leaves_unlisted(Platform::Telegram);
        let answer = (leave || self.is_request(msg)) && access.answer_refusal(spot);
        tracing::info!(
            ?closed,
            answer,
            leave,
            "message from a chat the bot is not enabled in"
        );
        if answer || leave {
            let reply = answer_to(msg);
            let text = messages::not_enabled(reply.lang, closed);
            let (tg, chat) = (Arc::clone(self), msg.chat.id);
            tokio::spawn(async move {
                if answer {
                    let _ = tg.engine.say(&reply, &text).await;
                }
                if leave && let Err(e) = tg.bot.leave_chat(chat).await {
                    tracing::warn!(error = %super::safe_error(&e), "cannot leave the chat");
                }
            });
        }
        false
    }

    /// The text of a 🔁 refusal when the chat `chat` is not enabled for `user` (now).
    pub(super) fn closed_for(
        &self,
        chat: &teloxide::types::Chat,
        user: u64,
        lang: messages::Lang,
    ) -> Option<String> {
        let closed = self.engine.access().check(Self::spot(chat, user)).err()?;
        Some(messages::not_enabled(lang, closed))
    }

    /// Whether the message asks the bot for something (an edit, even a wrong one, or one of
    /// its commands): only those are answered where the bot is not enabled.
    fn is_request(&self, msg: &Message) -> bool {
        let text = msg.text().or(msg.caption()).unwrap_or("");
        if command_word(text, &self.username).is_some_and(|(w, _)| super::admin::is_command(&w)) {
            return true;
        }
        let Some(c) = candidate(msg) else {
            return false;
        };
        let ctx = ParseContext {
            bot_username: Some(&self.username),
            command_optional: c.command_optional,
        };
        !matches!(parse(&c.text, ctx), Ok(None))
    }
}
