//! The `[telegram]` section and its secrets: what makes them unusable, one line each.

use crate::config::check::url_problem;
use crate::config::{Secrets, TelegramConfig};

/// Every problem of the Telegram settings.
pub fn problems(t: &TelegramConfig, secrets: &Secrets, out: &mut Vec<String>) {
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
    if let Err(e) = t.pace(1) {
        out.push(e);
    }
    if t.enabled && secrets.telegram_bot_token.is_none() {
        out.push(
            "telegram is enabled but TELEGRAM_BOT_TOKEN is not set (nor TELEGRAM_BOT_TOKEN_FILE)"
                .into(),
        );
    }
    if !(t.enabled && t.mode == "webhook") {
        return;
    }
    if secrets.telegram_webhook_secret.is_none() {
        out.push(
            "telegram.mode = \"webhook\" needs TELEGRAM_WEBHOOK_SECRET (else anyone could post updates)".into(),
        );
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
