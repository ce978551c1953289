//! What makes settings unusable: one list of problems, the same for `run` and `check-config`
//! (one line each, naming the key and the fix).

use super::{Config, Settings};
use crate::core::command::{MAX_NEGATIVE_CHARS, Size};
use crate::core::ports::model::SizeRejection;

impl Settings {
    /// Every problem that stops `run`, one line each. Empty means the settings are usable;
    /// `check-config` prints exactly these.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.config.problems();
        let (c, s) = (&self.config, &self.secrets);
        if !c.telegram.enabled && !c.discord.enabled {
            out.push(format!(
                "no platform is enabled: set telegram.enabled or discord.enabled in {}",
                self.path.display()
            ));
        }
        if s.dashscope_api_key.is_none() {
            out.push("DASHSCOPE_API_KEY is not set (nor DASHSCOPE_API_KEY_FILE)".into());
        }
        if c.telegram.enabled && s.telegram_bot_token.is_none() {
            out.push("telegram is enabled but TELEGRAM_BOT_TOKEN is not set (nor TELEGRAM_BOT_TOKEN_FILE)".into());
        }
        let t = &c.telegram;
        if t.enabled && t.mode == "webhook" && s.telegram_webhook_secret.is_none() {
            out.push(
                "telegram.mode = \"webhook\" needs TELEGRAM_WEBHOOK_SECRET (else anyone could post updates)".into(),
            );
        }
        if c.discord.enabled && s.discord_token.is_none() {
            out.push(
                "discord is enabled but DISCORD_TOKEN is not set (nor DISCORD_TOKEN_FILE)".into(),
            );
        }
        out
    }
}

