//! A job's description: what to edit and whom to answer, as the store keeps it.

use serde::{Deserialize, Serialize};

use crate::core::command::EditCommand;
use crate::core::model::{Lang, Reply, UserRef};

/// A job as it waits in the queue: where to get the inputs and whom to answer, no bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    /// References of 1–3 input images, in order, as the chat adapter made them.
    pub inputs: Vec<String>,
    pub command: EditCommand,
    /// Where and how to answer, and for whom: the requester, their chat and group are the
    /// route's.
    pub route: Reply,
    /// The unguessable id the result's 🔁 button carries; given by [`Engine::submit`] (`None`
    /// for jobs of releases before it: their results get no button).
    #[serde(default)]
    pub token: Option<String>,
}

impl JobSpec {
    /// A new job answering `route`, by its requester (no 🔁 token yet: [`Engine::submit`] gives one).
    pub fn new(id: String, route: Reply, inputs: Vec<String>, command: EditCommand) -> Self {
        JobSpec {
            id,
            inputs,
            command,
            route,
            token: None,
        }
    }

    /// Who asked (and pays).
    pub fn user(&self) -> UserRef {
        self.route.user_ref()
    }

    /// The chat, as the store keys it.
    pub fn chat(&self) -> String {
        self.route.chat.to_string()
    }

    /// The group or server for the per-chat limit; `None` in private chats.
    pub fn group(&self) -> Option<&str> {
        self.route.group.as_deref()
    }

    /// A job description as the store keeps it (JSON). Those of releases before typed routes,
    /// whose route was the front-end's own JSON, are read too.
    pub fn from_stored(json: &str) -> Option<JobSpec> {
        if let Ok(spec) = serde_json::from_str::<JobSpec>(json) {
            return Some(spec);
        }
        let old: LegacySpec = serde_json::from_str(json).ok()?;
        let r = old.route;
        let route = Reply {
            platform: old.user.platform,
            chat: r.chat_id.or(r.channel_id).or(old.chat.parse().ok())?,
            group: old.group,
            to: r.message_id.or(r.reply_to),
            user: old.user.id.clone(),
            lang: r.lang,
            deferred: r.interaction_token,
            upload_limit: r.upload_limit,
        };
        Some(JobSpec {
            id: old.id,
            inputs: old.inputs,
            command: old.command,
            route,
            token: old.token,
        })
    }
}

/// A stored job description of a release before typed routes.
#[derive(Deserialize)]
struct LegacySpec {
    id: String,
    user: UserRef,
    chat: String,
    group: Option<String>,
    inputs: Vec<String>,
    command: EditCommand,
    route: LegacyRoute,
    #[serde(default)]
    token: Option<String>,
}

/// The Telegram (`chat_id`, `message_id`) and Discord (`channel_id`, `reply_to`, …) routes of
/// those releases.
#[derive(Deserialize)]
struct LegacyRoute {
    chat_id: Option<i64>,
    message_id: Option<i64>,
    channel_id: Option<i64>,
    reply_to: Option<i64>,
    #[serde(default)]
    lang: Lang,
    interaction_token: Option<String>,
    upload_limit: Option<u64>,
}
