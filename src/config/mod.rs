//! `config.toml` (docs/PRODUCT.md §3) plus secrets from the environment.
//!
//! Unknown keys are rejected with their name. Secrets never come from the file: each is read from
//! `NAME` or from the file named by `NAME_FILE` (the Docker secrets convention), and is kept in a
//! [`SecretString`] so it cannot end up in a `Debug` print or a log line.

pub mod check;
mod load;

use std::fmt::Write as _;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seconds running jobs get to finish at SIGINT/SIGTERM (the rest resume next start).
    pub shutdown_grace_secs: u64,
    pub backend: BackendConfig,
    pub telegram: TelegramConfig,
    pub discord: DiscordConfig,
    pub quota: QuotaConfig,
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shutdown_grace_secs: 60,
            backend: BackendConfig::default(),
            telegram: TelegramConfig::default(),
            discord: DiscordConfig::default(),
            quota: QuotaConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: String,
    pub base_url: String,
    pub model: String,
    pub timeout_secs: u64,
    pub max_concurrent: usize,
    pub max_requests_per_second: f64,
    pub watermark: bool,
    pub prompt_extend: bool,
    pub default_negative_prompt: String,
    /// Attempts per backend call for retryable errors (429, 408, 5xx, timeouts), first included.
    pub max_attempts: u32,
    /// Output size (`WxH`) of requests that name none; empty: the model's default.
    pub default_size: String,
    /// Inputs are reduced to at most this many pixels a side (the service makes nothing larger
    /// from them); 384 to 3072.
    pub max_input_side: u32,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: "dashscope".into(),
            base_url: "https://dashscope-intl.aliyuncs.com/api/v1".into(),
            model: "qwen-image-edit-plus".into(),
            timeout_secs: 300,
            max_concurrent: 4,
            max_requests_per_second: 2.0,
            watermark: false,
            prompt_extend: true,
            default_negative_prompt: String::new(),
            max_attempts: 4,
            default_size: String::new(),
            max_input_side: 2048,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramConfig {
    pub enabled: bool,
    pub api_url: String,
    pub mode: String,
    pub webhook_url: String,
    pub webhook_listen: String,
    pub admin_ids: Vec<i64>,
    /// How long to collect the photos of an album (they arrive as separate updates).
    pub album_wait_ms: u64,
    /// Long-polling timeout; must stay under teloxide's 17 s HTTP timeout.
    pub poll_timeout_secs: u32,
    /// Groups and channels (chat ids) the bot answers in, with those added by `allow add`;
    /// both empty: every group.
    pub allowed_chats: Vec<i64>,
    /// Whether anyone may use the bot in a private chat (listed private chats always may).
    pub private_chats: bool,
    /// Leave a group that is not allowed when added to it (after saying why once).
    pub leave_unlisted: bool,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api_url: "https://api.telegram.org".into(),
            mode: "polling".into(),
            webhook_url: String::new(),
            webhook_listen: "0.0.0.0:8443".into(),
            admin_ids: Vec::new(),
            album_wait_ms: 1200,
            poll_timeout_secs: 10,
            allowed_chats: Vec::new(),
            private_chats: true,
            leave_unlisted: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    pub enabled: bool,
    pub api_url: String,
    /// The gateway to connect to (`ws://` or `wss://`); empty: the one the REST API names.
    pub gateway_url: String,
    pub guild_ids: Vec<u64>,
    /// Operators: users who may change quotas bot-wide (raise limits, reset usage) from any
    /// server with `/quota-admin`.
    pub admin_ids: Vec<u64>,
    /// `[first, last, total]`: run only shards first..=last of total (several processes);
    /// empty: let Discord say how many shards, and run them all.
    pub shards: Vec<u32>,
    /// Servers the bot answers in, with those added by `allow add`; both empty: every server.
    pub allowed_guilds: Vec<u64>,
    /// Channels (or threads) the bot answers in; empty: every channel of an allowed server.
    pub allowed_channels: Vec<u64>,
    /// Roles of which a member needs one; empty: every member.
    pub allowed_roles: Vec<u64>,
    /// Whether the bot answers in direct messages.
    pub direct_messages: bool,
    /// Leave a server that is not allowed when it is joined (or seen at start).
    pub leave_unlisted: bool,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            api_url: "https://discord.com".into(),
            gateway_url: String::new(),
            guild_ids: Vec::new(),
            admin_ids: Vec::new(),
            shards: Vec::new(),
            allowed_guilds: Vec::new(),
            allowed_channels: Vec::new(),
            allowed_roles: Vec::new(),
            direct_messages: true,
            leave_unlisted: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub database: String,
    pub per_user: u32,
    pub window: crate::core::quota::Window,
    pub per_chat: u32,
    pub global_per_day: u32,
    pub max_in_flight_per_user: u32,
    pub max_queue: usize,
    /// Keep the prompt text in the job ledger (off by default: prompts are user content).
    pub store_prompts: bool,
    /// Price of one image, for the `usage` report (your billing currency).
    pub price_per_image: f64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            database: "data/qwen-edit-bot.sqlite3".into(),
            per_user: 20,
            window: crate::core::quota::Window::Day,
            per_chat: 0,
            global_per_day: 0,
            max_in_flight_per_user: 2,
            max_queue: 200,
            store_prompts: false,
            price_per_image: 0.05,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Both listeners (ops and webhook): a connection that has not sent its request headers
    /// within this is closed, and a whole request (body included) must arrive within 5 × it.
    pub header_timeout_ms: u64,
    /// Both listeners: connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            header_timeout_ms: 5000,
            max_connections: 256,
        }
    }
}