impl Config {
    /// Value problems that the TOML schema cannot express, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.backend_problems(&mut out);
        self.telegram_problems(&mut out);
        self.discord_problems(&mut out);
        self.quota_problems(&mut out);
        let listen = &self.http.listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!("http.listen = {listen:?} is not host:port"));
        }
        out
    }

    fn backend_problems(&self, out: &mut Vec<String>) {
        let b = &self.backend;
        if b.kind != "dashscope" {
            out.push(format!(
                "backend.kind = {:?}: only \"dashscope\" is supported",
                b.kind
            ));
        }
        url_problem(out, "backend.base_url", &b.base_url, &["http", "https"]);
        if !b.model.starts_with("qwen-image") {
            out.push(format!(
                "backend.model = {:?} is not a Qwen-Image-Edit model (qwen-image-edit, qwen-image-edit-plus, qwen-image-edit-max, or their dated snapshots)",
                b.model
            ));
        }
        let checks = [
            (
                b.timeout_secs == 0,
                "backend.timeout_secs must be at least 1",
            ),
            (
                b.max_concurrent == 0,
                "backend.max_concurrent must be at least 1",
            ),
            (
                !(b.max_requests_per_second.is_finite() && b.max_requests_per_second > 0.0),
                "backend.max_requests_per_second must be a positive number",
            ),
            (
                b.max_attempts == 0 || b.max_attempts > 10,
                "backend.max_attempts must be between 1 and 10",
            ),
            (
                b.default_negative_prompt.chars().count() > MAX_NEGATIVE_CHARS,
                "backend.default_negative_prompt is longer than 500 characters",
            ),
            (
                !(384..=3072).contains(&b.max_input_side),
                "backend.max_input_side must be between 384 and 3072",
            ),
        ];
        out.extend(
            checks
                .iter()
                .filter(|(bad, _)| *bad)
                .map(|(_, p)| p.to_string()),
        );
        if let Err(problem) = self.default_size() {
            out.push(problem);
        }
    }

    fn telegram_problems(&self, out: &mut Vec<String>) {
        let t = &self.telegram;
        if t.mode != "polling" && t.mode != "webhook" {
            out.push(format!(
                "telegram.mode = {:?}: use \"polling\" or \"webhook\"",
                t.mode
            ));
        }
        if t.enabled {
            url_problem(out, "telegram.api_url", &t.api_url, &["http", "https"]);
        }
        if !(1..=15).contains(&t.poll_timeout_secs) {
            out.push("telegram.poll_timeout_secs must be between 1 and 15".into());
        }
        if t.album_wait_ms > 10_000 {
            out.push("telegram.album_wait_ms must be at most 10000".into());
        }
        if !(t.enabled && t.mode == "webhook") {
            return;
        }
        if t.webhook_listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!(
                "telegram.webhook_listen = {:?} is not host:port",
                t.webhook_listen
            ));
        }
        if !t.webhook_url.starts_with("https://") {
            out.push("telegram.mode = \"webhook\" needs telegram.webhook_url (https://…)".into());
        } else {
            url_problem(out, "telegram.webhook_url", &t.webhook_url, &["https"]);
        }
    }

    fn discord_problems(&self, out: &mut Vec<String>) {
        let d = &self.discord;
        if d.enabled {
            url_problem(out, "discord.api_url", &d.api_url, &["http", "https"]);
        }
        let gateway = &d.gateway_url;
        if d.enabled && !gateway.is_empty() && !url_ok(gateway, &["ws", "wss"]) {
            out.push(format!(
                "discord.gateway_url = {gateway:?} is not a ws(s) URL (leave it empty to ask the REST API)"
            ));
        }
        if let [first, last, total] = d.shards[..] {
            if !(first <= last && last < total) {
                out.push(
                    "discord.shards = [first, last, total] needs first <= last < total".into(),
                );
            }
        } else if !d.shards.is_empty() {
            out.push("discord.shards must be [first, last, total] or empty".into());
        }
    }

    fn quota_problems(&self, out: &mut Vec<String>) {
        let q = &self.quota;
        if q.database.trim().is_empty() {
            out.push("quota.database is empty".into());
        } else if q.database.contains("://") {
            out.push(format!(
                "quota.database = {:?}: only a SQLite file path is supported in this version",
                q.database
            ));
        }
        if q.max_in_flight_per_user == 0 {
            out.push("quota.max_in_flight_per_user must be at least 1".into());
        }
        if q.max_queue == 0 {
            out.push("quota.max_queue must be at least 1".into());
        }
        if !(q.price_per_image.is_finite() && q.price_per_image >= 0.0) {
            out.push(format!(
                "quota.price_per_image = {} must be zero or more",
                q.price_per_image
            ));
        }
    }

    /// `backend.default_size`, checked against the model's rules.
    pub fn default_size(&self) -> Result<Option<Size>, String> {
        let b = &self.backend;
        if b.default_size.trim().is_empty() {
            return Ok(None);
        }
        let size = Size::parse(&b.default_size).map_err(|_| {
            format!(
                "backend.default_size = {:?}: write WIDTHxHEIGHT, e.g. \"1024x1536\"",
                b.default_size
            )
        })?;
        match crate::backend::dashscope::caps_of(&b.model).check_size(size) {
            Ok(()) => Ok(Some(size)),
            Err(SizeRejection::NotSupported) => Err(format!(
                "backend.default_size: the model {} takes no output size (use qwen-image-edit-plus or -max, or leave it empty)",
                b.model
            )),
            Err(SizeRejection::OutOfRange { min, max }) => Err(format!(
                "backend.default_size = {:?}: each side must be from {min} to {max}",
                b.default_size
            )),
        }
    }
}

/// Whether `value` parses as a URL with one of `schemes` and a host.
fn url_ok(value: &str, schemes: &[&str]) -> bool {
    url::Url::parse(value)
        .is_ok_and(|u| schemes.contains(&u.scheme()) && u.host_str().is_some_and(|h| !h.is_empty()))
}

fn url_problem(out: &mut Vec<String>, key: &str, value: &str, schemes: &[&str]) {
    if !url_ok(value, schemes) {
        out.push(format!(
            "{key} = {value:?} is not a valid {} URL",
            schemes.join("/")
        ));
    }
}
