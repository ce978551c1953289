//! Fetches input images. Message attachments are re-read from the message at job start, because
//! Discord CDN URLs expire; attachments of slash-command options exist only as a URL.
//!
//! Locators: `msg:{channel}:{message}:{index}` or `url:{url}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serenity::all::{ChannelId, Http, MessageId};

/// Largest input we download.
const MAX_INPUT: usize = 50 * 1024 * 1024;

pub struct DiscordSource {
    http: Arc<Http>,
    client: reqwest::Client,
}

impl DiscordSource {
    pub fn new(http: Arc<Http>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self { http, client }
    }

    async fn url_of(&self, locator: &str) -> Result<String, String> {
        if let Some(url) = locator.strip_prefix("url:") {
            return Ok(url.to_owned());
        }
        let parts: Vec<&str> = locator
            .strip_prefix("msg:")
            .ok_or("bad locator")?
            .split(':')
            .collect();
        let [channel, message, index] = parts[..] else {
            return Err("bad locator".into());
        };
        let (Ok(channel), Ok(message), Ok(index)) = (
            channel.parse::<u64>(),
            message.parse::<u64>(),
            index.parse::<usize>(),
        ) else {
            return Err("bad locator".into());
        };
        let msg = self
            .http
            .get_message(ChannelId::new(channel), MessageId::new(message))
            .await
            .map_err(|e| format!("cannot read the message: {e}"))?;
        let attachment = msg.attachments.get(index).ok_or("the attachment is gone")?;
        Ok(attachment.url.clone())
    }
}

impl DiscordSource {
    /// The bytes behind an input locator.
    pub async fn fetch(&self, locator: &str) -> Result<Bytes, String> {
        let url = self.url_of(locator).await?;
        download(&self.client, &url, MAX_INPUT).await
    }
}

/// GETs `url` (checking the status, unlike serenity's `Attachment::download`) up to `limit`.
pub async fn download(client: &reqwest::Client, url: &str, limit: usize) -> Result<Bytes, String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("download failed: {}", e.without_url()))?;
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Err("the file is too large".into());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if buf.len() + chunk.len() > limit {
            return Err("the file is too large".into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}
