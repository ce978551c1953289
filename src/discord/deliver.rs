//! Job events → channel: typing while a job runs, queue position + ETA while it waits, then the
//! result as a channel message replying to the request (fitted to the upload limit) with a 🔁
//! button, or a failure message. Sends are retried with the bytes in hand.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serenity::all::{
    ButtonStyle, CreateActionRow, CreateAllowedMentions, CreateAttachment, CreateButton,
    CreateMessage, EditMessage, GuildId, Message, MessageId, MessageReference, Nonce, PremiumTier,
    UserId,
};
use serenity::builder::Builder;

use super::intake::{REACT_DONE, REACT_FAILED};
use super::{Discord, Route};
use crate::core::edit::BoxFuture;
use crate::core::error::{Failure, FailureReason};
use crate::core::image::{FitLimits, fit_upload};
use crate::core::jobs::{Delivery, FrontEnd, JobSpec, Outcome, SendFailure};
use crate::core::quota::ResultAt;
use crate::messages;

const SEND_ATTEMPTS: u32 = 4;
const TYPING_EVERY: Duration = Duration::from_secs(8);
const POSITION_EVERY: Duration = Duration::from_secs(3);
/// Rough time one job takes, for the ETA shown while waiting.
const TYPICAL_JOB: Duration = Duration::from_secs(20);
/// A delivery that takes longer (retries included) is given up and refunded.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);
/// Default upload limit (boosted guilds allow more).
const DEFAULT_UPLOAD_LIMIT: u64 = 10 * 1024 * 1024;

/// Every few seconds, updates the position and ETA of waiting jobs.
pub async fn position_ticker(dc: Arc<Discord>) {
    let mut tick = tokio::time::interval(POSITION_EVERY);
    loop {
        tick.tick().await;
        let waiting: Vec<(String, usize, Route)> = dc
            .feedback
            .iter()
            .filter_map(|f| Some((f.key().clone(), f.last_position?, f.route.clone()?)))
            .collect();
        for (job_id, last, route) in waiting {
            let Some(now) = dc.engine.position(&job_id) else {
                continue;
            };
            if now != last {
                dc.show_position(&job_id, &route, now).await;
            }
        }
    }
}

fn route_of(value: &serde_json::Value) -> Option<Route> {
    serde_json::from_value(value.clone()).ok()
}

impl FrontEnd for Discord {
    fn started(&self, spec: JobSpec) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.start(&spec.id, &spec.route).await })
    }

    fn finished(self: Arc<Self>, outcome: Outcome) -> BoxFuture<'static, bool> {
        Box::pin(async move { self.finish(outcome).await })
    }
}

impl Discord {
    /// A worker took the job: show typing until it ends.
    async fn start(&self, job_id: &str, route_value: &serde_json::Value) {
        let Some(route) = route_of(route_value) else {
            return;
        };
        let (http, channel) = (self.http.clone(), route.channel());
        let typing = tokio::spawn(async move {
            loop {
                let _ = channel.broadcast_typing(&http).await;
                tokio::time::sleep(TYPING_EVERY).await;
            }
        });
        let mut f = self.feedback.entry(job_id.to_owned()).or_default();
        if let Some(old) = f.typing.replace(typing.abort_handle()) {
            old.abort();
        }
        f.last_position = None;
    }

    /// Shows where a waiting job stands: edits the deferred interaction, or a status message.
    pub(super) async fn show_position(&self, job_id: &str, route: &Route, ahead: usize) {
        let workers = self.engine.workers() as u32;
        let eta = chrono::Utc::now()
            + chrono::Duration::from_std(TYPICAL_JOB * (ahead as u32 + 1) / workers)
                .unwrap_or_default();
        let text = messages::queued_eta(route.lang, ahead, eta);
        let status = self.feedback.get(job_id).and_then(|f| f.status);
        match (&route.interaction_token, status) {
            (Some(token), _) => {
                let _ = super::edit_response()
                    .content(text)
                    .execute(&self.http, token)
                    .await;
            }
            (None, Some(status)) => {
                let _ = route
                    .channel()
                    .edit_message(&self.http, status, EditMessage::new().content(text))
                    .await;
            }
            (None, None) => {
                let msg = self.post(route, CreateMessage::new().content(text)).await;
                if let (Ok(msg), Some(mut f)) = (msg, self.feedback.get_mut(job_id)) {
                    f.status = Some(msg.id);
                }
            }
        }
        if let Some(mut f) = self.feedback.get_mut(job_id) {
            f.last_position = Some(ahead);
        }
    }

