//! The Discord adapter (docs/PRODUCT.md §4.2) on serenity: text triggers, the `/edit` slash command, the
//! "Edit image" message command with its modal, 🔁 buttons, `/quota`, `/quota-admin`, `/help`.
//! Handlers defer or react at once, hand the request to the core and never wait for the model;
//! [`chat::DiscordChat`] carries out the core's calls (a result goes into its job's placeholder:
//! a channel message, or an interaction's answer, edited through its token for its 15 minutes
//! and as the channel message it is after them).

mod answer;
pub mod chat;
pub mod check;
mod commands;
mod intake;
mod places;
mod source;

use std::sync::Arc;

use dashmap::DashMap;
use serenity::all::{
    ClientBuilder, Context, EventHandler, GatewayIntents, Guild, GuildId, Http, HttpBuilder,
    Interaction, Message, Ready, UserId,
};
use serenity::async_trait;

use crate::config::Settings;
use crate::core::jobs::Engine;
use crate::core::model::Lang;
use crate::metrics::Metrics;

pub use chat::DiscordChat;

/// Everything the handlers share. One per process.
pub struct Discord {
    http: Arc<Http>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    bot_id: std::sync::OnceLock<UserId>,
    guild_ids: Vec<u64>,
    /// Operators: `/quota-admin` acts bot-wide for them.
    admin_ids: Vec<u64>,
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

/// The adapter before it connects: the chat the engine answers through.
pub struct Prepared {
    pub http: Arc<Http>,
    pub token: String,
    pub chat: Arc<DiscordChat>,
}

pub fn prepare(settings: &Settings) -> anyhow::Result<Prepared> {
    let token = settings
        .secrets
        .discord_token
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("DISCORD_TOKEN is not set"))?;
    let token = crate::config::expose(token).to_owned();
    let http = Arc::new(http(&token, &settings.config.discord.api_url));
    let pace = settings
        .config
        .discord
        .pace(settings.config.quota.replicas)
        .map_err(|e| anyhow::anyhow!(e))?;
    let chat = Arc::new(DiscordChat::new(http.clone(), pace));
    Ok(Prepared { http, token, chat })
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

/// Connects to the gateway and serves until `shutdown` resolves.
pub async fn run(
    prepared: Prepared,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    settings: &Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared { http, token, .. } = prepared;
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
        guild_langs: DashMap::new(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let result = connect(&dc, &token, intents, settings, stop_rx).await;
    dc.metrics.health.set_discord(false);
    result
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
                    // serenity's shutdown does nothing before a shard runs: a stop while the
                    // client still starts is repeated until it has one to stop (the task ends
                    // with the client).
                    loop {
                        shards.shutdown_all().await;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
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
