//! The Telegram [`Chat`]: each core call as one Bot API request (teloxide), and its errors
//! classified for the core. Results go out as a photo, an album (with the caption and 🔁 in a
//! message of their own) or documents when beyond photo limits. File downloads carry the bot
//! token in their URL, so nothing of them (nor of teloxide's errors) leaves this module.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use teloxide::RequestError;
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{
    ChatAction, FileId, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, InputMedia,
    InputMediaPhoto, MessageId, ReactionType, ReplyParameters,
};
use tokio::io::AsyncWrite;

use super::safe_error;
use super::trigger::MAX_DOWNLOAD_BYTES;
use crate::core::model::{Platform, Reply};
use crate::core::ports::BoxFuture;
use crate::core::ports::chat::{
    Chat, ChatError, ChatStyle, Mark, Posted, ResultImage, ResultPost, Shown, Side,
};

/// Reactions while a job waits or runs, then on success or failure (Telegram allows only a
/// fixed set of emoji; ⏳ is not among them).
pub const MARKS: [&str; 3] = ["👀", "👌", "💔"];

/// How Telegram chats look: the upload-photo action lasts about 5 s; no expected start times.
pub const STYLE: ChatStyle = ChatStyle {
    typing_every: Duration::from_secs(4),
    eta: false,
    time: crate::messages::when,
    mention: plain,
};

fn plain(id: &str) -> String {
    id.to_owned()
}

/// Telegram chats, through one bot.
pub struct TelegramChat {
    pub bot: Bot,
}

fn chat_of(to: &Reply) -> ChatId {
    ChatId(to.chat)
}

fn message_of(id: i64) -> MessageId {
    MessageId(i32::try_from(id).unwrap_or(i32::MAX))
}

/// Replies go to the request, or stand alone when it is gone.
fn reply_to(to: &Reply) -> ReplyParameters {
    ReplyParameters::new(message_of(to.to.unwrap_or_default())).allow_sending_without_reply()
}

impl Chat for TelegramChat {
    fn platform(&self) -> Platform {
        Platform::Telegram
    }

    fn style(&self) -> ChatStyle {
        STYLE
    }

    fn fetch<'a>(&'a self, input: &'a str) -> BoxFuture<'a, Result<Bytes, String>> {
        Box::pin(self.download(input))
    }

    fn mark<'a>(&'a self, to: &'a Reply, mark: Mark) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            let Some(message) = to.to else {
                return Ok(());
            };
            let emoji = mark.of(MARKS);
            self.bot
                .set_message_reaction(chat_of(to), message_of(message))
                .reaction(vec![ReactionType::Emoji {
                    emoji: emoji.into(),
                }])
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
    }

    fn say<'a>(&'a self, to: &'a Reply, text: &'a str) -> BoxFuture<'a, Result<i64, ChatError>> {
        Box::pin(async move {
            self.bot
                .send_message(chat_of(to), text)
                .reply_parameters(reply_to(to))
                .await
                .map(|m| i64::from(m.id.0))
                .map_err(|e| logged(&e, "sendMessage failed"))
        })
    }

    fn edit<'a>(
        &'a self,
        to: &'a Reply,
        shown: Shown,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            let Shown::Message(message) = shown else {
                return Ok(()); // Telegram requests have no answer of their own.
            };
            self.bot
                .edit_message_text(chat_of(to), message_of(message), text)
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
    }

    fn delete<'a>(&'a self, to: &'a Reply, message: i64) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            self.bot
                .delete_message(chat_of(to), message_of(message))
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
    }

    fn typing<'a>(&'a self, to: &'a Reply) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            self.bot
                .send_chat_action(chat_of(to), ChatAction::UploadPhoto)
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
    }

    fn upload_limit<'a>(&'a self, _to: &'a Reply) -> BoxFuture<'a, Option<u64>> {
        // Results beyond photo limits go out as documents (up to 50 MB), never recompressed.
        Box::pin(async { None })
    }

    fn post<'a>(
        &'a self,
        to: &'a Reply,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>> {
        Box::pin(async move {
            let button_at = self.send_result(to, result).await.map_err(|e| {
                tracing::warn!(error = %safe_error(&e), "posting a result failed");
                classify(&e)
            })?;
            Ok(Posted {
                button_at: button_at.map(|m| i64::from(m.0)),
                link: None,
            })
        })
    }
}

impl TelegramChat {
    async fn download(&self, file_id: &str) -> Result<Bytes, String> {
        let file = self
            .bot
            .get_file(FileId(file_id.to_owned()))
            .await
            .map_err(|e| format!("getFile failed: {}", safe_error(&e)))?;
        if file.size > MAX_DOWNLOAD_BYTES && file.size != u32::MAX {
            return Err("the file is larger than Telegram lets bots download (20 MB)".into());
        }
        let capacity = file.size.min(MAX_DOWNLOAD_BYTES) as usize;
        let mut sink = Capped {
            buf: Vec::with_capacity(capacity),
            limit: MAX_DOWNLOAD_BYTES as usize,
        };
        self.bot
            .download_file(&file.path, &mut sink)
            .await
            .map_err(|_| "the download from Telegram failed".to_string())?;
        Ok(Bytes::from(sink.buf))
    }

