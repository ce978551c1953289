//! The Discord front-end (docs/PRODUCT.md §4.2) on serenity: text triggers, the `/edit` slash command, the
//! "Edit image" message command with its modal, 🔁 buttons, `/quota`, `/quota-admin`, `/help`.
//! Handlers defer or react at once and never wait for the model; results are posted as channel
//! messages (never only through the 15-minute interaction token).

mod commands;
mod deliver;
mod intake;
mod places;
mod source;

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serenity::all::{
    ChannelId, ClientBuilder, Context, EventHandler, GatewayIntents, Guild, GuildId, Http,
    HttpBuilder, Interaction, Message, MessageId, Ready, UserId,
};
use serenity::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::core::jobs::{Deliveries, Engine, JobEvent};
use crate::messages::Lang;
use crate::metrics::Metrics;

pub use source::DiscordSource;

/// Where and how to answer a Discord job; stored inside the job spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Route {
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The message to reply to (text triggers, and the target of the message command).
    pub reply_to: Option<u64>,
    /// The user to mention when there is no message to reply to.
    pub user_id: u64,
    pub lang: Lang,
    /// The deferred interaction, to point at the result (valid 15 minutes).
    pub interaction_token: Option<String>,
    /// Largest upload the channel takes, when the interaction told us.
    pub upload_limit: Option<u64>,
}

impl Route {
    fn channel(&self) -> ChannelId {
        ChannelId::new(self.channel_id)
    }
}

/// Per-job feedback state.
#[derive(Default)]
struct Feedback {
    status: Option<MessageId>,
    last_position: Option<usize>,
    typing: Option<tokio::task::AbortHandle>,
    route: Option<Route>,
}

/// Everything the handlers share. One per process.
pub struct Discord {
    http: Arc<Http>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    bot_id: std::sync::OnceLock<UserId>,
    guild_ids: Vec<u64>,
    /// Operators: `/quota-admin` acts bot-wide for them.
    admin_ids: Vec<u64>,
    /// Which refusals of text requests are answered (repeats are not).
    refusals: crate::core::throttle::RefusalThrottle,
    feedback: DashMap<String, Feedback>,
    /// Upload limits learnt per guild (from its boost tier).
    upload_limits: DashMap<u64, u64>,
    /// Preferred languages learnt per guild.
    guild_langs: DashMap<u64, Lang>,
}

/// The REST client, pointed at `discord.api_url` (a proxy or a fake) when it is not Discord's.
pub fn http(token: &str, api_url: &str) -> Http {
    let api_url = api_url.trim_end_matches('/');
    // Nobody is pinged unless a message names whom (a result pings its requester only), so a
    // prompt's `@everyone` or role mention, echoed back, stays text.
    let builder = HttpBuilder::new(token)
        .default_allowed_mentions(serenity::all::CreateAllowedMentions::new());
    if api_url == "https://discord.com" {
        return builder.build();
    }
    // serenity's ratelimiter talks to discord.com directly; through a proxy it must be off
    // (the proxy, e.g. twilight-http-proxy, does the rate limiting).
    builder.proxy(api_url).ratelimiter_disabled(true).build()
}

/// The front-end before it connects: what the engine needs from it.
pub struct Prepared {
    pub http: Arc<Http>,
    pub token: String,
    pub source: Arc<DiscordSource>,
    pub events_tx: mpsc::Sender<JobEvent>,
    events_rx: mpsc::Receiver<JobEvent>,
}

pub fn prepare(settings: &Settings) -> anyhow::Result<Prepared> {
    let token = settings
        .secrets
        .discord_token
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("DISCORD_TOKEN is not set"))?;
    let token = crate::config::expose(token).to_owned();
    let http = Arc::new(http(&token, &settings.config.discord.api_url));
    let (events_tx, events_rx) = mpsc::channel(64);
    let source = Arc::new(DiscordSource::new(http.clone()));
    Ok(Prepared {
        http,
        token,
        source,
        events_tx,
        events_rx,
    })
}

/// serenity's event handler: the shared state, built before the client.
struct Handler {
    dc: Arc<Discord>,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        let dc = &self.dc;
        // Interaction responses and follow-ups are addressed by application id.
        dc.http.set_application_id(ready.application.id);
        // Every shard, and every new session, sends READY; commands are registered once.
        let first = dc.bot_id.set(ready.user.id).is_ok();
        dc.metrics.health.set_discord(true);
        tracing::info!(bot = %ready.user.name, guilds = ready.guilds.len(), "connected to Discord");
        if first {
            commands::register(dc).await;
        }
    }

    async fn guild_create(&self, _ctx: Context, guild: Guild, _is_new: Option<bool>) {
        self.dc.leave_if_unlisted(guild.id).await;
    }

    async fn message(&self, _ctx: Context, msg: Message) {
        intake::on_message(&self.dc, &msg).await;
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        intake::on_interaction(&self.dc, interaction).await;
    }
}