    /// A plain answer to the request (errors, refusals).
    pub(super) async fn say(&self, route: &Route, text: &str) {
        if let Err(e) = self.post(route, CreateMessage::new().content(text)).await {
            tracing::warn!(error = %e, "cannot answer on Discord");
        }
    }

    /// Sends a message replying to the request (or mentioning the user), retrying. Only the
    /// requester may be pinged: a prompt's `@everyone` or role mention stays text.
    async fn post(&self, route: &Route, message: CreateMessage) -> serenity::Result<Message> {
        let mentions = CreateAllowedMentions::new()
            .users([UserId::new(route.user_id)])
            .replied_user(true);
        let message = message.allowed_mentions(mentions);
        let message = match route.reply_to {
            Some(to) => message.reference_message(
                MessageReference::from((route.channel(), MessageId::new(to)))
                    .fail_if_not_exists(false),
            ),
            None => message,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match route
                .channel()
                .send_message(&self.http, message.clone())
                .await
            {
                Ok(m) => return Ok(m),
                Err(e) if attempt < SEND_ATTEMPTS && retryable(&e) => {
                    tracing::warn!(attempt, error = %e, "send failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Posts the result or the failure; returns whether the result was delivered.
    async fn finish(&self, outcome: Outcome) -> bool {
        let job_id = outcome.job.id.clone();
        let feedback = self
            .feedback
            .remove(&job_id)
            .map(|(_, f)| f)
            .unwrap_or_default();
        if let Some(typing) = &feedback.typing {
            typing.abort();
        }
        let Some(route) = route_of(&outcome.job.route) else {
            tracing::error!(job_id = %job_id, "job without a Discord route");
            return false; // nobody to tell
        };
        let delivered = match &outcome.result {
            Ok(delivery) => self.deliver(&outcome, delivery, &route).await,
            Err(failure) => {
                self.tell_failure(&route, failure).await;
                false
            }
        };
        if let Some(status) = feedback.status {
            let _ = route.channel().delete_message(&self.http, status).await;
        }
        self.react(&route, if delivered { REACT_DONE } else { REACT_FAILED })
            .await;
        delivered
    }

    async fn deliver(&self, outcome: &Outcome, delivery: &Delivery, route: &Route) -> bool {
        let limit = self.upload_limit(route).await;
        let (files, compressed) = match fit_all(&delivery.images, limit).await {
            Ok(fitted) => fitted,
            Err(reason) => {
                let why = SendFailure::Platform(format!("upload_limit: {reason}"));
                let refunded = self.engine.undeliverable(&outcome.job, why).await.refunded;
                self.tell_failure(route, &Failure { reason, refunded })
                    .await;
                return false;
            }
        };
        let command = &outcome.job.command;
        let mut text = messages::result_caption(
            route.lang,
            &command.prompt,
            outcome.granted.remaining,
            command.truncated,
        );
        if route.reply_to.is_none() {
            text = format!("<@{}> {text}", route.user_id);
        }
        if compressed {
            text.push('\n');
            text.push_str(&messages::compressed(route.lang));
        }
        // The button names the job by its unguessable token (none for jobs of older releases).
        let again = outcome.job.token.as_ref().map(|token| {
            CreateButton::new(format!("again:{token}"))
                .label("🔁")
                .style(ButtonStyle::Secondary)
        });
        // Discord de-duplicates by nonce for a few minutes: a retry, or a resend after a crash
        // that came between Discord's answer and our commit, returns the message already posted.
        let mut message = CreateMessage::new()
            .content(text)
            .add_files(files)
            .nonce(Nonce::String(result_nonce(&outcome.job.id)))
            .enforce_nonce(true);
        if let Some(again) = again {
            message = message.components(vec![CreateActionRow::Buttons(vec![again])]);
        }
        let sent = match tokio::time::timeout(DELIVERY_TIMEOUT, self.post(route, message)).await {
            Ok(sent) => sent,
            Err(_) => Err(serenity::Error::Other("delivery timed out")),
        };
        match sent {
            Ok(sent) => {
                let at = ResultAt {
                    chat: sent.channel_id.get().to_string(),
                    message: sent.id.get().to_string(),
                };
                self.engine
                    .delivered(&outcome.job, delivery, Some(at))
                    .await;
                self.point_interaction_at(route, &sent).await;
                true
            }
            Err(e) => {
                tracing::error!(job_id = %outcome.job.id, error = %e, "delivery failed");
                self.engine.observer().send_failed("discord");
                let failure = self.engine.undeliverable(&outcome.job, classify(&e)).await;
                self.tell_failure(route, &failure).await;
                false
            }
        }
    }

    /// The deferred interaction now links to the result (if its 15 minutes are not over).
    async fn point_interaction_at(&self, route: &Route, sent: &Message) {
        let Some(token) = &route.interaction_token else {
            return;
        };
        let guild = route.guild_id.map_or("@me".to_owned(), |g| g.to_string());
        let link = format!(
            "https://discord.com/channels/{guild}/{}/{}",
            sent.channel_id, sent.id
        );
        let edit = super::edit_response().content(messages::result_posted(route.lang, &link));
        if let Err(e) = edit.execute(&self.http, token).await {
            tracing::debug!(error = %e, "the interaction could not be edited (expired?)");
        }
    }

    /// An interaction's deferred response shows the failure in its place; otherwise it is a reply
    /// to the request (or a mention).
    async fn tell_failure(&self, route: &Route, failure: &Failure) {
        let text = messages::failure(route.lang, failure);
        if let Some(token) = &route.interaction_token {
            let edit = super::edit_response().content(&text);
            match edit.execute(&self.http, token).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "the interaction could not be edited"),
            }
        }
        match route.reply_to {
            Some(_) => self.say(route, &text).await,
            None => {
                self.say(route, &format!("<@{}> {text}", route.user_id))
                    .await
            }
        }
    }

    /// The largest upload for the route: what the interaction said, else the guild's boost tier.
    async fn upload_limit(&self, route: &Route) -> u64 {
        if let Some(limit) = route.upload_limit.filter(|l| *l > 0) {
            return limit;
        }
        let Some(guild) = route.guild_id else {
            return DEFAULT_UPLOAD_LIMIT;
        };
        if let Some(known) = self.upload_limits.get(&guild) {
            return *known;
        }
        let limit = match self
            .http
            .get_guild(GuildId::new(guild))
            .await
            .map(|g| g.premium_tier)
        {
            Ok(PremiumTier::Tier2) => 50 * 1024 * 1024,
            Ok(PremiumTier::Tier3) => 100 * 1024 * 1024,
            _ => DEFAULT_UPLOAD_LIMIT,
        };
        self.upload_limits.insert(guild, limit);
        limit
    }
}

/// Fits every result under the limit (the total of one message must fit too).
async fn fit_all(
    images: &[Bytes],
    limit: u64,
) -> Result<(Vec<CreateAttachment>, bool), FailureReason> {
    let each = (limit as usize / images.len().max(1)).saturating_sub(64 * 1024);
    let mut files = Vec::with_capacity(images.len());
    let mut compressed = false;
    for (i, bytes) in images.iter().enumerate() {
        let bytes = bytes.clone();
        let upload =
            tokio::task::spawn_blocking(move || fit_upload(bytes, each, &FitLimits::default()))
                .await
                .map_err(|_| FailureReason::Internal)??;
        compressed |= upload.compressed;
        let name = if images.len() == 1 {
            format!("edited.{}", upload.ext)
        } else {
            format!("edited-{}.{}", i + 1, upload.ext)
        };
        files.push(CreateAttachment::bytes(upload.bytes.to_vec(), name));
    }
    Ok((files, compressed))
}

/// Whose side a failed post is on. The channel refusing the bot (403: Missing Access 50001,
/// Missing Permissions 50013, cannot DM the user 50007; or the channel gone, 10003) is the
/// user's: the images are charged. Everything else is ours or Discord's.
fn classify(e: &serenity::Error) -> SendFailure {
    use serenity::all::HttpError;
    let refused = match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            r.status_code.as_u16() == 403 || matches!(r.error.code, 50001 | 50007 | 50013 | 10003)
        }
        _ => false,
    };
    match refused {
        true => SendFailure::ChatRefused(e.to_string()),
        false => SendFailure::Platform(e.to_string()),
    }
}

fn retryable(e: &serenity::Error) -> bool {
    use serenity::all::HttpError;
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            r.status_code.as_u16() == 429 || r.status_code.is_server_error()
        }
        serenity::Error::Http(HttpError::Request(_)) => true,
        _ => false,
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
