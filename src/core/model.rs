//! The core's vocabulary: who (a user on a platform), where (a chat, and how to answer in it),
//! and in which language. Every port speaks these types; adapters translate to and from them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which chat network a user or chat belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Telegram,
    Discord,
    Cli,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Telegram => "telegram",
            Platform::Discord => "discord",
            Platform::Cli => "cli",
        }
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "telegram" => Ok(Platform::Telegram),
            "discord" => Ok(Platform::Discord),
            "cli" => Ok(Platform::Cli),
            other => Err(format!(
                "unknown platform {other:?} (telegram, discord, cli)"
            )),
        }
    }
}

/// A user on a platform, written `telegram:12345`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserRef {
    pub platform: Platform,
    pub id: String,
}

impl UserRef {
    pub fn new(platform: Platform, id: impl Into<String>) -> Self {
        Self {
            platform,
            id: id.into(),
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform.as_str(), self.id)
    }
}

impl FromStr for UserRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, id) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: write a user as platform:id, e.g. telegram:12345"))?;
        let platform: Platform = p.parse()?;
        let numeric = !id.is_empty() && id.chars().all(|c| c.is_ascii_digit());
        if !numeric && platform != Platform::Cli {
            return Err(format!("{s:?}: the user id must be a number"));
        }
        Ok(UserRef::new(platform, id))
    }
}

/// The reader's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    /// Chinese for `zh*` language codes and locales, English otherwise.
    pub fn from_code(code: Option<&str>) -> Self {
        match code {
            Some(c) if c.to_ascii_lowercase().starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }
}

/// Where and how to answer one request: the chat, the message to reply to (and mark), the user
/// to address, the language, and what the platform already shows for the request. Built once by
/// the adapter that took the request; stored with the job, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub platform: Platform,
    /// The chat or channel, as its platform numbers it.
    pub chat: i64,
    /// The group or server the per-chat limit counts against; `None` in private chats.
    pub group: Option<String>,
    /// The request message to reply to and mark; `None` when there is none (a slash command).
    pub to: Option<i64>,
    /// The requester (mentioned where there is no message to reply to).
    pub user: String,
    pub lang: Lang,
    /// An answer the platform already shows for the request and the bot may edit in place
    /// (Discord's deferred interaction, by its token, valid 15 minutes).
    pub deferred: Option<String>,
    /// The largest upload the chat takes, when the platform said so with the request.
    pub upload_limit: Option<u64>,
}

impl Reply {
    pub fn user_ref(&self) -> UserRef {
        UserRef::new(self.platform, self.user.clone())
    }
}
