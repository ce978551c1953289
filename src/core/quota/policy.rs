//! The quota rules, in one place and free of storage: who may edit, how much is left. A store
//! reads a user's [`Standing`] inside its reserve transaction and asks [`decide`]; `/quota`
//! asks [`view`]. See `docs/QUOTAS.md` for the rules in prose.
//!
//! - Operators (bot-wide settings) may raise or lower a user's limit and forgive usage.
//! - A chat's own admins may only restrict in their chat: their limit for a user there counts
//!   that user's usage in that chat and applies *on top of* the bot-wide limit, which always
//!   counts the user's usage in every chat. A block anywhere blocks there.
//! - Only bot-wide resets count; they are positions in the job sequence, not times, so a wrong
//!   clock cannot move them.

use chrono::{DateTime, Duration, Utc};

use super::terms::{Granted, Limits, QuotaRejection, UserQuota, UserSettings, Window};

/// What a decision about one user in one place needs, read in one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// The operator's settings for the user (scope '').
    pub bot_wide: UserSettings,
    /// The chat's (group's or guild's) own settings for the user, if any.
    pub in_chat: Option<UserSettings>,
    /// The user's images in the window, in every chat, after the bot-wide reset.
    pub used_total: u32,
    /// The user's images in the window in this chat, after the bot-wide reset.
    pub used_in_chat: u32,
    /// Every user's images in the window in this chat (for `per_chat`).
    pub chat_used: u32,
    /// Images generated or reserved by the whole bot today (for `global_per_day`).
    pub global_used: u32,
}

impl Standing {
    fn blocked(&self) -> bool {
        self.bot_wide.blocked || self.in_chat.is_some_and(|s| s.blocked)
    }

    /// The bot-wide limit: the operator's override or `per_user`.
    fn user_limit(&self, limits: &Limits) -> u32 {
        self.bot_wide.limit_override.unwrap_or(limits.per_user)
    }

    /// The chat admins' limit for the user, if they set one.
    fn chat_limit(&self) -> Option<u32> {
        self.in_chat.and_then(|s| s.limit_override)
    }

    /// The limit that binds first, as (used, limit): the chat's own when it leaves less.
    fn binding(&self, limits: &Limits) -> (u32, u32) {
        let total = (self.used_total, self.user_limit(limits));
        match self.chat_limit() {
            Some(limit)
                if limit.saturating_sub(self.used_in_chat) < total.1.saturating_sub(total.0) =>
            {
                (self.used_in_chat, limit)
            }
            _ => total,
        }
    }
}

/// Whether `cost` more images may be reserved at `now`. `group` tells whether the request is in a
/// group or guild (where `per_chat` applies).
pub fn decide(
    limits: &Limits,
    standing: &Standing,
    cost: u32,
    in_group: bool,
    now: DateTime<Utc>,
) -> Result<Granted, QuotaRejection> {
    if standing.blocked() {
        return Err(QuotaRejection::Blocked);
    }
    let user_limit = standing.user_limit(limits);
    if user_limit == 0 || standing.chat_limit() == Some(0) {
        return Err(QuotaRejection::Disabled);
    }
    let resets_at = limits.window.end(now);
    if standing.used_total + cost > user_limit {
        return Err(QuotaRejection::User {
            used: standing.used_total,
            limit: user_limit,
            resets_at,
        });
    }
    if let Some(limit) = standing.chat_limit()
        && standing.used_in_chat + cost > limit
    {
        return Err(QuotaRejection::User {
            used: standing.used_in_chat,
            limit,
            resets_at,
        });
    }
    if in_group && limits.per_chat > 0 && standing.chat_used + cost > limits.per_chat {
        return Err(QuotaRejection::Chat {
            limit: limits.per_chat,
            resets_at,
        });
    }
    if limits.global_per_day > 0 && standing.global_used + cost > limits.global_per_day {
        let resets_at = Window::Day.start(now) + Duration::days(1);
        return Err(QuotaRejection::Global { resets_at });
    }
    let (used, limit) = standing.binding(limits);
    Ok(Granted {
        remaining: limit.saturating_sub(used + cost),
        limit,
        resets_at,
    })
}

/// What `/quota` shows: the limit that binds first in this place.
pub fn view(limits: &Limits, standing: &Standing, now: DateTime<Utc>) -> UserQuota {
    let (used, limit) = standing.binding(limits);
    UserQuota {
        used,
        limit,
        blocked: standing.blocked(),
        overridden: standing.bot_wide.limit_override.is_some() || standing.chat_limit().is_some(),
        resets_at: limits.window.end(now),
    }
}

/// The settings in force in a chat: blocked if blocked bot-wide or there, the lower of the two
/// limits, the bot-wide reset (a chat's admins cannot forgive usage).
pub fn in_force(bot_wide: UserSettings, in_chat: Option<UserSettings>) -> UserSettings {
    let Some(chat) = in_chat else {
        return bot_wide;
    };
    let limit_override = match (bot_wide.limit_override, chat.limit_override) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    UserSettings {
        limit_override,
        blocked: bot_wide.blocked || chat.blocked,
        reset_after: bot_wide.reset_after,
    }
}
