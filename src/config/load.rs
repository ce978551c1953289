//! Reading the settings: the TOML file, `QEB_…` overrides from the environment, and the
//! secrets. A relative `quota.database` is relative to the config file's folder, so every
//! command run with the same `--config` uses the same database, from whatever directory.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;

use super::{Config, ConfigError, Secrets, Settings};

/// Prefix of environment overrides: `QEB_<SECTION>__<KEY>` (`QEB_HTTP__LISTEN`), or
/// `QEB_<KEY>` for top-level keys (`QEB_SHUTDOWN_GRACE_SECS`).
pub const OVERRIDE_PREFIX: &str = "QEB_";

/// `QEB_` variables that are not settings (the build's own).
const NOT_SETTINGS: [&str; 1] = ["QEB_GIT_COMMIT"];

impl Settings {
    /// Reads the file at `path`, the `QEB_…` overrides and the secrets from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let overrides: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(OVERRIDE_PREFIX) && !NOT_SETTINGS.contains(&k.as_str()))
            .collect();
        Self::load_with(path, |k| std::env::var(k).ok(), &overrides)
    }

    /// Like [`Settings::load`] with an injected environment and no overrides (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::load_with(path, env, &[])
    }

    /// Reads the file at `path`, applies `overrides` (`QEB_…` variables) and reads the secrets
    /// through `env`.
    pub fn load_with(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: shown.clone(),
            error,
        })?;
        let parse = |message| ConfigError::Parse {
            path: shown.clone(),
            message,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse(render(&e, &text)))?;
        for (name, value) in overrides {
            apply_override(&mut table, name, value).map_err(parse)?;
            check_override(name, value).map_err(parse)?;
        }
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| parse(e.message().trim().to_owned()))?;
        config.quota.database = beside(path, &config.quota.database);
        // Inline results wait beside a SQLite database, or beside the config.
        let results = match Path::new(&config.quota.database).parent() {
            Some(dir) if !config.quota.database.contains("://") => {
                dir.join("results").display().to_string()
            }
            _ => beside(path, "results"),
        };
        for b in config.backend.all_mut() {
            b.spool_dir = match b.spool_dir.is_empty() {
                true => results.clone(),
                false => beside(path, &b.spool_dir),
            };
            if !b.workflow.is_empty() {
                b.workflow = beside(path, &b.workflow);
            }
        }
        let mut secrets = Secrets::from_env(&env)?;
        secrets.read_service_keys(&env, &config.backend)?;
        Ok(Self {
            config,
            secrets,
            path: path.to_owned(),
        })
    }
}

impl Config {
    /// Parses TOML text; the error names the offending key and shows the line (as the toml
    /// crate renders it, with a caret), with the value hidden when the key looks secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| render(&e, text))
    }
}

/// A database path as the daemon will open it: relative ones are taken from the config's
/// folder (made absolute, so it reads the same from any working directory).
fn beside(config: &Path, database: &str) -> String {
    let db = Path::new(database);
    if database.is_empty() || database.contains("://") || db.is_absolute() {
        return database.to_owned();
    }
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty());
    let joined: PathBuf = dir.map_or_else(|| db.to_owned(), |d| d.join(db));
    std::path::absolute(&joined)
        .unwrap_or(joined)
        .display()
        .to_string()
}

/// Sets `QEB_SECTION__KEY` (or `QEB_KEY`) in `table`. The value is read as TOML when it is
/// one (`true`, `5`, `[1, 2]`, `"x"`), else taken as a string (`0.0.0.0:9464`).
fn apply_override(table: &mut toml::Table, name: &str, raw: &str) -> Result<(), String> {
    let path = name
        .strip_prefix(OVERRIDE_PREFIX)
        .unwrap_or(name)
        .to_ascii_lowercase();
    let (section, key) = match path.split_once("__") {
        Some((section, key)) => (Some(section.to_owned()), key.to_owned()),
        None => (None, path.clone()),
    };
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
    let known = match &section {
        Some(s) => defaults
            .get(s)
            .and_then(|v| v.as_table())
            .is_some_and(|t| t.contains_key(&key)),
        None => defaults.get(&key).is_some_and(|v| !v.is_table()),
    };
    if !known {
        return Err(format!(
            "{name}: no such setting (overrides are QEB_<SECTION>__<KEY>, e.g. QEB_HTTP__LISTEN)"
        ));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let target = match section {
        Some(s) => table
            .entry(s)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{name}: the file's value there is not a table"))?,
        None => table,
    };
    target.insert(key, value);
    Ok(())
}

/// Whether the override alone gives a valid config (so a bad value is reported with the
/// variable's name rather than as a bare type error).
fn check_override(name: &str, raw: &str) -> Result<(), String> {
    let mut defaults = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
    apply_override(&mut defaults, name, raw)?;
    Config::deserialize(defaults)
        .map(|_| ())
        .map_err(|e| format!("{name} = {raw:?}: {}", e.message().trim()))
}

/// Words that mark a key whose value must not be echoed in an error.
const SECRET_WORDS: [&str; 4] = ["token", "secret", "key", "password"];

/// The toml crate's multi-line error (caret display included), with the value on a shown
/// source line blanked when that line's key looks like a secret (someone pasted a token into
/// the file, where secrets do not belong).
fn render(e: &toml::de::Error, text: &str) -> String {
    let rendered = e.to_string();
    let secret_lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").to_ascii_lowercase();
            line.contains('=') && SECRET_WORDS.iter().any(|w| key.contains(w))
        })
        .collect();
    let mut out = String::with_capacity(rendered.len());
    for line in rendered.trim_end().lines() {
        match secret_lines
            .iter()
            .find(|s| !s.trim().is_empty() && line.ends_with(*s))
        {
            Some(secret) => {
                let key = secret.split('=').next().unwrap_or("");
                out.push_str(&line[..line.len() - secret.len()]);
                out.push_str(key);
                out.push_str("= «hidden»");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.trim_end().to_owned()
}
