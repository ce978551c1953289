//! The Telegram [`Chat`]: each core call as one Bot API request (teloxide), and its errors
//! classified for the core. A job's placeholder is the request's own input sent back by its
//! `file_id` (no upload) with the prompt and state as its caption, or for several results an
//! album of it and a message with the text; the result replaces them with `editMessageMedia`
//! (a document in place of a photo beyond photo limits). File downloads carry the bot token in
//! their URL, so nothing of them (nor of teloxide's errors) leaves this module.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use teloxide::RequestError;
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{
    FileId, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, InputMedia, InputMediaDocument,
    InputMediaPhoto, MessageId, ReactionType, ReplyParameters,
};
use tokio::io::AsyncWrite;

use super::safe_error;
use super::trigger::MAX_DOWNLOAD_BYTES;
use crate::core::model::{Platform, Reply};
use crate::core::outbox::Pace;
use crate::core::ports::BoxFuture;
use crate::core::ports::chat::{
    Chat, ChatError, ChatStyle, Hold, Mark, Placeholder, Posted, ResultImage, ResultPost, Shown,
    Side,
};

/// Reactions while a job waits or runs, then on success or failure (Telegram allows only a
/// fixed set of emoji; ⏳ is not among them).
pub const MARKS: [&str; 3] = ["👀", "👌", "💔"];

/// How Telegram chats look: no expected start times.
pub const STYLE: ChatStyle = ChatStyle {
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
    /// What Telegram lets the bot send.
    pub pace: Pace,
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

    fn pace(&self) -> Option<Pace> {
        Some(self.pace)
    }

    /// A photo, or for `n` > 1 an album of `n` and the text message beside it.
    fn hold_cost(&self, n: u8) -> u32 {
        u32::from(n) + u32::from(n > 1)
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

    fn upload_limit<'a>(&'a self, _to: &'a Reply) -> BoxFuture<'a, Option<u64>> {
        // Results beyond photo limits go out as documents (up to 50 MB), never recompressed.
        Box::pin(async { None })
    }

    fn hold<'a>(
        &'a self,
        to: &'a Reply,
        hold: &'a Hold<'a>,
    ) -> BoxFuture<'a, Result<Placeholder, ChatError>> {
        Box::pin(async move {
            self.post_placeholder(to, hold)
                .await
                .map_err(|e| logged(&e, "posting a placeholder failed"))
        })
    }

    fn show<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move { self.show_text(to, placeholder, text, None).await })
    }

    fn fill<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>> {
        Box::pin(self.fill_placeholder(to, placeholder, result))
    }

    fn fail<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(async move {
            if placeholder.caption.is_some() {
                // An album of the input has nothing to show for a failure.
                for &image in &placeholder.images {
                    let gone = self
                        .bot
                        .delete_message(chat_of(to), message_of(image))
                        .await;
                    if let Err(e) = gone {
                        tracing::debug!(error = %safe_error(&e), "cannot delete a placeholder image");
                    }
                }
            }
            self.show_text(to, placeholder, text, None).await
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

    /// The input sent back by its `file_id` as a photo (or, for a file sent as a document, as
    /// a document) with `hold.text`; for several results an album of it and the text in a
    /// message of its own (an album cannot carry a button).
    async fn post_placeholder(
        &self,
        to: &Reply,
        hold: &Hold<'_>,
    ) -> Result<Placeholder, RequestError> {
        let chat = chat_of(to);
        let input = hold.input.unwrap_or_default();
        if hold.n <= 1 {
            let photo = self
                .bot
                .send_photo(chat, InputFile::file_id(FileId(input.to_owned())))
                .caption(hold.text)
                .reply_parameters(reply_to(to))
                .await;
            let (sent, files) = match photo {
                Ok(sent) => (sent, false),
                Err(e) if not_a_photo(&e) => {
                    let document = self
                        .bot
                        .send_document(chat, InputFile::file_id(FileId(input.to_owned())))
                        .caption(hold.text)
                        .reply_parameters(reply_to(to));
                    (document.await?, true)
                }
                Err(e) => return Err(e),
            };
            return Ok(Placeholder {
                images: vec![i64::from(sent.id.0)],
                caption: None,
                files,
            });
        }
        let album = |document: bool| {
            (0..hold.n)
                .map(|_| {
                    let file = InputFile::file_id(FileId(input.to_owned()));
                    match document {
                        false => InputMedia::Photo(InputMediaPhoto::new(file)),
                        true => InputMedia::Document(InputMediaDocument::new(file)),
                    }
                })
                .collect::<Vec<_>>()
        };
        let photos = self
            .bot
            .send_media_group(chat, album(false))
            .reply_parameters(reply_to(to));
        let (sent, files) = match photos.await {
            Ok(sent) => (sent, false),
            Err(e) if not_a_photo(&e) => {
                let documents = self
                    .bot
                    .send_media_group(chat, album(true))
                    .reply_parameters(reply_to(to));
                (documents.await?, true)
            }
            Err(e) => return Err(e),
        };
        let text = self
            .bot
            .send_message(chat, hold.text)
            .reply_parameters(reply_to(to))
            .await?;
        Ok(Placeholder {
            images: sent.iter().map(|m| i64::from(m.id.0)).collect(),
            caption: Some(i64::from(text.id.0)),
            files,
        })
    }

    /// Shows `text` where the placeholder shows its text: the single image's caption, or the
    /// message of its own beside an album; with `again` as its keyboard when given.
    async fn show_text(
        &self,
        to: &Reply,
        placeholder: &Placeholder,
        text: &str,
        again: Option<InlineKeyboardMarkup>,
    ) -> Result<(), ChatError> {
        let chat = chat_of(to);
        let edited = match (placeholder.caption, placeholder.images.first()) {
            (Some(message), _) => {
                let edit = self.bot.edit_message_text(chat, message_of(message), text);
                match again {
                    Some(again) => edit.reply_markup(again).await,
                    None => edit.await,
                }
            }
            (None, Some(&message)) => {
                let edit = self
                    .bot
                    .edit_message_caption(chat, message_of(message))
                    .caption(text);
                match again {
                    Some(again) => edit.reply_markup(again).await,
                    None => edit.await,
                }
            }
            (None, None) => return Err(ChatError::Gone("an empty placeholder".into())),
        };
        edited.map(|_| ()).or_else(|e| unmodified(&e))
    }

    /// Replaces the placeholder's images by the result's, each a photo (or a document beyond
    /// photo limits, where the placeholder is not an album), and its text by the caption with
    /// 🔁. Images the result does not have are deleted. Every step is an edit to the same
    /// content: done again, it shows the same.
    async fn fill_placeholder(
        &self,
        to: &Reply,
        placeholder: &Placeholder,
        result: &ResultPost,
    ) -> Result<Posted, ChatError> {
        let chat = chat_of(to);
        let again = InlineKeyboardMarkup::new(result.again.as_ref().map(|token| {
            vec![InlineKeyboardButton::callback(
                "🔁",
                format!("again:{token}"),
            )]
        }));
        let single = placeholder.caption.is_none();
        for (i, &message) in placeholder.images.iter().enumerate() {
            let Some(image) = result.images.get(i) else {
                let _ = self.bot.delete_message(chat, message_of(message)).await;
                continue;
            };
            let name = match single {
                true => format!("edited.{}", image.ext),
                false => format!("edited-{}.{}", i + 1, image.ext),
            };
            let caption = single.then_some(result.caption.as_str());
            // A single message may change its kind; an album's items keep the album's.
            let kind = match (single, placeholder.files) {
                (true, _) if fits_photo(&image.bytes) => Kind::Photo,
                (true, _) | (false, true) => Kind::Document,
                (false, false) => Kind::Photo,
            };
            let media = media_of(image, name, caption, kind);
            let edit = self
                .bot
                .edit_message_media(chat, message_of(message), media);
            let edited = match single {
                true => edit.reply_markup(again.clone()).await,
                false => edit.await,
            };
            edited
                .map(|_| ())
                .or_else(|e| unmodified(&e))
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "putting a result into its placeholder failed");
                })?;
        }
        let button_at = match placeholder.caption {
            Some(message) => {
                let caption = Placeholder {
                    images: Vec::new(),
                    caption: Some(message),
                    files: false,
                };
                self.show_text(to, &caption, &result.caption, Some(again))
                    .await?;
                message
            }
            None => *placeholder.images.first().unwrap_or(&0),
        };
        Ok(Posted {
            button_at: Some(button_at),
        })
    }
}

