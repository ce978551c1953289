//! The `[discord]` section and its secret: what makes them unusable, one line each.

use crate::config::check::{url_ok, url_problem};
use crate::config::{DiscordConfig, Secrets};

/// Every problem of the Discord settings.
pub fn problems(d: &DiscordConfig, secrets: &Secrets, out: &mut Vec<String>) {
    if d.enabled && secrets.discord_token.is_none() {
        out.push("discord is enabled but DISCORD_TOKEN is not set (nor DISCORD_TOKEN_FILE)".into());
    }
    if d.enabled {
        url_problem(out, "discord.api_url", &d.api_url, &["http", "https"]);
    }
    if let Err(e) = d.pace(1) {
        out.push(e);
    }
    let gateway = &d.gateway_url;
    if d.enabled && !gateway.is_empty() && !url_ok(gateway, &["ws", "wss"]) {
        out.push(format!(
            "discord.gateway_url = {gateway:?} is not a ws(s) URL (leave it empty to ask the REST API)"
        ));
    }
    if let [first, last, total] = d.shards[..] {
        if !(first <= last && last < total) {
            out.push("discord.shards = [first, last, total] needs first <= last < total".into());
        }
    } else if !d.shards.is_empty() {
        out.push("discord.shards must be [first, last, total] or empty".into());
    }
}
