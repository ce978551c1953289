//! The Telegram front-end (docs/PRODUCT.md §4.1) on teloxide: turns updates into jobs and job events into
//! chat messages. Handlers never wait for the model: they validate, reserve, enqueue, return.

mod admin;
mod album;
mod deliver;
mod handler;
mod places;
mod source;
pub mod trigger;
mod updates;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use teloxide::prelude::*;
use teloxide::types::{BotCommand, MessageId};
use tokio::sync::mpsc;

use crate::config::{Settings, TelegramConfig};
use crate::core::jobs::{Deliveries, Engine, JobEvent};
use crate::messages::Lang;

pub use source::TelegramSource;

/// Where and how to answer a Telegram job; stored inside the job spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub chat_id: i64,
    pub message_id: i32,
    pub lang: Lang,
}

impl Route {
    fn chat(&self) -> ChatId {
        ChatId(self.chat_id)
    }

    fn message(&self) -> MessageId {
        MessageId(self.message_id)
    }
}

/// Per-job feedback state: the status message and the chat-action loop.
#[derive(Default)]
struct Feedback {
    status: Option<MessageId>,
    reacted: bool,
    last_position: Option<usize>,
    typing: Option<tokio::task::AbortHandle>,
    route: Option<Route>,
    /// Turns true once the 👀 (or status message) was sent: the final reaction waits for it.
    acked: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Everything a handler needs. One per process.
pub struct Telegram {
    bot: Bot,
    username: String,
    engine: Arc<Engine>,
    admin_ids: Vec<i64>,
    album_wait: Duration,
    /// Albums (`chat:media_group_id`) whose collection timer runs; their parts are in the store.
    album_timers: dashmap::DashSet<String>,
    feedback: DashMap<String, Feedback>,
    /// Which refusals are answered (repeats are not).
    refusals: crate::core::throttle::RefusalThrottle,
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

/// Prepares the front-end: the bot, its identity, the input source and the event channel.
pub struct Prepared {
    pub bot: Bot,
    pub source: Arc<TelegramSource>,
    pub events_tx: mpsc::Sender<JobEvent>,
    events_rx: mpsc::Receiver<JobEvent>,
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
    let (events_tx, events_rx) = mpsc::channel(64);
    Ok(Prepared {
        source: Arc::new(TelegramSource { bot: bot.clone() }),
        bot,
        events_tx,
        events_rx,
    })
}

/// Runs the front-end until `shutdown` resolves; then stops taking updates and returns the
/// delivery task, which still posts results of jobs that finish later.
pub async fn run(
    prepared: Prepared,
    engine: Arc<Engine>,
    metrics: Arc<crate::metrics::Metrics>,
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Deliveries> {
    let cfg = &settings.config.telegram;
    let Prepared { bot, events_rx, .. } = prepared;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let Some(me) = connect(&bot, &cfg.api_url, &mut stop_rx).await? else {
        return Ok(Deliveries::none());
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
        feedback: DashMap::new(),
        refusals: Default::default(),
        metrics,
    });
    tg.metrics.health.set_telegram(true);
    tg.resume_albums().await;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(crate::core::jobs::pump(
        tg.clone(),
        tg.engine.clone(),
        events_rx,
        stopped,
    ));
    let ticker = tokio::spawn(deliver::position_ticker(tg.clone()));
    let result = dispatch(tg.clone(), cfg, settings, shutdown).await;
    ticker.abort();
    result.map(|()| Deliveries { task, stop })
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
        updates::poll(tg, cfg.poll_timeout_secs, shutdown).await;
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