/// Connects to the gateway and serves until `shutdown` resolves; returns the delivery task.
pub async fn run(
    prepared: Prepared,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Deliveries> {
    let Prepared {
        http,
        token,
        events_rx,
        ..
    } = prepared;
    let intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_REACTIONS;
    let dc = Arc::new(Discord {
        http,
        engine,
        metrics,
        bot_id: std::sync::OnceLock::new(),
        guild_ids: settings.config.discord.guild_ids.clone(),
        admin_ids: settings.config.discord.admin_ids.clone(),
        refusals: Default::default(),
        feedback: DashMap::new(),
        upload_limits: DashMap::new(),
        guild_langs: DashMap::new(),
    });
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(crate::core::jobs::pump(
        dc.clone(),
        dc.engine.clone(),
        events_rx,
        stopped,
    ));
    let ticker = tokio::spawn(deliver::position_ticker(dc.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = connect(&dc, &token, intents, settings, stop_rx).await;
    ticker.abort();
    dc.metrics.health.set_discord(false);
    result?;
    Ok(Deliveries { task, stop })
}

/// Runs the gateway client until `stop`. A client that cannot start (Discord unreachable) is
/// built and started again with backoff, logged with the host and the cause; a refused token
/// (401) is final.
async fn connect(
    dc: &Arc<Discord>,
    token: &str,
    intents: GatewayIntents,
    settings: &Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cfg = &settings.config.discord;
    let host = crate::config::host_of(&cfg.api_url);
    let mut backoff = crate::core::reconnect::Reconnect::default();
    loop {
        let client = ClientBuilder::new_with_http(self::http(token, &cfg.api_url), intents)
            .event_handler(Handler { dc: dc.clone() })
            .await;
        let result = match client {
            Ok(mut client) => {
                if !cfg.gateway_url.is_empty() {
                    *client.ws_url.lock().await = cfg.gateway_url.clone();
                }
                let shards = client.shard_manager.clone();
                let mut stopped = stop.clone();
                let stopper = tokio::spawn(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                    shards.shutdown_all().await;
                });
                let result = match cfg.shards[..] {
                    // serenity's range end is the last shard, inclusive.
                    [first, last, total] => client.start_shard_range(first..last, total).await,
                    _ => client.start_autosharded().await,
                };
                stopper.abort();
                result
            }
            Err(e) => Err(e),
        };
        if *stop.borrow() {
            return Ok(());
        }
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if unauthorized(&err) {
            anyhow::bail!("Discord ({host}) refused the bot token (401): check DISCORD_TOKEN");
        }
        tracing::warn!(host = %host, error = %err, wait_ms = backoff.wait().as_millis() as u64,
            "cannot reach Discord; trying again");
        if !backoff.pause(&stop).await {
            return Ok(());
        }
    }
}

fn unauthorized(e: &serenity::Error) -> bool {
    use serenity::all::HttpError;
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => r.status_code.as_u16() == 401,
        serenity::Error::Gateway(serenity::gateway::GatewayError::InvalidAuthentication) => true,
        _ => false,
    }
}

impl Discord {
    /// The guild's preferred language (asked once, then remembered).
    async fn guild_lang(&self, guild: u64) -> Lang {
        if let Some(lang) = self.guild_langs.get(&guild) {
            return *lang;
        }
        let lang = match self.http.get_guild(GuildId::new(guild)).await {
            Ok(g) => Lang::from_code(Some(&g.preferred_locale)),
            Err(_) => return Lang::En,
        };
        self.guild_langs.insert(guild, lang);
        lang
    }
}

/// A guild id as the core's group key.
fn group_of(guild: Option<GuildId>) -> Option<String> {
    guild.map(|g| g.get().to_string())
}

/// An edit of an interaction's response that pings nobody (serenity applies the client's default
/// allowed mentions to channel messages, not to these edits).
fn edit_response() -> serenity::all::EditInteractionResponse {
    serenity::all::EditInteractionResponse::new()
        .allowed_mentions(serenity::all::CreateAllowedMentions::new())
}
