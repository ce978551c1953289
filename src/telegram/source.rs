//! Fetches input images by file id. The download URL contains the bot token, so nothing of it
//! (nor of teloxide's errors) leaves this module: callers get bytes or a plain reason.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::FileId;
use tokio::io::AsyncWrite;

use super::trigger::MAX_DOWNLOAD_BYTES;
use crate::core::edit::BoxFuture;
use crate::core::jobs::InputSource;

/// Telegram files behind file ids.
pub struct TelegramSource {
    pub bot: Bot,
}

impl InputSource for TelegramSource {
    fn fetch<'a>(&'a self, locator: &'a str) -> BoxFuture<'a, Result<Bytes, String>> {
        Box::pin(async move {
            let file = self
                .bot
                .get_file(FileId(locator.to_owned()))
                .await
                .map_err(|e| format!("getFile failed: {}", super::safe_error(&e)))?;
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
        })
    }
}

/// A `Vec` writer that refuses to grow past `limit`.
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
