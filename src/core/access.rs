//! Where the bot answers: the operator's allowlists of chats, servers, channels and roles, and
//! whether private chats or DMs are served. One rule for both platforms, decided here; the
//! front-ends only say where a request came from. Operators are allowed everywhere (to test).
//!
//! The lists are the config's merged with those the operator added from the CLI (`allow add`),
//! which the daemon reloads when the store changes. A merged list that is empty allows every
//! place; a list with entries allows only them.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::core::model::Platform;

/// How long a refusal in a place that is not enabled silences the next ones there.
pub const PLACE_REFUSAL_WINDOW: Duration = Duration::from_secs(3600);
/// Places remembered before old entries are dropped (bounds memory under a flood of chats).
const MAX_ENTRIES: usize = 10_000;

/// The Telegram rules from `[telegram]`.
#[derive(Debug, Clone, Default)]
pub struct TelegramPlaces {
    /// Groups and channels (chat ids); empty with nothing stored: every group.
    pub allowed_chats: Vec<i64>,
    pub private_chats: bool,
    pub leave_unlisted: bool,
    pub operators: Vec<i64>,
}

/// The Discord rules from `[discord]`.
#[derive(Debug, Clone, Default)]
pub struct DiscordPlaces {
    pub allowed_guilds: Vec<u64>,
    pub allowed_channels: Vec<u64>,
    pub allowed_roles: Vec<u64>,
    pub direct_messages: bool,
    pub leave_unlisted: bool,
    pub operators: Vec<u64>,
}

/// Where a request comes from, as the front-end saw it.
#[derive(Debug, Clone, Copy)]
pub enum Spot<'a> {
    Telegram {
        chat: i64,
        private: bool,
        user: i64,
    },
    Discord {
        /// `None` in a direct message.
        guild: Option<u64>,
        channel: u64,
        /// The member's roles (empty in DMs or when not known).
        roles: &'a [u64],
        user: u64,
    },
}

impl Spot<'_> {
    /// The place a refusal is counted for: the chat or channel.
    fn key(&self) -> String {
        match self {
            Spot::Telegram { chat, .. } => format!("telegram:{chat}"),
            Spot::Discord { channel, .. } => format!("discord:{channel}"),
        }
    }
}

/// Why the bot does not answer there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A Telegram group or a Discord server that is not listed.
    Place,
    /// A Discord channel that is not listed.
    Channel,
    /// The member has none of the listed roles.
    Role,
    /// Private chats (Telegram) or direct messages (Discord) are turned off.
    Private,
}

/// Places added from the CLI, as the store holds them.
#[derive(Debug, Default)]
struct Stored {
    telegram: HashSet<i64>,
    discord: HashSet<u64>,
}

/// The allowlists in force and which refusals were answered.
#[derive(Debug)]
pub struct Access {
    telegram: TelegramPlaces,
    discord: DiscordPlaces,
    stored: RwLock<Stored>,
    /// place → when a "not enabled here" was last answered there.
    answered: DashMap<String, Instant>,
}

impl Access {
    /// Everything allowed (no lists, private chats and DMs on): the rules of a bot built
    /// without any.
    pub fn open() -> Self {
        Self::new(
            TelegramPlaces {
                private_chats: true,
                ..TelegramPlaces::default()
            },
            DiscordPlaces {
                direct_messages: true,
                ..DiscordPlaces::default()
            },
        )
    }

    pub fn new(telegram: TelegramPlaces, discord: DiscordPlaces) -> Self {
        Self {
            telegram,
            discord,
            stored: RwLock::default(),
            answered: DashMap::new(),
        }
    }