/// What a result image goes as.
enum Kind {
    Photo,
    Document,
}

/// One result image as the media of an edit.
fn media_of(image: &ResultImage, name: String, caption: Option<&str>, kind: Kind) -> InputMedia {
    let file = InputFile::memory(image.bytes.clone()).file_name(name);
    if let Kind::Document = kind {
        let mut media = InputMediaDocument::new(file);
        if let Some(caption) = caption {
            media = media.caption(caption);
        }
        return InputMedia::Document(media);
    }
    let mut media = InputMediaPhoto::new(file);
    if let Some(caption) = caption {
        media = media.caption(caption);
    }
    InputMedia::Photo(media)
}

/// Telegram refused to send the input as a photo on our side of things (a file sent as a
/// document, whose `file_id` is not a photo's): it goes as a document instead. The chat
/// refusing the bot is not that.
fn not_a_photo(e: &RequestError) -> bool {
    matches!(e, RequestError::Api(_))
        && matches!(
            classify(e),
            ChatError::Final {
                side: Side::Platform,
                ..
            }
        )
}

/// An edit Telegram refused because it changes nothing (a repeat) is done; a message it cannot
/// find is gone; the rest is classified.
fn unmodified(e: &RequestError) -> Result<(), ChatError> {
    use teloxide::ApiError as A;
    match e {
        RequestError::Api(A::MessageNotModified) => Ok(()),
        RequestError::Api(A::MessageToEditNotFound | A::MessageIdInvalid) => {
            Err(ChatError::Gone(safe_error(e)))
        }
        RequestError::Api(A::Unknown(text))
            if text.contains("message to edit not found")
                || text.contains("MESSAGE_ID_INVALID") =>
        {
            Err(ChatError::Gone(safe_error(e)))
        }
        _ => Err(classify(e)),
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
        RequestError::RetryAfter(s) => ChatError::RetryAfter(Some(s.duration()), detail),
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
