//! The Telegram adapter (docs/PRODUCT.md §4.1) on teloxide: updates become requests to the core
//! (`handler`, `album`, `admin`), and [`chat::TelegramChat`] carries out the core's calls.
//! Handlers never wait for the model: they validate, reserve, enqueue, return.

mod admin;
mod album;
pub mod chat;
pub mod check;
mod handler;
mod places;
mod route;
pub mod trigger;
mod updates;

use std::sync::Arc;
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::BotCommand;

use crate::config::{Settings, TelegramConfig};
use crate::core::jobs::Engine;

pub use chat::TelegramChat;

/// Everything a handler needs. One per process.
pub struct Telegram {
    bot: Bot,
    username: String,
    engine: Arc<Engine>,
    admin_ids: Vec<i64>,
    album_wait: Duration,
    /// Albums (`chat:media_group_id`) whose collection timer runs; their parts are in the store.
    album_timers: dashmap::DashSet<String>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Builds the bot for `api_url` (trailing slashes trimmed, see docs/PLATFORMS.md).
pub fn bot(token: &str, api_url: &str) -> anyhow::Result<Bot> {
    let url = reqwest::Url::parse(api_url.trim_end_matches('/'))?;
    Ok(Bot::new(token).set_api_url(url))
}

/// An error as safe to log: never a URL (file URLs hold the token).
pub(crate) fn safe_error(e: &teloxide::RequestError) -> String {
    match e {
        teloxide::RequestError::Network(inner) => {
            format!(
                "network error: {}",
                inner
                    .as_ref()
                    .to_string()
                    .split(" for url")
                    .next()
                    .unwrap_or("")
            )
        }
        other => other.to_string(),
    }
}

/// Asks `getMe` until Telegram answers (a network outage at start is waited out, logged with the
/// host and the cause, never the token). A refused token is final. `None` when stopped first.
async fn connect(
    bot: &Bot,
    api_url: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<teloxide::types::Me>> {
    let host = crate::config::host_of(api_url);
    let mut backoff = crate::core::reconnect::Reconnect::default();
    loop {
        let err = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
            me = bot.get_me() => match me {
                Ok(me) => return Ok(Some(me)),
                Err(e) => e,
            },
        };
        if let teloxide::RequestError::Api(teloxide::ApiError::InvalidToken) = err {
            anyhow::bail!(
                "Telegram ({host}) refused the bot token (401 Unauthorized): check TELEGRAM_BOT_TOKEN"
            );
        }
        tracing::warn!(host = %host, error = %safe_error(&err),
            wait_ms = backoff.wait().as_millis() as u64, "cannot reach Telegram yet; trying again");
        if !backoff.pause(stop).await {
            return Ok(None);
        }
    }
}

/// The adapter before it connects: the bot, and the chat the engine answers through.
pub struct Prepared {
    pub bot: Bot,
    pub chat: Arc<TelegramChat>,
}

pub fn prepare(settings: &Settings) -> anyhow::Result<Prepared> {
    let token = settings
        .secrets
        .telegram_bot_token
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("TELEGRAM_BOT_TOKEN is not set"))?;
    let bot = bot(
        crate::config::expose(token),
        &settings.config.telegram.api_url,
    )?;
    Ok(Prepared {
        chat: Arc::new(TelegramChat {
            bot: bot.clone(),
            pace: settings
                .config
                .telegram
                .pace(settings.config.quota.replicas)
                .map_err(|e| anyhow::anyhow!(e))?,
        }),
        bot,
    })
}

/// Takes updates until `shutdown` resolves. Results of jobs that finish later are still posted
/// (by the engine, through the chat).
pub async fn run(
    prepared: Prepared,
    engine: Arc<Engine>,
    metrics: Arc<crate::metrics::Metrics>,
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = &settings.config.telegram;
    let Prepared { bot, .. } = prepared;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let Some(me) = connect(&bot, &cfg.api_url, &mut stop_rx).await? else {
        return Ok(());
    };
    let shutdown = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let username = me.username.clone().unwrap_or_default();
    tracing::info!(bot = %username, "connected to Telegram");
    register_commands(&bot).await;
    let tg = Arc::new(Telegram {
        bot: bot.clone(),
        username,
        engine,
        admin_ids: cfg.admin_ids.clone(),
        album_wait: Duration::from_millis(cfg.album_wait_ms),
        album_timers: dashmap::DashSet::new(),
        metrics,
    });
    tg.metrics.health.set_telegram(true);
    tg.resume_albums().await;
    dispatch(tg.clone(), cfg, settings, shutdown).await
}

async fn dispatch(
    tg: Arc<Telegram>,
    cfg: &TelegramConfig,
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if cfg.mode == "webhook" {
        let hook = updates::Webhook {
            listen: cfg.webhook_listen.parse()?,
            url: reqwest::Url::parse(&cfg.webhook_url)?,
            secret: settings
                .secrets
                .telegram_webhook_secret
                .as_ref()
                .map(|s| crate::config::expose(s).to_owned()),
            limits: crate::listen::Limits::from_config(&settings.config.http),
        };
        updates::webhook(tg, hook, shutdown).await
    } else {
        let database = &settings.config.quota.database;
        let leader = crate::store::leader(database, crate::store::Role::TelegramPolling);
        updates::poll(tg, cfg.poll_timeout_secs, leader, shutdown).await;
        Ok(())
    }
}

async fn register_commands(bot: &Bot) {
    let en = [
        ("edit", "Edit a photo: /edit make it night"),
        ("help", "How to use the bot"),
        ("quota", "Edits left"),
    ];
    let zh = [
        ("edit", "编辑图片：/edit 把天空变成夜晚"),
        ("help", "使用说明"),
        ("quota", "剩余次数"),
    ];
    let commands = |list: &[(&str, &str)]| -> Vec<BotCommand> {
        list.iter().map(|(c, d)| BotCommand::new(*c, *d)).collect()
    };
    if let Err(e) = bot.set_my_commands(commands(&en)).await {
        tracing::warn!(error = %safe_error(&e), "setMyCommands failed");
    }
    if let Err(e) = bot.set_my_commands(commands(&zh)).language_code("zh").await {
        tracing::warn!(error = %safe_error(&e), "setMyCommands (zh) failed");
    }
}
