//! Albums arrive as separate updates sharing a `media_group_id`, with the caption on one of
//! them. Each part is written to the store as it arrives — from then on its update is handled
//! and confirmed to Telegram like any other, so intake never waits for an album — and
//! `telegram.album_wait_ms` after the first part, the album's parts are read back and handled
//! as one request with up to three images. Parts of an album cut off by a crash or a restart are
//! in the store and handled after the next start.

use std::sync::Arc;

use teloxide::types::Message;

use super::Telegram;
use super::route::lang_of;
use super::trigger::{Candidate, ImageRef, image_of};
use crate::core::jobs::MAX_INPUTS;

impl Telegram {
    /// Stores one album part; the album's first part starts the collection timer.
    pub(super) async fn collect_album(self: &Arc<Self>, msg: Message) {
        let Some(group) = msg
            .media_group_id()
            .map(|g| format!("{}:{}", msg.chat.id.0, g.0))
        else {
            return;
        };
        let part = match serde_json::to_string(&msg) {
            Ok(part) => part,
            Err(e) => return tracing::error!(error = %e, "cannot keep an album part"),
        };
        let id = msg.id.0.to_string();
        let store = self.engine.quotas().store();
        let stored = store.save_album_part(&group, &id, &part).await;
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot store an album part");
        }
        self.arm_album(group);
    }

    /// Starts the timer of `group` unless it runs already.
    fn arm_album(self: &Arc<Self>, group: String) {
        if !self.album_timers.insert(group.clone()) {
            return;
        }
        let tg = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(tg.album_wait).await;
            if tg.engine.is_closed() {
                // Shutting down: the parts stay in the store for the next start.
                return;
            }
            tg.album_timers.remove(&group);
            tg.finish_album(&group).await;
        });
    }

    /// Albums whose parts a previous run stored but did not handle: collected again.
    pub(super) async fn resume_albums(self: &Arc<Self>) {
        match self.engine.quotas().store().album_groups().await {
            Ok(groups) => {
                for group in groups {
                    tracing::info!(album = %group, "resuming an album from before the restart");
                    self.arm_album(group);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list stored album parts"),
        }
    }

    async fn finish_album(self: &Arc<Self>, group: &str) {
        let store = self.engine.quotas().store();
        let parts = match store.album_parts(group).await {
            Ok(parts) => parts,
            Err(e) => return tracing::error!(error = %e, "cannot read an album's parts"),
        };
        let mut parts: Vec<Message> = parts
            .iter()
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect();
        parts.sort_by_key(|m| m.id.0);
        // The job is in the store (or refused) before the parts are forgotten; a crash in
        // between handles the album again, and its job id makes that a no-op.
        self.request_album(&parts).await;
        if let Err(e) = store.drop_album(group).await {
            tracing::error!(error = %e, "cannot forget an album's parts");
        }
    }

    async fn request_album(self: &Arc<Self>, parts: &[Message]) {
        let Some(msg) = parts.iter().find(|m| m.caption().is_some()) else {
            return;
        };
        let Some(from) = msg.from.clone() else {
            return;
        };
        let images: Vec<ImageRef> = parts.iter().filter_map(image_of).take(MAX_INPUTS).collect();
        let candidate = Candidate {
            text: msg.caption().unwrap_or_default().to_owned(),
            images,
            command_optional: msg.chat.is_private(),
            reply_to: msg.id,
        };
        let lang = lang_of(Some(&from));
        self.request(&msg.chat, &from, candidate, lang).await;
    }
}
