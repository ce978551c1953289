//! Albums arrive as separate updates sharing a `media_group_id`, with the caption on one of
//! them. They are collected for `telegram.album_wait_ms`, then handled as one request with up
//! to three images. The handler only records the message; a timer task does the rest. Until
//! the album's job is in the store, its updates are not confirmed to Telegram (see
//! `updates::poll`), so a crash while collecting loses nothing.

use std::sync::Arc;

use teloxide::types::{Chat, Message, User};

use super::Telegram;
use super::handler::lang_of;
use super::trigger::{Candidate, ImageRef, image_of};
use crate::core::jobs::MAX_INPUTS;

/// The parts of one album seen so far.
pub struct Album {
    chat: Chat,
    /// (message id, image) in arrival order.
    items: Vec<(i32, ImageRef)>,
    /// The message with the caption, and its sender.
    caption: Option<(Message, User)>,
}

impl Telegram {
    /// Records one album message; the first one starts the collection timer.
    pub(super) fn collect_album(self: &Arc<Self>, msg: Message) {
        let Some(group) = msg.media_group_id().map(|g| g.0.clone()) else {
            return;
        };
        let Some(image) = image_of(&msg) else { return };
        let mut first = false;
        let mut album = self.albums.entry(group.clone()).or_insert_with(|| {
            first = true;
            Album {
                chat: msg.chat.clone(),
                items: Vec::new(),
                caption: None,
            }
        });
        album.items.push((msg.id.0, image));
        if msg.caption().is_some()
            && let Some(from) = msg.from.clone()
        {
            album.caption = Some((msg, from));
        }
        drop(album);
        if first {
            let tg = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(tg.album_wait).await;
                if tg.engine.is_closed() {
                    // Shutting down: the album's updates stay unconfirmed and come back after
                    // the restart.
                    return;
                }
                if let Some((_, album)) = tg.albums.remove(&group) {
                    tg.finish_album(album).await;
                }
                tg.album_floor.remove(&group);
            });
        }
    }

    async fn finish_album(self: &Arc<Self>, mut album: Album) {
        let Some((msg, from)) = album.caption.take() else {
            return;
        };
        album.items.sort_by_key(|(id, _)| *id);
        let images: Vec<ImageRef> = album
            .items
            .into_iter()
            .map(|(_, img)| img)
            .take(MAX_INPUTS)
            .collect();
        let candidate = Candidate {
            text: msg.caption().unwrap_or_default().to_owned(),
            images,
            command_optional: album.chat.is_private(),
            reply_to: msg.id,
        };
        let lang = lang_of(Some(&from));
        self.request(&album.chat, &from, candidate, lang).await;
    }
}
