//! `/help`, `/start`, `/quota` for everyone; `/quota set|reset`, `/block`, `/unblock`, `/usage`
//! for chat administrators (getChatMember) and the operator ids of `telegram.admin_ids`.

use teloxide::prelude::*;
use teloxide::types::UserId;

use super::Telegram;
use super::route::reply;
use crate::core::admin::{self, AdminCommand, Scope};
use crate::core::model::{Platform, Reply, UserRef};
use crate::messages;

/// Commands handled here (anything else may be an edit).
pub fn is_command(word: &str) -> bool {
    matches!(
        word,
        "help" | "start" | "quota" | "block" | "unblock" | "usage"
    )
}

pub async fn handle(
    tg: &Telegram,
    msg: &Message,
    word: &str,
    args: &str,
) -> Result<(), teloxide::RequestError> {
    let Some(from) = msg.from.as_ref() else {
        return Ok(());
    };
    let reply = reply(&msg.chat, from, msg.id);
    let lang = reply.lang;
    let mut words = args.split_whitespace();
    let quotas = tg.engine.quotas();
    let style = super::chat::STYLE;
    let text = match (word, words.next()) {
        ("help" | "start", _) => messages::help(lang),
        ("quota", None) => {
            let group = reply.group.as_deref();
            admin::own_quota(quotas, &reply.user_ref(), group, lang, style).await
        }
        ("quota" | "block" | "unblock" | "usage", sub) => match admin_scope(tg, &reply).await {
            None => messages::admin::refused(lang),
            Some(scope) => {
                let rest: Vec<&str> = words.collect();
                let command = admin_command(msg, (word, sub), &rest);
                admin::run(quotas, Platform::Telegram, &scope, command, lang, style).await
            }
        },
        _ => return Ok(()),
    };
    let _ = tg.engine.say(&reply, &text).await;
    Ok(())
}

/// Where `user` may administer quotas: bot-wide (an operator of `telegram.admin_ids`), only in
/// this chat (its administrators), or nowhere (`None`). A chat admin's changes never reach
/// other chats.
async fn admin_scope(tg: &Telegram, asked: &Reply) -> Option<Scope> {
    let user: u64 = asked.user.parse().ok()?;
    if tg
        .admin_ids
        .iter()
        .any(|id| u64::try_from(*id).ok() == Some(user))
    {
        return Some(Scope::BotWide);
    }
    let group = asked.group.clone()?;
    match tg
        .bot
        .get_chat_member(ChatId(asked.chat), UserId(user))
        .await
    {
        Ok(member) if member.is_privileged() => Some(Scope::Chat(group)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %super::safe_error(&e), "getChatMember failed");
            None
        }
    }
}

/// The user an admin command is about: the author of the replied-to message, or a numeric id.
fn target(msg: &Message, id_arg: Option<&str>) -> Option<UserRef> {
    let id = match id_arg.and_then(|a| a.parse::<u64>().ok()) {
        Some(id) => id,
        None => msg.reply_to_message()?.from.as_ref()?.id.0,
    };
    Some(UserRef::new(Platform::Telegram, id.to_string()))
}

/// `/quota set N` (replying) or `/quota set ID N`, `/quota reset [ID]`, `/block [ID]`,
/// `/unblock [ID]`, `/usage`, as the core's command.
fn admin_command(msg: &Message, (word, sub): (&str, Option<&str>), rest: &[&str]) -> AdminCommand {
    let parsed = match (word, sub) {
        ("quota", Some("set")) => {
            let (id, n) = match rest {
                [n] => (None, *n),
                [id, n] => (Some(*id), *n),
                _ => return AdminCommand::Help,
            };
            target(msg, id)
                .zip(n.parse::<u32>().ok())
                .map(|(user, limit)| AdminCommand::SetLimit { user, limit })
        }
        ("quota", Some("reset")) => {
            target(msg, rest.first().copied()).map(|user| AdminCommand::Reset { user })
        }
        ("block" | "unblock", first) => target(msg, first).map(|user| AdminCommand::Block {
            user,
            blocked: word == "block",
        }),
        ("usage", _) => Some(AdminCommand::Usage),
        _ => None,
    };
    parsed.unwrap_or(AdminCommand::Help)
}