    /// Whether a request from `spot` may be served.
    pub fn check(&self, spot: Spot<'_>) -> Result<(), Closed> {
        let stored = self.stored.read().unwrap_or_else(|e| e.into_inner());
        match spot {
            Spot::Telegram {
                chat,
                private,
                user,
            } => {
                let t = &self.telegram;
                let listed = t.allowed_chats.contains(&chat) || stored.telegram.contains(&chat);
                let unlisted_everywhere = t.allowed_chats.is_empty() && stored.telegram.is_empty();
                if t.operators.contains(&user) || listed {
                    Ok(())
                } else if private {
                    t.private_chats.then_some(()).ok_or(Closed::Private)
                } else {
                    unlisted_everywhere.then_some(()).ok_or(Closed::Place)
                }
            }
            Spot::Discord {
                guild,
                channel,
                roles,
                user,
            } => {
                let d = &self.discord;
                if d.operators.contains(&user) {
                    return Ok(());
                }
                let Some(guild) = guild else {
                    return d.direct_messages.then_some(()).ok_or(Closed::Private);
                };
                drop(stored);
                if !self.server_listed(guild) {
                    return Err(Closed::Place);
                }
                if !d.allowed_channels.is_empty() && !d.allowed_channels.contains(&channel) {
                    return Err(Closed::Channel);
                }
                if !d.allowed_roles.is_empty() && !roles.iter().any(|r| d.allowed_roles.contains(r))
                {
                    return Err(Closed::Role);
                }
                Ok(())
            }
        }
    }

    /// Whether the Discord server `guild` is allowed (listed, or no list).
    pub fn server_listed(&self, guild: u64) -> bool {
        let stored = self.stored.read().unwrap_or_else(|e| e.into_inner());
        let d = &self.discord;
        (d.allowed_guilds.is_empty() && stored.discord.is_empty())
            || d.allowed_guilds.contains(&guild)
            || stored.discord.contains(&guild)
    }

    /// Whether a refusal at `spot` is answered now: once per place per hour (and counted).
    pub fn answer_refusal(&self, spot: Spot<'_>) -> bool {
        self.answer_refusal_at(spot, Instant::now())
    }

    /// [`Access::answer_refusal`] at `now` (tests pass their own time).
    pub fn answer_refusal_at(&self, spot: Spot<'_>, now: Instant) -> bool {
        if self.answered.len() > MAX_ENTRIES {
            self.answered
                .retain(|_, at| now.duration_since(*at) < PLACE_REFUSAL_WINDOW);
        }
        let mut answered = true;
        self.answered
            .entry(spot.key())
            .and_modify(|at| {
                if now.duration_since(*at) < PLACE_REFUSAL_WINDOW {
                    answered = false;
                } else {
                    *at = now;
                }
            })
            .or_insert(now);
        answered
    }

    /// Whether the bot leaves places of `platform` that are not allowed.
    pub fn leaves_unlisted(&self, platform: Platform) -> bool {
        match platform {
            Platform::Telegram => self.telegram.leave_unlisted,
            Platform::Discord => self.discord.leave_unlisted,
            Platform::Cli => false,
        }
    }

    /// Replaces the places added from the CLI with `places` (`platform`, id) as stored.
    pub fn set_stored(&self, places: &[(Platform, String)]) {
        let mut fresh = Stored::default();
        for (platform, id) in places {
            match platform {
                Platform::Telegram => fresh.telegram.extend(id.parse::<i64>().ok()),
                Platform::Discord => fresh.discord.extend(id.parse::<u64>().ok()),
                Platform::Cli => {}
            }
        }
        *self.stored.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The merged lists, for `check-config` and `allow list`: one line per rule.
    pub fn describe(&self) -> Vec<String> {
        let stored = self.stored.read().unwrap_or_else(|e| e.into_inner());
        let t = &self.telegram;
        let d = &self.discord;
        let tg: Vec<String> = merged(&t.allowed_chats, &stored.telegram);
        let dc: Vec<String> = merged(&d.allowed_guilds, &stored.discord);
        vec![
            format!("telegram groups: {}", listing(&tg, "every group")),
            format!(
                "telegram private chats: {}",
                if t.private_chats {
                    "on"
                } else {
                    "off (listed ones only)"
                }
            ),
            format!("discord servers: {}", listing(&dc, "every server")),
            format!(
                "discord channels: {}",
                listing(&strings(&d.allowed_channels), "every channel")
            ),
            format!(
                "discord roles: {}",
                listing(&strings(&d.allowed_roles), "every member")
            ),
            format!(
                "discord direct messages: {}",
                if d.direct_messages { "on" } else { "off" }
            ),
        ]
    }
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

fn merged<T: ToString + Ord + Copy + std::hash::Hash>(
    config: &[T],
    stored: &HashSet<T>,
) -> Vec<String> {
    let mut all: Vec<T> = config
        .iter()
        .copied()
        .chain(stored.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    strings(&all)
}

fn listing(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        format!("only {}", items.join(", "))
    }
}
