//! Where and how to answer a Telegram message: the core's [`Reply`], built once from the
//! message's chat, sender and language.

use teloxide::types::{Chat, Message, MessageId, User};

use crate::core::model::{Platform, Reply};
use crate::messages::Lang;

/// The sender's language, from their Telegram client.
pub(super) fn lang_of(user: Option<&User>) -> Lang {
    Lang::from_code(user.and_then(|u| u.language_code.as_deref()))
}

/// Where and how to answer `from` about the message `to` in `chat`.
pub(super) fn reply(chat: &Chat, from: &User, to: MessageId) -> Reply {
    Reply {
        user: from.id.0.to_string(),
        lang: lang_of(Some(from)),
        ..answer_to_in(chat, to)
    }
}

/// Where to answer the message `msg` (sent by nobody in particular, as in a channel, when it
/// has no sender).
pub(super) fn answer_to(msg: &Message) -> Reply {
    match &msg.from {
        Some(from) => reply(&msg.chat, from, msg.id),
        None => answer_to_in(&msg.chat, msg.id),
    }
}

fn answer_to_in(chat: &Chat, to: MessageId) -> Reply {
    Reply {
        platform: Platform::Telegram,
        chat: chat.id.0,
        group: (!chat.is_private()).then(|| chat.id.0.to_string()),
        to: Some(i64::from(to.0)),
        user: "0".into(),
        lang: Lang::En,
        deferred: None,
        upload_limit: None,
    }
}
