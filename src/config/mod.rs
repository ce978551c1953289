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
    /// One `[backend]`, or several `[[backend]]` tried in `priority` order (failover).
    pub backend: Backends,
    pub telegram: TelegramConfig,
    pub discord: DiscordConfig,
    pub quota: QuotaConfig,
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shutdown_grace_secs: 60,
            backend: Backends::default(),
            telegram: TelegramConfig::default(),
            discord: DiscordConfig::default(),
            quota: QuotaConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

/// The configured model services, highest priority first; never empty. The first one's
/// request-wide settings (`default_negative_prompt`, `default_size`) apply to every job.
#[derive(Debug, Clone, PartialEq)]
pub struct Backends(Vec<BackendConfig>);

impl Backends {
    /// Several services, put in `priority` order (a stable sort: equal priorities keep the file's
    /// order). `None` when the list is empty.
    pub fn new(mut list: Vec<BackendConfig>) -> Option<Self> {
        list.sort_by_key(|b| b.priority);
        (!list.is_empty()).then_some(Self(list))
    }

    /// The service tried first, whose request-wide settings apply.
    pub fn primary(&self) -> &BackendConfig {
        &self.0[0]
    }

    /// Every service, in the order they are tried.
    pub fn all(&self) -> &[BackendConfig] {
        &self.0
    }

    /// Every service, to change in place (paths resolved at load, tests).
    pub fn all_mut(&mut self) -> &mut [BackendConfig] {
        &mut self.0
    }
}

impl Default for Backends {
    fn default() -> Self {
        Self(vec![BackendConfig::default()])
    }
}

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not an untagged enum: it would hide the inner error, and a bad key must be named.
        let value = toml::Value::deserialize(d)?;
        let list = match value {
            toml::Value::Array(_) => Vec::<BackendConfig>::deserialize(value),
            other => BackendConfig::deserialize(other).map(|b| vec![b]),
        }
        .map_err(serde::de::Error::custom)?;
        Backends::new(list).ok_or_else(|| serde::de::Error::custom("give at least one [[backend]]"))
    }
}

impl Serialize for Backends {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `dashscope` (also 302.AI), `comfyui` or `openai` (an OpenAI-compatible images API).
    pub kind: String,
    /// How the ledger and `usage --by service` name this service; default: its `kind`.
    pub name: String,
    /// Lower is tried first; equal priorities keep the file's order.
    pub priority: i32,
    /// Price of one image made by this service; unset: `quota.price_per_image`.
    pub price_per_image: Option<f64>,
    /// The environment variable holding this service's key (also read from `NAME_FILE`);
    /// default: `DASHSCOPE_API_KEY`, `OPENAI_API_KEY` or `COMFYUI_AUTH` by kind.
    pub api_key_env: String,
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
    /// from them); 384 to 3072 for DashScope.
    pub max_input_side: u32,
    /// `openai` and `comfyui`: the largest input file sent, in MB (larger ones are re-encoded).
    pub max_file_mb: u32,
    /// `openai`: where images answered inline (`b64_json`) wait until delivered; relative to
    /// the config file's folder. Default: `results` beside the database.
    pub spool_dir: String,
    /// `comfyui`: the header that carries the `api_key_env` secret, for a reverse proxy in
    /// front of ComfyUI (the secret is the whole value, e.g. `Bearer …`).
    pub auth_header: String,
    /// `comfyui`: an API-format workflow file; empty: the built-in Qwen-Image-Edit-2509 one
    /// (`examples/comfyui/qwen-image-edit-2509.json`) with its own node mapping.
    pub workflow: String,
    /// `comfyui`: `node.input` that receives each input image (the first image, the second, …).
    pub image_inputs: Vec<String>,
    /// `comfyui`: `node.input` that receives the prompt.
    pub prompt_input: String,
    /// `comfyui`: `node.input` for the negative prompt; empty: none.
    pub negative_input: String,
    /// `comfyui`: `node.input` for the seed; empty: none.
    pub seed_input: String,
    /// `comfyui`: `node.input` for the number of images; empty: one image per request.
    pub batch_input: String,
    /// `comfyui`: the node whose images are the result; empty: every image the workflow saves.
    pub output_node: String,
}

impl BackendConfig {
    /// The name the ledger records: `name`, or the kind.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.kind
        } else {
            &self.name
        }
    }

    /// The service's call limits as configured (for the whole account).
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_concurrent: self.max_concurrent,
            max_requests_per_second: self.max_requests_per_second,
        }
    }

    /// Calls to this service one of `replicas` processes makes at once (also how many jobs
    /// it runs at once for it).
    pub fn max_concurrent_per_replica(&self, replicas: u32) -> usize {
        per_replica(self.call_limits(), replicas).max_concurrent
    }

    /// This service as one of `replicas` processes calls it: the same settings, with
    /// `max_concurrent` and `max_requests_per_second` cut to the replica's share.
    pub fn for_replica(&self, replicas: u32) -> Self {
        let share = per_replica(self.call_limits(), replicas);
        Self {
            max_concurrent: share.max_concurrent,
            max_requests_per_second: share.max_requests_per_second,
            ..self.clone()
        }
    }

    /// The variable that holds this service's key.
    pub fn key_variable(&self) -> &str {
        match (self.api_key_env.as_str(), self.kind.as_str()) {
            ("", "openai") => "OPENAI_API_KEY",
            ("", "comfyui") => "COMFYUI_AUTH",
            ("", _) => "DASHSCOPE_API_KEY",
            (named, _) => named,
        }
    }
}

/// A service's call limits: calls in flight at once, and calls started per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    pub max_concurrent: usize,
    pub max_requests_per_second: f64,
}

