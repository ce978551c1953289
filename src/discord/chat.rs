//! The Discord [`Chat`]: each core call as one REST request (serenity), and its errors
//! classified for the core. A job's placeholder is a message replying to the request (or
//! mentioning the requester) that shows the prompt and state, or for an app command the
//! interaction's own deferred answer; the result is put into it by a multipart edit carrying
//! the files and a 🔁 button (through the interaction's token while it lives, then as the channel
//! message it is). Only the requester is ever pinged: a prompt's `@everyone` stays text.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use serenity::all::{
    ButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions, CreateAttachment, CreateButton,
    CreateMessage, EditAttachments, EditMessage, GuildId, Http, Message, MessageId,
    MessageReference, Nonce, PremiumTier, ReactionType, UserId,
};

use serenity::builder::Builder as _;

use super::source::DiscordSource;
use crate::core::model::{Platform, Reply};
use crate::core::outbox::Pace;
use crate::core::ports::BoxFuture;
use crate::core::ports::chat::{
    Chat, ChatError, ChatStyle, Hold, Mark, Placeholder, Posted, ResultPost, Shown, Side,
};

/// Reactions on a text request while it waits or runs, then on success or failure.
pub const MARKS: [&str; 3] = ["⏳", "✅", "❌"];

/// Default upload limit (boosted servers allow more).
const DEFAULT_UPLOAD_LIMIT: u64 = 10 * 1024 * 1024;

/// How Discord channels look: times are relative timestamps the client localises; users are
/// mentions.
pub const STYLE: ChatStyle = ChatStyle {
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
    /// What Discord lets the bot send.
    pace: Pace,
}

impl DiscordChat {
    pub fn new(http: Arc<Http>, pace: Pace) -> Self {
        Self {
            source: DiscordSource::new(http.clone()),
            http,
            upload_limits: DashMap::new(),
            pace,
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

    fn pace(&self) -> Option<Pace> {
        Some(self.pace)
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

    fn upload_limit<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { Some(self.limit_of(to).await) })
    }

    fn hold<'a>(
        &'a self,
        to: &'a Reply,
        hold: &'a Hold<'a>,
    ) -> BoxFuture<'a, Result<Placeholder, ChatError>> {
        Box::pin(async move {
            let sent = match &to.deferred {
                Some(token) => {
                    super::edit_response()
                        .content(hold.text)
                        .execute(&self.http, token)
                        .await
                }
                None => {
                    let message = CreateMessage::new()
                        .content(addressed(to, hold.text))
                        .nonce(Nonce::String(nonce("p", hold.job_id)))
                        .enforce_nonce(true);
                    self.send(to, message).await
                }
            };
            let sent = sent.map_err(|e| {
                tracing::warn!(error = %e, "posting a placeholder failed");
                classify(&e)
            })?;
            Ok(Placeholder {
                images: vec![sent.id.get() as i64],
                caption: None,
                files: false,
            })
        })
    }

    fn show<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            let text = addressed(to, text);
            self.edit_placeholder(to, placeholder, &text, None, Vec::new())
                .await
        })
    }

    fn fill<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>> {
        Box::pin(async move {
            let text = addressed(to, &result.caption);
            let again = result.again.as_ref().map(|token| {
                let again = CreateButton::new(format!("again:{token}"))
                    .label("🔁")
                    .style(ButtonStyle::Secondary);
                vec![CreateActionRow::Buttons(vec![again])]
            });
            let single = result.images.len() == 1;
            let files = result.images.iter().enumerate().map(|(i, image)| {
                let name = match single {
                    true => format!("edited.{}", image.ext),
                    false => format!("edited-{}.{}", i + 1, image.ext),
                };
                CreateAttachment::bytes(image.bytes.to_vec(), name)
            });
            self.edit_placeholder(to, placeholder, &text, again, files.collect())
                .await
                .inspect_err(
                    |e| tracing::warn!(error = %e, "putting a result into its placeholder failed"),
                )?;
            Ok(Posted {
                button_at: placeholder.images.first().copied(),
            })
        })
    }

    fn fail<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        self.show(to, placeholder, text)
    }
}

impl DiscordChat {
    /// Edits the placeholder to show `text`, the `files` (replacing any it had; none: it keeps
    /// none) and `buttons`: through the interaction's token while it lives, else (and for text
    /// requests) as the channel message it is. The same edit twice shows the same message.
    async fn edit_placeholder(
        &self,
        to: &Reply,
        placeholder: &Placeholder,
        text: &str,
        buttons: Option<Vec<CreateActionRow>>,
        files: Vec<CreateAttachment>,
    ) -> Result<(), ChatError> {
        let Some(&message) = placeholder.images.first() else {
            return Err(ChatError::Gone("an empty placeholder".into()));
        };
        let attachments = files
            .iter()
            .cloned()
            .fold(EditAttachments::new(), EditAttachments::add);
        if let Some(token) = &to.deferred {
            let mut edit = super::edit_response()
                .content(text)
                .attachments(attachments.clone());
            if let Some(buttons) = buttons.clone() {
                edit = edit.components(buttons);
            }
            match edit.execute(&self.http, token).await {
                Ok(_) => return Ok(()),
                // The token lives 15 minutes; after them, the message is edited as any other.
                Err(e) => match classify(&e) {
                    ChatError::Final { .. } | ChatError::Gone(_) => {
                        tracing::debug!(error = %e, "the interaction's token no longer edits its answer");
                    }
                    other => return Err(other),
                },
            }
        }
        let mut edit = EditMessage::new()
            .content(text)
            .attachments(attachments)
            .allowed_mentions(
                CreateAllowedMentions::new()
                    .users([UserId::new(user_of(to))])
                    .replied_user(true),
            );
        if let Some(buttons) = buttons {
            edit = edit.components(buttons);
        }
        channel_of(to)
            .edit_message(&self.http, MessageId::new(id_of(message)), edit)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

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

/// How the core should take a failed call. The channel refusing the bot (403: Missing Access
/// 50001, Missing Permissions 50013, cannot DM the user 50007; or the channel gone, 10003) is
/// the user's side: a result it refuses is charged. A 429 is throttling without a time
/// (serenity does not pass on Discord's `retry_after`): the outbox pauses the channel for one
/// window of its limit. Server or network errors are worth another try; the rest is final.
fn classify(e: &serenity::Error) -> ChatError {
    use serenity::all::HttpError;
    let detail = e.to_string();
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            let status = r.status_code;
            if r.error.code == 10008 {
                ChatError::Gone(detail)
            } else if status.as_u16() == 403
                || matches!(r.error.code, 50001 | 50007 | 50013 | 10003)
            {
                ChatError::Final {
                    side: Side::User,
                    detail,
                }
            } else if status.as_u16() == 429 {
                ChatError::RetryAfter(None, detail)
            } else if status.is_server_error() {
                ChatError::Transient(detail)
            } else {
                ChatError::platform(detail)
            }
        }
        serenity::Error::Http(HttpError::Request(_)) => ChatError::Transient(detail),
        _ => ChatError::platform(detail),
    }
}

/// The nonce of a job's message of a kind (`p`: its placeholder): at most 25 characters, the same
/// in every process (FNV-1a of the job id). Discord de-duplicates by it for a few minutes, so a
/// retry after a lost answer, or a run after a crash before the placeholder was kept, gets the
/// message already posted.
fn nonce(kind: &str, job_id: &str) -> String {
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{kind}{hash:016x}")
}
