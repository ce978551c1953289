//! The Discord [`Chat`]: each core call as one REST request (serenity), and its errors
//! classified for the core. Results are channel messages replying to the request (or mentioning
//! the requester) with a 🔁 button; a deferred interaction's answer is edited in place through
//! its token. Only the requester is ever pinged: a prompt's `@everyone` stays text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serenity::all::{
    ButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions, CreateAttachment, CreateButton,
    CreateMessage, EditMessage, GuildId, Http, Message, MessageId, MessageReference, Nonce,
    PremiumTier, ReactionType, UserId,
};

use serenity::builder::Builder as _;

use super::source::DiscordSource;
use crate::core::model::{Platform, Reply};
use crate::core::ports::BoxFuture;
use crate::core::ports::chat::{Chat, ChatError, ChatStyle, Mark, Posted, ResultPost, Shown, Side};

/// Reactions on a text request while it waits or runs, then on success or failure.
pub const MARKS: [&str; 3] = ["⏳", "✅", "❌"];

/// Default upload limit (boosted servers allow more).
const DEFAULT_UPLOAD_LIMIT: u64 = 10 * 1024 * 1024;

/// How Discord channels look: typing lasts about 10 s; times are relative timestamps the client
/// localises; users are mentions.
pub const STYLE: ChatStyle = ChatStyle {
    typing_every: Duration::from_secs(8),
    eta: true,
    time: crate::messages::discord_time,
    mention,
};

fn mention(id: &str) -> String {
    format!("<@{id}>")
}

/// Discord channels, through one bot's REST client.
pub struct DiscordChat {
    pub(super) http: Arc<Http>,
    source: DiscordSource,
    /// Upload limits learnt per server (from its boost tier).
    upload_limits: DashMap<u64, u64>,
}

impl DiscordChat {
    pub fn new(http: Arc<Http>) -> Self {
        Self {
            source: DiscordSource::new(http.clone()),
            http,
            upload_limits: DashMap::new(),
        }
    }
}

fn channel_of(to: &Reply) -> ChannelId {
    ChannelId::new(u64::try_from(to.chat).unwrap_or(1).max(1))
}

fn id_of(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(1).max(1)
}

fn user_of(to: &Reply) -> u64 {
    to.user.parse().unwrap_or(1).max(1)
}

impl Chat for DiscordChat {
    fn platform(&self) -> Platform {
        Platform::Discord
    }

    fn style(&self) -> ChatStyle {
        STYLE
    }

    fn fetch<'a>(&'a self, input: &'a str) -> BoxFuture<'a, Result<Bytes, String>> {
        Box::pin(self.source.fetch(input))
    }

    fn mark<'a>(&'a self, to: &'a Reply, mark: Mark) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            let Some(message) = to.to else {
                return Ok(());
            };
            let emoji = mark.of(MARKS);
            let reaction = ReactionType::Unicode(emoji.to_owned());
            let message = MessageId::new(id_of(message));
            self.http
                .create_reaction(channel_of(to), message, &reaction)
                .await
                .map_err(|e| classify(&e))
        })
    }

    fn say<'a>(&'a self, to: &'a Reply, text: &'a str) -> BoxFuture<'a, Result<i64, ChatError>> {
        Box::pin(async move {
            let text = addressed(to, text);
            let sent = self.send(to, CreateMessage::new().content(text)).await;
            sent.map(|m| m.id.get() as i64).map_err(|e| {
                tracing::warn!(error = %e, "cannot answer on Discord");
                classify(&e)
            })
        })
    }

    fn edit<'a>(
        &'a self,
        to: &'a Reply,
        shown: Shown,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            let edited = match (shown, &to.deferred) {
                (Shown::Deferred, Some(token)) => super::edit_response()
                    .content(text)
                    .execute(&self.http, token)
                    .await
                    .map(|_| ()),
                (Shown::Deferred, None) => return Ok(()),
                (Shown::Message(message), _) => channel_of(to)
                    .edit_message(
                        &self.http,
                        MessageId::new(id_of(message)),
                        EditMessage::new().content(text),
                    )
                    .await
                    .map(|_| ()),
            };
            edited.map_err(|e| classify(&e))
        })
    }

    fn delete<'a>(&'a self, to: &'a Reply, message: i64) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            channel_of(to)
                .delete_message(&self.http, MessageId::new(id_of(message)))
                .await
                .map_err(|e| classify(&e))
        })
    }

    fn typing<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            channel_of(to)
                .broadcast_typing(&self.http)
                .await
                .map_err(|e| classify(&e))
        })
    }

    fn upload_limit<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { Some(self.limit_of(to).await) })
    }

    fn post<'a>(
        &'a self,
        to: &'a Reply,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>> {
        Box::pin(async move {
            let sent = self.send(to, result_message(to, result)).await;
            let sent = sent.map_err(|e| {
                tracing::warn!(error = %e, "posting a result failed");
                classify(&e)
            })?;
            let guild = to.group.as_deref().unwrap_or("@me");
            let link = format!(
                "https://discord.com/channels/{guild}/{}/{}",
                sent.channel_id, sent.id
            );
            Ok(Posted {
                button_at: Some(sent.id.get() as i64),
                link: Some(link),
            })
        })
    }
}

