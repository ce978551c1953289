//! `/quota` and the admin commands, once for every platform: an adapter parses its platform's
//! syntax into an [`AdminCommand`], says who asks in which [`Scope`] (it alone knows who is an
//! admin where), and posts the text it gets back.

use super::error::Rejection;
use super::model::{Lang, Platform, UserRef};
use super::ports::chat::ChatStyle;
use super::quota::Quotas;
use crate::core::ports::store::StoreError;
use crate::messages;

/// Where an admin's change applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere: an operator (`admin_ids`, the CLI).
    BotWide,
    /// Only in this group or server: its own admins.
    Chat(String),
}

impl Scope {
    fn chat(&self) -> Option<&str> {
        match self {
            Scope::BotWide => None,
            Scope::Chat(chat) => Some(chat),
        }
    }
}

/// An admin command, parsed by the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// The user's own limit per window.
    SetLimit {
        user: UserRef,
        limit: u32,
    },
    /// Forgets the user's usage in the window (operators only: it is their money).
    Reset {
        user: UserRef,
    },
    Block {
        user: UserRef,
        blocked: bool,
    },
    /// The top users of the window.
    Usage,
    /// Not understood: how to use the commands.
    Help,
}

/// What `/quota` answers `user` in `group`.
pub async fn own_quota(
    quotas: &Quotas,
    user: &UserRef,
    group: Option<&str>,
    lang: Lang,
    style: ChatStyle,
) -> String {
    match quotas.show_in(user, group).await {
        Ok(q) => messages::quota_status_with(lang, &q, &style.time),
        Err(e) => internal(lang, &e),
    }
}

/// Carries out `command` for an admin of `scope` on `platform`; returns what to answer.
pub async fn run(
    quotas: &Quotas,
    platform: Platform,
    scope: &Scope,
    command: AdminCommand,
    lang: Lang,
    style: ChatStyle,
) -> String {
    use messages::admin;
    let chat = scope.chat();
    let result = match command {
        AdminCommand::SetLimit { user, limit } => quotas
            .set_limit_in(&user, chat, Some(limit))
            .await
            .map(|_| admin::limit_set_in(lang, chat, &user.id, limit)),
        AdminCommand::Reset { .. } if chat.is_some() => Ok(admin::reset_operators_only(lang)),
        AdminCommand::Reset { user } => quotas
            .reset(&user)
            .await
            .map(|_| admin::reset(lang, &user.id)),
        AdminCommand::Block { user, blocked } => quotas
            .set_blocked_in(&user, chat, blocked)
            .await
            .map(|_| admin::blocked(lang, &user.id, blocked)),
        AdminCommand::Usage => quotas
            .top_users(platform, chat, 20)
            .await
            .map(|(since, rows)| {
                admin::usage_report(lang, &(style.time)(since), &rows, style.mention)
            }),
        AdminCommand::Help => Ok(admin::usage(lang)),
    };
    result.unwrap_or_else(|e| internal(lang, &e))
}

fn internal(lang: Lang, e: &StoreError) -> String {
    tracing::error!(error = %e, "a quota command failed");
    messages::rejection(lang, &Rejection::Internal)
}