/// Secrets read from the environment. Absent secrets are `None`; whether that is a problem
/// depends on what is enabled (see [`Settings::problems`]).
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    pub dashscope_api_key: Option<SecretString>,
    pub telegram_bot_token: Option<SecretString>,
    pub discord_token: Option<SecretString>,
    pub telegram_webhook_secret: Option<SecretString>,
}

/// Config file plus secrets: everything the process is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub secrets: Secrets,
    pub path: PathBuf,
}

/// Why the configuration cannot be used. Each variant renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Secret(String),
}

impl Settings {
    /// The effective configuration as TOML, followed by the secrets as `set`/`not set`.
    pub fn redacted(&self) -> String {
        let mut out = toml::to_string_pretty(&self.config).unwrap_or_default();
        let s = &self.secrets;
        out.push_str("\n# secrets (from the environment)\n");
        for (name, value) in [
            ("DASHSCOPE_API_KEY", &s.dashscope_api_key),
            ("TELEGRAM_BOT_TOKEN", &s.telegram_bot_token),
            ("DISCORD_TOKEN", &s.discord_token),
            ("TELEGRAM_WEBHOOK_SECRET", &s.telegram_webhook_secret),
        ] {
            let state = if value.is_some() {
                "set (redacted)"
            } else {
                "not set"
            };
            let _ = writeln!(out, "# {name} = {state}");
        }
        out
    }
}

impl Secrets {
    /// Reads each secret from `NAME`, or from the file named by `NAME_FILE`.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            dashscope_api_key: secret(env, "DASHSCOPE_API_KEY")?,
            telegram_bot_token: secret(env, "TELEGRAM_BOT_TOKEN")?,
            discord_token: secret(env, "DISCORD_TOKEN")?,
            telegram_webhook_secret: secret(env, "TELEGRAM_WEBHOOK_SECRET")?,
        })
    }
}

fn secret(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(v) = env(name).filter(|v| !v.trim().is_empty()) {
        return Ok(Some(SecretString::from(v.trim().to_owned())));
    }
    let Some(path) = env(&format!("{name}_FILE")).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ConfigError::Secret(format!("{name}_FILE = {path}: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::Secret(format!(
            "{name}_FILE = {path}: the file is empty"
        )));
    }
    Ok(Some(SecretString::from(text.to_owned())))
}

/// Shows a secret only to code that must send it (the `Authorization` header).
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

/// The host of a configured URL, for log lines (never the path, which may hold a token).
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}