    /// Posts the images and the caption; returns the message that carries the 🔁 button.
    async fn send_result(
        &self,
        to: &Reply,
        result: &ResultPost,
    ) -> Result<Option<MessageId>, RequestError> {
        let chat = chat_of(to);
        let again = InlineKeyboardMarkup::new(result.again.as_ref().map(|token| {
            vec![InlineKeyboardButton::callback(
                "🔁",
                format!("again:{token}"),
            )]
        }));
        let images = &result.images;
        if let [image] = &images[..] {
            return self.send_one(to, image, &result.caption, again).await;
        }
        if images.iter().all(|i| fits_photo(&i.bytes)) {
            let media = images
                .iter()
                .enumerate()
                .map(|(i, image)| {
                    let file = InputFile::memory(image.bytes.clone())
                        .file_name(format!("edited-{}.png", i + 1));
                    InputMedia::Photo(InputMediaPhoto::new(file))
                })
                .collect::<Vec<_>>();
            self.bot
                .send_media_group(chat, media)
                .reply_parameters(reply_to(to))
                .await?;
        } else {
            for image in images {
                let file = InputFile::memory(image.bytes.clone()).file_name("edited.png");
                self.bot
                    .send_document(chat, file)
                    .reply_parameters(reply_to(to))
                    .await?;
            }
        }
        // Albums cannot carry buttons: the caption and 🔁 follow in a message of their own. The
        // images are delivered by now, so a failure here does not undo the delivery.
        let caption = self
            .bot
            .send_message(chat, &result.caption)
            .reply_parameters(reply_to(to))
            .reply_markup(again);
        match caption.await {
            Ok(m) => Ok(Some(m.id)),
            Err(e) => {
                tracing::warn!(error = %safe_error(&e), "the caption after an album could not be sent");
                Ok(None)
            }
        }
    }

    async fn send_one(
        &self,
        to: &Reply,
        image: &ResultImage,
        caption: &str,
        again: InlineKeyboardMarkup,
    ) -> Result<Option<MessageId>, RequestError> {
        let file = InputFile::memory(image.bytes.clone()).file_name("edited.png");
        let sent = if fits_photo(&image.bytes) {
            self.bot
                .send_photo(chat_of(to), file)
                .caption(caption)
                .reply_parameters(reply_to(to))
                .reply_markup(again)
                .await?
        } else {
            self.bot
                .send_document(chat_of(to), file)
                .caption(caption)
                .reply_parameters(reply_to(to))
                .reply_markup(again)
                .await?
        };
        Ok(Some(sent.id))
    }
}

/// Logs a failed call (never a URL) and classifies it.
fn logged(e: &RequestError, what: &str) -> ChatError {
    tracing::warn!(error = %safe_error(e), "{what}");
    classify(e)
}

/// How the core should take a failed call. The user's chat refusing the bot (blocked, kicked,
/// no right to post) is the user's side: a result it refuses is charged. 429s say how long to
/// wait; network and server errors are worth another try; everything else is final.
fn classify(e: &RequestError) -> ChatError {
    use teloxide::ApiError as A;
    let detail = safe_error(e);
    let final_on = |side| ChatError::Final {
        side,
        detail: detail.clone(),
    };
    match e {
        RequestError::RetryAfter(s) => ChatError::RetryAfter(s.duration(), detail),
        RequestError::Network(_) | RequestError::Io(_) => ChatError::Transient(detail),
        RequestError::Api(api) => match api {
            A::BotBlocked
            | A::BotKicked
            | A::BotKickedFromSupergroup
            | A::BotKickedFromChannel
            | A::UserDeactivated
            | A::CantInitiateConversation
            | A::CantTalkWithBots
            | A::NotEnoughRightsToPostMessages
            | A::ChatNotFound
            | A::GroupDeactivated => final_on(Side::User),
            A::Unknown(text) => {
                let lower = text.to_ascii_lowercase();
                let refused = [
                    "forbidden",
                    "not enough rights",
                    "have no rights",
                    "chat_write_forbidden",
                ]
                .iter()
                .any(|needle| lower.contains(needle));
                if refused {
                    final_on(Side::User)
                } else if text.contains("Internal") || text.contains("Gateway") {
                    ChatError::Transient(detail)
                } else {
                    final_on(Side::Platform)
                }
            }
            _ => final_on(Side::Platform),
        },
        _ => final_on(Side::Platform),
    }
}

/// Whether Telegram takes the image as a photo: ≤ 10 MB, width + height ≤ 10 000, ratio ≤ 20.
pub fn fits_photo(bytes: &[u8]) -> bool {
    let Ok(p) = crate::core::image::probe(bytes) else {
        return false;
    };
    let (w, h) = (u64::from(p.width), u64::from(p.height));
    bytes.len() <= 10 * 1024 * 1024 && w + h <= 10_000 && w.max(h) <= 20 * w.min(h)
}

struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.limit {
            return Poll::Ready(Err(std::io::Error::other("file larger than announced")));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
