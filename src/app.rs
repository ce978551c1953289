//! Wiring: settings → store, quotas, backend, engine; and the `run` daemon.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::backend::{DashScope, DashScopeOptions};
use crate::config::Settings;
use crate::core::clock::{Clock, SystemClock};
use crate::core::image::FitLimits;
use crate::core::jobs::{Engine, EngineConfig};
use crate::core::quota::{Limits, Quotas};

/// Quota limits from `[quota]`.
pub fn limits(settings: &Settings) -> Limits {
    let q = &settings.config.quota;
    Limits {
        per_user: q.per_user,
        window: q.window,
        per_chat: q.per_chat,
        global_per_day: q.global_per_day,
    }
}

/// Opens the store and wraps it in [`Quotas`] with the system clock.
pub fn quotas(settings: &Settings) -> anyhow::Result<Arc<Quotas>> {
    quotas_with_clock(settings, Arc::new(SystemClock))
}

pub fn quotas_with_clock(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Quotas>> {
    let ledger = crate::store::open(&settings.config.quota.database)
        .with_context(|| format!("cannot open the store {}", settings.config.quota.database))?;
    Ok(Arc::new(Quotas::new(ledger, clock, limits(settings))))
}

/// The DashScope client from `[backend]` and `DASHSCOPE_API_KEY`.
pub fn backend(settings: &Settings) -> anyhow::Result<Arc<DashScope>> {
    let Some(key) = settings.secrets.dashscope_api_key.clone() else {
        bail!("DASHSCOPE_API_KEY is not set (nor DASHSCOPE_API_KEY_FILE)");
    };
    let opts = DashScopeOptions::from_config(&settings.config.backend, key);
    Ok(Arc::new(DashScope::new(opts)?))
}

/// Engine settings from the config.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    let c = &settings.config;
    EngineConfig {
        max_queue: c.quota.max_queue,
        max_in_flight_per_user: c.quota.max_in_flight_per_user,
        workers: c.backend.max_concurrent,
        fit: FitLimits::default(),
        store_prompts: c.quota.store_prompts,
        default_negative: c.backend.default_negative_prompt.clone(),
        fetch_timeout: Duration::from_secs(60),
    }
}

/// The daemon. Returns an error (non-zero exit) when nothing can run.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let problems = settings.problems();
    if let Some(first) = problems.first() {
        bail!("{first}{}", more(problems.len()));
    }
    let c = &settings.config;
    if !c.telegram.enabled && !c.discord.enabled {
        bail!(
            "no platform is enabled: set telegram.enabled or discord.enabled in {}",
            settings.path.display()
        );
    }
    // The engine is ready; the chat front-ends are the part still to come.
    let quotas = quotas(&settings)?;
    let backend = backend(&settings)?;
    let _engine = Engine::new(quotas, backend, engine_config(&settings));
    let mut missing = Vec::new();
    if c.telegram.enabled {
        missing.push("telegram");
    }
    if c.discord.enabled {
        missing.push("discord");
    }
    bail!(
        "the {} front-end is not part of this build yet; only `edit`, `quota`, `usage` and \
         `check-config` work",
        missing.join(" and ")
    )
}

fn more(n: usize) -> String {
    if n > 1 {
        format!(" (and {} more problems; see check-config)", n - 1)
    } else {
        String::new()
    }
}
