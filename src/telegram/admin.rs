//! `/help`, `/start`, `/quota` for everyone; `/quota set|reset`, `/block`, `/unblock`, `/usage`
//! for chat administrators (getChatMember) and the operator ids of `telegram.admin_ids`.

use teloxide::prelude::*;
use teloxide::types::UserId;

use super::Telegram;
use super::handler::{lang_of, send_reply};
use crate::core::quota::{Platform, UserRef};
use crate::messages::{self, Lang};

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
    let lang = lang_of(msg.from.as_ref());
    let Some(from) = msg.from.as_ref() else {
        return Ok(());
    };
    let mut words = args.split_whitespace();
    let text = match (word, words.next()) {
        ("help" | "start", _) => messages::help(lang),
        ("quota", None) => own_quota(tg, msg, from.id, lang).await,
        ("quota" | "block" | "unblock" | "usage", sub) => match admin_scope(tg, msg, from.id).await
        {
            None => messages::admin::refused(lang),
            Some(scope) => {
                let rest: Vec<&str> = words.collect();
                admin_command(tg, msg, scope.as_deref(), (word, sub), &rest, lang).await
            }
        },
        _ => return Ok(()),
    };
    send_reply(&tg.bot, msg.chat.id, msg.id, &text).await;
    Ok(())
}

/// The chat's group key (for per-chat limits and chat-scoped admin settings).
fn group_of(msg: &Message) -> Option<String> {
    (!msg.chat.is_private()).then(|| msg.chat.id.0.to_string())
}

async fn own_quota(tg: &Telegram, msg: &Message, user: UserId, lang: Lang) -> String {
    let user = UserRef::new(Platform::Telegram, user.0.to_string());
    match tg
        .engine
        .quotas()
        .show_in(&user, group_of(msg).as_deref())
        .await
    {
        Ok(q) => messages::quota_status(lang, &q),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the quota");
            messages::rejection(lang, &crate::core::error::Rejection::Internal)
        }
    }
}

/// Where `user` may administer quotas: `Some(None)` bot-wide (an operator of
/// `telegram.admin_ids`), `Some(Some(chat))` only in this chat (its administrators), `None`
/// nowhere. A chat admin's changes never reach other chats.
async fn admin_scope(tg: &Telegram, msg: &Message, user: UserId) -> Option<Option<String>> {
    if tg
        .admin_ids
        .iter()
        .any(|id| u64::try_from(*id).ok() == Some(user.0))
    {
        return Some(None);
    }
    let group = group_of(msg)?;
    match tg.bot.get_chat_member(msg.chat.id, user).await {
        Ok(member) if member.is_privileged() => Some(Some(group)),
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

async fn admin_command(
    tg: &Telegram,
    msg: &Message,
    scope: Option<&str>,
    (word, sub): (&str, Option<&str>),
    rest: &[&str],
    lang: Lang,
) -> String {
    let quotas = tg.engine.quotas();
    let result = match (word, sub) {
        ("quota", Some("set")) => {
            // `/quota set N` (replying) or `/quota set ID N`.
            let (id, n) = match rest {
                [n] => (None, *n),
                [id, n] => (Some(*id), *n),
                _ => return messages::admin::usage(lang),
            };
            let (Some(user), Ok(limit)) = (target(msg, id), n.parse::<u32>()) else {
                return messages::admin::usage(lang);
            };
            quotas
                .set_limit_in(&user, scope, Some(limit))
                .await
                .map(|_| messages::admin::limit_set_in(lang, scope, &user.id, limit))
        }
        // Forgiving usage spends the operator's money: only operators may.
        ("quota", Some("reset")) if scope.is_some() => {
            return messages::admin::reset_operators_only(lang);
        }
        ("quota", Some("reset")) => {
            let Some(user) = target(msg, rest.first().copied()) else {
                return messages::admin::usage(lang);
            };
            quotas
                .reset(&user)
                .await
                .map(|_| messages::admin::reset(lang, &user.id))
        }
        ("block" | "unblock", first) => {
            let Some(user) = target(msg, first) else {
                return messages::admin::usage(lang);
            };
            let block = word == "block";
            quotas
                .set_blocked_in(&user, scope, block)
                .await
                .map(|_| messages::admin::blocked(lang, &user.id, block))
        }
        ("usage", _) => usage(tg, scope, lang).await,
        _ => return messages::admin::usage(lang),
    };
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "admin command failed");
        messages::rejection(lang, &crate::core::error::Rejection::Internal)
    })
}

/// The top users of the window: bot-wide for operators, this chat's for its admins.
async fn usage(
    tg: &Telegram,
    scope: Option<&str>,
    lang: Lang,
) -> Result<String, crate::core::quota::StoreError> {
    let quotas = tg.engine.quotas();
    let (since, rows) = quotas.top_users(Platform::Telegram, scope, 20).await?;
    let since = messages::when(since);
    Ok(messages::admin::usage_report(
        lang,
        &since,
        &rows,
        str::to_owned,
    ))
}
