//! `allow`: where the bot answers, added to or taken from the store (a running daemon picks
//! the change up within a second), and the merged lists for `check-config`.

use std::path::Path;

use anyhow::bail;

use crate::config::Settings;
use crate::core::model::Platform;

/// What `allow` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowAction {
    /// Allow the place (`telegram:<chat>` or `discord:<server>`).
    Add(String),
    /// No longer allow a place added before.
    Remove(String),
    List,
}

/// Runs an `allow` subcommand and returns what to print. A running daemon picks the change up
/// within a second.
pub async fn allow(settings: &Settings, action: AllowAction) -> anyhow::Result<String> {
    let quotas = crate::app::existing_quotas(settings)?;
    let mut out = String::new();
    if let AllowAction::Add(place) | AllowAction::Remove(place) = &action {
        let (platform, id) = parse_place(place)?;
        let add = matches!(action, AllowAction::Add(_));
        let before = quotas.store().allowed_places().await?;
        let listed_before =
            listed(settings, platform) || before.iter().any(|(p, _)| *p == platform);
        let changed = quotas.store().set_allowed(platform, &id, add).await?;
        if changed {
            crate::store::mark_changed(&settings.config.quota.database).await;
        }
        out.push_str(&match (add, changed) {
            (true, true) => format!("{place} is allowed now"),
            (true, false) => format!("{place} was allowed already"),
            (false, true) => format!("{place} is no longer allowed by the store"),
            (false, false) => format!("{place} was not in the store's list"),
        });
        if add && changed && !listed_before {
            out.push_str(&format!(
                "\nnote: {} answered everywhere until now; from now on only in the places listed",
                platform.as_str()
            ));
        }
        if !add && allowed_by_config(settings, platform, &id) {
            out.push_str("\nnote: the config file still lists it; remove it there too");
        }
        out.push('\n');
    }
    let access = crate::app::access(settings);
    crate::app::load_places(&quotas, &access).await?;
    for line in access.describe() {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// `telegram:<chat id>` or `discord:<server id>`.
fn parse_place(place: &str) -> anyhow::Result<(Platform, String)> {
    let (platform, id) = place.split_once(':').unwrap_or((place, ""));
    let ok = match platform {
        "telegram" => id.parse::<i64>().is_ok(),
        "discord" => id.parse::<u64>().is_ok(),
        _ => false,
    };
    if !ok {
        bail!(
            "{place:?}: give telegram:<chat id> (e.g. telegram:-1001234567890) or discord:<server id>"
        );
    }
    Ok((
        platform.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        id.to_owned(),
    ))
}

/// Whether the config lists any place of `platform`.
fn listed(settings: &Settings, platform: Platform) -> bool {
    let c = &settings.config;
    match platform {
        Platform::Telegram => !c.telegram.allowed_chats.is_empty(),
        Platform::Discord => !c.discord.allowed_guilds.is_empty(),
        Platform::Cli => true,
    }
}

fn allowed_by_config(settings: &Settings, platform: Platform, id: &str) -> bool {
    let c = &settings.config;
    match platform {
        Platform::Telegram => id
            .parse()
            .is_ok_and(|id| c.telegram.allowed_chats.contains(&id)),
        Platform::Discord => id
            .parse()
            .is_ok_and(|id| c.discord.allowed_guilds.contains(&id)),
        Platform::Cli => false,
    }
}

/// Where the bot answers, for `check-config`: the config's lists merged with the store's (a
/// SQLite file only when it exists; nothing is created here).
pub async fn places_report(settings: &Settings) -> String {
    let access = crate::app::access(settings);
    let database = &settings.config.quota.database;
    let mut out =
        String::from("\n# where the bot answers (config lists merged with `allow add`)\n");
    if crate::store::is_postgres(database) || Path::new(database).exists() {
        let stored = match crate::store::open_existing(database) {
            Ok(store) => store.allowed_places().await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(places) => access.set_stored(&places),
            Err(e) => out.push_str(&format!("# cannot read the stored places: {e}\n")),
        }
    }
    for line in access.describe() {
        out.push_str(&format!("# {line}\n"));
    }
    out
}