/// One replica's share of a service's `limits` when `replicas` bot processes call the same
/// account (`quota.replicas`): ceil(max_concurrent / replicas) calls at once, at least 1, and
/// max_requests_per_second / replicas calls started a second. `replicas` 0 counts as 1.
pub fn per_replica(limits: CallLimits, replicas: u32) -> CallLimits {
    let n = replicas.max(1);
    CallLimits {
        max_concurrent: limits.max_concurrent.div_ceil(n as usize).max(1),
        max_requests_per_second: limits.max_requests_per_second / f64::from(n),
    }
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
            name: String::new(),
            priority: 0,
            price_per_image: None,
            api_key_env: String::new(),
            max_file_mb: 20,
            spool_dir: String::new(),
            auth_header: "Authorization".into(),
            workflow: String::new(),
            image_inputs: Vec::new(),
            prompt_input: String::new(),
            negative_input: String::new(),
            seed_input: String::new(),
            batch_input: String::new(),
            output_node: String::new(),
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
    /// What Telegram lets a bot send, which the outbox keeps under (`N/Ts`: N messages in any
    /// T seconds): in one chat, in one group, in all chats together.
    pub limit_per_chat: String,
    pub limit_per_group: String,
    pub limit_overall: String,
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
            limit_per_chat: "3/3s".into(),
            limit_per_group: "20/60s".into(),
            limit_overall: "30/1s".into(),
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
    /// What Discord lets a bot send, which the outbox keeps under (`N/Ts`): in one channel, and
    /// in all channels together.
    pub limit_per_channel: String,
    pub limit_overall: String,
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
            limit_per_channel: "5/5s".into(),
            limit_overall: "50/1s".into(),
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
    /// Bot processes sharing `database` (a PostgreSQL one): each calls every service within
    /// its even share of the service's limits ([`per_replica`]).
    pub replicas: u32,
    /// Seconds a replica's claim on a job holds without renewal before another replica may
    /// take the job over (PostgreSQL only).
    pub job_lease_secs: u64,
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
            replicas: 1,
            job_lease_secs: 30,
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
    /// Keys of model services, by the variable that holds them (`backend.api_key_env`), other
    /// than `DASHSCOPE_API_KEY`.
    pub service_keys: std::collections::BTreeMap<String, SecretString>,
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
        let fixed = [
            ("DASHSCOPE_API_KEY", s.dashscope_api_key.is_some()),
            ("TELEGRAM_BOT_TOKEN", s.telegram_bot_token.is_some()),
            ("DISCORD_TOKEN", s.discord_token.is_some()),
            (
                "TELEGRAM_WEBHOOK_SECRET",
                s.telegram_webhook_secret.is_some(),
            ),
        ];
        let services = self.config.backend.all().iter().map(|b| b.key_variable());
        let services = services
            .filter(|v| *v != "DASHSCOPE_API_KEY")
            .map(|v| (v, s.service_keys.contains_key(v)));
        let mut seen = std::collections::BTreeSet::new();
        for (name, set) in fixed.into_iter().chain(services) {
            if !seen.insert(name) {
                continue;
            }
            let state = if set { "set (redacted)" } else { "not set" };
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
            service_keys: Default::default(),
        })
    }

    /// Reads the key of every configured service that names its own variable.
    pub fn read_service_keys(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
        backends: &Backends,
    ) -> Result<(), ConfigError> {
        for b in backends.all() {
            let name = b.key_variable();
            if name != "DASHSCOPE_API_KEY"
                && !self.service_keys.contains_key(name)
                && let Some(value) = secret(env, name)?
            {
                self.service_keys.insert(name.to_owned(), value);
            }
        }
        Ok(())
    }

    /// The key of service `b`, if set.
    pub fn key_for(&self, b: &BackendConfig) -> Option<&SecretString> {
        match b.key_variable() {
            "DASHSCOPE_API_KEY" => self.dashscope_api_key.as_ref(),
            other => self.service_keys.get(other),
        }
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

/// A URL as messages may show it: the password (in the user part or as a `password` option)
/// replaced by `***`; a URL that does not parse is not shown at all.
pub fn without_password(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "the URL in the config".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// The host of a configured URL, for log lines (never the path, which may hold a token).
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

impl TelegramConfig {
    /// The limits the outbox of one of `replicas` processes keeps in Telegram chats: each its
    /// share (checked by `telegram::check`).
    pub fn pace(&self, replicas: u32) -> Result<crate::core::outbox::Pace, String> {
        use crate::core::outbox::{Pace, Window};
        let window = |key: &str, text: &str| {
            Window::parse(text).map_err(|e| format!("telegram.{key} = {e}"))
        };
        Ok(Pace {
            chat: window("limit_per_chat", &self.limit_per_chat)?,
            group: Some(window("limit_per_group", &self.limit_per_group)?),
            overall: window("limit_overall", &self.limit_overall)?,
        }
        .share(replicas))
    }
}

impl DiscordConfig {
    /// The limits the outbox of one of `replicas` processes keeps in Discord channels: each
    /// its share (checked by `discord::check`).
    pub fn pace(&self, replicas: u32) -> Result<crate::core::outbox::Pace, String> {
        use crate::core::outbox::{Pace, Window};
        let window =
            |key: &str, text: &str| Window::parse(text).map_err(|e| format!("discord.{key} = {e}"));
        Ok(Pace {
            chat: window("limit_per_channel", &self.limit_per_channel)?,
            group: None,
            overall: window("limit_overall", &self.limit_overall)?,
        }
        .share(replicas))
    }
}