impl DiscordChat {
    /// Sends a message replying to the request (when there is one); only the requester may be
    /// pinged.
    async fn send(&self, to: &Reply, message: CreateMessage) -> serenity::Result<Message> {
        let mentions = CreateAllowedMentions::new()
            .users([UserId::new(user_of(to))])
            .replied_user(true);
        let mut message = message.allowed_mentions(mentions);
        if let Some(request) = to.to {
            let reference = (channel_of(to), MessageId::new(id_of(request)));
            message = message
                .reference_message(MessageReference::from(reference).fail_if_not_exists(false));
        }
        channel_of(to).send_message(&self.http, message).await
    }

    /// The largest upload for the request: what the interaction said, else the server's boost
    /// tier (asked once).
    async fn limit_of(&self, to: &Reply) -> u64 {
        if let Some(limit) = to.upload_limit.filter(|l| *l > 0) {
            return limit;
        }
        let Some(guild) = to.group.as_deref().and_then(|g| g.parse::<u64>().ok()) else {
            return DEFAULT_UPLOAD_LIMIT;
        };
        if let Some(known) = self.upload_limits.get(&guild) {
            return *known;
        }
        let tier = self.http.get_guild(GuildId::new(guild)).await;
        let limit = match tier.map(|g| g.premium_tier) {
            Ok(PremiumTier::Tier2) => 50 * 1024 * 1024,
            Ok(PremiumTier::Tier3) => 100 * 1024 * 1024,
            _ => DEFAULT_UPLOAD_LIMIT,
        };
        self.upload_limits.insert(guild, limit);
        limit
    }
}

/// Where there is no message to reply to, the text names the requester.
fn addressed(to: &Reply, text: &str) -> String {
    match to.to {
        Some(_) => text.to_owned(),
        None => format!("<@{}> {text}", user_of(to)),
    }
}

/// The result message: caption, files, 🔁, and a nonce Discord de-duplicates by for a few
/// minutes (a retry, or a resend after a crash between Discord's answer and our commit, returns
/// the message already posted).
fn result_message(to: &Reply, result: &ResultPost) -> CreateMessage {
    let single = result.images.len() == 1;
    let files = result.images.iter().enumerate().map(|(i, image)| {
        let name = match single {
            true => format!("edited.{}", image.ext),
            false => format!("edited-{}.{}", i + 1, image.ext),
        };
        CreateAttachment::bytes(image.bytes.to_vec(), name)
    });
    let mut message = CreateMessage::new()
        .content(addressed(to, &result.caption))
        .add_files(files)
        .nonce(Nonce::String(result_nonce(&result.job_id)))
        .enforce_nonce(true);
    if let Some(token) = &result.again {
        let again = CreateButton::new(format!("again:{token}"))
            .label("🔁")
            .style(ButtonStyle::Secondary);
        message = message.components(vec![CreateActionRow::Buttons(vec![again])]);
    }
    message
}

/// How the core should take a failed call. The channel refusing the bot (403: Missing Access
/// 50001, Missing Permissions 50013, cannot DM the user 50007; or the channel gone, 10003) is
/// the user's side: a result it refuses is charged. 429s and server or network errors are worth
/// another try; the rest is final.
fn classify(e: &serenity::Error) -> ChatError {
    use serenity::all::HttpError;
    let detail = e.to_string();
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            let status = r.status_code;
            if status.as_u16() == 403 || matches!(r.error.code, 50001 | 50007 | 50013 | 10003) {
                ChatError::Final {
                    side: Side::User,
                    detail,
                }
            } else if status.as_u16() == 429 || status.is_server_error() {
                ChatError::Transient(detail)
            } else {
                ChatError::platform(detail)
            }
        }
        serenity::Error::Http(HttpError::Request(_)) => ChatError::Transient(detail),
        _ => ChatError::platform(detail),
    }
}

/// The nonce of a job's result message: at most 25 characters, the same in every process (FNV-1a
/// of the job id).
fn result_nonce(job_id: &str) -> String {
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("r{hash:016x}")
}
